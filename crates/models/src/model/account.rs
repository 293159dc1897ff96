//! What a model holds and reads, counted: its plan per device, parameter counts, the bytes a
//! decoded token reads, and the activations a batch takes.
use super::{Attn, BlockCost, DevicePlan, Ffn, Model};
use crate::mla::MlaQ;
use hearth_core::{Buf, DType, Tensor};
use hearth_formats::ModelFiles;
use std::collections::HashMap;

impl Model {
    /// Where the model's memory goes, per device: the device's name, what its backend reports
    /// as its memory (None: the host's), the bytes of the weights it holds, and the bytes of
    /// per-sequence state per token of context for the layers whose attention it runs.
    pub fn plan(&self) -> Vec<DevicePlan> {
        let mut p: Vec<DevicePlan> = self
            .devs
            .iter()
            .map(|b| DevicePlan {
                name: b.name(),
                memory: b.memory(),
                weight_bytes: 0,
                in_place_bytes: 0,
                kv_bytes_per_token: 0,
                state_bytes_per_seq: 0,
            })
            .collect();
        let tied = std::ptr::eq(self.output.bytes().as_ptr(), self.tok_embd.bytes().as_ptr())
            && self.dev_out == self.dev_embd;
        if tied {
            // one file range; the output, as a matmul weight, may also have a packed copy
            let be = &self.devs[self.dev_embd];
            p[self.dev_embd].weight_bytes += be
                .weight_bytes(&self.tok_embd)
                .max(be.weight_bytes(&self.output));
            p[self.dev_embd].in_place_bytes += be.weight_bytes_in_place(&self.output);
        }
        let mut add = |d: usize, t: &Tensor| {
            p[d].weight_bytes += self.devs[d].weight_bytes(t);
            p[d].in_place_bytes += self.devs[d].weight_bytes_in_place(t);
        };
        if !tied {
            add(self.dev_embd, &self.tok_embd);
            add(self.dev_out, &self.output);
        }
        for l in &self.layers {
            for (d, t) in l.tensors() {
                add(d, t);
            }
        }
        self.v4_plan(&mut p);
        let (kw, vw) = self.kv_row_words();
        for l in &self.layers {
            match self.slot_len(l) {
                Some(size) => p[l.dev_attn].state_bytes_per_seq += 4 * size,
                None => p[l.dev_attn].kv_bytes_per_token += (kw + vw + self.ik_width(l)) * 4,
            }
        }
        p
    }

    /// What each placeable block takes on device 0 (load the model with every block there,
    /// on a [`hearth_core::Backend`] that uploads nothing, to plan a placement): the embedding
    /// and output (one block, `token_embd`, when tied), then each layer's attention (with its
    /// KV rows or state), FFN (a MoE layer's router and shared experts) and routed experts.
    /// DeepSeek-V4's body, which runs on device 0 only, is one block `body`.
    pub fn block_costs(&self) -> Vec<BlockCost> {
        let be = &self.devs[0];
        let cost = |name: String, ts: &[&Tensor]| BlockCost {
            name,
            weight_bytes: ts.iter().map(|t| be.weight_bytes(t)).sum(),
            in_place_bytes: ts.iter().map(|t| be.weight_bytes_in_place(t)).sum(),
            kv_bytes_per_token: 0,
            state_bytes_per_seq: 0,
        };
        let mut v = Vec::new();
        let tied = std::ptr::eq(self.output.bytes().as_ptr(), self.tok_embd.bytes().as_ptr());
        if tied {
            let mut c = cost("token_embd".into(), &[]);
            c.weight_bytes = be
                .weight_bytes(&self.tok_embd)
                .max(be.weight_bytes(&self.output));
            c.in_place_bytes = be.weight_bytes_in_place(&self.output);
            v.push(c);
        } else {
            v.push(cost("token_embd".into(), &[&self.tok_embd]));
            v.push(cost("output".into(), &[&self.output]));
        }
        if let Some(v4) = &self.v4 {
            let ts = v4.tensors(true);
            let mut c = cost("body".into(), &ts);
            c.kv_bytes_per_token = v4.kv_bytes_per_token();
            c.state_bytes_per_seq = v4.state_bytes_per_seq();
            v.push(c);
        }
        let (kw, vw) = self.kv_row_words();
        for (i, l) in self.layers.iter().enumerate() {
            let attn: Vec<&Tensor> = match &l.attn {
                Attn::Gqa(a) => vec![&a.wq, &a.wk, &a.wv, &a.wo],
                Attn::Mla(m) => m.tensors(),
                Attn::Delta(d) => d.tensors(),
                Attn::Lightning(g) => g.tensors(),
            };
            let mut a = cost(format!("blk.{i}.attn"), &attn);
            match self.slot_len(l) {
                Some(size) => a.state_bytes_per_seq = 4 * size,
                None => a.kv_bytes_per_token = (kw + vw + self.ik_width(l)) * 4,
            }
            v.push(a);
            match &l.ffn {
                Ffn::Dense(m) => {
                    let ts: Vec<&Tensor> = m.tensors().into_iter().collect();
                    v.push(cost(format!("blk.{i}.ffn"), &ts));
                }
                Ffn::Moe(m) => {
                    let mut ts = vec![&m.router];
                    if let Some(s) = &m.shared {
                        ts.extend(s.tensors());
                    }
                    ts.extend(m.shared_gate.iter());
                    v.push(cost(format!("blk.{i}.ffn"), &ts));
                    let ex: Vec<&Tensor> = m
                        .experts
                        .iter()
                        .flat_map(|x| [&x.gate, &x.up, &x.down])
                        .collect();
                    v.push(cost(format!("blk.{i}.ffn_exps"), &ex));
                }
            }
        }
        v
    }

    /// How many layers are mixtures of experts.
    pub fn n_moe_layers(&self) -> usize {
        self.v4.as_ref().map_or(0, |v| v.layers.len())
            + self
                .layers
                .iter()
                .filter(|l| matches!(l.ffn, Ffn::Moe(_)))
                .count()
    }

    /// Parameter count.
    pub fn n_params(&self) -> usize {
        self.embd_and_output(|t| t.numel()) + self.count(|t| t.numel(), true) + self.vector_params()
    }

    /// Parameters a decoded token uses: every expert-free weight plus its routed experts.
    pub fn n_active_params(&self) -> usize {
        self.embd_and_output(|t| t.numel())
            + self.count(|t| t.numel(), false)
            + self.vector_params()
    }

    /// An upper bound on the activation memory one token of a batch takes (its hidden states,
    /// attention and FFN intermediates, and a row of logits), to check a batch size against
    /// the memory before running it.
    pub fn activation_bytes_per_token(&self) -> usize {
        let c = &self.cfg;
        let heads = c.n_head.max(c.n_kv_head);
        let head = match &c.mla {
            Some(m) => (m.nope + m.rope + m.v_dim).max(m.kv_lora_rank + m.rope),
            None => c.head_dim,
        };
        let ffn = match &c.moe {
            Some(e) => c.n_ff.saturating_mul(e.n_used.max(1) + 1),
            None => c.n_ff,
        };
        let floats = 6 * c.n_embd + 4 * heads * head + 3 * ffn + c.n_vocab;
        floats * 4
    }

    /// An estimate of the forward pass's buffers for a batch of `n_tok` tokens that wants
    /// one row of logits (a prompt chunk): per token the hidden states, attention's
    /// projections, the largest FFN's intermediates (a MoE layer's router scores, and its
    /// routed copies of the inputs, gate, up and outputs), and their 16-bit forms for the
    /// integer kernels. Unlike [`Model::activation_bytes_per_token`], which bounds the
    /// worst case, this is what planning (`hearth fit`) adds for the activations.
    pub fn batch_bytes(&self, n_tok: usize) -> usize {
        let c = &self.cfg;
        let e = c.n_embd;
        let (qd, kvd) = match &c.mla {
            Some(m) => (
                c.n_head * (m.nope + m.rope).max(m.v_dim),
                m.kv_lora_rank + m.rope + c.n_head * (m.nope + m.v_dim),
            ),
            None => (c.n_head * c.head_dim, c.n_kv_head * c.head_dim),
        };
        let rows = |t: &Tensor| t.shape.get(t.shape.len().saturating_sub(2)).copied();
        let ffn = self
            .layers
            .iter()
            .map(|l| match &l.ffn {
                Ffn::Dense(m) => 2 * rows(&m.up).unwrap_or(c.n_ff),
                Ffn::Moe(m) => {
                    let k = c.moe.as_ref().map_or(1, |r| r.n_used);
                    let ff = m
                        .experts
                        .first()
                        .and_then(|x| rows(&x.up))
                        .unwrap_or(c.n_ff);
                    let shared = m
                        .shared
                        .as_ref()
                        .map_or(0, |s| 2 * rows(&s.up).unwrap_or(0));
                    m.experts.len() + 2 * k + e + k * (2 * e + 2 * ff) + shared
                }
            })
            .max()
            .unwrap_or(0);
        // f32 values, and about half as many bytes again as 16-bit copies
        let per_tok = (4 * e + 2 * qd + 2 * kvd + ffn) * 4;
        n_tok * (per_tok + per_tok / 2) + c.n_vocab * 4
    }

    /// Bytes of weights read for one decoded token: every matrix once (of MoE layers, only
    /// the `n_used` routed experts), plus one embedding row.
    pub fn bytes_per_token(&self) -> usize {
        self.output.bytes().len()
            + self.tok_embd.row_bytes()
            + self.count(|t| t.bytes().len(), false)
    }

    /// The embedding, and the output matrix unless it is the embedding (tied).
    fn embd_and_output(&self, f: impl Fn(&Tensor) -> usize) -> usize {
        let mut n = f(&self.tok_embd);
        if !std::ptr::eq(self.output.bytes().as_ptr(), self.tok_embd.bytes().as_ptr()) {
            n += f(&self.output);
        }
        n
    }

    /// Sum `f` over the layers' matrices: all experts, or only `n_used` of each MoE layer's.
    fn count(&self, f: impl Fn(&Tensor) -> usize, all_experts: bool) -> usize {
        let mut n = 0;
        self.each_matrix(all_experts, &mut |_, t| n += f(t));
        n
    }

    /// `f(device, matrix)` for the layers' matrices: all experts, or only `n_used` of each
    /// MoE layer's.
    fn each_matrix(&self, all_experts: bool, f: &mut dyn FnMut(usize, &Tensor)) {
        // DeepSeek-V4's body runs on device 0
        for t in self.v4.iter().flat_map(|v| v.tensors(all_experts)) {
            f(0, t);
        }
        for l in &self.layers {
            let attn = match &l.attn {
                Attn::Gqa(a) => vec![&a.wq, &a.wk, &a.wv, &a.wo],
                Attn::Mla(m) => m.tensors(),
                Attn::Delta(d) => d.tensors(),
                Attn::Lightning(g) => g.tensors(),
            };
            for t in attn {
                f(l.dev_attn, t);
            }
            match &l.ffn {
                Ffn::Dense(m) => m.tensors().into_iter().for_each(|t| f(l.dev_ffn, t)),
                Ffn::Moe(m) => {
                    let used = self.cfg.moe.as_ref().map_or(0, |c| c.n_used);
                    f(l.dev_ffn, &m.router);
                    if let Some(s) = &m.shared {
                        s.tensors().into_iter().for_each(|t| f(l.dev_ffn, t));
                    }
                    m.shared_gate.iter().for_each(|t| f(l.dev_ffn, t));
                    let k = if all_experts { m.experts.len() } else { used };
                    for ex in m.experts.iter().take(k) {
                        [&ex.gate, &ex.up, &ex.down]
                            .into_iter()
                            .for_each(|t| f(m.dev_exps, t));
                    }
                }
            }
        }
    }

    /// [`Model::bytes_per_token`] per device (the model's devices, in order): what each one
    /// reads from its memory for a decoded token. A device with memory of its own reads its
    /// copy of the weights ([`hearth_core::Backend::weight_bytes`]: the Vulkan backend keeps the
    /// file's bytes of the types its shaders decode, f32 for the rest); the host reads the
    /// file's bytes (or a packed copy of about their size).
    pub fn bytes_per_token_by_device(&self) -> Vec<usize> {
        let mut v = vec![0; self.devs.len()];
        let held = |d: usize, t: &Tensor| match self.devs[d].memory() {
            Some(_) => self.devs[d].weight_bytes(t),
            None => t.bytes().len(),
        };
        v[self.dev_out] += held(self.dev_out, &self.output);
        v[self.dev_embd] += self.tok_embd.row_bytes();
        self.each_matrix(false, &mut |d, t| v[d] += held(d, t));
        v
    }

    /// Norm weights and biases (kept in f32).
    fn vector_params(&self) -> usize {
        let len = |v: &Option<Buf>| v.as_ref().map_or(0, |v| v.len());
        let mut n = self.output_norm.len() + self.v4.as_ref().map_or(0, |v| v.vector_params());
        for l in &self.layers {
            n += l.attn_norm.len() + l.ffn_norm.len();
            match &l.attn {
                Attn::Gqa(a) => {
                    n += [&a.bq, &a.bk, &a.bv, &a.bo, &a.q_norm, &a.k_norm, &a.sinks]
                        .iter()
                        .map(|v| len(v))
                        .sum::<usize>()
                }
                Attn::Mla(m) => {
                    n += m.kv_norm.len();
                    if let MlaQ::LowRank { norm, .. } = &m.q {
                        n += norm.len();
                    }
                }
                Attn::Delta(d) => n += d.vector_params(),
                Attn::Lightning(g) => n += g.vector_params(),
            }
        }
        n
    }

    /// Weight types and their element counts.
    pub fn quant_mix(&self, files: &ModelFiles) -> Vec<(DType, usize, usize)> {
        let mut m: HashMap<DType, (usize, usize)> = HashMap::new();
        for t in files.tensors.values() {
            let e = m.entry(t.dtype).or_default();
            e.0 += 1;
            e.1 += t.numel();
        }
        let mut v: Vec<_> = m.into_iter().map(|(k, (a, b))| (k, a, b)).collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.2));
        v
    }
}
