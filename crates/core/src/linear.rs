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
    sh.check()?;
    let (nk, nv, dk, dv) = (sh.n_k_heads, sh.n_v_heads, sh.k_dim, sh.v_dim);
    let w = sh.qkv_width();
    let n_rows = qkv.len() / w;
    if n_rows * w != qkv.len()
        || a.len() != n_rows * nv
        || b.len() != n_rows * nv
        || out.len() != n_rows * nv * dv
        || a_coef.len() != nv
        || dt_bias.len() != nv
    {
        return Err(Error::Invalid(format!(
            "delta_rule: {} values are not rows of {w} that fit the gates and output",
            qkv.len()
        )));
    }
    check_segs("delta_rule", segs, n_rows, state.len(), lay, sh.state_len())?;
    let scale = 1.0 / (dk as f32).sqrt();
    let l2 = |v: &[f32], o: &mut [f32], s: f32| {
        let ss: f32 = v.iter().map(|x| x * x).sum();
        let inv = 1.0 / (ss + 1e-6).sqrt();
        for (o, x) in o.iter_mut().zip(v) {
            *o = x * inv * s;
        }
    };
    let (mut q, mut k, mut kv) = (vec![0f32; dk], vec![0f32; dk], vec![0f32; dv]);
    for sg in segs {
        let st = &mut state[sg.slot * lay.stride + lay.offset..][..sh.state_len()];
        if sg.fresh {
            st.fill(0.0);
        }
        for t in sg.row0..sg.row0 + sg.n {
            let row = &qkv[t * w..(t + 1) * w];
            for h in 0..nv {
                let kh = sh.k_head(h);
                l2(&row[kh * dk..(kh + 1) * dk], &mut q, scale);
                l2(&row[(nk + kh) * dk..(nk + kh + 1) * dk], &mut k, 1.0);
                let v = &row[2 * nk * dk + h * dv..][..dv];
                let g = a_coef[h] * softplus(a[t * nv + h] + dt_bias[h]);
                let beta = 1.0 / (1.0 + (-b[t * nv + h]).exp());
                let decay = g.exp();
                let s = &mut st[h * dk * dv..(h + 1) * dk * dv];
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
                let o = &mut out[(t * nv + h) * dv..][..dv];
                o.fill(0.0);
                for (i, (&ki, &qi)) in k.iter().zip(&q).enumerate() {
                    let si = &mut s[i * dv..(i + 1) * dv];
                    for (j, sv) in si.iter_mut().enumerate() {
                        *sv += ki * kv[j];
                        o[j] += *sv * qi;
                    }
                }
            }
        }
    }
    Ok(())
}
