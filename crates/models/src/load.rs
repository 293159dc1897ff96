//! Building a model's layers from its tensors: shapes checked, each weight prepared by the
//! backend of the device it is placed on, norm weights and biases decoded into that
//! backend's buffers.
use crate::config::{LightningConfig, LinearConfig, ModelConfig};
use crate::delta::Delta;
use crate::lightning::Lightning;
use crate::mla::{Indexer, Mla, MlaQ};
use crate::model::{Attn, Ffn, Gqa, Layer};
use crate::moe::{Mlp, Moe};
use hearth_core::{Backend, Buf, Error, Expert, Result, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

struct Loader<'a> {
    t: &'a HashMap<String, Tensor>,
    /// Prepares each weight for its kernels (`Backend::prepare`).
    be: &'a dyn Backend,
    /// RMSNorm weights are stored as offsets from 1 (see `ModelConfig::norm_plus_one`).
    plus_one: bool,
}

impl Loader<'_> {
    /// A tensor's values in f32, decoded by the backend.
    fn f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        let mut v = vec![0f32; t.numel()];
        self.be.dequantize(t, &mut v)?;
        Ok(v)
    }
    /// A weight, checked for shape and prepared by the backend.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let mut t = self.raw(name, shape)?;
        self.be.prepare(&mut t);
        Ok(t)
    }
    /// A tensor as stored, checked for shape.
    fn raw(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .t
            .get(name)
            .ok_or_else(|| Error::Format(format!("tensor {name} is missing")))?;
        if t.shape != shape {
            return Err(Error::Format(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                t.shape
            )));
        }
        Ok(t.clone())
    }
    fn opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.t.contains_key(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
    /// A vector, decoded into a buffer of the backend (a norm's weight as the scale it
    /// applies).
    fn vec(&self, name: &str, n: usize) -> Result<Buf> {
        self.be
            .upload_new(&self.norm_scale(name, self.f32(&self.get(name, &[n])?)?))
    }
    fn opt_vec(&self, name: &str, n: usize) -> Result<Option<Buf>> {
        self.opt(name, &[n])?
            .map(|t| self.be.upload_new(&self.norm_scale(name, self.f32(&t)?)))
            .transpose()
    }
    /// Norm weights stored as offsets from 1 become scales; the gated norm of linear
    /// attention is stored as its scale.
    fn norm_scale(&self, name: &str, mut v: Vec<f32>) -> Vec<f32> {
        if self.plus_one && name.ends_with("norm.weight") && !name.ends_with("ssm_norm.weight") {
            v.iter_mut().for_each(|x| *x += 1.0);
        }
        v
    }
    /// Rows of a stored matrix `[rows, cols]` in f32, taken as runs `(start, len)` in order,
    /// as a new matrix prepared by the backend.
    fn gather_rows(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        runs: &[(usize, usize)],
        label: &str,
    ) -> Result<Tensor> {
        let w = self.f32(&self.raw(name, &[rows, cols])?)?;
        let mut out = Vec::with_capacity(runs.iter().map(|r| r.1).sum::<usize>() * cols);
        for &(r0, n) in runs {
            out.extend_from_slice(&w[r0 * cols..(r0 + n) * cols]);
        }
        let mut t = Tensor::from_f32(label, vec![out.len() / cols, cols], &out)?;
        self.be.prepare(&mut t);
        Ok(t)
    }
    /// Host values into a buffer of the backend.
    fn up(&self, v: Option<Vec<f32>>) -> Result<Option<Buf>> {
        v.map(|v| self.be.upload_new(&v)).transpose()
    }
    fn has(&self, name: &str) -> bool {
        self.t.contains_key(name)
    }
    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.t.get(name).map(|t| &t.shape[..])
    }
    /// One of several names a tensor goes by.
    fn vec_any(&self, names: &[String], n: usize) -> Result<Buf> {
        match names.iter().find(|x| self.has(x)) {
            Some(x) => self.vec(x, n),
            None => Err(Error::Format(format!("tensor {} is missing", names[0]))),
        }
    }
    /// Per-expert matrices `[rows, cols]`: slices of a merged 3-D GGUF tensor
    /// `blk.{i}.{stem}.weight`, or HF's separate `blk.{i}.{stem}.{e}.weight`.
    fn experts(
        &self,
        i: usize,
        stem: &str,
        ne: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<Tensor>> {
        let merged = format!("blk.{i}.{stem}.weight");
        if self.has(&merged) {
            let t = self.get(&merged, &[ne, rows, cols])?;
            (0..ne).map(|e| t.slice_outer(e)).collect()
        } else {
            (0..ne)
                .map(|e| self.get(&format!("blk.{i}.{stem}.{e}.weight"), &[rows, cols]))
                .collect()
        }
    }
    /// Per-expert bias vectors from a `[n_expert, len]` tensor.
    fn expert_bias(&self, name: &str, ne: usize, len: usize) -> Result<Option<Vec<Vec<f32>>>> {
        let Some(t) = self.opt(name, &[ne, len])? else {
            return Ok(None);
        };
        Ok(Some(
            self.f32(&t)?.chunks(len).map(|c| c.to_vec()).collect(),
        ))
    }
}

/// A row-major `[rows, cols]` f32 matrix transposed into a tensor of shape `[cols, rows]`.
fn transposed(name: &str, data: &[f32], rows: usize, cols: usize) -> Result<Tensor> {
    let mut t = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = data[r * cols + c];
        }
    }
    Tensor::from_f32(name, vec![cols, rows], &t)
}

/// The devices of a model's weights: backends, and where each block goes (called with
/// `token_embd`, `output`, `blk.{i}.attn`, `blk.{i}.ffn` and `blk.{i}.ffn_exps`).
pub(crate) struct Placer<'a> {
    pub devs: &'a [Arc<dyn Backend>],
    pub place: &'a dyn Fn(&str, usize) -> usize,
    pub n_layer: usize,
    /// RMSNorm weights are stored as offsets from 1.
    pub plus_one: bool,
}

impl Placer<'_> {
    /// The device of a block (an index into `devs`; past the end is an error).
    pub fn dev(&self, block: &str) -> Result<usize> {
        let d = (self.place)(block, self.n_layer);
        if d >= self.devs.len() {
            return Err(Error::Invalid(format!(
                "{block} is placed on device {d}, but there are {} devices",
                self.devs.len()
            )));
        }
        Ok(d)
    }
    fn loader<'t>(&'t self, t: &'t HashMap<String, Tensor>, d: usize) -> Loader<'t> {
        Loader {
            t,
            be: &*self.devs[d],
            plus_one: self.plus_one,
        }
    }
}

/// A tensor as stored, checked for shape, prepared by device `d`'s backend.
pub(crate) fn weight(
    t: &HashMap<String, Tensor>,
    pl: &Placer,
    d: usize,
    name: &str,
    shape: &[usize],
    prepare: bool,
) -> Result<Tensor> {
    let l = pl.loader(t, d);
    if prepare {
        l.get(name, shape)
    } else {
        l.raw(name, shape)
    }
}

/// A vector decoded into device `d`'s buffer.
pub(crate) fn vector(
    t: &HashMap<String, Tensor>,
    pl: &Placer,
    d: usize,
    name: &str,
    n: usize,
) -> Result<Buf> {
    pl.loader(t, d).vec(name, n)
}

pub(crate) fn load_layer(
    t: &HashMap<String, Tensor>,
    pl: &Placer,
    cfg: &ModelConfig,
    i: usize,
) -> Result<Layer> {
    let e = cfg.n_embd;
    let (dev_attn, dev_ffn) = (
        pl.dev(&format!("blk.{i}.attn"))?,
        pl.dev(&format!("blk.{i}.ffn"))?,
    );
    let l = &pl.loader(t, dev_attn);
    let n = |p: &str| format!("blk.{i}.{p}");
    let attn = match &cfg.mla {
        None if cfg.is_lightning(i) => {
            let w = cfg.n_head * cfg.head_dim;
            let decay = LightningConfig::decays(cfg.n_head, i, cfg.n_layer);
            Attn::Lightning(Lightning {
                qkv: l.get(&n("attn_qkv.weight"), &[3 * w, e])?,
                gate: l.get(&n("attn_gate.weight"), &[w, e])?,
                norm: l.vec(&n("attn_lightning_norm.weight"), w)?,
                out: l.get(&n("attn_output.weight"), &[e, w])?,
                decay: l.be.upload_new(&decay)?,
            })
        }
        None if cfg.is_linear(i) => {
            let lc = cfg
                .linear
                .as_ref()
                .expect("linear layers have a linear config");
            Attn::Delta(load_delta(l, e, lc, i)?)
        }
        None => {
            let hd = cfg.head_dim;
            let (qd, kvd) = (cfg.n_head * hd, cfg.n_kv_head * hd);
            let norm = |name: &str| -> Result<Option<Buf>> {
                match l.shape(name) {
                    Some(s) if s.len() == 1 && (s[0] == hd || s[0] == qd || s[0] == kvd) => {
                        l.opt_vec(name, s[0])
                    }
                    Some(s) => Err(Error::Format(format!("tensor {name} has shape {s:?}"))),
                    None => Ok(None),
                }
            };
            let q_norm = norm(&n("attn_q_norm.weight"))?;
            let k_norm = norm(&n("attn_k_norm.weight"))?;
            if q_norm
                .as_ref()
                .is_some_and(|w| w.len() != hd && w.len() != qd)
                || k_norm
                    .as_ref()
                    .is_some_and(|w| w.len() != hd && w.len() != kvd)
            {
                return Err(Error::Format(format!(
                    "layer {i}: q/k norm widths do not fit the heads"
                )));
            }
            // gated attention's projection holds each head's query and gate
            let q_rows = if cfg.attn_gate { 2 * qd } else { qd };
            Attn::Gqa(Gqa {
                wq: l.get(&n("attn_q.weight"), &[q_rows, e])?,
                wk: l.get(&n("attn_k.weight"), &[kvd, e])?,
                wv: l.get(&n("attn_v.weight"), &[kvd, e])?,
                wo: l.get(&n("attn_output.weight"), &[e, qd])?,
                bq: l.opt_vec(&n("attn_q.bias"), qd)?,
                bk: l.opt_vec(&n("attn_k.bias"), kvd)?,
                bv: l.opt_vec(&n("attn_v.bias"), kvd)?,
                bo: l.opt_vec(&n("attn_output.bias"), e)?,
                q_norm,
                k_norm,
                sinks: l.opt_vec(&n("attn_sinks.weight"), cfg.n_head)?,
            })
        }
        Some(m) => Attn::Mla(load_mla(l, cfg, m, i)?),
    };
    let attn_norm = l.vec(&n("attn_norm.weight"), e)?;
    let l = &pl.loader(t, dev_ffn);
    let ffn = if l.has(&n("ffn_gate_inp.weight")) {
        let dev_exps = pl.dev(&format!("blk.{i}.ffn_exps"))?;
        Ffn::Moe(load_moe(l, &pl.loader(t, dev_exps), dev_exps, cfg, i)?)
    } else {
        let ff = cfg.n_ff;
        Ffn::Dense(Mlp {
            gate: l.get(&n("ffn_gate.weight"), &[ff, e])?,
            up: l.get(&n("ffn_up.weight"), &[ff, e])?,
            down: l.get(&n("ffn_down.weight"), &[e, ff])?,
        })
    };
    Ok(Layer {
        attn_norm,
        dev_attn,
        dev_ffn,
        attn,
        // glm4moe and gpt-oss GGUF files call the pre-FFN norm post_attention_norm
        ffn_norm: l.vec_any(&[n("ffn_norm.weight"), n("post_attention_norm.weight")], e)?,
        ffn,
    })
}

/// A Gated DeltaNet layer. Qwen3-Next's HF checkpoints interleave q, k, v and z (and b and
/// a) per key head in one projection; their rows are regrouped here into the layout
/// llama.cpp's converter writes (`attn_qkv`, `attn_gate`, and b, a apart).
fn load_delta(l: &Loader, e: usize, lc: &LinearConfig, i: usize) -> Result<Delta> {
    let n = |p: &str| format!("blk.{i}.{p}");
    let sh = lc.shape();
    let (nk, nv, dk, dv) = (sh.n_k_heads, sh.n_v_heads, sh.k_dim, sh.v_dim);
    let r = nv / nk;
    let ch = sh.qkv_width();
    let (qkv, z) = if l.has(&n("ssm_in_hf.weight")) {
        let per = 2 * dk + 2 * r * dv;
        let name = n("ssm_in_hf.weight");
        let part = |off: usize, len: usize| -> Vec<(usize, usize)> {
            (0..nk).map(|h| (h * per + off, len)).collect()
        };
        let mut qkv_runs = part(0, dk);
        qkv_runs.extend(part(dk, dk));
        qkv_runs.extend(part(2 * dk, r * dv));
        let z_runs = part(2 * dk + r * dv, r * dv);
        (
            l.gather_rows(&name, nk * per, e, &qkv_runs, &n("attn_qkv.weight"))?,
            l.gather_rows(&name, nk * per, e, &z_runs, &n("attn_gate.weight"))?,
        )
    } else {
        (
            l.get(&n("attn_qkv.weight"), &[ch, e])?,
            l.get(&n("attn_gate.weight"), &[nv * dv, e])?,
        )
    };
    let ba = [n("ssm_ba_hf.weight"), n("ssm_ba.weight")]
        .into_iter()
        .find(|x| l.has(x));
    let (b, a) = match ba {
        Some(name) => {
            // per key head: its value heads' b, then their a
            let b_runs: Vec<_> = (0..nk).map(|h| (h * 2 * r, r)).collect();
            let a_runs: Vec<_> = (0..nk).map(|h| (h * 2 * r + r, r)).collect();
            (
                l.gather_rows(&name, 2 * nv, e, &b_runs, &n("ssm_beta.weight"))?,
                l.gather_rows(&name, 2 * nv, e, &a_runs, &n("ssm_alpha.weight"))?,
            )
        }
        None => (
            l.get(&n("ssm_beta.weight"), &[nv, e])?,
            l.get(&n("ssm_alpha.weight"), &[nv, e])?,
        ),
    };
    // the convolution: [channels, 1, kernel] in HF files, [channels, kernel] in GGUF
    let cname = n("ssm_conv1d.weight");
    let ct =
        l.t.get(&cname)
            .ok_or_else(|| Error::Format(format!("tensor {cname} is missing")))?;
    let k = lc.conv_kernel;
    if ct.shape != [ch, k] && ct.shape != [ch, 1, k] {
        return Err(Error::Format(format!(
            "tensor {cname} has shape {:?}, expected [{ch}, {k}]",
            ct.shape
        )));
    }
    let conv = l.be.upload_new(&l.f32(ct)?)?;
    let a_coef = if l.has(&n("ssm_a_log")) {
        let v = l.f32(&l.raw(&n("ssm_a_log"), &[nv])?)?;
        l.be.upload_new(&v.iter().map(|x| -x.exp()).collect::<Vec<_>>())?
    } else {
        l.be.upload_new(&l.f32(&l.raw(&n("ssm_a"), &[nv])?)?)?
    };
    Ok(Delta {
        qkv,
        z,
        b,
        a,
        conv,
        a_coef,
        dt_bias: l.vec(&n("ssm_dt.bias"), nv)?,
        norm: l.vec(&n("ssm_norm.weight"), dv)?,
        out: l.get(&n("ssm_out.weight"), &[e, nv * dv])?,
    })
}

fn load_mla(l: &Loader, cfg: &ModelConfig, m: &crate::config::MlaConfig, i: usize) -> Result<Mla> {
    let e = cfg.n_embd;
    let nh = cfg.n_head;
    let n = |p: &str| format!("blk.{i}.{p}");
    let (kvl, nope, rope, vd) = (m.kv_lora_rank, m.nope, m.rope, m.v_dim);
    let qk = nope + rope;
    let q = match m.q_lora_rank {
        Some(r) => MlaQ::LowRank {
            a: l.get(&n("attn_q_a.weight"), &[r, e])?,
            norm: l.vec(&n("attn_q_a_norm.weight"), r)?,
            b: l.get(&n("attn_q_b.weight"), &[nh * qk, r])?,
        },
        None => MlaQ::Full(l.get(&n("attn_q.weight"), &[nh * qk, e])?),
    };
    let (k_b, v_b) = if l.has(&n("attn_k_b.weight")) {
        // newer GGUF files: kv_b already split per head, k_b stored transposed
        let kb = l.get(&n("attn_k_b.weight"), &[nh, kvl, nope])?;
        let vb = l.get(&n("attn_v_b.weight"), &[nh, vd, kvl])?;
        (
            (0..nh)
                .map(|h| kb.slice_outer(h))
                .collect::<Result<Vec<_>>>()?,
            (0..nh)
                .map(|h| vb.slice_outer(h))
                .collect::<Result<Vec<_>>>()?,
        )
    } else {
        // HF and older GGUF files: kv_b [n_head * (nope + v), kv_lora]; each head's value rows
        // are a view, its key rows are transposed once here for the absorbed query
        let kvb = l.get(&n("attn_kv_b.weight"), &[nh * (nope + vd), kvl])?;
        let mut kb = Vec::with_capacity(nh);
        let mut vb = Vec::with_capacity(nh);
        for h in 0..nh {
            let rows = kvb.rows(h * (nope + vd), nope)?;
            kb.push(transposed(
                &format!("{}.k_b[{h}]", kvb.name),
                &l.f32(&rows)?,
                nope,
                kvl,
            )?);
            let mut v = kvb.rows(h * (nope + vd) + nope, vd)?;
            v.name = format!("{}.v_b[{h}]", kvb.name);
            vb.push(v);
        }
        (kb, vb)
    };
    Ok(Mla {
        q,
        kv_a: l.get(&n("attn_kv_a_mqa.weight"), &[kvl + rope, e])?,
        kv_norm: l.vec(&n("attn_kv_a_norm.weight"), kvl)?,
        k_b,
        v_b,
        wo: l.get(&n("attn_output.weight"), &[e, nh * vd])?,
        idx: match &m.dsa {
            Some(d) if d.own[i] => Some(Box::new(load_indexer(l, cfg, m, d, i)?)),
            _ => None,
        },
    })
}

/// DSA's lightning indexer of layer `i`.
fn load_indexer(
    l: &Loader,
    cfg: &ModelConfig,
    m: &crate::config::MlaConfig,
    d: &crate::config::DsaConfig,
    i: usize,
) -> Result<Indexer> {
    let (e, nh, di) = (cfg.n_embd, d.n_head, d.head_dim);
    let n = |p: &str| format!("blk.{i}.indexer.{p}");
    let q_lora = m
        .q_lora_rank
        .ok_or_else(|| Error::Format("DSA needs the low-rank query (q_lora_rank)".into()))?;
    if di < m.rope {
        return Err(Error::Format(format!(
            "DSA: indexer heads of {di} are narrower than the rotary part ({})",
            m.rope
        )));
    }
    // LayerNorm(x) = RMSNorm(x - mean(x)) with the same weight, plus its bias; x - mean(x) is
    // a linear map of x, so it is folded into the key projection (in f64)
    let name = n("attn_k.weight");
    let w = l.f32(&l.raw(&name, &[di, e])?)?;
    let mut mean = vec![0f64; e];
    for r in 0..di {
        for (mc, &x) in mean.iter_mut().zip(&w[r * e..(r + 1) * e]) {
            *mc += x as f64;
        }
    }
    let centred: Vec<f32> = (0..di * e)
        .map(|k| (w[k] as f64 - mean[k % e] / di as f64) as f32)
        .collect();
    let mut k = Tensor::from_f32(&name, vec![di, e], &centred)?;
    l.be.prepare(&mut k);
    Ok(Indexer {
        q_b: l.get(&n("attn_q_b.weight"), &[nh * di, q_lora])?,
        k,
        k_norm: l.vec(&n("k_norm.weight"), di)?,
        k_bias: l.vec(&n("k_norm.bias"), di)?,
        proj: l.get(&n("proj.weight"), &[nh, e])?,
    })
}

/// A MoE layer: router and shared expert from `l`, routed experts from `lx` (device `dx`).
fn load_moe(l: &Loader, lx: &Loader, dx: usize, cfg: &ModelConfig, i: usize) -> Result<Moe> {
    let e = cfg.n_embd;
    let n = |p: &str| format!("blk.{i}.{p}");
    let mc = cfg.moe.as_ref().ok_or_else(|| {
        Error::Format(format!(
            "layer {i} has a router but the metadata names no experts"
        ))
    })?;
    let ne = mc.n_expert;
    let router = l.get(&n("ffn_gate_inp.weight"), &[ne, e])?;
    let gu_hf = n("ffn_gate_up_exps_hf.weight");
    let experts: Vec<Expert> = if lx.has(&gu_hf) {
        // gpt-oss HF layout: gate_up [E, n_embd, 2*ff] with gate/up interleaved by column,
        // down [E, ff, n_embd]; both are transposed into [out, in] matrices here.
        let s = lx.shape(&gu_hf).unwrap_or(&[]).to_vec();
        if s.len() != 3 || s[0] != ne || s[1] != e || !s[2].is_multiple_of(2) {
            return Err(Error::Format(format!("tensor {gu_hf} has shape {s:?}")));
        }
        let ff = s[2] / 2;
        let gu = lx.f32(&lx.raw(&gu_hf, &[ne, e, 2 * ff])?)?;
        let down = lx.f32(&lx.raw(&n("ffn_down_exps_hf.weight"), &[ne, ff, e])?)?;
        let gub = lx.expert_bias(&n("ffn_gate_up_exps_hf.bias"), ne, 2 * ff)?;
        let db = lx.expert_bias(&n("ffn_down_exps.bias"), ne, e)?;
        (0..ne)
            .map(|x| {
                let m = &gu[x * e * 2 * ff..(x + 1) * e * 2 * ff];
                let (mut g, mut u) = (vec![0f32; ff * e], vec![0f32; ff * e]);
                for r in 0..e {
                    for f in 0..ff {
                        g[f * e + r] = m[r * 2 * ff + 2 * f];
                        u[f * e + r] = m[r * 2 * ff + 2 * f + 1];
                    }
                }
                let d = &down[x * ff * e..(x + 1) * ff * e];
                let b = gub.as_ref().map(|b| &b[x]);
                let mut gate = Tensor::from_f32(&format!("{gu_hf}[{x}].gate"), vec![ff, e], &g)?;
                let mut up = Tensor::from_f32(&format!("{gu_hf}[{x}].up"), vec![ff, e], &u)?;
                let mut down = transposed(&format!("blk.{i}.ffn_down_exps_hf[{x}]"), d, ff, e)?;
                for w in [&mut gate, &mut up, &mut down] {
                    lx.be.prepare(w);
                }
                Ok(Expert {
                    gate,
                    up,
                    down,
                    gate_b: lx.up(b.map(|b| b.iter().step_by(2).copied().collect()))?,
                    up_b: lx.up(b.map(|b| b.iter().skip(1).step_by(2).copied().collect()))?,
                    down_b: lx.up(db.as_ref().map(|d| d[x].clone()))?,
                })
            })
            .collect::<Result<_>>()?
    } else {
        let ff = l
            .shape(&n("ffn_gate_exps.weight"))
            .filter(|s| s.len() == 3)
            .map(|s| s[1])
            .or_else(|| lx.shape(&n("ffn_gate_exps.0.weight")).map(|s| s[0]))
            .ok_or_else(|| {
                Error::Format(format!("tensor {} is missing", n("ffn_gate_exps.weight")))
            })?;
        let gates = lx.experts(i, "ffn_gate_exps", ne, ff, e)?;
        let ups = lx.experts(i, "ffn_up_exps", ne, ff, e)?;
        let downs = lx.experts(i, "ffn_down_exps", ne, e, ff)?;
        let gb = lx.expert_bias(&n("ffn_gate_exps.bias"), ne, ff)?;
        let ub = lx.expert_bias(&n("ffn_up_exps.bias"), ne, ff)?;
        let db = lx.expert_bias(&n("ffn_down_exps.bias"), ne, e)?;
        gates
            .into_iter()
            .zip(ups)
            .zip(downs)
            .enumerate()
            .map(|(x, ((gate, up), down))| {
                Ok(Expert {
                    gate,
                    up,
                    down,
                    gate_b: lx.up(gb.as_ref().map(|b| b[x].clone()))?,
                    up_b: lx.up(ub.as_ref().map(|b| b[x].clone()))?,
                    down_b: lx.up(db.as_ref().map(|b| b[x].clone()))?,
                })
            })
            .collect::<Result<_>>()?
    };
    let shared = match l.shape(&n("ffn_gate_shexp.weight")) {
        Some(s) if s.len() == 2 => {
            let sff = s[0];
            Some(Mlp {
                gate: l.get(&n("ffn_gate_shexp.weight"), &[sff, e])?,
                up: l.get(&n("ffn_up_shexp.weight"), &[sff, e])?,
                down: l.get(&n("ffn_down_shexp.weight"), &[e, sff])?,
            })
        }
        Some(s) => return Err(Error::Format(format!("ffn_gate_shexp has shape {s:?}"))),
        None => None,
    };
    Ok(Moe {
        router,
        router_b: l.opt_vec(&n("ffn_gate_inp.bias"), ne)?,
        score_b: l.opt_vec(&n("exp_probs_b.bias"), ne)?,
        experts,
        shared,
        shared_gate: l.opt(&n("ffn_gate_inp_shexp.weight"), &[1, e])?,
        dev_exps: dx,
    })
}
