//! The `hearth` command line.
mod hub;
mod imatrix;
mod perplexity;
mod pull;
mod quantize;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use hearth_core::Backend;
use hearth_engine::{Engine, Placement, Sampler, SamplingParams};
use hearth_formats::{ModelFiles, Source};
use hearth_tokenizer::{ChatMessage, Tokenizer};
use std::io::{BufRead, Write};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "hearth",
    version,
    about = "Run open-weight language models on your own hardware"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Chat with a model; with a prompt, answer it and exit.
    Run(RunArgs),
    /// Print the raw next-token logits for each position, as JSON lines.
    Logits(LogitsArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(TokenizeArgs),
    /// Print the embedding of each text (pooled as the model defines, L2-normalised), as
    /// JSON lines.
    Embed(EmbedArgs),
    /// Describe a model file.
    Inspect {
        /// .gguf file, HF directory, alias (smollm2) or ORG/REPO[:QUANT] from the Hugging Face hub
        model: String,
        /// The device to load it on (cpu, vulkan, vulkan:N, auto): the plan says what each
        /// device holds
        #[arg(long, default_value = "auto")]
        device: String,
        /// Context length for the plan's per-sequence state
        #[arg(long, default_value_t = 4096)]
        ctx: usize,
        #[command(flatten)]
        place: PlaceArgs,
        #[command(flatten)]
        kv: KvArgs,
    },
    /// List the devices hearth can run on.
    Devices {
        /// Also run the conformance suite (every op against the CPU backend) on each
        /// Vulkan device
        #[arg(long)]
        check: bool,
    },
    /// Measure prompt and generation speed (like llama-bench).
    Bench(BenchArgs),
    /// Download a model: ORG/REPO[:QUANT] from the Hugging Face hub into its cache, or an
    /// alias (smollm2) into the model directory.
    Pull {
        /// ORG/REPO[:QUANT] or alias
        model: String,
    },
    /// List the models in the Hugging Face hub cache.
    List,
    /// Remove a model from the Hugging Face hub cache (blobs nothing else links to).
    Rm {
        /// ORG/REPO (every file) or ORG/REPO:QUANT
        model: String,
    },
    /// Will a model fit, and how fast will it run? Reads only its headers (range requests).
    Fit {
        /// ORG/REPO[:QUANT], or a local file, directory or alias
        model: String,
        /// Context length to plan for
        #[arg(long, default_value_t = 4096)]
        ctx: usize,
        /// Threads for the bandwidth probe (0: all cores)
        #[arg(short = 't', long, default_value_t = 0)]
        threads: usize,
        /// The device to plan for (cpu, vulkan, vulkan:N, auto: the first Vulkan GPU, else
        /// the CPU), with the placement flags; nothing is uploaded to it
        #[arg(long, default_value = "auto")]
        device: String,
        #[command(flatten)]
        place: PlaceArgs,
        #[command(flatten)]
        kv: KvArgs,
    },
    /// Serve an OpenAI-compatible HTTP API (chat/completions, completions, models, ...).
    Serve(ServeArgs),
    /// Quantize a GGUF or Hugging Face model to a GGUF of a type or llama.cpp mix.
    Quantize(quantize::QuantizeArgs),
    /// Perplexity of a text, as llama-perplexity computes it; KL divergence against saved
    /// log-probabilities.
    Perplexity(perplexity::PerplexityArgs),
    /// Compute an importance matrix (llama-imatrix's GGUF format) for quantizing.
    Imatrix(imatrix::ImatrixArgs),
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Address to bind (localhost by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to bind.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Context size per sequence (0: the model's, at most 4096).
    #[arg(short = 'c', long, default_value_t = 0)]
    ctx: usize,
    /// Most requests generating at once.
    #[arg(short = 'p', long, default_value_t = 16)]
    parallel: usize,
    /// Tokens per batched forward pass (decode steps plus prompt chunks).
    #[arg(short = 'b', long, default_value_t = 256)]
    batch: usize,
    /// KV-cache memory budget in MiB.
    #[arg(long, default_value_t = 2048)]
    kv_mib: usize,
    /// Requests that may wait for a slot before the server answers 429.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Seconds a client may take to send a request's head before its connection is closed.
    #[arg(long, default_value_t = 10.0)]
    timeout_head: f64,
    /// Seconds a client may take to send a request's body (then 408).
    #[arg(long, default_value_t = 30.0)]
    timeout_body: f64,
    /// Most open connections; more are closed as soon as they are accepted.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// Require `Authorization: Bearer KEY` (or set HEARTH_API_KEY).
    #[arg(long, env = "HEARTH_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The model's name in the API (default: the name given on the command line).
    #[arg(long)]
    alias: Option<String>,
    /// A Jinja chat template file to use instead of the model's own.
    #[arg(long, value_name = "FILE")]
    chat_template_file: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct Common {
    /// .gguf file, HF directory, alias (smollm2) or ORG/REPO[:QUANT] from the Hugging Face hub
    model: String,
    /// Worker threads (0: all cores)
    #[arg(short = 't', long, default_value_t = 0)]
    threads: usize,
    /// Where to run: cpu, vulkan or vulkan:N (see `hearth devices`), or auto (the first
    /// Vulkan device that is a GPU, else the CPU). On a GPU, what the placement flags leave
    /// open is fitted to its free memory: routed experts to RAM first, then whole layers
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    place: PlaceArgs,
    #[command(flatten)]
    kv: KvArgs,
}

/// The KV cache's types.
#[derive(Args, Clone)]
struct KvArgs {
    /// KV cache type for keys: f32, f16, bf16, q8_0, q4_0, q5_0, iq4_nl or tq3 (hearth's
    /// rotated 3-bit type); the quantized types are stored Hadamard-rotated
    #[arg(long = "cache-type-k", visible_alias = "ctk", default_value = "f32")]
    cache_type_k: String,
    /// KV cache type for values (the same choices); models with latent attention (MLA)
    /// keep one latent row in the keys' type
    #[arg(long = "cache-type-v", visible_alias = "ctv", default_value = "f32")]
    cache_type_v: String,
}

impl Default for KvArgs {
    fn default() -> Self {
        KvArgs {
            cache_type_k: "f32".into(),
            cache_type_v: "f32".into(),
        }
    }
}

impl KvArgs {
    /// The types, parsed.
    fn types(&self) -> Result<(hearth_core::KvType, hearth_core::KvType)> {
        let k = hearth_core::KvType::parse(&self.cache_type_k).context("--cache-type-k")?;
        let v = hearth_core::KvType::parse(&self.cache_type_v).context("--cache-type-v")?;
        Ok((k, v))
    }
}

/// Which weights stay in RAM, computed by the CPU, when the model runs on a GPU.
#[derive(Args, Clone, Default)]
struct PlaceArgs {
    /// Keep every MoE layer's routed experts in RAM
    #[arg(long)]
    cpu_moe: bool,
    /// Keep the routed experts of the first N MoE layers in RAM
    #[arg(long, default_value_t = 0)]
    n_cpu_moe: usize,
    /// Run only the last N layers on the GPU (the output too when N exceeds the layer
    /// count), as llama.cpp's -ngl
    #[arg(long)]
    gpu_layers: Option<usize>,
    /// REGEX=DEVICE: the blocks whose name matches go to DEVICE (cpu, or the --device);
    /// blocks are token_embd, output, blk.N.attn, blk.N.ffn and blk.N.ffn_exps (the routed
    /// experts), so `exps=cpu` keeps every expert in RAM
    #[arg(long = "override-tensor", visible_alias = "ot")]
    override_tensor: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// The prompt; without it, an interactive chat starts
    prompt: Option<String>,
    /// System prompt
    #[arg(long)]
    system: Option<String>,
    /// Feed the prompt as is, without the chat template
    #[arg(long)]
    raw: bool,
    /// Most tokens to generate per answer
    #[arg(short = 'n', long, default_value_t = 512)]
    max_tokens: usize,
    /// Context size in tokens
    #[arg(short = 'c', long, default_value_t = 4096)]
    ctx: usize,
    /// Sampling temperature (0: greedy)
    #[arg(long, default_value_t = 0.7)]
    temp: f32,
    /// Top-k (0: off)
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Top-p (1: off)
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Min-p (0: off)
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Repetition penalty (1: off)
    #[arg(long, default_value_t = 1.1)]
    repeat_penalty: f32,
    /// Tokens the penalties look back over
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Presence penalty
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// Frequency penalty
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Random seed (default: from the clock)
    #[arg(long)]
    seed: Option<u64>,
    /// Print prompt and generation speed
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Args)]
struct LogitsArgs {
    #[command(flatten)]
    common: Common,
    /// Text to tokenize (BOS added as the model's rules say)
    #[arg(long, conflicts_with = "tokens")]
    prompt: Option<String>,
    /// Comma-separated token ids, used exactly as given
    #[arg(long)]
    tokens: Option<String>,
    /// Top logits to print per position
    #[arg(long, default_value_t = 10)]
    top: usize,
}

#[derive(Args)]
struct EmbedArgs {
    #[command(flatten)]
    common: Common,
    /// The texts (BOS/EOS added as the model's rules say)
    #[arg(required = true)]
    texts: Vec<String>,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    common: Common,
    /// Prompt tokens per pp test (0: skip)
    #[arg(short = 'p', long, default_value_t = 512)]
    n_prompt: usize,
    /// Generated tokens per tg test (0: skip)
    #[arg(short = 'n', long, default_value_t = 128)]
    n_gen: usize,
    /// Repetitions
    #[arg(short = 'r', long, default_value_t = 5)]
    reps: usize,
    /// Tokens already in the KV cache when each test starts, prefilled before the timing
    /// (llama-bench's -d): attention speed at depth
    #[arg(short = 'd', long, default_value_t = 0)]
    depth: usize,
}

#[derive(Args)]
struct TokenizeArgs {
    /// .gguf file, HF directory, alias (smollm2) or ORG/REPO[:QUANT] from the Hugging Face hub
    model: String,
    /// The text (or use --file)
    text: Option<String>,
    /// Read the text from a file
    #[arg(long, conflicts_with = "text")]
    file: Option<std::path::PathBuf>,
    /// Add BOS/EOS as the model's rules say
    #[arg(long)]
    add_special: bool,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Logits(a) => logits(a),
        Cmd::Tokenize(a) => tokenize(a),
        Cmd::Embed(a) => embed(a),
        Cmd::Inspect {
            model,
            device,
            ctx,
            place,
            kv,
        } => inspect(&model, &device, ctx, place, kv),
        Cmd::Devices { check } => devices(check),
        Cmd::Bench(a) => bench(a),
        Cmd::Serve(a) => serve(a),
        Cmd::Quantize(a) => quantize::quantize(a),
        Cmd::Perplexity(a) => perplexity::run(a),
        Cmd::Imatrix(a) => imatrix::run(a),
        Cmd::Pull { model } => match pull::hub_spec(&model) {
            Some(spec) => hub::pull_cmd(&spec),
            None => pull::resolve(&model).map(|p| println!("{}", p.display())),
        },
        Cmd::List => hub::list(),
        Cmd::Rm { model } => match hearth_hub::parse_spec(&model) {
            Some(spec) => hub::rm(&spec),
            None => Err(anyhow::anyhow!(
                "{model}: expected ORG/REPO or ORG/REPO:QUANT (a model in the Hugging Face cache)"
            )),
        },
        Cmd::Fit {
            model,
            ctx,
            threads,
            device,
            place,
            kv,
        } => hub::fit(
            &model,
            ctx,
            &Common {
                model: model.clone(),
                threads,
                device,
                place,
                kv,
            },
        ),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The backend `--device` names; `auto` is the first Vulkan device that is a GPU (discrete
/// or integrated: a CPU-type device such as lavapipe is slower than the CPU backend), else
/// the CPU, with a one-line notice.
fn backend(device: &str, threads: usize) -> Result<Arc<dyn Backend>> {
    let vulkan = |i: usize| -> Result<Arc<dyn Backend>> {
        let v = hearth_vulkan::Vulkan::new(i).with_context(|| format!("--device {device}"))?;
        Ok(Arc::new(v))
    };
    let cpu = || -> Result<Arc<dyn Backend>> { Ok(Arc::new(hearth_cpu::Cpu::new(threads)?)) };
    match device {
        "cpu" => cpu(),
        "auto" if !hearth_vulkan::gpu_possible() => {
            // no GPU device node: the loader is not opened (its drivers cost memory and time)
            eprintln!("hearth: running on the CPU (no GPU device node in /dev)");
            cpu()
        }
        "auto" => {
            let gpu = hearth_vulkan::devices().map(|ds| {
                ds.into_iter()
                    .find(|d| d.kind == "discrete GPU" || d.kind == "integrated GPU")
            });
            match gpu {
                Ok(Some(d)) => match hearth_vulkan::Vulkan::new(d.index) {
                    Ok(v) => Ok(Arc::new(v)),
                    Err(e) => {
                        eprintln!("hearth: running on the CPU (vulkan:{}: {e})", d.index);
                        cpu()
                    }
                },
                Ok(None) => {
                    eprintln!("hearth: running on the CPU (no Vulkan GPU found)");
                    cpu()
                }
                Err(e) => {
                    eprintln!("hearth: running on the CPU ({e})");
                    cpu()
                }
            }
        }
        "vulkan" => vulkan(0),
        d => match d.strip_prefix("vulkan:").map(str::parse::<usize>) {
            Some(Ok(i)) => vulkan(i),
            _ => bail!("--device {d}: expected auto, cpu, vulkan or vulkan:N"),
        },
    }
}

/// The placement flags as the engine takes them.
fn placement_flags(c: &Common) -> Result<Placement> {
    let p = &c.place;
    let mut pl = Placement {
        cpu_moe: p.cpu_moe,
        n_cpu_moe: p.n_cpu_moe,
        gpu_layers: p.gpu_layers,
        overrides: Vec::new(),
    };
    let dev = c.device.to_ascii_lowercase();
    let names = ["gpu", "vulkan", "auto", dev.as_str()];
    for o in &p.override_tensor {
        pl.add_override(o, &names)?;
    }
    Ok(pl)
}

/// The device of each block ([`hearth_engine::Model::load_placed`]'s `place`).
type PlaceFn = Box<dyn Fn(&str, usize) -> usize>;

/// Where a model's blocks go.
struct Placed {
    /// The --device first, then the CPU when the placement uses it.
    devs: Vec<Arc<dyn Backend>>,
    /// The device of each block.
    place: PlaceFn,
    /// What the automatic fit decided, for a GPU.
    fit: Option<hearth_engine::Fitted>,
}

/// [`placement_wrapped`] of backends as they are.
fn placement(c: &Common, files: &ModelFiles, ctx: usize) -> Result<Placed> {
    placement_wrapped(c, files, ctx, |b| b)
}

/// The devices and placement of the flags for a context of `ctx` tokens of the model in
/// `files`, with the --device's backend passed through `wrap` (`hearth fit` plans with one
/// that prepares nothing). On a GPU, what the flags leave open is fitted to its free memory
/// ([`Placement::fit`]).
fn placement_wrapped(
    c: &Common,
    files: &ModelFiles,
    ctx: usize,
    wrap: impl FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend>,
) -> Result<Placed> {
    let main = backend(&c.device, c.threads)?;
    let flags = placement_flags(c)?;
    let Some(budget) = main.memory() else {
        // the CPU holds everything
        return Ok(Placed {
            devs: vec![wrap(main)],
            place: Box::new(|_, _| 0),
            fit: None,
        });
    };
    let (costs, n_layer, reserve) =
        hearth_engine::place::block_costs(files, main.clone(), c.kv.types()?, ctx)?;
    let fit = flags.fit(&costs, n_layer, ctx, reserve as u64, budget);
    let p = fit.placement.clone();
    let mut devs = vec![wrap(main)];
    if p.wants_cpu() {
        devs.push(Arc::new(hearth_cpu::Cpu::new(c.threads)?));
    }
    if p.n_cpu_moe != flags.n_cpu_moe || p.gpu_layers != flags.gpu_layers || !fit.fits {
        eprintln!("hearth: {}", fit_summary(&fit, budget));
    }
    Ok(Placed {
        devs,
        place: Box::new(move |b, n| p.place(b, n)),
        fit: Some(fit),
    })
}

/// One line on an automatic fit: what went to RAM.
fn fit_summary(f: &hearth_engine::Fitted, budget: u64) -> String {
    let p = &f.placement;
    let mut what = Vec::new();
    if p.cpu_moe {
        what.push("every layer's routed experts in RAM".to_string());
    } else if p.n_cpu_moe > 0 {
        what.push(format!(
            "the routed experts of the first {} layers in RAM",
            p.n_cpu_moe
        ));
    }
    if let Some(g) = p.gpu_layers {
        what.push(format!("only the last {g} layers on the GPU"));
    }
    if what.is_empty() {
        what.push("everything on the GPU".into());
    }
    format!(
        "placement: {} ({:.1} of {:.1} MiB of free GPU memory{})",
        what.join(", "),
        f.gpu_bytes as f64 / 1048576.0,
        budget as f64 / 1048576.0,
        if f.fits { "" } else { ": DOES NOT FIT" }
    )
}

/// The context automatic placement plans for where a command sets none.
const FIT_CTX: usize = 4096;

fn load(c: &Common) -> Result<Engine> {
    load_path(c, &pull::resolve(&c.model)?, FIT_CTX)
}

/// [`load`] of a MODEL already resolved to `path`, placed for a context of `ctx` tokens.
fn load_path(c: &Common, path: &std::path::Path, ctx: usize) -> Result<Engine> {
    let (k, v) = c.kv.types()?;
    let files =
        ModelFiles::open(path).with_context(|| format!("cannot load {}", path.display()))?;
    let pl = placement(c, &files, ctx)?;
    drop(files);
    let mut eng = Engine::load_placed(path, pl.devs, &*pl.place)
        .with_context(|| format!("cannot load {}", path.display()))?;
    eng.set_kv_types(k, v)?;
    Ok(eng)
}

/// `hearth devices`: the CPU and every Vulkan device; with `check`, the conformance suite on
/// each.
fn devices(check: bool) -> Result<()> {
    let cpu = hearth_cpu::Cpu::new(0)?;
    println!("cpu          {} threads", cpu.threads());
    match hearth_vulkan::devices() {
        Ok(ds) if ds.is_empty() => println!("(no Vulkan devices)"),
        Ok(ds) => {
            for d in ds {
                let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                println!(
                    "vulkan:{:<5} {} ({}, {:.1} GiB device memory, {:.1} GiB free{}, subgroups of {}, largest buffer {:.1} GiB{})",
                    d.index,
                    d.name,
                    d.kind,
                    gib(d.memory),
                    gib(d.free),
                    if d.budget {
                        ""
                    } else {
                        " (no memory budget: the heap's size)"
                    },
                    d.subgroup,
                    gib(d.max_alloc),
                    match d.coop {
                        0 => String::new(),
                        c => format!(", {c}x{c} f16 cooperative matrices"),
                    }
                );
                if check {
                    let v = hearth_vulkan::Vulkan::new(d.index)?;
                    let r = hearth_conformance::run(&v);
                    println!(
                        "  conformance: {} passed, {} failed, {} skipped",
                        r.passed.len(),
                        r.failed.len(),
                        r.skipped.len()
                    );
                    for f in &r.failed {
                        println!("  FAILED {f}");
                    }
                    if !r.failed.is_empty() {
                        bail!("vulkan:{} failed the conformance suite", d.index);
                    }
                }
            }
        }
        Err(e) => println!("(no Vulkan: {e})"),
    }
    Ok(())
}

fn run(a: RunArgs) -> Result<()> {
    let eng = load_path(&a.common, &pull::resolve(&a.common.model)?, a.ctx)?;
    let params = SamplingParams {
        temperature: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        repeat_last_n: a.repeat_last_n,
        presence_penalty: a.presence_penalty,
        frequency_penalty: a.frequency_penalty,
        seed: a.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        }),
    };
    params.validate().map_err(anyhow::Error::msg)?;
    let mut session = eng.new_session(a.ctx, "--ctx")?;
    warn_past_training(&eng, a.ctx);
    let mut sampler = Sampler::new(params);
    let tmpl = eng.tokenizer.template()?;
    let mut messages: Vec<ChatMessage> = a
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s))
        .collect();
    let mut turn = |prompt: &str,
                    messages: &mut Vec<ChatMessage>,
                    session: &mut hearth_engine::Session|
     -> Result<()> {
        let tokens = if a.raw {
            eng.tokenizer.encode(prompt, true)?
        } else {
            messages.push(ChatMessage::new("user", prompt));
            let text = tmpl.render(messages, true)?;
            eng.tokenizer.encode(&text, true)?
        };
        let mut out = std::io::stdout().lock();
        let (generated, stats) =
            eng.generate_in(session, &tokens, &mut sampler, a.max_tokens, |t| {
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
                true
            })?;
        let _ = writeln!(out);
        messages.push(ChatMessage::new(
            "assistant",
            &eng.tokenizer.decode(&generated),
        ));
        if a.verbose {
            let ps = stats.prompt_tokens as f64 / stats.prompt_time.as_secs_f64().max(1e-9);
            let gs = stats.gen_tokens as f64 / stats.gen_time.as_secs_f64().max(1e-9);
            eprintln!(
                "[prompt: {} tokens, {:.1} t/s | generation: {} tokens, {:.1} t/s | stop: {:?}]",
                stats.prompt_tokens, ps, stats.gen_tokens, gs, stats.stop
            );
        }
        Ok(())
    };
    if let Some(p) = &a.prompt {
        return turn(p, &mut messages, &mut session);
    }
    eprintln!("hearth chat: type a message, or /exit to quit, /reset to start over.");
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages.retain(|m| m.role == "system");
                session.reset();
                continue;
            }
            _ => {}
        }
        if let Err(e) = turn(line, &mut messages, &mut session) {
            eprintln!("error: {e:#}");
            messages.retain(|m| m.role == "system");
            session.reset();
        }
    }
    Ok(())
}

/// A context longer than the model was trained for works, but its answers degrade: say so.
fn warn_past_training(eng: &Engine, n_ctx: usize) {
    let train = eng.model.cfg.n_ctx_train;
    if train > 0 && n_ctx > train {
        eprintln!(
            "warning: a context of {n_ctx} tokens is longer than the {train} this model was trained for"
        );
    }
}

fn bench(a: BenchArgs) -> Result<()> {
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let path = pull::resolve(&a.common.model)?;
    let threads = match a.common.device.as_str() {
        "auto" | "cpu" => hearth_cpu::Cpu::threads_for(a.common.threads),
        _ => 0,
    };
    let (kt, vt) = a.common.kv.types()?;
    let files = ModelFiles::open(&path)?;
    let pl = placement(&a.common, &files, (a.n_prompt + a.n_gen).max(1))?;
    let mut model = hearth_engine::load_model_placed(&files, pl.devs, &*pl.place)?;
    model.set_kv_types(kt, vt)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let opts = hearth_engine::bench::BenchOpts {
        n_prompt: a.n_prompt,
        n_gen: a.n_gen,
        reps: a.reps,
        threads,
        depth: a.depth,
    };
    Ok(hearth_engine::bench::run(&model, &name, &opts)?)
}

fn parse_tokens(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .with_context(|| format!("'{t}' is not a token id"))
        })
        .collect()
}

fn logits(a: LogitsArgs) -> Result<()> {
    let eng = load(&a.common)?;
    let tokens = match (&a.prompt, &a.tokens) {
        (Some(p), None) => eng.tokenizer.encode(p, true)?,
        (None, Some(t)) => parse_tokens(t)?,
        _ => bail!("give exactly one of --prompt or --tokens"),
    };
    if tokens.is_empty() {
        bail!("no tokens to evaluate");
    }
    let logits = eng.logits(&tokens)?;
    let nv = eng.n_vocab();
    let mut out = std::io::stdout().lock();
    for (pos, (&tok, row)) in tokens.iter().zip(logits.chunks_exact(nv)).enumerate() {
        let lse = hearth_engine::logsumexp(row);
        let idx = hearth_engine::top_k(row, a.top);
        let top: Vec<(u32, f32)> = idx.iter().map(|&i| (i, row[i as usize])).collect();
        let line = serde_json::json!({"pos": pos, "token": tok, "top": top, "logsumexp": lse});
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn embed(a: EmbedArgs) -> Result<()> {
    let eng = load(&a.common)?;
    let pooling = eng.pooling()?;
    eprintln!(
        "hearth: {} pooling, {} dimensions",
        pooling.name(),
        eng.model.cfg.n_embd
    );
    let mut out = std::io::stdout().lock();
    for (i, text) in a.texts.iter().enumerate() {
        let tokens = eng.tokenizer.encode(text, true)?;
        if tokens.is_empty() {
            bail!("text {i} has no tokens");
        }
        let v = eng.embed(&tokens)?;
        let line = serde_json::json!({"index": i, "tokens": tokens.len(), "embedding": v});
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    let path = pull::resolve(&a.model)?;
    let files = ModelFiles::open(&path)?;
    let tok = Tokenizer::from_files(&files)?;
    let text = match (&a.text, &a.file) {
        (Some(t), None) => t.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?
        }
        _ => bail!("give the text or --file"),
    };
    let ids = tok.encode(&text, a.add_special)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

fn human(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}K", n / 1e3)
    } else {
        format!("{n}")
    }
}

fn inspect(model: &str, device: &str, ctx: usize, place: PlaceArgs, kv: KvArgs) -> Result<()> {
    let (kt, vt) = kv.types()?;
    let path = pull::resolve(model)?;
    let files = ModelFiles::open(&path)?;
    println!("file:          {}", path.display());
    println!(
        "file size:     {} bytes ({:.1} MiB)",
        files.file_size(),
        files.file_size() as f64 / 1048576.0
    );
    match &files.source {
        Source::Gguf(g) => {
            println!("format:        GGUF v{}", g.version);
            println!("architecture:  {}", g.architecture().unwrap_or("(none)"));
            if let Some(n) = g.get("general.name").and_then(|v| v.as_str()) {
                println!("name:          {n}");
            }
        }
        Source::Hf(h) => {
            println!(
                "format:        Hugging Face safetensors ({} shard(s))",
                h.shards.len()
            );
            println!(
                "architecture:  {}",
                h.config
                    .get("model_type")
                    .and_then(|v| v.as_str())
                    .unwrap_or("(none)")
            );
        }
    }
    println!("tensors:       {}", files.tensors.len());
    let mut mix: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for t in files.tensors.values() {
        let e = mix.entry(t.dtype.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.numel();
    }
    let total: usize = mix.values().map(|v| v.1).sum();
    for (k, (n, e)) in &mix {
        println!(
            "  {k:<8} {n:>5} tensors {:>10} params ({:.1}%)",
            human(*e as f64),
            100.0 * *e as f64 / total.max(1) as f64
        );
    }
    if let Ok(tok) = Tokenizer::from_files(&files) {
        println!(
            "vocabulary:    {} tokens (bos {:?}, eos {:?}, chat template: {})",
            tok.vocab_size(),
            tok.bos,
            tok.eos,
            if tok.chat_template.is_some() {
                "yes"
            } else {
                "no"
            }
        );
    }
    if files.tensors.is_empty() {
        println!("(no tensors: vocabulary-only file)");
        return Ok(());
    }
    let common = Common {
        model: model.to_string(),
        threads: 1,
        device: device.to_string(),
        place,
        kv: kv.clone(),
    };
    let pl = placement(&common, &files, ctx)?;
    let fit = pl.fit.clone();
    let mut m = hearth_engine::load_model_placed(&files, pl.devs, &*pl.place)?;
    m.set_kv_types(kt, vt)?;
    let c = &m.cfg;
    println!(
        "parameters:    {} ({}) total, {} ({}) active per token",
        m.n_params(),
        human(m.n_params() as f64),
        m.n_active_params(),
        human(m.n_active_params() as f64)
    );
    println!("architecture:  {}", c.arch);
    match &c.mla {
        Some(a) => println!(
            "shape:         {} layers, n_embd {}, {} heads with latent attention (kv_lora_rank {}, q_lora_rank {}, nope {} + rope {}, v {}), n_ff {}, vocab {}",
            c.n_layer,
            c.n_embd,
            c.n_head,
            a.kv_lora_rank,
            a.q_lora_rank.map_or("none".to_string(), |r| r.to_string()),
            a.nope,
            a.rope,
            a.v_dim,
            c.n_ff,
            c.n_vocab
        ),
        None => println!(
            "shape:         {} layers, n_embd {}, {} heads / {} kv heads, head_dim {}, n_ff {}, vocab {}",
            c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.head_dim, c.n_ff, c.n_vocab
        ),
    }
    if let Some(d) = c.mla.as_ref().and_then(|m| m.dsa.as_ref()) {
        let own = d.own.iter().filter(|&&o| o).count();
        println!(
            "sparse attn:   DSA, each query attends to its best {} positions (indexer: {} heads of {}, in {} of {} layers{}); its keys are in the KV cache",
            d.top_k,
            d.n_head,
            d.head_dim,
            own,
            c.n_layer,
            if own < c.n_layer {
                ", the others reuse its choice"
            } else {
                ""
            }
        );
    }
    let v4 = m.v4_summary();
    if let Some(e) = c.moe.as_ref().filter(|_| v4.is_none()) {
        println!(
            "experts:       {} routed, {} used per token, {:?} scores{}{}{}, {} MoE layers of {}",
            e.n_expert,
            e.n_used,
            e.gating,
            if e.norm { ", renormalised" } else { "" },
            if e.scale != 1.0 {
                format!(", scaled by {}", e.scale)
            } else {
                String::new()
            },
            if e.n_group > 1 {
                format!(
                    ", {} of {} groups ({:?})",
                    e.topk_group, e.n_group, e.group_score
                )
            } else {
                String::new()
            },
            m.n_moe_layers(),
            c.n_layer
        );
    }
    println!("context:       {} tokens (training)", c.n_ctx_train);
    if let Some(w) = c.sliding_window.filter(|_| v4.is_none()) {
        let n = (0..c.n_layer).filter(|&i| c.window(i).is_some()).count();
        println!(
            "attention:     sliding window of {w} on {n} of {} layers",
            c.n_layer
        );
    }
    println!(
        "rope:          theta {}, dim {}, {:?}, {:?}",
        c.rope.theta, c.rope.dim, c.rope.style, c.rope.scaling
    );
    match &v4 {
        Some(lines) => lines.iter().for_each(|l| println!("{l}")),
        None => println!(
            "KV cache:      {} bytes/token in f32, {} bytes/token in 16-bit",
            c.kv_bytes_per_token(4),
            c.kv_bytes_per_token(2)
        ),
    }
    let per_tok = m.kv_pool_bytes_per_token();
    println!(
        "KV cache:      {per_tok} bytes/token as keys {} / values {}: {:.1} MiB at {ctx} tokens",
        kt.name(),
        vt.name(),
        per_tok as f64 * ctx as f64 / 1048576.0
    );
    if c.linear.is_none() && v4.is_none() && m.state_bytes_per_seq() > 0 {
        println!(
            "linear attn:   {} bytes of fixed-size state per sequence in f32 (lightning \
             attention), whatever its length",
            m.state_bytes_per_seq()
        );
    }
    if let Some(l) = &c.linear {
        let n = l.layers.iter().filter(|&&x| x).count();
        println!(
            "linear attn:   Gated DeltaNet on {n} of {} layers ({} key / {} value heads of {} / {}): \
             {} bytes of state per sequence in f32, whatever its length",
            c.n_layer,
            l.n_k_heads,
            l.n_v_heads,
            l.k_dim,
            l.v_dim,
            m.state_bytes_per_seq()
        );
    }
    println!(
        "read/token:    {:.1} MiB of weights per decoded token",
        m.bytes_per_token() as f64 / 1048576.0
    );
    if let (Some(f), Some(b)) = (&fit, m.plan().first().and_then(|d| d.memory)) {
        println!("{}", fit_summary(f, b));
    }
    print_plan(&m.plan(), ctx);
    Ok(())
}

/// Bytes per device for a context of `ctx` tokens, and the largest context that fits.
fn print_plan(plan: &[hearth_engine::DevicePlan], ctx: usize) {
    let mib = |b: f64| b / 1048576.0;
    println!("plan for a context of {ctx} tokens:");
    let mut largest: Option<usize> = None;
    for d in plan {
        let kv = d.kv_bytes_per_token as f64 * ctx as f64 + d.state_bytes_per_seq as f64;
        let mem = d.memory.or_else(hearth_engine::available_memory);
        let fit = match mem {
            Some(m) => {
                // weights read in place take host memory, not the device's
                let free = m as f64 - d.weight_bytes.saturating_sub(d.in_place_bytes) as f64;
                if d.kv_bytes_per_token > 0 {
                    let free = free - d.state_bytes_per_seq as f64;
                    let n = (free.max(0.0) / d.kv_bytes_per_token as f64) as usize;
                    largest = Some(largest.map_or(n, |l| l.min(n)));
                }
                format!(
                    "{} of {:.1} MiB{}",
                    if free >= kv { "fits" } else { "DOES NOT FIT" },
                    mib(m as f64),
                    if d.memory.is_none() { " available" } else { "" }
                )
            }
            None => "memory unknown".into(),
        };
        println!(
            "  {:<40} weights {:>9.1} MiB, state {:>8.1} MiB ({} B/token): {fit}",
            d.name,
            mib(d.weight_bytes as f64),
            mib(kv),
            d.kv_bytes_per_token
        );
        if d.in_place_bytes > 0 {
            println!(
                "  {:<40} ({:.1} MiB of the weights read in place from the file in host memory)",
                "",
                mib(d.in_place_bytes as f64)
            );
        }
    }
    if let Some(n) = largest {
        println!("  largest context that fits: {n} tokens (one sequence)");
    }
}

fn serve(a: ServeArgs) -> Result<()> {
    let path = pull::resolve(&a.common.model)?;
    let eng = load_path(&a.common, &path, if a.ctx == 0 { FIT_CTX } else { a.ctx })?;
    let train_ctx = eng.model.cfg.n_ctx_train;
    let n_ctx = match a.ctx {
        0 if train_ctx > 0 => train_ctx.min(4096),
        0 => 4096,
        c => c,
    };
    warn_past_training(&eng, n_ctx);
    let secs = |v: f64, flag: &str| {
        if v.is_finite() && v > 0.0 && v <= 86400.0 {
            Ok(std::time::Duration::from_secs_f64(v))
        } else {
            Err(anyhow::anyhow!(
                "{flag} must be a number of seconds in (0, 86400], not {v}"
            ))
        }
    };
    let head_timeout = secs(a.timeout_head, "--timeout-head")?;
    let body_timeout = secs(a.timeout_body, "--timeout-body")?;
    if a.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    let kv_bytes = a.kv_mib.checked_mul(1 << 20).ok_or_else(|| {
        anyhow::anyhow!(
            "--kv-mib {} is larger than this machine's address space",
            a.kv_mib
        )
    })?;
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let model_id = a.alias.clone().unwrap_or_else(|| a.common.model.clone());
    let opts = hearth_server::Options {
        host: a.host,
        port: a.port,
        n_ctx,
        parallel: a.parallel,
        batch_tokens: a.batch,
        kv_bytes,
        page_size: 16,
        max_queue: a.queue,
        api_key: a.api_key.filter(|k| !k.is_empty()),
        model_id,
        aliases: vec![a.common.model, file, stem],
        body_limit: 4 << 20,
        head_timeout,
        body_timeout,
        max_connections: a.max_connections,
        chat_template: match &a.chat_template_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("--chat-template-file {}", f.display()))?,
            ),
            None => None,
        },
    };
    // serve checks --ctx, --parallel, --batch and --kv-mib against the model and the memory
    // before it allocates anything
    hearth_server::serve(eng, opts)?;
    Ok(())
}
