//! hearth-convert: write models. `quantize` turns a GGUF (any type) or a Hugging Face
//! safetensors directory into a GGUF of a chosen type or llama.cpp mix, streaming tensor by
//! tensor (the input is memory-mapped, the output written as it is made), in parallel across
//! rows.
#![deny(missing_docs)]

pub mod hf;
mod hf_arch;
pub mod imatrix;
pub mod plan;
mod pre_hashes;
pub mod source;
mod spm;

use hearth_core::{DType, Error, Result};
use hearth_formats::Value;
use hearth_formats::gguf_write::{GgufHeader, TensorSpec};
use hearth_quant::quantize::{can_quantize, quantize_row};
pub use imatrix::Imatrix;
pub use plan::{Ftype, ModelFacts, Planner};
pub use source::{BlockScale, Part, Source, SrcTensor};
use std::path::Path;

/// llama.cpp's `GGML_QNT_VERSION`, written as `general.quantization_version`.
pub const QUANTIZATION_VERSION: u32 = 2;

/// A model to convert: GGUF metadata and tensors in file order.
pub struct Input {
    /// Metadata, as it will be written (the quantizer adds the file type keys).
    pub metadata: Vec<(String, Value)>,
    /// Tensors, in output order.
    pub tensors: Vec<SrcTensor>,
}

impl Input {
    /// A GGUF file as input (all its metadata and tensors, split keys dropped).
    pub fn from_gguf(g: &hearth_formats::GgufFile) -> Result<Input> {
        let metadata = g
            .metadata
            .iter()
            .filter(|(k, _)| !k.starts_with("split."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let tensors = g
            .tensors()?
            .into_iter()
            .map(|t| SrcTensor::plain(t.name.clone(), t))
            .collect();
        Ok(Input { metadata, tensors })
    }

    fn get(&self, k: &str) -> Option<&Value> {
        self.metadata
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v)
    }

    /// The facts the mix rules need, from the metadata.
    pub fn facts(&self) -> ModelFacts {
        let arch = self
            .get("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let num = |k: &str| -> usize {
            match self.get(&format!("{arch}.{k}")) {
                Some(Value::Array(a)) => a.first().and_then(Value::as_u64).unwrap_or(0) as usize,
                Some(v) => v.as_u64().unwrap_or(0) as usize,
                None => 0,
            }
        };
        let (n_head, n_kv) = (num("attention.head_count"), num("attention.head_count_kv"));
        let n_kv = if n_kv == 0 { n_head } else { n_kv };
        ModelFacts {
            n_layer: num("block_count"),
            n_gqa: n_head.checked_div(n_kv).unwrap_or(0),
            n_expert: num("expert_count"),
            tied_embeddings: !self.tensors.iter().any(|t| t.name == "output.weight"),
            n_attention_wv: self
                .tensors
                .iter()
                .filter(|t| {
                    matches!(
                        plan::category(&t.name),
                        plan::Category::AttnV | plan::Category::AttnQkv | plan::Category::AttnKvB
                    )
                })
                .count(),
            arch,
        }
    }
}

/// What to make.
pub struct Options {
    /// The file type (a plain type or a mix).
    pub ftype: Ftype,
    /// `--tensor-type` rules: the first whose regex matches a tensor's name sets its type.
    pub overrides: Vec<(regex::Regex, DType)>,
    /// Importance matrix.
    pub imatrix: Option<Imatrix>,
    /// Allow tensors already quantized to be quantized again (to another type).
    pub allow_requantize: bool,
    /// Every quantized tensor gets the default type (no mix rules).
    pub pure: bool,
    /// Worker threads.
    pub threads: usize,
}

/// One tensor in the plan.
#[derive(Clone, Debug)]
pub struct Planned {
    /// Name.
    pub name: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Type in the input.
    pub from: DType,
    /// Type in the output.
    pub to: DType,
}

/// Progress reports while quantizing.
pub enum Event<'a> {
    /// The work begins: elements in all.
    Start {
        /// total elements
        elements: u64,
    },
    /// A tensor begins.
    Tensor(&'a Planned),
    /// These many more elements are done.
    Done(u64),
}

/// Choose every tensor's type and check that the whole job can be done, before writing.
pub fn plan(input: &Input, opts: &Options) -> Result<Vec<Planned>> {
    let facts = input.facts();
    let mut p = Planner::new(
        opts.ftype,
        facts.clone(),
        opts.overrides.clone(),
        opts.imatrix.is_some(),
        opts.pure,
    );
    let mut out = Vec::with_capacity(input.tensors.len());
    for s in &input.tensors {
        let from = s.dtype;
        let src = s.keep_as.unwrap_or(from);
        let to = p.choose(&s.name, &s.shape, src)?;
        if to != from || s.permute_heads.is_some() {
            if !can_quantize(to) {
                return Err(Error::Unsupported(format!(
                    "tensor {} would be {to}, which hearth cannot write yet (it writes F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS)",
                    s.name
                )));
            }
            if from.is_quantized() && to != from && !opts.allow_requantize {
                return Err(Error::Invalid(format!(
                    "tensor {} is already {from}: requantizing to {to} loses quality; pass --allow-requantize to do it anyway",
                    s.name
                )));
            }
            if !matches!(from, DType::F32 | DType::F16 | DType::BF16) && !from.is_quantized() {
                return Err(Error::Unsupported(format!(
                    "tensor {} is {from}: only float and quantized tensors can be converted",
                    s.name
                )));
            }
        }
        let n_cols = *s.shape.last().unwrap_or(&1);
        let n_expert = if s.shape.len() == 3 { s.shape[0] } else { 1 };
        let qw = match &opts.imatrix {
            Some(m) if plan::category(&s.name) != plan::Category::TokenEmbd => {
                m.for_tensor(&s.name, n_cols, n_expert)?
            }
            _ => None,
        };
        if to != from && qw.is_none() && plan::requires_imatrix(&s.name, to, opts.ftype) {
            return Err(Error::Invalid(format!(
                "tensor {} as {to} needs an importance matrix (--imatrix) to be any good{}",
                s.name,
                if opts.imatrix.is_some() {
                    ", and the one given has no entry for it"
                } else {
                    ""
                }
            )));
        }
        out.push(Planned {
            name: s.name.clone(),
            shape: s.shape.clone(),
            from,
            to,
        });
    }
    Ok(out)
}

/// The source row for output row `r` of a tensor whose heads are permuted for GGUF's
/// rotary layout: within each head of `hd` rows, output row `2i + j` is input row
/// `j * hd/2 + i` (llama.cpp's converter, `LlamaModel.permute`).
fn src_row(r: usize, n_rows: usize, heads: Option<usize>) -> usize {
    match heads {
        Some(h) if h > 0 && n_rows.is_multiple_of(h) && (n_rows / h).is_multiple_of(2) => {
            let hd = n_rows / h;
            let (head, k) = (r / hd, r % hd);
            let (i, j) = (k / 2, k % 2);
            head * hd + j * (hd / 2) + i
        }
        _ => r,
    }
}

/// Quantize `input` to `out` as planned, reporting progress. Writes `OUT.partial` and renames
/// it when complete. Returns the output file's size.
pub fn write(
    input: &Input,
    planned: &[Planned],
    opts: &Options,
    out: &Path,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<u64> {
    let mut h = GgufHeader::default();
    for (k, v) in &input.metadata {
        h.set(k, v.clone());
    }
    h.set(
        "general.quantization_version",
        Value::U32(QUANTIZATION_VERSION),
    );
    h.set("general.file_type", Value::U32(opts.ftype.id()));
    if let Some(m) = &opts.imatrix {
        // as llama-quantize records it (strings cut to 127 bytes, counts as u32)
        let cut = |s: &str| {
            s.char_indices()
                .take_while(|(i, c)| i + c.len_utf8() <= 127)
                .map(|(_, c)| c)
                .collect::<String>()
        };
        h.set("quantize.imatrix.file", Value::Str(cut(&m.file)));
        if let Some(d) = m.datasets.first() {
            h.set("quantize.imatrix.dataset", Value::Str(cut(d)));
        }
        h.set(
            "quantize.imatrix.entries_count",
            Value::U32(m.entries.len() as u32),
        );
        h.set(
            "quantize.imatrix.chunks_count",
            Value::U32(m.chunk_count as u32),
        );
    }
    h.tensors = planned
        .iter()
        .map(|p| TensorSpec {
            name: p.name.clone(),
            shape: p.shape.clone(),
            dtype: p.to,
        })
        .collect();
    let tmp = out.with_extension("partial");
    let f = std::fs::File::create(&tmp)
        .map_err(|e| Error::Io(format!("cannot create {}", tmp.display()), e))?;
    let r = (|| {
        let mut w = h.begin(std::io::BufWriter::with_capacity(8 << 20, f))?;
        let total: u64 = planned
            .iter()
            .map(|p| p.shape.iter().product::<usize>() as u64)
            .sum();
        progress(Event::Start { elements: total });
        for (s, p) in input.tensors.iter().zip(planned) {
            progress(Event::Tensor(p));
            convert_tensor(s, p, opts, &mut |b| w.write(b), progress)?;
        }
        let (_, size) = w.finish()?;
        Ok(size)
    })();
    match r {
        Ok(size) => {
            std::fs::rename(&tmp, out).map_err(|e| {
                Error::Io(
                    format!("cannot rename {} to {}", tmp.display(), out.display()),
                    e,
                )
            })?;
            Ok(size)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn convert_tensor(
    s: &SrcTensor,
    p: &Planned,
    opts: &Options,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<()> {
    let made = s.materialize()?;
    let s = made.as_ref().unwrap_or(s);
    let n_el: usize = s.shape.iter().product();
    if s.copies_to(p.to) {
        for b in s.stored_bytes() {
            for c in b.chunks(16 << 20) {
                sink(c)?;
            }
        }
        progress(Event::Done(n_el as u64));
        return Ok(());
    }
    let n_cols = (*s.shape.last().unwrap_or(&1)).max(1);
    let n_rows = n_el / n_cols;
    let rows_per_matrix = if s.shape.len() >= 2 {
        s.shape[s.shape.len() - 2]
    } else {
        1
    };
    let dst_rb = p.to.row_bytes(n_cols)?;
    let n_expert = if s.shape.len() == 3 { s.shape[0] } else { 1 };
    let qw_all = match &opts.imatrix {
        Some(m) if plan::category(&s.name) != plan::Category::TokenEmbd => {
            m.for_tensor(&s.name, n_cols, n_expert)?
        }
        _ => None,
    };
    let threads = opts.threads.max(1);
    // Slabs of rows: at most ~32 MiB of output or f32 per slab, at least one row.
    let slab_rows = ((32usize << 20) / (dst_rb.max(n_cols * 4))).clamp(1, n_rows.max(1));
    let mut out = vec![0u8; slab_rows * dst_rb];
    let mut r0 = 0;
    while r0 < n_rows {
        let nr = slab_rows.min(n_rows - r0);
        let buf = &mut out[..nr * dst_rb];
        let per = nr.div_ceil(threads);
        let errs: Vec<Result<()>> = std::thread::scope(|sc| {
            let hs: Vec<_> = buf
                .chunks_mut(per * dst_rb)
                .enumerate()
                .map(|(ti, chunk)| {
                    sc.spawn(move || -> Result<()> {
                        let mut row = vec![0f32; n_cols];
                        for (k, o) in chunk.chunks_exact_mut(dst_rb).enumerate() {
                            let r = r0 + ti * per + k;
                            let (m, rr) = (r / rows_per_matrix, r % rows_per_matrix);
                            let sr =
                                m * rows_per_matrix + src_row(rr, rows_per_matrix, s.permute_heads);
                            s.read_row(sr, &mut row)?;
                            let qw = qw_all.map(|w| {
                                let e = if n_expert > 1 { m } else { 0 };
                                &w[e * n_cols..(e + 1) * n_cols]
                            });
                            quantize_row(p.to, &row, qw, o).map_err(|e| {
                                Error::Invalid(format!("tensor {} row {r}: {e}", s.name))
                            })?;
                        }
                        Ok(())
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Invalid("a worker thread panicked".into())))
                })
                .collect()
        });
        for e in errs {
            e?;
        }
        sink(buf)?;
        progress(Event::Done((nr * n_cols) as u64));
        r0 += nr;
    }
    Ok(())
}

/// Order tensors as llama-quantize writes them: by layer (non-layer tensors first), then by
/// name. The mix rules count tensors in this order.
pub fn sort_like_llama(ts: &mut [SrcTensor]) {
    let layer = |n: &str| -> i64 {
        n.strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1)
    };
    ts.sort_by(|a, b| (layer(&a.name), &a.name).cmp(&(layer(&b.name), &b.name)));
}

/// Quantize the model at `input_path` (a GGUF file or a Hugging Face directory) to `out`.
pub fn quantize(
    input_path: &Path,
    out: &Path,
    opts: &Options,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<(Vec<Planned>, u64)> {
    let gguf;
    let hf;
    let input = if input_path.is_dir() {
        hf = hf::HfInput::open(input_path)?;
        hf.input()?
    } else {
        gguf = hearth_formats::GgufFile::open(input_path)?;
        if gguf.get("split.count").and_then(Value::as_u64).unwrap_or(1) > 1 {
            return Err(Error::Unsupported(format!(
                "{} is one part of a split GGUF; merge it first (llama-gguf-split --merge)",
                input_path.display()
            )));
        }
        Input::from_gguf(&gguf)?
    };
    let mut input = input;
    sort_like_llama(&mut input.tensors);
    let planned = plan(&input, opts)?;
    let size = write(&input, &planned, opts, out, progress)?;
    Ok((planned, size))
}
