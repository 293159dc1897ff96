//! `hearth quantize IN OUT TYPE`: the command line around `hearth_convert`.
use anyhow::{Context, Result, bail};
use clap::Args;
use hearth_convert::{Event, Ftype, Imatrix, Options};
use hearth_core::DType;
use std::path::PathBuf;

/// Arguments of `hearth quantize`.
#[derive(Args)]
pub struct QuantizeArgs {
    /// Input: a GGUF file (any type) or a Hugging Face directory (f32/f16/bf16 safetensors)
    input: PathBuf,
    /// Output GGUF file
    output: PathBuf,
    /// A type (Q8_0, Q6_K, Q4_K, IQ4_XS, F16, ...) or a llama.cpp mix (Q4_K_M, Q3_K_M, Q2_K_S, ...)
    #[arg(value_name = "TYPE")]
    ty: String,
    /// Per-tensor type, REGEX=TYPE (repeatable; the first regex that matches a tensor's name wins)
    #[arg(long = "tensor-type", value_name = "REGEX=TYPE")]
    tensor_type: Vec<String>,
    /// Importance matrix from llama-imatrix (GGUF or legacy .dat)
    #[arg(long)]
    imatrix: Option<PathBuf>,
    /// Allow requantizing tensors that are already quantized (quality suffers)
    #[arg(long)]
    allow_requantize: bool,
    /// Give every quantized tensor TYPE's default type: no per-tensor mix rules
    #[arg(long)]
    pure: bool,
    /// Threads (0: all cores)
    #[arg(short = 't', long, default_value_t = 0)]
    threads: usize,
}

/// Run `hearth quantize`.
pub fn quantize(a: QuantizeArgs) -> Result<()> {
    let ftype = Ftype::parse(&a.ty)?;
    let mut overrides = Vec::new();
    for s in &a.tensor_type {
        let Some((re, t)) = s.rsplit_once('=') else {
            bail!("--tensor-type {s:?}: expected REGEX=TYPE");
        };
        let t = DType::from_name(t)
            .filter(|t| hearth_quant::quantize::can_quantize(*t))
            .with_context(|| format!("--tensor-type {s:?}: {t} is not a type hearth can write"))?;
        let re =
            regex::Regex::new(re).with_context(|| format!("--tensor-type {s:?}: bad regex"))?;
        overrides.push((re, t));
    }
    let imatrix = match &a.imatrix {
        Some(p) => {
            let m = Imatrix::load(p)?;
            eprintln!(
                "imatrix: {} entries from {} ({} chunks)",
                m.entries.len(),
                p.display(),
                m.chunk_count
            );
            Some(m)
        }
        None => None,
    };
    let threads = if a.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        a.threads
    };
    if a.output.exists() && same_file(&a.input, &a.output) {
        bail!("the output {} is the input", a.output.display());
    }
    let opts = Options {
        ftype,
        overrides,
        imatrix,
        allow_requantize: a.allow_requantize,
        pure: a.pure,
        threads,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {percent:>3}% {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = |e: Event| match e {
        Event::Start { elements } => bar.set_length(elements),
        Event::Tensor(p) => bar.set_message(format!("{} {} -> {}", p.name, p.from, p.to)),
        Event::Done(n) => bar.inc(n),
    };
    let t0 = std::time::Instant::now();
    let (planned, size) = hearth_convert::quantize(&a.input, &a.output, &opts, &progress)?;
    bar.finish_and_clear();
    let mut counts: Vec<(DType, usize)> = Vec::new();
    for p in &planned {
        match counts.iter_mut().find(|c| c.0 == p.to) {
            Some(c) => c.1 += 1,
            None => counts.push((p.to, 1)),
        }
    }
    let mix: Vec<String> = counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
    eprintln!(
        "wrote {} ({}, {:.2} MiB, tensors: {}) in {:.1}s",
        a.output.display(),
        ftype.name(),
        size as f64 / (1 << 20) as f64,
        mix.join(", "),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
