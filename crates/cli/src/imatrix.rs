//! `hearth imatrix`: the command line over `hearth_engine::imatrix`.
use anyhow::{Context, Result, bail};
use clap::Args;
use hearth_engine::Engine;
use hearth_engine::imatrix::{Collector, ImatrixOpts};
use hearth_formats::imatrix::{Imatrix, read_imatrix, write_imatrix_gguf, write_imatrix_legacy};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct ImatrixArgs {
    /// .gguf file, HF directory, alias (smollm2) or ORG/REPO[:QUANT] from the Hugging Face hub
    pub model: String,
    /// The calibration text (optional with --in-file: then the files are only merged)
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// An importance matrix to add to this one (either of llama.cpp's formats; may be given
    /// several times, as llama-imatrix's --in-file)
    #[arg(long = "in-file")]
    pub in_files: Vec<PathBuf>,
    /// Where to compute: auto, cpu, vulkan or vulkan:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Output file: llama.cpp's GGUF imatrix format, or its legacy format when the name ends
    /// in .dat
    #[arg(short = 'o', long, default_value = "imatrix.gguf")]
    pub output: PathBuf,
    /// Tokens per window
    #[arg(short = 'c', long, default_value_t = 512)]
    pub ctx: usize,
    /// Most windows (default: all the text holds)
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Tokens per forward pass
    #[arg(short = 'b', long, default_value_t = 512)]
    pub batch: usize,
    /// Worker threads (0: all cores)
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Also collect output.weight (llama-imatrix's --process-output)
    #[arg(long)]
    pub process_output: bool,
}

pub fn run(a: ImatrixArgs) -> Result<()> {
    let mut m = Imatrix::default();
    for f in &a.in_files {
        let o = read_imatrix(f).with_context(|| format!("--in-file {}", f.display()))?;
        m.merge(&o)
            .with_context(|| format!("--in-file {}", f.display()))?;
    }
    match &a.file {
        Some(f) => m.merge(&collect(&a, f)?)?,
        None if a.in_files.is_empty() => {
            bail!("give a text (--file) or files to merge (--in-file)")
        }
        None => {}
    }
    if m.entries.is_empty() {
        bail!("no weight matrix was seen: nothing to write");
    }
    let legacy = a.output.extension().is_some_and(|e| e == "dat");
    if legacy {
        write_imatrix_legacy(&a.output, &m)?;
    } else {
        write_imatrix_gguf(&a.output, &m)?;
    }
    let partial = m
        .entries
        .iter()
        .filter(|(_, e)| e.counts.contains(&0.0))
        .count();
    println!(
        "wrote {} entries from {} chunks of {} tokens to {}{}",
        m.entries.len(),
        m.chunk_count,
        m.chunk_size,
        a.output.display(),
        if partial > 0 {
            format!(" ({partial} with experts that no token was routed to)")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// The importance matrix of the model over the text `file`.
fn collect(a: &ImatrixArgs, file: &std::path::Path) -> Result<Imatrix> {
    let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let text = String::from_utf8(text)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", file.display()))?;
    let path = crate::pull::resolve(&a.model)?;
    // the collector sees every op on the way to the backend
    let col = Arc::new(Collector::new(
        crate::backend(&a.device, a.threads)?,
        a.process_output,
    ));
    let eng = Engine::load(&path, col.clone())
        .with_context(|| format!("cannot load {}", path.display()))?;
    let tokens = eng.tokenizer.encode(&text, true)?;
    if tokens.is_empty() {
        bail!("the text is empty");
    }
    let opts = ImatrixOpts {
        n_ctx: a.ctx,
        n_chunks: a.chunks,
        n_batch: a.batch,
    };
    let t0 = std::time::Instant::now();
    let n = hearth_engine::imatrix::run(&eng, &tokens, &opts, |done, total| {
        eprint!(
            "\rchunk {done}/{total} ({:.1} s)",
            t0.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    })?;
    eprintln!();
    Ok(col.imatrix(vec![file.display().to_string()], n as u32, a.ctx as u32))
}
