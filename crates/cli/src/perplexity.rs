//! `hearth perplexity`: the command line over `hearth_engine::ppl`.
use crate::Common;
use anyhow::{Context, Result, bail};
use clap::Args;
use hearth_engine::ppl::{ChunkReport, LogitsBase, PplOpts, perplexity};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub common: Common,
    /// The text (optional with --kl-divergence, whose file holds the tokens; when given, it
    /// must tokenize to them)
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// Tokens per window (default 512; with --kl-divergence, the base file's)
    #[arg(short = 'c', long)]
    pub ctx: Option<usize>,
    /// Most windows to evaluate (default: all the text holds)
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Tokens per forward pass
    #[arg(short = 'b', long, default_value_t = 512)]
    pub batch: usize,
    /// Save the log-probabilities (llama-perplexity's --kl-divergence-base format)
    #[arg(long, value_name = "FILE")]
    pub save_logits: Option<PathBuf>,
    /// Compare with saved log-probabilities (from hearth or llama-perplexity): KL divergence,
    /// Δppl, same top token
    #[arg(long, value_name = "FILE")]
    pub kl_divergence: Option<PathBuf>,
}

fn read_text(p: &PathBuf) -> Result<String> {
    let b = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
    String::from_utf8(b).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", p.display()))
}

pub fn run(a: PerplexityArgs) -> Result<()> {
    let mut opts = PplOpts {
        n_chunks: a.chunks,
        n_batch: a.batch,
        save_logits: a.save_logits.clone(),
        kl_base: a.kl_divergence.clone(),
        ..Default::default()
    };
    if let Some(c) = a.ctx {
        opts.n_ctx = c;
    }
    // check the base file before loading the model
    let base = match &a.kl_divergence {
        Some(p) => Some(LogitsBase::open(p)?),
        None => None,
    };
    if let (Some(b), Some(c)) = (&base, a.ctx)
        && b.n_ctx != c
    {
        bail!(
            "{} was computed with windows of {} tokens, not --ctx {c}",
            a.kl_divergence
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            b.n_ctx
        );
    }
    let text = match (&a.file, &base) {
        (Some(f), _) => Some(read_text(f)?),
        (None, Some(_)) => None,
        (None, None) => bail!("give the text with --file"),
    };
    let eng = crate::load(&a.common)?;
    let tokens = match &text {
        Some(t) => eng.tokenizer.encode(t, true)?,
        None => Vec::new(),
    };
    if let (Some(b), Some(_)) = (&base, &text) {
        let n = b.tokens.len();
        if tokens.len() < n || tokens[..n] != b.tokens[..] {
            let at = tokens
                .iter()
                .zip(&b.tokens)
                .take_while(|(x, y)| x == y)
                .count();
            bail!(
                "the text does not tokenize to the {n} tokens of {} (they differ from token {at}): another text or another tokenizer",
                a.kl_divergence
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
    }
    drop(base);
    if tokens.is_empty() && opts.kl_base.is_none() {
        bail!("the text is empty");
    }
    let kld = opts.kl_base.is_some();
    if kld {
        println!("chunk        PPL      ln(PPL(Q)/PPL(base))   KL divergence   same top p");
    }
    let mut out = std::io::stdout();
    let rep = perplexity(&eng, &tokens, &opts, |c: &ChunkReport| {
        match c.kld {
            Some((k, lr, top)) => {
                let _ = writeln!(
                    out,
                    "{:5} {:10.4} {:18.5} {:17.5} {:11.3} %",
                    c.chunk,
                    c.ppl,
                    lr,
                    k,
                    100.0 * top
                );
            }
            None => {
                let _ = write!(out, "[{}]{:.4},", c.chunk, c.ppl);
            }
        }
        let _ = out.flush();
    })?;
    println!();
    eprintln!(
        "{} chunks of {} tokens, {} predictions counted",
        rep.n_chunk, rep.n_ctx, rep.count
    );
    if let Some(k) = &rep.kld {
        println!(
            "Mean PPL(Q)                : {:10.6} ± {:10.6}",
            rep.ppl.value, rep.ppl.err
        );
        println!(
            "Mean PPL(base)             : {:10.6} ± {:10.6}",
            k.ppl_base.value, k.ppl_base.err
        );
        println!(
            "Mean ln(PPL(Q)/PPL(base))  : {:10.6} ± {:10.6}",
            k.ln_ratio.value, k.ln_ratio.err
        );
        println!(
            "Δppl (PPL(Q)-PPL(base))    : {:10.6} ± {:10.6}",
            k.ppl_diff.value, k.ppl_diff.err
        );
        println!("Mean KLD: {:.6} ± {:.6}", k.mean.value, k.mean.err);
        println!("Maximum KLD: {:.6}", k.max);
        println!("99.9%   KLD: {:.6}", k.p999);
        println!("99.0%   KLD: {:.6}", k.p99);
        println!("90.0%   KLD: {:.6}", k.p90);
        println!("Median  KLD: {:.6}", k.median);
        println!(
            "RMS Δp    : {:.3} ± {:.3} %",
            100.0 * k.rms_dp.value,
            100.0 * k.rms_dp.err
        );
        println!(
            "Same top p: {:.3} ± {:.3} %",
            100.0 * k.same_top.value,
            100.0 * k.same_top.err
        );
    }
    println!("PPL: {:.4} +/- {:.5}", rep.ppl.value, rep.ppl.err);
    Ok(())
}
