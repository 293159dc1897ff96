//! Hugging Face model directories: config.json, tokenizer files and (sharded) safetensors.
use hearth_core::{DType, Error, Result, Storage, Tensor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A Hugging Face model directory.
pub struct HfDir {
    /// The directory.
    pub dir: PathBuf,
    /// config.json, parsed.
    pub config: serde_json::Value,
    /// tokenizer_config.json, if present.
    pub tokenizer_config: Option<serde_json::Value>,
    /// The chat template: chat_template.jinja, else tokenizer_config.json's.
    pub chat_template: Option<String>,
    /// Path of tokenizer.json, if present.
    pub tokenizer_json: Option<PathBuf>,
    /// The safetensors files, in order.
    pub shards: Vec<PathBuf>,
    /// Total bytes of the safetensors files.
    pub file_size: u64,
}

fn read_json(p: &Path) -> Result<serde_json::Value> {
    let s = std::fs::read_to_string(p)
        .map_err(|e| Error::Io(format!("cannot read {}", p.display()), e))?;
    serde_json::from_str(&s).map_err(|e| Error::Format(format!("{}: {e}", p.display())))
}

impl HfDir {
    /// Open a directory: reads config.json and finds the weight shards (from
    /// model.safetensors.index.json when present).
    pub fn open(dir: &Path) -> Result<HfDir> {
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            return Err(Error::Invalid(format!(
                "{} has no config.json: not a Hugging Face model directory",
                dir.display()
            )));
        }
        let config = read_json(&cfg_path)?;
        let tc = dir.join("tokenizer_config.json");
        let tokenizer_config = if tc.exists() {
            Some(read_json(&tc)?)
        } else {
            None
        };
        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.exists() {
            Some(
                std::fs::read_to_string(&jinja)
                    .map_err(|e| Error::Io(format!("cannot read {}", jinja.display()), e))?,
            )
        } else {
            tokenizer_config
                .as_ref()
                .and_then(|t| t.get("chat_template"))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let tj = dir.join("tokenizer.json");
        let tokenizer_json = tj.exists().then_some(tj);
        let index = dir.join("model.safetensors.index.json");
        let mut shards: Vec<PathBuf> = Vec::new();
        if index.exists() {
            let idx = read_json(&index)?;
            let map = idx
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Format(format!("{}: no weight_map", index.display())))?;
            for f in map.values() {
                let f = f
                    .as_str()
                    .ok_or_else(|| Error::Format("weight_map values must be file names".into()))?;
                if f.contains('/') || f.contains('\\') || f.contains("..") {
                    return Err(Error::Format(format!(
                        "weight_map names a file outside the directory: {f}"
                    )));
                }
                let p = dir.join(f);
                if !shards.contains(&p) {
                    shards.push(p);
                }
            }
            shards.sort();
        } else {
            let single = dir.join("model.safetensors");
            if single.exists() {
                shards.push(single);
            } else {
                let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map_err(|e| Error::Io(format!("cannot list {}", dir.display()), e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                    .collect();
                all.sort();
                shards = all;
            }
        }
        if shards.is_empty() {
            return Err(Error::Invalid(format!(
                "{} has no .safetensors weights",
                dir.display()
            )));
        }
        let mut file_size = 0;
        for s in &shards {
            file_size += std::fs::metadata(s)
                .map_err(|e| Error::Io(format!("cannot stat {}", s.display()), e))?
                .len();
        }
        Ok(HfDir {
            dir: dir.to_path_buf(),
            config,
            tokenizer_config,
            chat_template,
            tokenizer_json,
            shards,
            file_size,
        })
    }

    /// Memory-map every shard and return its tensors under their file names.
    pub fn tensors(&self) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        for p in &self.shards {
            out.extend(safetensors_file(p)?);
        }
        Ok(out)
    }

    /// As `tensors`, but float8 E4M3 tensors are returned too, typed I8 (their raw bytes) and
    /// flagged `true`, for a converter that dequantizes them.
    pub fn tensors_with_fp8(&self) -> Result<Vec<(Tensor, bool)>> {
        let mut out = Vec::new();
        for p in &self.shards {
            out.extend(read_safetensors(
                map_file(p)?,
                &p.display().to_string(),
                true,
            )?);
        }
        Ok(out)
    }
}

fn map_file(p: &Path) -> Result<Arc<memmap2::Mmap>> {
    let f =
        std::fs::File::open(p).map_err(|e| Error::Io(format!("cannot open {}", p.display()), e))?;
    // SAFETY: read-only map; the file must not be truncated while in use.
    let map = unsafe { memmap2::Mmap::map(&f) }
        .map_err(|e| Error::Io(format!("cannot map {}", p.display()), e))?;
    Ok(Arc::new(map))
}

/// Memory-map one safetensors file and return views of its tensors.
pub fn safetensors_file(p: &Path) -> Result<Vec<Tensor>> {
    safetensors_bytes(map_file(p)?, &p.display().to_string())
}

/// The tensors of a safetensors file already in memory (`label` names it in errors).
pub fn safetensors_bytes(
    map: Arc<dyn AsRef<[u8]> + Send + Sync>,
    label: &str,
) -> Result<Vec<Tensor>> {
    Ok(read_safetensors(map, label, false)?
        .into_iter()
        .map(|(t, _)| t)
        .collect())
}

/// The tensors of a safetensors file; with `fp8`, float8 E4M3 ones as raw I8 bytes, flagged.
fn read_safetensors(
    map: Arc<dyn AsRef<[u8]> + Send + Sync>,
    label: &str,
    fp8: bool,
) -> Result<Vec<(Tensor, bool)>> {
    let bytes: &[u8] = (*map).as_ref();
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::Format(format!("{label}: {e}")))?;
    let base = bytes.as_ptr() as usize;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F64 => DType::F64,
            safetensors::Dtype::I8 => DType::I8,
            safetensors::Dtype::I16 => DType::I16,
            safetensors::Dtype::I32 => DType::I32,
            safetensors::Dtype::I64 => DType::I64,
            safetensors::Dtype::F8_E4M3 if fp8 => DType::I8,
            safetensors::Dtype::F8_E4M3 => {
                return Err(Error::Unsupported(format!(
                    "{label}: tensor {name} is float8 (F8_E4M3): hearth does not run float8 checkpoints directly; convert the directory with `hearth quantize DIR OUT.gguf TYPE`, which dequantizes it"
                )));
            }
            d => {
                return Err(Error::Unsupported(format!(
                    "{label}: tensor {name} has dtype {d:?}"
                )));
            }
        };
        let data = view.data();
        let offset = data.as_ptr() as usize - base;
        let storage = Storage::new(map.clone(), offset, data.len())?;
        let shape = view.shape().to_vec();
        let is_fp8 = view.dtype() == safetensors::Dtype::F8_E4M3;
        out.push((Tensor::new(name, dtype, shape, storage)?, is_fp8));
    }
    Ok(out)
}
