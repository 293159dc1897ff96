//! Time per backend operation, when `HEARTH_PROFILE` is set (read once): every operation's
//! wall time on the calling thread (a parallel step counts once, as the caller waits for it)
//! is added to its slot; [`report`] prints the table `hearth bench` shows. Off, a timer is one
//! branch on a cached flag.
use hearth_core::DType;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Operations other than matmuls (which take slots by weight type).
#[derive(Clone, Copy)]
pub(crate) enum Op {
    Attention = 0,
    RmsNorm,
    Rope,
    SiluMul,
    GetRow,
    Quantize,
    Step,
    Wait,
}

const OPS: [&str; 8] = [
    "attention",
    "rms_norm",
    "rope",
    "silu_mul",
    "get_row",
    "(within matmuls) quantize activations",
    "(within the above) parallel steps",
    "(within the steps) the caller waiting for the workers",
];

/// Slots that are parts of other operations' time (not added to the total again).
fn within(i: usize) -> bool {
    i == Op::Quantize as usize || i == Op::Step as usize || i == Op::Wait as usize
}
/// Slots: the operations above, then `matmul` and `matmul_many` per weight type (by the first
/// job's type).
const TYPES: usize = 40;
const SLOTS: usize = OPS.len() + 2 * TYPES;

static NS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static CALLS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];

fn on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HEARTH_PROFILE").is_some_and(|v| v != "0"))
}

/// Adds its lifetime to a slot when dropped (nothing when profiling is off).
pub(crate) struct Timer(Option<(usize, Instant)>);

impl Timer {
    pub(crate) fn op(op: Op) -> Timer {
        Timer::slot(op as usize)
    }
    /// A matmul (`many`: a `matmul_many` step) of weights of type `dt`.
    pub(crate) fn matmul(dt: DType, many: bool) -> Timer {
        Timer::slot(OPS.len() + (dt as usize).min(TYPES - 1) + if many { TYPES } else { 0 })
    }
    fn slot(i: usize) -> Timer {
        Timer(on().then(|| (i, Instant::now())))
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some((i, t)) = self.0 {
            NS[i].fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
            CALLS[i].fetch_add(1, Relaxed);
        }
    }
}

/// The table of time per operation since the last reset, largest first (`None` when
/// profiling is off), then reset. The activations' quantization is part of the matmuls that
/// do it, and the parallel steps (the pool's jobs: their count, the caller's time in them, and
/// its time waiting for the last worker) are parts of the operations that run them: their
/// shares are of the same total, which counts them once.
pub(crate) fn report() -> Option<String> {
    if !on() {
        return None;
    }
    let name = |i: usize| -> String {
        if i < OPS.len() {
            return OPS[i].to_string();
        }
        let (k, many) = ((i - OPS.len()) % TYPES, i - OPS.len() >= TYPES);
        let dt = (0..TYPES as u32)
            .filter_map(|id| DType::from_ggml(id).ok())
            .find(|d| *d as usize == k)
            .map_or(format!("type {k}"), |d| d.to_string());
        format!("{} {dt}", if many { "matmul_many" } else { "matmul" })
    };
    let mut rows: Vec<(u64, u64, usize)> = (0..SLOTS)
        .map(|i| (NS[i].swap(0, Relaxed), CALLS[i].swap(0, Relaxed), i))
        .filter(|r| r.1 > 0)
        .collect();
    rows.sort_by(|a, b| b.0.cmp(&a.0));
    // the quantization and the parallel steps are inside other operations: not in the total
    // again
    let total: u64 = rows.iter().filter(|r| !within(r.2)).map(|r| r.0).sum();
    let mut s = String::from("| operation | calls | ms | share |\n|---|---|---|---|\n");
    for (ns, calls, i) in rows {
        s += &format!(
            "| {} | {calls} | {:.1} | {:.1}% |\n",
            name(i),
            ns as f64 / 1e6,
            100.0 * ns as f64 / total.max(1) as f64
        );
    }
    Some(s)
}
