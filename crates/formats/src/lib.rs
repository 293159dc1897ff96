//! hearth-formats: GGUF and Hugging Face (safetensors) readers, memory-mapped and zero-copy,
//! and the name map that turns both into canonical tensor names. No compute here.
#![deny(missing_docs)]

pub mod gguf;
pub mod gguf_write;
pub mod hf;
pub mod imatrix;
pub mod names;

pub use gguf::{GgufFile, Value};
pub use hf::HfDir;
pub use imatrix::{Imatrix, ImatrixEntry, read_imatrix};

use hearth_core::{Error, Result, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Where a model came from.
pub enum Source {
    /// A GGUF file.
    Gguf(GgufFile),
    /// A Hugging Face directory.
    Hf(HfDir),
}

/// An opened model file: its source and its tensors under canonical names.
pub struct ModelFiles {
    /// The file(s) and their metadata.
    pub source: Source,
    /// Tensors by canonical name.
    pub tensors: HashMap<String, Tensor>,
    /// Total bytes of the file(s).
    pub size: u64,
}

impl ModelFiles {
    /// Open a `.gguf` file (the first part of a split set brings the others: every part's
    /// tensors, the first part's metadata) or a Hugging Face directory.
    pub fn open(path: &Path) -> Result<ModelFiles> {
        if path.is_dir() {
            let hf = HfDir::open(path)?;
            let mut tensors = HashMap::new();
            for mut t in hf.tensors()? {
                if let Some(c) = names::canonical_from_hf(&t.name) {
                    t.name = c.clone();
                    tensors.insert(c, t);
                }
            }
            return Ok(ModelFiles {
                size: hf.file_size,
                source: Source::Hf(hf),
                tensors,
            });
        }
        if !path.exists() {
            return Err(Error::Invalid(format!(
                "no such model file or directory: {}",
                path.display()
            )));
        }
        let g = GgufFile::open(path)?;
        let mut tensors = HashMap::new();
        let mut size = g.file_size;
        let mut add = |g: &GgufFile| -> Result<()> {
            for mut t in g.tensors()? {
                let c = names::canonical_from_gguf(&t.name);
                t.name = c.clone();
                if tensors.insert(c.clone(), t).is_some() {
                    return Err(Error::Format(format!("tensor {c} appears twice")));
                }
            }
            Ok(())
        };
        add(&g)?;
        for p in gguf::split_siblings(path, &g)? {
            let part = GgufFile::open(&p)?;
            gguf::check_split_part(&p, &part, &g)?;
            size += part.file_size;
            add(&part)?;
        }
        Ok(ModelFiles {
            source: Source::Gguf(g),
            tensors,
            size,
        })
    }

    /// Total size of the model's files in bytes (every part of a split GGUF).
    pub fn file_size(&self) -> u64 {
        self.size
    }
}
