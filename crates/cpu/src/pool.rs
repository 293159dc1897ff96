//! A persistent thread pool for the forward pass: the calling thread works too, workers spin
//! briefly between jobs (a decode step runs hundreds of short parallel sections, and waking a
//! sleeping thread costs more than most of them), then park until the next job.
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

type Job = &'static (dyn Fn(usize) + Sync);

/// A value alone on its cache lines (128 bytes: adjacent-line prefetchers pair lines), so
/// that the workers' reads of one counter are not invalidated by writes to another.
#[repr(align(128))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Inner {
    /// Bumped once per job; every worker spins on it.
    epoch: Line<AtomicUsize>,
    /// Workers still running the current job; each decrements it once.
    pending: Line<AtomicUsize>,
    /// The current job: a pointer to the caller's `&dyn Fn`, read by each worker once it has
    /// seen a new epoch (no lock: a mutex here serialised every worker on every step).
    job: Line<AtomicPtr<Job>>,
    stop: AtomicBool,
    wake: Condvar,
    park: Mutex<()>,
    /// Workers parked on `wake` (notifying costs a system call; skipped when none are).
    parked: AtomicUsize,
    /// The first panic of the current job's workers, re-raised by `run`.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

/// The pool. `run(f)` calls `f(i)` once for each thread index `i` in `0..threads()`.
pub struct Pool {
    inner: Arc<Inner>,
    handles: Vec<JoinHandle<()>>,
    n: usize,
    busy: Mutex<()>,
}

/// Spin iterations before a worker parks (roughly a few hundred microseconds).
const SPIN: u32 = 100_000;

impl Pool {
    /// A pool of `threads` threads in all (the caller counts as one).
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let n = threads.max(1);
        let inner = Arc::new(Inner {
            epoch: Line(AtomicUsize::new(0)),
            pending: Line(AtomicUsize::new(0)),
            job: Line(AtomicPtr::new(std::ptr::null_mut())),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
            park: Mutex::new(()),
            parked: AtomicUsize::new(0),
            panic: Mutex::new(None),
        });
        let mut handles = Vec::new();
        for i in 1..n {
            let inner = inner.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("hearth-cpu-{i}"))
                    .spawn(move || worker(&inner, i))?,
            );
        }
        Ok(Pool {
            inner,
            handles,
            n,
            busy: Mutex::new(()),
        })
    }

    /// Threads, the caller included.
    pub fn threads(&self) -> usize {
        self.n
    }

    /// Run `f(i)` for every thread index `i`, the caller taking index 0; returns when all are
    /// done. A panic in any `f(i)` is re-raised here once every thread is done with `f`.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.n == 1 {
            f(0);
            return;
        }
        let _t = crate::prof::Timer::op(crate::prof::Op::Step);
        // One job at a time (a second caller waits here).
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the 'static lifetime is a lie that `run` makes true by not returning before
        // every worker has finished with the job.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), Job>(f) };
        // the workers read the job through this pointer to a local, which outlives them too
        self.inner
            .job
            .store(&job as *const Job as *mut Job, Ordering::Relaxed);
        self.inner.pending.store(self.n - 1, Ordering::Relaxed);
        // publishes the job and the count with it (workers load the epoch with Acquire)
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        // a worker about to park counts itself first, then re-checks the epoch under `park`
        if self.inner.parked.load(Ordering::SeqCst) > 0 {
            let _g = self.inner.park.lock().unwrap_or_else(|e| e.into_inner());
            self.inner.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        let _w = crate::prof::Timer::op(crate::prof::Op::Wait);
        let mut spins = 0u32;
        while self.inner.pending.load(Ordering::Acquire) != 0 {
            spin_or_yield(&mut spins);
        }
        let theirs = self
            .inner
            .panic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if let Some(p) = theirs {
            std::panic::resume_unwind(p);
        }
    }
}

/// Spin, and now and then give the core away: with more threads than cores (tests running
/// side by side, a busy machine) pure spinning would keep the thread we wait for off the CPU.
#[inline]
fn spin_or_yield(spins: &mut u32) {
    *spins += 1;
    if *spins % 256 == 0 {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

fn worker(inner: &Inner, i: usize) {
    let mut seen = 0usize;
    loop {
        // spin, then park, until a new epoch (job) or stop
        let mut spins = 0u32;
        loop {
            if inner.stop.load(Ordering::Acquire) {
                return;
            }
            let e = inner.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if spins < SPIN {
                spin_or_yield(&mut spins);
            } else {
                inner.parked.fetch_add(1, Ordering::SeqCst);
                let g = inner.park.lock().unwrap_or_else(|e| e.into_inner());
                if inner.epoch.load(Ordering::SeqCst) == seen && !inner.stop.load(Ordering::Acquire)
                {
                    let _g = inner.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                inner.parked.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let j = inner.job.load(Ordering::Relaxed);
        // SAFETY: the epoch this worker saw was published after the job pointer, and `run`
        // keeps the pointee (and the job) alive until `pending` reaches zero.
        let f: Job = unsafe { *j };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i))) {
            let mut slot = inner.panic.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(p);
        }
        inner.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        {
            let _g = self.inner.park.lock().unwrap_or_else(|e| e.into_inner());
            self.inner.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn every_index_runs_once_per_job() {
        let p = Pool::new(3).unwrap();
        for _ in 0..1000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            p.run(&|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
        // after a pause long enough for workers to park, jobs still run
        std::thread::sleep(std::time::Duration::from_millis(50));
        let n = AtomicUsize::new(0);
        p.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_worker_panic_reaches_the_caller() {
        let p = Pool::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            p.run(&|i| {
                if i == 1 {
                    panic!("worker fails");
                }
            })
        }));
        assert!(r.is_err());
        // the pool still works
        let n = AtomicUsize::new(0);
        p.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
