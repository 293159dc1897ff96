//! Embeddings: a sequence's final hidden states (after the output norm, before the LM head)
//! pooled into one vector, as the model defines it, and L2-normalised.
//!
//! The pooling comes from the model's files: a GGUF's `{arch}.pooling_type` (llama.cpp's
//! numbering: 0 none, 1 mean, 2 cls, 3 last, 4 rank), or a sentence-transformers directory's
//! `modules.json` and its Pooling module's `config.json`. A plain causal LM defines none of
//! these and gets mean pooling.
use crate::Engine;
use hearth_core::{Error, Result};
use hearth_formats::{ModelFiles, Source};

/// How a sequence's hidden states become one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over every token.
    Mean,
    /// The first token's state.
    Cls,
    /// The last token's state.
    Last,
}

impl Pooling {
    /// The pooling `files` define; an error for those that give no single vector per input
    /// (none, rank) or that hearth does not compute.
    pub fn of(files: &ModelFiles) -> Result<Pooling> {
        match &files.source {
            Source::Gguf(g) => {
                let arch = g.architecture().unwrap_or_default();
                let key = format!("{arch}.pooling_type");
                match g.get(&key).map(|v| v.as_i64()) {
                    None => Ok(Pooling::Mean),
                    Some(Some(t)) => Pooling::from_llama(t, &key),
                    Some(None) => Err(Error::Format(format!("{key} is not an integer"))),
                }
            }
            Source::Hf(hf) => Pooling::sentence_transformers(&hf.dir),
        }
    }

    /// llama.cpp's `pooling_type` value `t` (read from `key`).
    fn from_llama(t: i64, key: &str) -> Result<Pooling> {
        match t {
            -1 | 1 => Ok(Pooling::Mean), // -1: unspecified
            2 => Ok(Pooling::Cls),
            3 => Ok(Pooling::Last),
            0 => Err(Error::Invalid(format!(
                "the model's {key} is 0 (none): it defines no pooling into one vector per input"
            ))),
            4 => Err(Error::Invalid(format!(
                "the model's {key} is 4 (rank): it is a reranker, which scores pairs instead of embedding texts"
            ))),
            t => Err(Error::Invalid(format!("the model's {key} {t} is unknown"))),
        }
    }

    /// The pooling of a sentence-transformers directory: its `modules.json` names the Pooling
    /// module's folder, whose `config.json` has the `pooling_mode_*` flags. Without them:
    /// mean.
    fn sentence_transformers(dir: &std::path::Path) -> Result<Pooling> {
        let read = |p: std::path::PathBuf| -> Result<Option<serde_json::Value>> {
            match std::fs::read_to_string(&p) {
                Ok(s) => serde_json::from_str(&s)
                    .map(Some)
                    .map_err(|e| Error::Format(format!("{}: {e}", p.display()))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::Format(format!("{}: {e}", p.display()))),
            }
        };
        let Some(modules) = read(dir.join("modules.json"))? else {
            return Ok(Pooling::Mean);
        };
        let path = modules.as_array().and_then(|ms| {
            ms.iter().find_map(|m| {
                let t = m.get("type")?.as_str()?;
                t.ends_with(".Pooling")
                    .then(|| m.get("path")?.as_str())
                    .flatten()
            })
        });
        let Some(path) = path else {
            return Ok(Pooling::Mean);
        };
        // (a path that leaves the directory is not followed)
        if path.split(['/', '\\']).any(|c| c == "..") {
            return Err(Error::Format(format!(
                "modules.json names the Pooling module's folder {path:?}, outside the model"
            )));
        }
        let cfg_path = dir.join(path).join("config.json");
        let Some(cfg) = read(cfg_path.clone())? else {
            return Err(Error::Format(format!(
                "modules.json names a Pooling module, but {} is missing",
                cfg_path.display()
            )));
        };
        let on = |k: &str| cfg.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        let modes: Vec<&str> = [
            "pooling_mode_cls_token",
            "pooling_mode_mean_tokens",
            "pooling_mode_lasttoken",
            "pooling_mode_max_tokens",
            "pooling_mode_mean_sqrt_len_tokens",
            "pooling_mode_weightedmean_tokens",
        ]
        .into_iter()
        .filter(|k| on(k))
        .collect();
        match modes.as_slice() {
            ["pooling_mode_cls_token"] => Ok(Pooling::Cls),
            ["pooling_mode_mean_tokens"] => Ok(Pooling::Mean),
            ["pooling_mode_lasttoken"] => Ok(Pooling::Last),
            [] => Err(Error::Format(format!(
                "{} turns on no pooling mode",
                cfg_path.display()
            ))),
            m => Err(Error::Invalid(format!(
                "{} asks for {}: hearth pools by one of cls_token, mean_tokens or lasttoken",
                cfg_path.display(),
                m.join(" + ")
            ))),
        }
    }

    /// The name in logs and the README.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
        }
    }
}

/// One sequence's pooling, fed its hidden states chunk by chunk.
#[derive(Clone, Debug)]
pub struct Pooler {
    pooling: Pooling,
    n_embd: usize,
    acc: Vec<f64>,
    rows: usize,
}

impl Pooler {
    /// An empty pooler for states of `n_embd` values.
    pub fn new(pooling: Pooling, n_embd: usize) -> Pooler {
        Pooler {
            pooling,
            n_embd,
            acc: vec![0.0; n_embd],
            rows: 0,
        }
    }

    /// Start again (the sequence is recomputed from its start).
    pub fn reset(&mut self) {
        self.acc.iter_mut().for_each(|a| *a = 0.0);
        self.rows = 0;
    }

    /// Take the states `rows` (`[k, n_embd]`) of positions `pos0..pos0 + k` of a sequence of
    /// `len` tokens.
    pub fn add(&mut self, pos0: usize, rows: &[f32], len: usize) {
        let e = self.n_embd;
        let k = rows.len() / e.max(1);
        let take = |acc: &mut Vec<f64>, row: &[f32]| {
            for (a, &x) in acc.iter_mut().zip(row) {
                *a = x as f64;
            }
        };
        match self.pooling {
            Pooling::Mean => {
                for row in rows.chunks_exact(e) {
                    for (a, &x) in self.acc.iter_mut().zip(row) {
                        *a += x as f64;
                    }
                }
                self.rows += k;
            }
            Pooling::Cls if pos0 == 0 && k > 0 => {
                take(&mut self.acc, &rows[..e]);
                self.rows = 1;
            }
            Pooling::Last if k > 0 && pos0 + k == len => {
                take(&mut self.acc, &rows[(k - 1) * e..]);
                self.rows = 1;
            }
            _ => {}
        }
    }

    /// The pooled vector, L2-normalised (as OpenAI's embeddings are).
    pub fn finish(&self) -> Vec<f32> {
        let d = self.rows.max(1) as f64;
        let v: Vec<f64> = self.acc.iter().map(|a| a / d).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let s = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        v.iter().map(|x| (x * s) as f32).collect()
    }
}

impl Engine {
    /// How this model pools its hidden states into an embedding (see [`Pooling::of`]).
    pub fn pooling(&self) -> Result<Pooling> {
        Pooling::of(&self.files)
    }

    /// The embedding of `tokens` (from an empty context): their final hidden states pooled
    /// as the model defines and L2-normalised, `[n_embd]`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let pooling = self.pooling()?;
        self.check_context(tokens.len(), "the number of tokens")?;
        let mut state = self.model.new_state(tokens.len())?;
        let mut hidden = Vec::new();
        self.model.forward_hidden(tokens, &mut state, &mut hidden)?;
        let mut p = Pooler::new(pooling, self.model.cfg.n_embd);
        p.add(0, &hidden, tokens.len());
        Ok(p.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_by_chunks_is_pooling_of_the_whole() {
        // 5 rows of 3, fed as 2 + 3
        let rows: Vec<f32> = (0..15).map(|i| (i as f32 * 0.7).sin()).collect();
        for pooling in [Pooling::Mean, Pooling::Cls, Pooling::Last] {
            let mut whole = Pooler::new(pooling, 3);
            whole.add(0, &rows, 5);
            let mut parts = Pooler::new(pooling, 3);
            parts.add(0, &rows[..6], 5);
            parts.add(2, &rows[6..], 5);
            assert_eq!(whole.finish(), parts.finish(), "{pooling:?}");
        }
    }

    #[test]
    fn pooled_vectors_are_the_right_rows_normalised() {
        let rows = [3.0, 4.0, 0.0, 2.0, 6.0, 8.0];
        let pool = |p| {
            let mut q = Pooler::new(p, 2);
            q.add(0, &rows, 3);
            q.finish()
        };
        assert_eq!(pool(Pooling::Cls), vec![0.6, 0.8]);
        assert_eq!(pool(Pooling::Last), vec![0.6, 0.8]);
        // mean (3, 14/3) / |.|
        let m = pool(Pooling::Mean);
        let n = (9.0f64 + 196.0 / 9.0).sqrt();
        assert!(
            (m[0] as f64 - 3.0 / n).abs() < 1e-6 && (m[1] as f64 - 14.0 / 3.0 / n).abs() < 1e-6
        );
        // a zero vector stays zero instead of becoming NaN
        let mut z = Pooler::new(Pooling::Mean, 2);
        z.add(0, &[0.0, 0.0], 1);
        assert_eq!(z.finish(), vec![0.0, 0.0]);
    }

    #[test]
    fn llama_pooling_types() {
        assert_eq!(Pooling::from_llama(1, "k").unwrap(), Pooling::Mean);
        assert_eq!(Pooling::from_llama(2, "k").unwrap(), Pooling::Cls);
        assert_eq!(Pooling::from_llama(3, "k").unwrap(), Pooling::Last);
        assert!(
            Pooling::from_llama(0, "k")
                .unwrap_err()
                .to_string()
                .contains("none")
        );
        assert!(
            Pooling::from_llama(4, "k")
                .unwrap_err()
                .to_string()
                .contains("rerank")
        );
        assert!(Pooling::from_llama(9, "k").is_err());
    }

    #[test]
    fn sentence_transformers_pooling_config() {
        let dir = std::env::temp_dir().join(format!("hearth-pool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        // no modules.json: mean
        assert_eq!(Pooling::sentence_transformers(&dir).unwrap(), Pooling::Mean);
        std::fs::write(
            dir.join("modules.json"),
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        )
        .unwrap();
        let cfg = |flags: &str| {
            std::fs::write(
                dir.join("1_Pooling/config.json"),
                format!(r#"{{"word_embedding_dimension": 64, {flags}}}"#),
            )
            .unwrap();
            Pooling::sentence_transformers(&dir)
        };
        assert_eq!(
            cfg(r#""pooling_mode_lasttoken": true, "pooling_mode_mean_tokens": false"#).unwrap(),
            Pooling::Last
        );
        assert_eq!(
            cfg(r#""pooling_mode_cls_token": true"#).unwrap(),
            Pooling::Cls
        );
        assert_eq!(
            cfg(r#""pooling_mode_mean_tokens": true"#).unwrap(),
            Pooling::Mean
        );
        assert!(
            cfg(r#""pooling_mode_max_tokens": true"#)
                .unwrap_err()
                .to_string()
                .contains("max_tokens")
        );
        assert!(cfg(r#""pooling_mode_mean_tokens": false"#).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
