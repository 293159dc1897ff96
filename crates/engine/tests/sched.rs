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
        embed: None,
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

/// A scheduler over the tiny fixture `name` (2 sequences at once, pages of 16), and the
/// sender of its jobs.
fn hybrid_scheduler(
    name: &str,
) -> (
    std::sync::mpsc::Sender<Job>,
    Arc<Metrics>,
    std::thread::JoinHandle<()>,
) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name);
    let cpu = Arc::new(hearth_cpu::Cpu::new(1).unwrap());
    let eng = Arc::new(Engine::load(&dir, cpu).unwrap());
    let metrics = Arc::new(Metrics::default());
    let cfg = Config {
        n_ctx: 256,
        parallel: 2,
        batch_tokens: 64,
        n_pages: 64,
        page_size: 16,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let sch = Scheduler::new(eng, cfg, metrics.clone()).unwrap();
    (tx, metrics, std::thread::spawn(move || sch.run(rx)))
}

/// Send a greedy request for `prompt`.
fn send(
    tx: &std::sync::mpsc::Sender<Job>,
    m: &Metrics,
    prompt: &[u32],
    n: usize,
) -> UnboundedReceiver<Event> {
    let (mut j, rx) = job(Vec::new());
    j.prompt = prompt.to_vec();
    j.max_tokens = n;
    m.in_flight
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tx.send(j).unwrap();
    rx
}

/// The generated tokens and the prompt tokens taken from the cache.
fn collect(rx: &mut UnboundedReceiver<Event>) -> (Vec<u32>, usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut toks = Vec::new();
    while Instant::now() < deadline {
        match rx.try_recv() {
            Ok(Event::Token(t, _)) => toks.push(t),
            Ok(Event::Prompt(_)) => {}
            Ok(Event::Done { cached_tokens, .. }) => return (toks, cached_tokens),
            Ok(ev) => panic!("the request failed: {ev:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    panic!("no answer within 120 s");
}

/// Turn two of a chat with a hybrid model (Gated DeltaNet layers, whose state cannot be cut
/// back to a prefix; DeepSeek-V4's compressors likewise) resumes from the state saved at the last page boundary of turn one: its
/// cached-token count says so, and it answers exactly as a scheduler that computes the whole
/// prompt afresh. Two different requests running at once (each in its own state slot) answer
/// as they do alone.
#[test]
fn a_hybrid_models_second_turn_reuses_the_first_turns_state() {
    // DeepSeek-V4 keeps its window, compressor rows and compressed entries in the same
    // per-sequence slots (turn two, 80 tokens, is past its window of 32 and its indexer's
    // top-k of 12 CSA entries)
    for name in ["qwen3_5", "deepseek_v4"] {
        let exp: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../tests/fixtures/tiny")
                    .join(name)
                    .join("expected.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let text: Vec<u32> = exp["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let (tx, m, th) = hybrid_scheduler(name);
        let turn1 = &text[..50];
        let (gen1, cached1) = collect(&mut send(&tx, &m, turn1, 12));
        assert_eq!(cached1, 0);
        assert!(!gen1.is_empty());
        let mut turn2 = turn1.to_vec();
        turn2.extend(&gen1);
        turn2.extend(&text[50..70]);
        let (gen2, cached2) = collect(&mut send(&tx, &m, &turn2, 8));
        // turn one's state was saved where its last page filled: its tokens minus the last one
        // sampled (never fed back), rounded down to whole pages of 16
        let fed = turn1.len() + gen1.len() - 1;
        assert_eq!(
            cached2,
            fed / 16 * 16,
            "{name}: turn two reused {cached2} tokens"
        );
        assert!(cached2 >= 48);
        // two requests at once, each alone
        let other = &text[100..137];
        let mut a = send(&tx, &m, &turn2, 8);
        let mut b = send(&tx, &m, other, 8);
        let (ga, gb) = (collect(&mut a), collect(&mut b));
        drop(tx);
        th.join().unwrap();
        let (tx, m, th) = hybrid_scheduler(name);
        let (fresh2, c) = collect(&mut send(&tx, &m, &turn2, 8));
        assert_eq!(c, 0);
        let (fresh_b, _) = collect(&mut send(&tx, &m, other, 8));
        drop(tx);
        th.join().unwrap();
        assert_eq!(
            gen2, fresh2,
            "{name}: turn two from the saved state differs from a fresh run"
        );
        assert_eq!(
            ga.0, fresh2,
            "{name}: batched with another request, turn two differs"
        );
        assert_eq!(
            gb.0, fresh_b,
            "{name}: batched with turn two, the other request differs"
        );
    }
}

/// Embedding jobs through the scheduler, batched with each other and with a generation, in
/// prompt chunks smaller than the inputs and with a pool small enough to preempt: each answer
/// equals `Engine::embed` of its input alone (same pooling, same normalisation).
#[test]
fn embeddings_through_the_scheduler_equal_embedding_alone() {
    for name in ["llama", "qwen3_next"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny")
            .join(name);
        let cpu = Arc::new(hearth_cpu::Cpu::new(1).unwrap());
        let eng = Arc::new(Engine::load(&dir, cpu).unwrap());
        let metrics = Arc::new(Metrics::default());
        let cfg = Config {
            n_ctx: 128,
            parallel: 3,
            batch_tokens: 24,
            n_pages: 12,
            page_size: 16,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let sch = Scheduler::new(eng.clone(), cfg, metrics.clone()).unwrap();
        let th = std::thread::spawn(move || sch.run(rx));
        let nv = eng.n_vocab() as u32;
        let inputs: Vec<Vec<u32>> = [5usize, 40, 77, 1, 100]
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                (0..n as u32)
                    .map(|i| (i * 7 + k as u32 * 13 + 3) % nv)
                    .collect()
            })
            .collect();
        let gen_rx = send(&tx, &metrics, &[4, 5, 6, 7], 40);
        let rxs: Vec<_> = inputs
            .iter()
            .map(|inp| {
                let (mut j, rx) = job(Vec::new());
                j.prompt = inp.clone();
                j.embed = Some(eng.pooling().unwrap());
                metrics
                    .in_flight
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tx.send(j).unwrap();
                rx
            })
            .collect();
        for (inp, mut rx) in inputs.iter().zip(rxs) {
            let got = match outcome(&mut rx) {
                Event::Embedding(v) => v,
                ev => panic!("{name}: expected an embedding, got {ev:?}"),
            };
            let want = eng.embed(inp).unwrap();
            assert_eq!(got.len(), eng.model.cfg.n_embd);
            let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{name}: norm {norm}");
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "{name}: {} tokens: max diff {diff}", inp.len());
        }
        let mut gen_rx = gen_rx;
        let (toks, _) = collect(&mut gen_rx);
        assert_eq!(toks.len(), 40, "{name}: the generation alongside finished");
        drop(tx);
        th.join().unwrap();
        assert_eq!(
            metrics.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}
