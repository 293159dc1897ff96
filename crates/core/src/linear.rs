//! Linear attention with a fixed-size state per sequence: the short causal convolution in
//! front of it and the gated delta rule (Gated DeltaNet: Qwen3-Next, Qwen3.5/3.6).
//!
//! A layer's states live in one buffer of `n_slots` slots of `stride` floats; a sequence's
//! slot holds its convolution state (the last `kernel - 1` inputs, `[kernel - 1, channels]`)
//! and its recurrent state (`[n_v_heads, k_dim, v_dim]`), at offsets the caller chooses.
//! These are the references the backends' kernels are checked against.
use crate::{Error, Result};

/// One sequence's rows of a batch, for the recurrent ops.
#[derive(Clone, Copy, Debug)]
pub struct RecSeg {
    /// First row of the batch.
    pub row0: usize,
    /// Rows (tokens).
    pub n: usize,
    /// The sequence's state slot.
    pub slot: usize,
    /// The sequence starts here: its state is taken as zero, not read.
    pub fresh: bool,
}

/// Where a layer's states are: slots of `stride` floats, this op's part at `offset` of each.
#[derive(Clone, Copy, Debug)]
pub struct SlotLayout {
    /// Floats per slot.
    pub stride: usize,
    /// This op's part of a slot.
    pub offset: usize,
}

/// The shape of a gated delta rule ([`delta_rule_ref`]).
#[derive(Clone, Copy, Debug)]
pub struct DeltaShape {
    /// Query/key heads.
    pub n_k_heads: usize,
    /// Value heads (a multiple of the key heads).
    pub n_v_heads: usize,
    /// Width of a query/key head.
    pub k_dim: usize,
    /// Width of a value head.
    pub v_dim: usize,
    /// Which key head value head `h` reads: `h % n_k_heads` (tiled; llama.cpp's GGUF files
    /// reorder the value heads so) or `h / (n_v_heads / n_k_heads)` (grouped; the HF order).
    pub tiled: bool,
}

impl DeltaShape {
    /// Values per token of the convolved `q | k | v` rows.
    pub fn qkv_width(&self) -> usize {
        2 * self.n_k_heads * self.k_dim + self.n_v_heads * self.v_dim
    }
    /// Floats of one sequence's recurrent state.
    pub fn state_len(&self) -> usize {
        self.n_v_heads * self.k_dim * self.v_dim
    }
    /// The key head of value head `h`.
    pub fn k_head(&self, h: usize) -> usize {
        if self.tiled {
            h % self.n_k_heads
        } else {
            h / (self.n_v_heads / self.n_k_heads).max(1)
        }
    }
    /// An error unless the shape is usable.
    pub fn check(&self) -> Result<()> {
        if self.n_k_heads == 0
            || self.k_dim == 0
            || self.v_dim == 0
            || !self.n_v_heads.is_multiple_of(self.n_k_heads)
        {
            return Err(Error::Invalid(format!(
                "delta rule: {} value heads cannot be grouped over {} key heads",
                self.n_v_heads, self.n_k_heads
            )));
        }
        Ok(())
    }
}

/// An error unless each segment's rows (of `width`) lie in `rows` and its slot part in
/// `state`.
pub fn check_segs(
    op: &str,
    segs: &[RecSeg],
    n_rows: usize,
    state: usize,
    lay: SlotLayout,
    part: usize,
) -> Result<()> {
    for s in segs {
        let rows_ok = s.row0.checked_add(s.n).is_some_and(|e| e <= n_rows);
        let slot_ok = s
            .slot
            .checked_mul(lay.stride)
            .and_then(|b| b.checked_add(lay.offset))
            .and_then(|b| b.checked_add(part))
            .is_some_and(|e| e <= state && lay.offset + part <= lay.stride);
        if !rows_ok || !slot_ok {
            return Err(Error::Invalid(format!(
                "{op}: a segment (rows {}+{}, slot {}) does not fit {n_rows} rows and a state \
                 of {state} values",
                s.row0, s.n, s.slot
            )));
        }
    }
    Ok(())
}

/// A depthwise causal convolution with SiLU over each segment's rows of `x [n, channels]`,
/// continuing from (and updating) the segment's convolution state; `w [channels, kernel]`.
/// `out[t, c] = silu(Σ_j w[c, j] · x[t - (kernel - 1) + j, c])`, with inputs before the
/// segment's first row taken from its state (zeros when `fresh`).
pub fn ssm_conv_ref(
    x: &[f32],
    w: &[f32],
    state: &mut [f32],
    lay: SlotLayout,
    out: &mut [f32],
    channels: usize,
    segs: &[RecSeg],
) -> Result<()> {
    let kernel = w.len().checked_div(channels).unwrap_or(0);
    if kernel == 0 || kernel * channels != w.len() || x.len() != out.len() {
        return Err(Error::Invalid(format!(
            "ssm_conv: {} weights are not {channels} channels of a kernel",
            w.len()
        )));
    }
    let n_rows = x.len() / channels;
    let hist = (kernel - 1) * channels;
    check_segs("ssm_conv", segs, n_rows, state.len(), lay, hist)?;
    let mut win = vec![0f32; (kernel - 1 + n_rows) * channels];
    for s in segs {
        let st = &mut state[s.slot * lay.stride + lay.offset..][..hist];
        // the window: the state's kernel - 1 rows, then the segment's inputs
        let w_len = (kernel - 1 + s.n) * channels;
        let win = &mut win[..w_len];
        if s.fresh {
            win[..hist].fill(0.0);
        } else {
            win[..hist].copy_from_slice(st);
        }
        win[hist..].copy_from_slice(&x[s.row0 * channels..(s.row0 + s.n) * channels]);
        for t in 0..s.n {
            let o = &mut out[(s.row0 + t) * channels..][..channels];
            for (c, ov) in o.iter_mut().enumerate() {
                let mut acc = 0f32;
                for j in 0..kernel {
                    acc += w[c * kernel + j] * win[(t + j) * channels + c];
                }
                *ov = acc / (1.0 + (-acc).exp());
            }
        }
        st.copy_from_slice(&win[w_len - hist..]);
    }
    Ok(())
}

/// `softplus(x) = ln(1 + eᕽ)`, linear above 20 (as torch's).
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

/// The gated delta rule over each segment's rows, continuing from (and updating) its
/// recurrent state `S [n_v_heads, k_dim, v_dim]`.
///
/// `qkv [n, qkv_width]` holds each token's queries, keys (`[n_k_heads, k_dim]` each) and
/// values (`[n_v_heads, v_dim]`); `a`, `b [n, n_v_heads]` are the raw decay and write-strength
/// projections, `a_coef` (`-exp(A_log)`) and `dt_bias [n_v_heads]` their parameters. Per
/// token and value head `h` (key head `kh`):
/// q, k are L2-normalised (eps 1e-6), q scaled by `1/sqrt(k_dim)`;
/// `g = a_coef[h] · softplus(a + dt_bias[h])`, `β = sigmoid(b)`;
/// `S ← e^g · S`; `S ← S + k ⊗ β (v − Sᵀk)`; `out = Sᵀq`.
#[allow(clippy::too_many_arguments)]
pub fn delta_rule_ref(
    qkv: &[f32],
    a: &[f32],
    b: &[f32],
    a_coef: &[f32],
    dt_bias: &[f32],
    state: &mut [f32],
    lay: SlotLayout,
    out: &mut [f32],
    sh: DeltaShape,
    segs: &[RecSeg],
) -> Result<()> {
    check_delta(
        qkv.len(),
        a.len(),
        b.len(),
        a_coef.len(),
        dt_bias.len(),
        state.len(),
        lay,
        out.len(),
        sh,
        segs,
    )?;
    let (nv, dk, dv) = (sh.n_v_heads, sh.k_dim, sh.v_dim);
    let g = DeltaGates {
        qkv,
        a,
        b,
        a_coef,
        dt_bias,
    };
    for sg in segs {
        let st = &mut state[sg.slot * lay.stride + lay.offset..][..sh.state_len()];
        for (h, s) in st.chunks_exact_mut(dk * dv).enumerate() {
            delta_head(&g, sh, sg, h, s, |t, o| {
                out[(t * nv + h) * dv..][..dv].copy_from_slice(o)
            });
        }
    }
    Ok(())
}

/// An error unless the delta rule's operands (by length) fit `sh` and `segs`, and no two
/// segments share a slot.
#[allow(clippy::too_many_arguments)]
pub fn check_delta(
    qkv: usize,
    a: usize,
    b: usize,
    a_coef: usize,
    dt_bias: usize,
    state: usize,
    lay: SlotLayout,
    out: usize,
    sh: DeltaShape,
    segs: &[RecSeg],
) -> Result<()> {
    sh.check()?;
    let nv = sh.n_v_heads;
    let w = sh.qkv_width();
    let n_rows = qkv / w;
    if n_rows * w != qkv
        || a != n_rows * nv
        || b != n_rows * nv
        || out != n_rows * nv * sh.v_dim
        || a_coef != nv
        || dt_bias != nv
    {
        return Err(Error::Invalid(format!(
            "delta_rule: {qkv} values are not rows of {w} that fit the gates and output"
        )));
    }
    check_segs("delta_rule", segs, n_rows, state, lay, sh.state_len())?;
    let mut slots: Vec<usize> = segs.iter().map(|s| s.slot).collect();
    slots.sort_unstable();
    if slots.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::Invalid(
            "delta_rule: two sequences share a state slot".into(),
        ));
    }
    Ok(())
}

/// The delta rule's per-token inputs (see [`delta_rule_ref`]).
pub struct DeltaGates<'a> {
    /// `[n, qkv_width]`.
    pub qkv: &'a [f32],
    /// `[n, n_v_heads]`.
    pub a: &'a [f32],
    /// `[n, n_v_heads]`.
    pub b: &'a [f32],
    /// `[n_v_heads]`.
    pub a_coef: &'a [f32],
    /// `[n_v_heads]`.
    pub dt_bias: &'a [f32],
}

/// One segment's tokens through value head `h`, whose state is `s [k_dim, v_dim]`: `emit(t,
/// out)` receives each row's `[v_dim]` output. The operands must have passed
/// [`check_delta`].
pub fn delta_head(
    g: &DeltaGates<'_>,
    sh: DeltaShape,
    sg: &RecSeg,
    h: usize,
    s: &mut [f32],
    mut emit: impl FnMut(usize, &[f32]),
) {
    let (nk, nv, dk, dv) = (sh.n_k_heads, sh.n_v_heads, sh.k_dim, sh.v_dim);
    let w = sh.qkv_width();
    let scale = 1.0 / (dk as f32).sqrt();
    let l2 = |v: &[f32], o: &mut [f32], s: f32| {
        let ss: f32 = v.iter().map(|x| x * x).sum();
        let inv = 1.0 / (ss + 1e-6).sqrt();
        for (o, x) in o.iter_mut().zip(v) {
            *o = x * inv * s;
        }
    };
    let (mut q, mut k, mut kv, mut o) = (
        vec![0f32; dk],
        vec![0f32; dk],
        vec![0f32; dv],
        vec![0f32; dv],
    );
    if sg.fresh {
        s.fill(0.0);
    }
    let kh = sh.k_head(h);
    for t in sg.row0..sg.row0 + sg.n {
        let row = &g.qkv[t * w..(t + 1) * w];
        l2(&row[kh * dk..(kh + 1) * dk], &mut q, scale);
        l2(&row[(nk + kh) * dk..(nk + kh + 1) * dk], &mut k, 1.0);
        let v = &row[2 * nk * dk + h * dv..][..dv];
        let gate = g.a_coef[h] * softplus(g.a[t * nv + h] + g.dt_bias[h]);
        let beta = 1.0 / (1.0 + (-g.b[t * nv + h]).exp());
        let decay = gate.exp();
        // decay, then what the state recalls for k
        kv.fill(0.0);
        for (i, &ki) in k.iter().enumerate() {
            let si = &mut s[i * dv..(i + 1) * dv];
            for (j, sv) in si.iter_mut().enumerate() {
                *sv *= decay;
                kv[j] += *sv * ki;
            }
        }
        // the write: S += k ⊗ β (v − recalled)
        for (j, r) in kv.iter_mut().enumerate() {
            *r = (v[j] - *r) * beta;
        }
        o.fill(0.0);
        for (i, (&ki, &qi)) in k.iter().zip(&q).enumerate() {
            let si = &mut s[i * dv..(i + 1) * dv];
            for (j, sv) in si.iter_mut().enumerate() {
                *sv += ki * kv[j];
                o[j] += *sv * qi;
            }
        }
        emit(t, &o);
    }
}

/// The shape of lightning attention ([`lightning_ref`]).
#[derive(Clone, Copy, Debug)]
pub struct LightningShape {
    /// Heads.
    pub n_heads: usize,
    /// Width of a head (queries, keys and values alike).
    pub head_dim: usize,
}

impl LightningShape {
    /// Values per token of the `qkv` rows: each head's `q | k | v`.
    pub fn qkv_width(&self) -> usize {
        3 * self.n_heads * self.head_dim
    }
    /// Floats of one sequence's recurrent state `[n_heads, head_dim, head_dim]`.
    pub fn state_len(&self) -> usize {
        self.n_heads * self.head_dim * self.head_dim
    }
    /// An error unless the shape is usable.
    pub fn check(&self) -> Result<()> {
        if self.n_heads == 0 || self.head_dim == 0 {
            return Err(Error::Invalid(format!(
                "lightning attention: {} heads of {}",
                self.n_heads, self.head_dim
            )));
        }
        Ok(())
    }
}

/// Lightning attention (MiniMax-M1 / MiniMax-Text-01): linear attention with a fixed decay per
/// head, over each segment's rows, continuing from (and updating) its recurrent state
/// `S [n_heads, head_dim, head_dim]`.
///
/// `qkv [n, qkv_width]` holds each token's raw projections, per head `q | k | v`; the op
/// applies SiLU to them. `decay [n_heads]` is `exp(-slope)` of each head. Per token and head:
/// `S ← decay · S + k ⊗ v`; `out = Sᵀq` (no score scale, no normalisation: transformers'
/// blocked form computes the same sums).
pub fn lightning_ref(
    qkv: &[f32],
    decay: &[f32],
    state: &mut [f32],
    lay: SlotLayout,
    out: &mut [f32],
    sh: LightningShape,
    segs: &[RecSeg],
) -> Result<()> {
    sh.check()?;
    let (nh, d) = (sh.n_heads, sh.head_dim);
    let w = sh.qkv_width();
    let n_rows = qkv.len() / w;
    if n_rows * w != qkv.len() || out.len() != n_rows * nh * d || decay.len() != nh {
        return Err(Error::Invalid(format!(
            "lightning: {} values are not rows of {w} that fit the decays and output",
            qkv.len()
        )));
    }
    check_segs("lightning", segs, n_rows, state.len(), lay, sh.state_len())?;
    let silu = |x: f32| x / (1.0 + (-x).exp());
    let (mut q, mut k, mut v) = (vec![0f32; d], vec![0f32; d], vec![0f32; d]);
    for sg in segs {
        let st = &mut state[sg.slot * lay.stride + lay.offset..][..sh.state_len()];
        if sg.fresh {
            st.fill(0.0);
        }
        for t in sg.row0..sg.row0 + sg.n {
            for h in 0..nh {
                let row = &qkv[t * w + h * 3 * d..][..3 * d];
                for i in 0..d {
                    q[i] = silu(row[i]);
                    k[i] = silu(row[d + i]);
                    v[i] = silu(row[2 * d + i]);
                }
                let s = &mut st[h * d * d..(h + 1) * d * d];
                let o = &mut out[(t * nh + h) * d..][..d];
                o.fill(0.0);
                for (i, (&ki, &qi)) in k.iter().zip(&q).enumerate() {
                    let si = &mut s[i * d..(i + 1) * d];
                    for (j, sv) in si.iter_mut().enumerate() {
                        *sv = *sv * decay[h] + ki * v[j];
                        o[j] += *sv * qi;
                    }
                }
            }
        }
    }
    Ok(())
}
