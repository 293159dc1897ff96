//! The scheduler keeps serving after a bug in one of its steps: the requests it held get an
//! error each, none is lost silently, and the next request is answered.
use hearth_engine::sched::{Config, Event, Job, Metrics, Scheduler};
use hearth_engine::{Engine, SamplingParams};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

fn engine() -> Arc<Engine> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/llama");
    let cpu = Arc::new(hearth_cpu::Cpu::new(1).unwrap());
    Arc::new(Engine::load(&dir, cpu).unwrap())
}

fn job(logit_bias: Vec<(u32, f32)>) -> (Job, UnboundedReceiver<Event>) {
    let (tx, rx) = unbounded_channel();
    let j = Job {
        prompt: vec![1, 2, 3],
        max_tokens: 4,
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        top_logprobs: None,
        prompt_logprobs: false,
        grammar: None,
        logit_bias,
        events: tx,
        received: Instant::now(),
    };
    (j, rx)
}

/// Events until the request ends (or 60 s pass).
fn outcome(rx: &mut UnboundedReceiver<Event>) -> Event {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match rx.try_recv() {
            Ok(Event::Token(..) | Event::Prompt(_)) => {}
            Ok(ev) => return ev,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    panic!("no answer within 60 s");
}

#[test]
fn a_panic_in_a_step_fails_its_requests_and_the_scheduler_goes_on() {
    let eng = engine();
    let nv = eng.n_vocab() as u32;
    let metrics = Arc::new(Metrics::default());
    let cfg = Config {
        n_ctx: 64,
        parallel: 2,
        batch_tokens: 32,
        n_pages: 16,
        page_size: 16,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let sch = Scheduler::new(eng, cfg, metrics.clone()).unwrap();
    let th = std::thread::spawn(move || sch.run(rx));
    // a bias on a token past the vocabulary indexes out of bounds in sampling (the HTTP side
    // refuses such a request; here it stands for any bug in a step)
    let (bad, mut bad_rx) = job(vec![(nv + 5, 1.0)]);
    metrics
        .in_flight
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tx.send(bad).unwrap();
    match outcome(&mut bad_rx) {
        Event::Error(e) => assert!(e.contains("internal error"), "{e}"),
        ev => panic!("expected an error, got {ev:?}"),
    }
    let (good, mut good_rx) = job(Vec::new());
    metrics
        .in_flight
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tx.send(good).unwrap();
    assert!(matches!(outcome(&mut good_rx), Event::Done { .. }));
    drop(tx);
    th.join().unwrap();
    assert_eq!(
        metrics.in_flight.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
