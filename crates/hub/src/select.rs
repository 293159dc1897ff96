//! Which of a repository's files make up a model: a GGUF quant (one file, or every part of a
//! split set), or a safetensors checkpoint with its config and tokenizer files.
use crate::{Error, RepoFile, Result};

/// The quants tried, in order, when none is named: the usual 4-bit trade-off first, then
/// larger ones, then anything.
const DEFAULT_ORDER: &[&str] = &[
    "Q4_K_M", "Q4_K_S", "Q4_0", "Q4_1", "Q5_K_M", "Q5_K_S", "Q6_K", "Q8_0", "BF16", "F16", "F32",
];

/// Small files a safetensors checkpoint needs besides its weights.
const HF_SIDE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
];

/// What a model is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// GGUF: the file to open (the first part of a split set) and the quant's name.
    Gguf {
        /// The quant's name as the file names it (`Q4_K_M`, `UD-Q2_K_XL`).
        quant: String,
        /// The path to open.
        first: String,
    },
    /// A safetensors checkpoint (open the snapshot directory).
    Safetensors,
}

/// The files of one model in a repository.
#[derive(Clone, Debug)]
pub struct Selection {
    /// GGUF or safetensors.
    pub kind: Kind,
    /// Every file to fetch.
    pub files: Vec<RepoFile>,
    /// Set when no quant was named and one was picked: a line for the user.
    pub note: Option<String>,
}

/// `(stem, part, count)` of a split GGUF name `stem-00001-of-00005.gguf`.
pub fn split_part(path: &str) -> Option<(&str, u32, u32)> {
    let s = path.strip_suffix(".gguf")?;
    let (rest, count) = s.rsplit_once("-of-")?;
    let (stem, part) = rest.rsplit_once('-')?;
    let ok = |x: &str| x.len() == 5 && x.bytes().all(|b| b.is_ascii_digit());
    if !ok(count) || !ok(part) {
        return None;
    }
    let (part, count) = (part.parse().ok()?, count.parse().ok()?);
    (part >= 1 && part <= count).then_some((stem, part, count))
}

/// Whether a token of a file name is a quant's name: `Q4_K_M`, `IQ2_XXS`, `TQ1_0`, `F16`,
/// `BF16`, `MXFP4_MOE`...
fn is_quant_token(t: &str) -> bool {
    let u = t.to_ascii_uppercase();
    let head = u.split('_').next().unwrap_or("");
    let digits_after = |p: &str| {
        head.strip_prefix(p)
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
    };
    digits_after("Q")
        || digits_after("IQ")
        || digits_after("TQ")
        || matches!(head, "F16" | "BF16" | "F32" | "MXFP4" | "FP8")
}

/// The quant a GGUF file's name carries (`UD-` prefixes kept), if any.
pub fn quant_of(path: &str) -> Option<String> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let stem = match split_part(name) {
        Some((s, _, _)) => s,
        None => name.strip_suffix(".gguf")?,
    };
    let toks: Vec<&str> = stem.split(['-', '.']).collect();
    let i = toks.iter().rposition(|t| is_quant_token(t))?;
    let q = toks[i].to_ascii_uppercase();
    Some(if i > 0 && toks[i - 1].eq_ignore_ascii_case("UD") {
        format!("UD-{q}")
    } else {
        q
    })
}

/// A model's GGUF file (not a projector for images or a draft model's).
fn is_model_gguf(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    name.ends_with(".gguf") && !name.starts_with("mmproj") && !name.contains("imatrix")
}

/// One GGUF model in a repository: the files of a quant (a single file or a split set).
#[derive(Clone, Debug)]
pub struct GgufSet {
    /// The quant's name.
    pub quant: String,
    /// The files, first part first.
    pub files: Vec<RepoFile>,
}

impl GgufSet {
    /// Total bytes.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Every complete GGUF model in a listing, grouped by quant (split sets whose parts are not
/// all listed are left out).
pub fn gguf_sets(files: &[RepoFile]) -> Vec<GgufSet> {
    let mut sets: Vec<GgufSet> = Vec::new();
    let mut splits: std::collections::BTreeMap<(String, u32), Vec<(u32, RepoFile)>> =
        Default::default();
    for f in files.iter().filter(|f| is_model_gguf(&f.path)) {
        let Some(quant) = quant_of(&f.path) else {
            continue;
        };
        match split_part(&f.path) {
            Some((stem, part, count)) => splits
                .entry((stem.to_string(), count))
                .or_default()
                .push((part, f.clone())),
            None => sets.push(GgufSet {
                quant,
                files: vec![f.clone()],
            }),
        }
    }
    for ((stem, count), mut parts) in splits {
        parts.sort_by_key(|p| p.0);
        parts.dedup_by_key(|p| p.0);
        if parts.len() != count as usize {
            continue;
        }
        if let Some(quant) = quant_of(&format!("{stem}.gguf")) {
            sets.push(GgufSet {
                quant,
                files: parts.into_iter().map(|p| p.1).collect(),
            });
        }
    }
    sets.sort_by(|a, b| {
        a.quant
            .cmp(&b.quant)
            .then(a.files[0].path.cmp(&b.files[0].path))
    });
    sets
}

/// The sets a `:QUANT` names: its exact name (any case), else a name ending in `-QUANT`
/// (`Q2_K_XL` finds `UD-Q2_K_XL`).
pub fn matching<'a>(sets: &'a [GgufSet], quant: &str) -> Vec<&'a GgufSet> {
    let exact: Vec<_> = sets
        .iter()
        .filter(|s| s.quant.eq_ignore_ascii_case(quant))
        .collect();
    if !exact.is_empty() {
        return exact;
    }
    let tail = format!("-{}", quant.to_ascii_uppercase());
    sets.iter().filter(|s| s.quant.ends_with(&tail)).collect()
}

fn quant_list(sets: &[GgufSet]) -> String {
    let mut q: Vec<&str> = sets.iter().map(|s| s.quant.as_str()).collect();
    q.dedup();
    q.join(", ")
}

/// The model a repository listing and an optional `:QUANT` name.
pub fn select(repo: &str, files: &[RepoFile], quant: Option<&str>) -> Result<Selection> {
    let sets = gguf_sets(files);
    if !sets.is_empty() {
        let (set, note) = match quant {
            Some(q) => {
                let m = matching(&sets, q);
                match m.as_slice() {
                    [one] => (*one, None),
                    [] => {
                        return Err(Error::NotFound(format!(
                            "{repo} has no GGUF of quant {q}; it has {}",
                            quant_list(&sets)
                        )));
                    }
                    many => {
                        let names: Vec<&str> =
                            many.iter().map(|s| s.files[0].path.as_str()).collect();
                        return Err(Error::NotFound(format!(
                            "{repo}:{q} names several files ({}); name one of them as a path in the cache, or use a fuller quant name",
                            names.join(", ")
                        )));
                    }
                }
            }
            None => {
                let pick = DEFAULT_ORDER
                    .iter()
                    .find_map(|d| sets.iter().find(|s| s.quant.eq_ignore_ascii_case(d)))
                    .or_else(|| {
                        DEFAULT_ORDER.iter().find_map(|d| {
                            let tail = format!("-{d}");
                            sets.iter().find(|s| s.quant.ends_with(&tail))
                        })
                    })
                    .unwrap_or(&sets[0]);
                let note = (sets.len() > 1).then(|| {
                    format!(
                        "no :QUANT given; using {} (the repository has {}; pick one with {repo}:QUANT)",
                        pick.quant,
                        quant_list(&sets)
                    )
                });
                (pick, note)
            }
        };
        return Ok(Selection {
            kind: Kind::Gguf {
                quant: set.quant.clone(),
                first: set.files[0].path.clone(),
            },
            files: set.files.clone(),
            note,
        });
    }
    if let Some(q) = quant {
        return Err(Error::NotFound(format!(
            "{repo} has no GGUF files, so :{q} names nothing (without :QUANT its safetensors are used)"
        )));
    }
    // top-level safetensors only: subfolders hold other formats (`original/`) or parts
    let top = |f: &&RepoFile| !f.path.contains('/');
    let weights: Vec<RepoFile> = files
        .iter()
        .filter(top)
        .filter(|f| f.path.ends_with(".safetensors"))
        .cloned()
        .collect();
    if weights.is_empty() || !files.iter().any(|f| f.path == "config.json") {
        return Err(Error::NotFound(format!(
            "{repo} has neither GGUF files nor safetensors weights with a config.json"
        )));
    }
    let mut out: Vec<RepoFile> = files
        .iter()
        .filter(top)
        .filter(|f| HF_SIDE_FILES.contains(&f.path.as_str()))
        .cloned()
        .collect();
    out.extend(weights);
    Ok(Selection {
        kind: Kind::Safetensors,
        files: out,
        note: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(p: &str) -> RepoFile {
        RepoFile {
            path: p.into(),
            size: 1,
            blob: "0".repeat(40),
            sha256: None,
        }
    }

    #[test]
    fn quant_names() {
        assert_eq!(
            quant_of("SmolLM2-135M-Instruct.Q4_1.gguf").as_deref(),
            Some("Q4_1")
        );
        assert_eq!(
            quant_of("Qwen3-30B-A3B-UD-Q2_K_XL.gguf").as_deref(),
            Some("UD-Q2_K_XL")
        );
        assert_eq!(
            quant_of("Q4_K_M/DeepSeek-R1-Q4_K_M-00001-of-00009.gguf").as_deref(),
            Some("Q4_K_M")
        );
        assert_eq!(quant_of("m-iq2_xxs.gguf").as_deref(), Some("IQ2_XXS"));
        assert_eq!(quant_of("gpt-oss-20b-mxfp4.gguf").as_deref(), Some("MXFP4"));
        assert_eq!(quant_of("model.gguf"), None);
        assert_eq!(quant_of("a-Q4_0.bin"), None);
        assert_eq!(
            split_part("x-Q8_0-00002-of-00003.gguf"),
            Some(("x-Q8_0", 2, 3))
        );
        assert_eq!(split_part("x-Q8_0-00004-of-00003.gguf"), None);
        assert_eq!(split_part("x-2-of-3.gguf"), None);
    }

    #[test]
    fn selection() {
        let files = vec![
            f("README.md"),
            f("m-Q8_0.gguf"),
            f("m-Q4_K_M.gguf"),
            f("m-UD-Q2_K_XL.gguf"),
            f("mmproj-F16.gguf"),
            f("big/m-IQ2_XXS-00002-of-00002.gguf"),
            f("big/m-IQ2_XXS-00001-of-00002.gguf"),
            f("half/m-Q6_K-00001-of-00002.gguf"),
        ];
        let s = select("o/r", &files, None).unwrap();
        assert_eq!(
            s.kind,
            Kind::Gguf {
                quant: "Q4_K_M".into(),
                first: "m-Q4_K_M.gguf".into()
            }
        );
        assert!(s.note.unwrap().contains("UD-Q2_K_XL"));
        let s = select("o/r", &files, Some("iq2_xxs")).unwrap();
        let paths: Vec<_> = s.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "big/m-IQ2_XXS-00001-of-00002.gguf",
                "big/m-IQ2_XXS-00002-of-00002.gguf"
            ]
        );
        assert!(select("o/r", &files, Some("Q2_K_XL")).is_ok());
        // an incomplete split set is not offered, and projectors are not models
        let e = select("o/r", &files, Some("Q6_K")).unwrap_err().to_string();
        assert!(e.contains("Q4_K_M") && !e.contains("Q6_K,"), "{e}");
        assert!(select("o/r", &files, Some("F16")).is_err());

        let st = vec![
            f("config.json"),
            f("tokenizer.json"),
            f("model-00001-of-00002.safetensors"),
            f("model-00002-of-00002.safetensors"),
            f("original/consolidated.safetensors"),
            f("README.md"),
        ];
        let s = select("o/r", &st, None).unwrap();
        assert_eq!(s.kind, Kind::Safetensors);
        assert_eq!(s.files.len(), 4);
        assert!(select("o/r", &st, Some("Q4_K_M")).is_err());
        assert!(select("o/r", &[f("README.md")], None).is_err());
    }
}
