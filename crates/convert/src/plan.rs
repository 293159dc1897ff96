//! Which type each tensor gets: llama.cpp's file types ("mixes" such as Q4_K_M) and its
//! per-tensor rules, so that `hearth quantize M out Q4_K_M` picks the same types per tensor
//! as `llama-quantize M out Q4_K_M`.
//!
//! The facts (file type ids, the default type of each mix, which tensors are bumped to more
//! bits, the fallbacks for rows that are not whole blocks) are llama.cpp's, from
//! `llama_ftype_get_default_type`, `tensor_allows_quantization`, `llama_tensor_get_type_impl`
//! and `tensor_type_fallback` in src/llama-quant.cpp.
use hearth_core::{DType, Error, Result};

/// A llama.cpp file type (`general.file_type`): a default tensor type plus per-tensor rules.
#[allow(non_camel_case_types, missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ftype {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q2_K_S,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
    IQ2_XXS,
    IQ2_XS,
    IQ2_S,
    IQ2_M,
    IQ3_XXS,
    IQ3_XS,
    IQ3_S,
    IQ3_M,
    IQ1_S,
    IQ1_M,
    MXFP4_MOE,
}

/// (file type, name, `general.file_type` id, default tensor type). From llama.h's
/// `llama_ftype` and llama-quant.cpp's `llama_ftype_get_default_type`.
const FTYPES: &[(Ftype, &str, u32, DType)] = &[
    (Ftype::F32, "F32", 0, DType::F32),
    (Ftype::F16, "F16", 1, DType::F16),
    (Ftype::Q4_0, "Q4_0", 2, DType::Q4_0),
    (Ftype::Q4_1, "Q4_1", 3, DType::Q4_1),
    (Ftype::Q8_0, "Q8_0", 7, DType::Q8_0),
    (Ftype::Q5_0, "Q5_0", 8, DType::Q5_0),
    (Ftype::Q5_1, "Q5_1", 9, DType::Q5_1),
    (Ftype::Q2_K, "Q2_K", 10, DType::Q2_K),
    (Ftype::Q3_K_S, "Q3_K_S", 11, DType::Q3_K),
    (Ftype::Q3_K_M, "Q3_K_M", 12, DType::Q3_K),
    (Ftype::Q3_K_L, "Q3_K_L", 13, DType::Q3_K),
    (Ftype::Q4_K_S, "Q4_K_S", 14, DType::Q4_K),
    (Ftype::Q4_K_M, "Q4_K_M", 15, DType::Q4_K),
    (Ftype::Q5_K_S, "Q5_K_S", 16, DType::Q5_K),
    (Ftype::Q5_K_M, "Q5_K_M", 17, DType::Q5_K),
    (Ftype::Q6_K, "Q6_K", 18, DType::Q6_K),
    (Ftype::IQ2_XXS, "IQ2_XXS", 19, DType::IQ2_XXS),
    (Ftype::IQ2_XS, "IQ2_XS", 20, DType::IQ2_XS),
    (Ftype::Q2_K_S, "Q2_K_S", 21, DType::Q2_K),
    (Ftype::IQ3_XS, "IQ3_XS", 22, DType::IQ3_S),
    (Ftype::IQ3_XXS, "IQ3_XXS", 23, DType::IQ3_XXS),
    (Ftype::IQ1_S, "IQ1_S", 24, DType::IQ1_S),
    (Ftype::IQ4_NL, "IQ4_NL", 25, DType::IQ4_NL),
    (Ftype::IQ3_S, "IQ3_S", 26, DType::IQ3_S),
    (Ftype::IQ3_M, "IQ3_M", 27, DType::IQ3_S),
    (Ftype::IQ2_S, "IQ2_S", 28, DType::IQ2_XS),
    (Ftype::IQ2_M, "IQ2_M", 29, DType::IQ2_S),
    (Ftype::IQ4_XS, "IQ4_XS", 30, DType::IQ4_XS),
    (Ftype::IQ1_M, "IQ1_M", 31, DType::IQ1_M),
    (Ftype::BF16, "BF16", 32, DType::BF16),
    (Ftype::MXFP4_MOE, "MXFP4_MOE", 38, DType::MXFP4),
];

/// llama-quantize's aliases: a bare k-quant name means its _M mix.
const ALIASES: &[(&str, Ftype)] = &[
    ("Q3_K", Ftype::Q3_K_M),
    ("Q4_K", Ftype::Q4_K_M),
    ("Q5_K", Ftype::Q5_K_M),
];

impl Ftype {
    fn row(self) -> &'static (Ftype, &'static str, u32, DType) {
        FTYPES
            .iter()
            .find(|r| r.0 == self)
            .expect("every Ftype is in FTYPES")
    }
    /// Parse a type name as llama-quantize does (case-insensitive; Q4_K means Q4_K_M).
    pub fn parse(s: &str) -> Result<Ftype> {
        FTYPES
            .iter()
            .find(|r| r.1.eq_ignore_ascii_case(s))
            .map(|r| r.0)
            .or_else(|| {
                ALIASES
                    .iter()
                    .find(|a| a.0.eq_ignore_ascii_case(s))
                    .map(|a| a.1)
            })
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown quantization type {s:?}; the types are {}",
                    FTYPES.iter().map(|r| r.1).collect::<Vec<_>>().join(", ")
                ))
            })
    }
    /// The name (`Q4_K_M`).
    pub fn name(self) -> &'static str {
        self.row().1
    }
    /// The `general.file_type` id.
    pub fn id(self) -> u32 {
        self.row().2
    }
    /// The type most tensors get.
    pub fn default_type(self) -> DType {
        self.row().3
    }
}

/// Broad tensor roles the rules distinguish (llama-quant.cpp's `tensor_get_category`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// output.weight
    Output,
    /// token_embd.weight, per_layer_token_embd.weight
    TokenEmbd,
    /// fused q/k/v
    AttnQkv,
    /// MLA's kv_b
    AttnKvB,
    /// attn_v
    AttnV,
    /// attn_k
    AttnK,
    /// attn_q
    AttnQ,
    /// attn_output
    AttnOutput,
    /// ffn_up*
    FfnUp,
    /// ffn_gate*
    FfnGate,
    /// ffn_down*
    FfnDown,
    /// anything else
    Other,
}

/// The category of a GGUF tensor name.
pub fn category(name: &str) -> Category {
    use Category::*;
    if name == "output.weight" {
        return Output;
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return TokenEmbd;
    }
    let pats = [
        ("attn_qkv.weight", AttnQkv),
        ("attn_kv_b.weight", AttnKvB),
        ("attn_v.weight", AttnV),
        ("attn_k.weight", AttnK),
        ("attn_q.weight", AttnQ),
        ("attn_output.weight", AttnOutput),
        ("ffn_up", FfnUp),
        ("ffn_gate", FfnGate),
        ("ffn_down", FfnDown),
    ];
    pats.iter()
        .find(|(p, _)| name.contains(p))
        .map_or(Other, |p| p.1)
}

fn is_attn_v(c: Category) -> bool {
    matches!(c, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
}

/// Whether llama-quantize would quantize this tensor at all (2D+ weights, not norms, not
/// routers, not the small special tensors it lists).
pub fn allows_quantization(name: &str, shape: &[usize]) -> bool {
    // ggml_n_dims: dimensions up to the last one above 1 (shape here is outermost first)
    let n_dims = shape
        .iter()
        .rev()
        .rposition(|&d| d > 1)
        .map_or(1, |i| i + 1);
    if n_dims < 2 || !name.ends_with("weight") {
        return false;
    }
    const SKIP: &[&str] = &[
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
    ];
    name != "position_embd.weight"
        && name != "token_types.weight"
        && !SKIP.iter().any(|s| name.contains(s))
}

/// The model facts the rules look at.
#[derive(Clone, Debug, Default)]
pub struct ModelFacts {
    /// `general.architecture`
    pub arch: String,
    /// layers (`{arch}.block_count`)
    pub n_layer: usize,
    /// query heads per kv head
    pub n_gqa: usize,
    /// experts (0 or 1 for dense models)
    pub n_expert: usize,
    /// whether the model has no separate output.weight (token_embd serves as the output)
    pub tied_embeddings: bool,
    /// number of attn_v-like tensors
    pub n_attention_wv: usize,
}

/// Chooses each tensor's type, in file order (the rules count attn_v and ffn tensors as
/// they go, as llama.cpp does).
pub struct Planner {
    ftype: Ftype,
    facts: ModelFacts,
    overrides: Vec<(regex::Regex, DType)>,
    has_imatrix: bool,
    pure: bool,
    i_attention_wv: usize,
    i_ffn_down: usize,
    i_ffn_gate: usize,
    i_ffn_up: usize,
    /// Tensors that fell back to another type because their rows are not whole blocks.
    pub n_fallback: usize,
}

impl Planner {
    /// A planner for `ftype` on a model with `facts`. `overrides` are `--tensor-type` rules
    /// (first match wins); `pure` disables the mix rules (every tensor gets the default type).
    pub fn new(
        ftype: Ftype,
        facts: ModelFacts,
        overrides: Vec<(regex::Regex, DType)>,
        has_imatrix: bool,
        pure: bool,
    ) -> Planner {
        Planner {
            ftype,
            facts,
            overrides,
            has_imatrix,
            pure,
            i_attention_wv: 0,
            i_ffn_down: 0,
            i_ffn_gate: 0,
            i_ffn_up: 0,
            n_fallback: 0,
        }
    }

    /// The type for tensor `name` of `shape` (outermost first) stored now as `src`.
    pub fn choose(&mut self, name: &str, shape: &[usize], src: DType) -> Result<DType> {
        if !allows_quantization(name, shape) {
            return Ok(src);
        }
        let default = self.ftype.default_type();
        if !default.is_quantized() {
            return Ok(default);
        }
        let mut t = default;
        let mut manual = false;
        if let Some((_, ty)) = self.overrides.iter().find(|(re, _)| re.is_match(name)) {
            t = *ty;
            manual = true;
        }
        if !manual && !self.pure {
            t = self.rules(t, name, shape, category(name))?;
        }
        Ok(self.fallback(t, shape))
    }

    fn use_more_bits(i: usize, n: usize) -> bool {
        let (i, n) = (i as i64, n as i64);
        i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
    }

    fn layer_of(&self, counter: usize, name: &str) -> Result<(usize, usize)> {
        let n = self.facts.n_layer;
        if self.facts.n_expert > 1 {
            let i = name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or_else(|| Error::Invalid(format!("cannot tell the layer of tensor {name}")))?;
            if i >= n {
                return Err(Error::Invalid(format!("tensor {name}: layer {i} of {n}")));
            }
            return Ok((i, n));
        }
        Ok((counter, n))
    }

    fn rules(&mut self, mut t: DType, name: &str, shape: &[usize], cat: Category) -> Result<DType> {
        use Category::*;
        use DType as D;
        use Ftype as F;
        let f = self.ftype;
        let gqa = self.facts.n_gqa;
        let nexp = self.facts.n_expert;
        let falcon = self.facts.arch == "falcon";
        let is_70b = self.facts.arch == "llama" && self.facts.n_layer == 80;
        let iq12 = matches!(
            f,
            F::IQ2_XXS | F::IQ2_XS | F::IQ1_S | F::IQ2_S | F::IQ2_M | F::IQ1_M
        );
        if cat == Output || (self.facts.tied_embeddings && cat == TokenEmbd) {
            let nx = *shape.last().unwrap_or(&0);
            if f == F::MXFP4_MOE || falcon || !nx.is_multiple_of(t.block_size()) {
                t = D::Q8_0;
            } else if matches!(
                f,
                F::IQ2_XXS | F::IQ2_XS | F::IQ3_XXS | F::IQ1_S | F::IQ2_S | F::IQ2_M | F::IQ1_M
            ) {
                t = D::Q5_K;
            } else if t != D::Q8_0 {
                t = D::Q6_K;
            }
        } else if f == F::MXFP4_MOE {
            // expert tensors (3D) to MXFP4, everything else to Q8_0; on bailingmoe3 only the
            // experts' ffn tensors (its MLA projections are 3D too)
            let experts = shape.len() >= 3 && shape[shape.len() - 3] > 1;
            let ffn = matches!(cat, FfnUp | FfnGate | FfnDown);
            t = if experts && (self.facts.arch != "bailingmoe3" || ffn) {
                D::MXFP4
            } else {
                D::Q8_0
            };
        } else if cat == TokenEmbd {
            if matches!(f, F::IQ2_XXS | F::IQ2_XS | F::IQ1_S | F::IQ1_M) {
                t = D::Q2_K;
            } else if matches!(f, F::IQ2_S | F::IQ2_M | F::IQ3_XXS) {
                t = D::IQ3_S;
            }
        } else if iq12 {
            if is_attn_v(cat) {
                t = if gqa >= 4 || nexp >= 4 {
                    D::Q4_K
                } else if matches!(f, F::IQ2_S | F::IQ2_M) {
                    D::IQ3_S
                } else {
                    D::Q2_K
                };
                self.i_attention_wv += 1;
            } else if nexp == 8 && cat == AttnK {
                t = D::Q4_K;
            } else if cat == FfnDown {
                if self.i_ffn_down < self.facts.n_layer / 8 {
                    t = if matches!(f, F::IQ2_S | F::IQ2_M) {
                        D::IQ3_S
                    } else {
                        D::Q2_K
                    };
                }
                self.i_ffn_down += 1;
            } else if cat == AttnOutput {
                if nexp == 8 {
                    t = D::Q5_K;
                } else if matches!(f, F::IQ1_S | F::IQ1_M) {
                    t = D::IQ2_XXS;
                } else if matches!(f, F::IQ2_S | F::IQ2_M) {
                    t = D::IQ3_S;
                }
            }
        } else if is_attn_v(cat) {
            let (i, n) = (self.i_attention_wv, self.facts.n_attention_wv);
            match f {
                F::Q2_K => t = if gqa >= 4 { D::Q4_K } else { D::Q3_K },
                F::Q2_K_S if gqa >= 4 => t = D::Q4_K,
                F::IQ3_XXS => {
                    t = if gqa >= 4 {
                        D::Q4_K
                    } else if !self.has_imatrix {
                        D::IQ3_S
                    } else {
                        D::IQ3_XXS
                    }
                }
                F::IQ3_XS | F::IQ3_S if gqa >= 4 => t = D::Q4_K,
                F::IQ3_M => t = D::Q4_K,
                F::Q3_K_M => t = if i < 2 { D::Q5_K } else { D::Q4_K },
                F::Q3_K_L => t = D::Q5_K,
                F::IQ4_NL | F::IQ4_XS if gqa >= 4 => t = D::Q5_K,
                F::Q4_K_M | F::Q5_K_M if Self::use_more_bits(i, n) => t = D::Q6_K,
                F::Q4_K_S if i < 4 => t = D::Q5_K,
                _ => {}
            }
            if is_70b && matches!(t, D::Q3_K | D::Q4_K) {
                t = D::Q5_K;
            }
            if nexp == 8 {
                t = D::Q8_0;
            }
            self.i_attention_wv += 1;
        } else if cat == AttnK {
            if nexp == 8 {
                t = D::Q8_0;
            } else if f == F::IQ3_XS {
                t = D::IQ3_XXS;
            } else if f == F::IQ3_XXS {
                t = D::IQ2_S;
            }
        } else if cat == AttnQ {
            if f == F::IQ3_XS {
                t = D::IQ3_XXS;
            } else if f == F::IQ3_XXS {
                t = D::IQ2_S;
            }
        } else if cat == FfnDown {
            let (i, n) = self.layer_of(self.i_ffn_down, name)?;
            let imx = self.has_imatrix;
            match f {
                F::Q2_K => t = D::Q3_K,
                F::Q2_K_S if i < n / 8 => t = D::Q4_K,
                F::IQ3_XXS if !imx => t = if i < n / 8 { D::Q4_K } else { D::Q3_K },
                F::Q3_K_M => {
                    t = if i < n / 16 {
                        D::Q5_K
                    } else if !falcon || Self::use_more_bits(i, n) {
                        D::Q4_K
                    } else {
                        D::Q3_K
                    }
                }
                F::IQ3_M if i < n / 8 || (nexp == 8 && Self::use_more_bits(i, n)) => t = D::Q4_K,
                F::Q3_K_L => t = if falcon { D::Q4_K } else { D::Q5_K },
                F::Q4_K_M => {
                    if falcon {
                        t = if i < n / 16 {
                            D::Q6_K
                        } else if Self::use_more_bits(i, n) {
                            D::Q5_K
                        } else {
                            D::Q4_K
                        };
                    } else if Self::use_more_bits(i, n) {
                        t = D::Q6_K;
                    }
                }
                F::IQ4_NL | F::IQ4_XS if i < n / 8 && !imx => t = D::Q5_K,
                F::Q5_K_M if Self::use_more_bits(i, n) => t = D::Q6_K,
                F::Q4_K_S if !falcon && i < n / 8 => t = D::Q5_K,
                F::Q4_0 | F::Q5_0 if imx && i < n / 8 => {
                    t = if f == F::Q4_0 { D::Q4_1 } else { D::Q5_1 }
                }
                _ => {}
            }
            self.i_ffn_down += 1;
        } else if cat == AttnOutput {
            if !falcon {
                if nexp == 8 {
                    if matches!(
                        f,
                        F::Q2_K
                            | F::IQ3_XS
                            | F::IQ3_XXS
                            | F::Q3_K_S
                            | F::Q3_K_M
                            | F::IQ4_NL
                            | F::Q4_K_S
                            | F::Q4_K_M
                            | F::IQ3_S
                            | F::IQ3_M
                            | F::IQ4_XS
                    ) {
                        t = D::Q5_K;
                    }
                } else {
                    match f {
                        F::Q2_K => t = D::Q3_K,
                        F::IQ3_XXS => t = D::IQ3_S,
                        F::Q3_K_M => t = D::Q4_K,
                        F::Q3_K_L => t = D::Q5_K,
                        F::IQ3_M => t = D::Q4_K,
                        _ => {}
                    }
                }
            } else if f == F::Q3_K_L {
                t = D::Q4_K;
            }
        } else if cat == AttnQkv {
            match f {
                F::Q3_K_M | F::Q3_K_L | F::IQ3_M => t = D::Q4_K,
                F::Q4_K_M => t = D::Q5_K,
                F::Q5_K_M => t = D::Q6_K,
                _ => {}
            }
        } else if cat == FfnGate || cat == FfnUp {
            let counter = if cat == FfnGate {
                self.i_ffn_gate
            } else {
                self.i_ffn_up
            };
            let (i, n) = self.layer_of(counter, name)?;
            if f == F::IQ3_XS && i >= n / 8 && i < 7 * n / 8 {
                t = D::IQ3_XXS;
            }
            if cat == FfnGate {
                self.i_ffn_gate += 1;
            } else {
                self.i_ffn_up += 1;
            }
        }
        Ok(t)
    }

    /// Rows that are not whole blocks of `t` fall back to a 32-block type, then to F16.
    fn fallback(&mut self, t: DType, shape: &[usize]) -> DType {
        use DType as D;
        let ncols = *shape.last().unwrap_or(&0);
        if ncols.is_multiple_of(t.block_size()) {
            return t;
        }
        self.n_fallback += 1;
        let r = match t {
            D::IQ1_S
            | D::IQ1_M
            | D::IQ2_XXS
            | D::IQ2_XS
            | D::IQ2_S
            | D::IQ3_XXS
            | D::IQ3_S
            | D::IQ4_XS => D::IQ4_NL,
            D::Q2_K | D::Q3_K | D::TQ1_0 | D::TQ2_0 => D::Q4_0,
            D::Q4_K => D::Q5_0,
            D::Q5_K => D::Q5_1,
            D::Q6_K => D::Q8_0,
            other => other,
        };
        if !ncols.is_multiple_of(r.block_size()) {
            D::F16
        } else {
            r
        }
    }
}

/// Whether llama.cpp insists on an importance matrix for `t` (the 1-2 bit i-quants, and Q2_K
/// in a Q2_K_S file), except for token_embd / output.
pub fn requires_imatrix(name: &str, t: DType, f: Ftype) -> bool {
    if matches!(category(name), Category::Output | Category::TokenEmbd) {
        return false;
    }
    match t {
        DType::IQ3_XXS
        | DType::IQ2_XXS
        | DType::IQ2_XS
        | DType::IQ2_S
        | DType::IQ1_M
        | DType::IQ1_S => true,
        DType::Q2_K => f == Ftype::Q2_K_S,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm_like() -> ModelFacts {
        ModelFacts {
            arch: "llama".into(),
            n_layer: 30,
            n_gqa: 3,
            n_expert: 0,
            tied_embeddings: true,
            n_attention_wv: 30,
        }
    }

    fn plan(f: Ftype) -> Vec<(String, DType)> {
        let mut p = Planner::new(f, smollm_like(), vec![], false, false);
        let mut out = vec![(
            "token_embd.weight".to_string(),
            p.choose("token_embd.weight", &[49152, 576], DType::F16)
                .unwrap(),
        )];
        for i in 0..30 {
            for (n, s) in [
                ("attn_norm.weight", vec![576]),
                ("attn_q.weight", vec![576, 576]),
                ("attn_k.weight", vec![192, 576]),
                ("attn_v.weight", vec![192, 576]),
                ("attn_output.weight", vec![576, 576]),
                ("ffn_gate.weight", vec![1536, 576]),
                ("ffn_up.weight", vec![1536, 576]),
                ("ffn_down.weight", vec![576, 1536]),
            ] {
                let name = format!("blk.{i}.{n}");
                let src = if s.len() == 1 { DType::F32 } else { DType::F16 };
                out.push((name.clone(), p.choose(&name, &s, src).unwrap()));
            }
        }
        out
    }

    fn ty(p: &[(String, DType)], n: &str) -> DType {
        p.iter().find(|(k, _)| k == n).unwrap().1
    }

    /// The types llama-quantize prints for SmolLM2-135M (n_embd 576, not whole 256-blocks).
    #[test]
    fn q4_k_m_on_smollm2() {
        let p = plan(Ftype::Q4_K_M);
        assert_eq!(ty(&p, "token_embd.weight"), DType::Q8_0);
        assert_eq!(ty(&p, "blk.0.attn_norm.weight"), DType::F32);
        assert_eq!(ty(&p, "blk.0.attn_q.weight"), DType::Q5_0);
        assert_eq!(ty(&p, "blk.0.attn_v.weight"), DType::Q8_0); // Q6_K bump, then fallback
        assert_eq!(ty(&p, "blk.4.attn_v.weight"), DType::Q5_0);
        assert_eq!(ty(&p, "blk.0.ffn_down.weight"), DType::Q6_K); // 1536 columns: whole blocks
        assert_eq!(ty(&p, "blk.4.ffn_down.weight"), DType::Q4_K);
        assert_eq!(ty(&p, "blk.5.ffn_down.weight"), DType::Q6_K); // (5 - 3) % 3 == 2
        assert_eq!(ty(&p, "blk.29.ffn_down.weight"), DType::Q6_K);
    }

    #[test]
    fn q2_k_and_q3_k_m() {
        let p = plan(Ftype::Q2_K);
        assert_eq!(ty(&p, "blk.3.ffn_down.weight"), DType::Q3_K);
        assert_eq!(ty(&p, "blk.3.attn_v.weight"), DType::Q4_0); // Q3_K, gqa 3 < 4, fallback
        assert_eq!(ty(&p, "blk.3.ffn_up.weight"), DType::Q4_0);
        let p = plan(Ftype::Q3_K_M);
        assert_eq!(ty(&p, "blk.0.ffn_down.weight"), DType::Q5_K);
        assert_eq!(ty(&p, "blk.2.ffn_down.weight"), DType::Q4_K);
        assert_eq!(ty(&p, "blk.0.attn_v.weight"), DType::Q5_1);
        assert_eq!(ty(&p, "blk.2.attn_v.weight"), DType::Q5_0);
    }

    #[test]
    fn overrides_and_names() {
        let re = regex::Regex::new("ffn_down").unwrap();
        let mut p = Planner::new(
            Ftype::Q4_K_M,
            smollm_like(),
            vec![(re, DType::Q8_0)],
            false,
            false,
        );
        assert_eq!(
            p.choose("blk.0.ffn_down.weight", &[576, 1536], DType::F16)
                .unwrap(),
            DType::Q8_0
        );
        assert_eq!(
            p.choose("blk.0.ffn_up.weight", &[1536, 576], DType::F16)
                .unwrap(),
            DType::Q5_0
        );
        assert_eq!(Ftype::parse("q4_k").unwrap(), Ftype::Q4_K_M);
        assert_eq!(Ftype::parse("Q8_0").unwrap().id(), 7);
        assert!(Ftype::parse("Q9_K").is_err());
        assert_eq!(Ftype::parse("F16").unwrap().default_type(), DType::F16);
    }

    /// MXFP4_MOE: the 3D expert tensors to MXFP4, every other weight (output included) to Q8_0,
    /// 1D tensors kept.
    #[test]
    fn mxfp4_moe() {
        let facts = ModelFacts {
            n_expert: 8,
            tied_embeddings: false,
            ..smollm_like()
        };
        let mut p = Planner::new(Ftype::MXFP4_MOE, facts, vec![], false, false);
        let mut c = |n: &str, s: &[usize]| p.choose(n, s, DType::F16).unwrap();
        assert_eq!(c("token_embd.weight", &[49152, 576]), DType::Q8_0);
        assert_eq!(c("blk.0.attn_norm.weight", &[576]), DType::F16);
        assert_eq!(c("blk.0.attn_q.weight", &[576, 576]), DType::Q8_0);
        assert_eq!(c("blk.0.ffn_gate_inp.weight", &[8, 576]), DType::F16);
        assert_eq!(c("blk.0.ffn_up_exps.weight", &[8, 1536, 576]), DType::MXFP4);
        assert_eq!(
            c("blk.0.ffn_down_exps.weight", &[8, 576, 1536]),
            DType::MXFP4
        );
        assert_eq!(c("output.weight", &[49152, 576]), DType::Q8_0);
        assert_eq!(Ftype::parse("mxfp4_moe").unwrap().id(), 38);
    }
}
