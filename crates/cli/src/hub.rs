//! Models from the Hugging Face hub: `pull ORG/REPO[:QUANT]`, `list`, `rm`, and `fit`, which
//! plans a model from its headers (read with range requests) before anything is downloaded.
use anyhow::{Context, Result};
use hearth_core::Backend;
use hearth_formats::{ModelFiles, Source};
use hearth_hub::{Hub, Kind, RepoFile, Spec, remote};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Fetch a hub model into the cache (nothing when it is there) and say what was chosen.
pub fn pull(spec: &Spec) -> Result<hearth_hub::Pulled> {
    let hub = Hub::from_env();
    let p = hub
        .pull(spec)
        .with_context(|| format!("{spec} (a Hugging Face repository, ORG/REPO[:QUANT])"))?;
    if let Some(n) = &p.selection.note {
        eprintln!("hearth: {n}");
    }
    Ok(p)
}

/// `hearth pull ORG/REPO[:QUANT]`: the path to open, on standard output.
pub fn pull_cmd(spec: &Spec) -> Result<()> {
    let p = pull(spec)?;
    let size: u64 = p.selection.files.iter().map(|f| f.size).sum();
    let what = match &p.selection.kind {
        Kind::Gguf { quant, .. } => format!("{}:{quant}", spec.repo),
        Kind::Safetensors => format!("{} (safetensors)", spec.repo),
    };
    eprintln!(
        "hearth: {what}: {} file(s), {:.1} MiB, {}",
        p.selection.files.len(),
        mib(size),
        if p.downloaded == 0 {
            "already in the cache: nothing downloaded".to_string()
        } else {
            format!("{:.1} MiB downloaded", mib(p.downloaded))
        }
    );
    println!("{}", p.path.display());
    Ok(())
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn gib(b: f64) -> f64 {
    b / (1u64 << 30) as f64
}

/// A size in MiB below a GiB, else in GiB.
fn size(b: u64) -> String {
    if b < 1 << 30 {
        format!("{:.1} MiB", mib(b))
    } else {
        format!("{:.2} GiB", gib(b as f64))
    }
}

/// The architecture a cached model's files name.
fn architecture(path: &Path) -> String {
    if path.is_dir() {
        return std::fs::read_to_string(path.join("config.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["model_type"].as_str().map(str::to_string))
            .unwrap_or_else(|| "?".into());
    }
    hearth_formats::GgufFile::open(path)
        .ok()
        .and_then(|g| g.architecture().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// `hearth list`: the models in the hub cache.
pub fn list() -> Result<()> {
    let cache = hearth_hub::cache_dir();
    let models = hearth_hub::cache::models(&cache)?;
    if models.is_empty() {
        println!("(no models in {})", cache.display());
        return Ok(());
    }
    println!("{:<56} {:>10}  {:<14} COMMIT", "MODEL", "SIZE", "ARCH");
    for m in &models {
        let name = match &m.quant {
            Some(q) => format!("{}:{q}", m.repo),
            None => m.repo.clone(),
        };
        println!(
            "{name:<56} {:>10}  {:<14} {}",
            size(m.size),
            architecture(&m.path),
            &m.commit[..12]
        );
    }
    println!("({} in {})", models.len(), cache.display());
    Ok(())
}

/// `hearth rm ORG/REPO[:QUANT]`.
pub fn rm(spec: &Spec) -> Result<()> {
    let cache = hearth_hub::cache_dir();
    let r = hearth_hub::cache::remove(&cache, spec)?;
    println!(
        "removed {spec}: {} link(s), {} blob(s) no longer used, {:.1} MiB freed",
        r.links,
        r.blobs,
        mib(r.bytes)
    );
    Ok(())
}

/// This process's resident memory (Linux: `/proc/self/statm`).
fn resident_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(u64::try_from(page).ok()?))
}

/// Bytes free for an unprivileged user on the file system that holds `p` (or its nearest
/// existing ancestor).
fn free_disk(p: &Path) -> Option<u64> {
    let mut at = p.to_path_buf();
    while !at.exists() {
        at = at.parent()?.to_path_buf();
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(at.as_os_str().as_bytes()).ok()?;
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid NUL-terminated path and a struct of the right type to fill
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return None;
        }
        Some((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
    }
    #[cfg(not(unix))]
    None
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `len`-byte file at `p` that starts with `head` and is a hole after it: the loader maps it
/// and reads the header; the weights, which planning never reads, take no disk.
fn sparse(p: &Path, head: &[u8], len: u64) -> Result<()> {
    let f = std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
    use std::io::Write;
    (&f).write_all(head)?;
    f.set_len(len.max(head.len() as u64))?;
    Ok(())
}

/// The model's headers in a temporary directory laid out like the snapshot: GGUF headers, or
/// safetensors headers with config.json, each file as long as the real one.
fn remote_skeleton(
    hub: &Hub,
    repo: &str,
    commit: &str,
    kind: &Kind,
    files: &[RepoFile],
) -> Result<(TempDir, PathBuf)> {
    let dir = std::env::temp_dir().join(format!(
        "hearth-fit-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = TempDir(dir.clone());
    let base = |f: &RepoFile| dir.join(f.path.rsplit('/').next().unwrap_or(&f.path));
    let mut read = 0u64;
    for f in files {
        let head = match kind {
            Kind::Gguf { .. } => remote::gguf_header(hub, repo, commit, f)?,
            Kind::Safetensors if f.path.ends_with(".safetensors") => {
                remote::safetensors_header(hub, repo, commit, f)?
            }
            Kind::Safetensors if f.path.ends_with(".json") && f.path != "tokenizer.json" => {
                remote::small_file(hub, repo, commit, f, 16 << 20)?
            }
            Kind::Safetensors => continue,
        };
        read += head.len() as u64;
        sparse(&base(f), &head, f.size)?;
    }
    eprintln!(
        "hearth: read {:.2} MiB of headers from {} for {:.1} MiB of files",
        mib(read),
        hub.endpoint,
        mib(files.iter().map(|f| f.size).sum())
    );
    let open = match kind {
        Kind::Gguf { first, .. } => dir.join(first.rsplit('/').next().unwrap_or(first)),
        Kind::Safetensors => dir.clone(),
    };
    Ok((tmp, open))
}

/// `hearth fit ORG/REPO[:QUANT] --ctx N`.
pub fn fit(model: &str, ctx: usize, c: &crate::Common) -> Result<()> {
    let local = Path::new(model).exists() || crate::pull::ALIASES.iter().any(|a| a.name == model);
    let spec = hearth_hub::parse_spec(model);
    let hub = Hub::from_env();
    let mut download = 0u64;
    let mut others = Vec::new();
    let mut chosen_quant = None;
    let (_tmp, path) = match (&spec, local) {
        (Some(spec), false) => {
            let (commit, files) = match hub.info(&spec.repo, &spec.revision) {
                Ok(i) => (i.commit, i.files),
                Err(e @ (hearth_hub::Error::Network(_) | hearth_hub::Error::Offline(_))) => {
                    // no hub: a model in the cache is planned from its files
                    let (info, sel) = hub.cached(spec).map_err(|c| anyhow::anyhow!("{e}; {c}"))?;
                    eprintln!("hearth: {e}; planning the copy in the cache");
                    let snap = hub
                        .repo_dir(&spec.repo)
                        .join("snapshots")
                        .join(&info.commit);
                    let p = match &sel.kind {
                        Kind::Gguf { first, .. } => snap.join(first),
                        Kind::Safetensors => snap,
                    };
                    println!("model:         {spec} in the cache ({})", p.display());
                    return plan_and_print(model, &p, ctx, c, 0, &[], None);
                }
                Err(e) => return Err(e).with_context(|| spec.to_string()),
            };
            let sel = hearth_hub::select::select(&spec.repo, &files, spec.quant.as_deref())?;
            if let Some(n) = &sel.note {
                eprintln!("hearth: {n}");
            }
            let blobs = hub.repo_dir(&spec.repo).join("blobs");
            download = sel
                .files
                .iter()
                .filter(|f| {
                    std::fs::metadata(blobs.join(&f.blob)).map_or(true, |m| m.len() != f.size)
                })
                .map(|f| f.size)
                .sum();
            if let Kind::Gguf { quant, .. } = &sel.kind {
                chosen_quant = Some(quant.clone());
                others = hearth_hub::select::gguf_sets(&files);
            }
            let (t, p) = remote_skeleton(&hub, &spec.repo, &commit, &sel.kind, &sel.files)?;
            println!("model:         {spec} at {}", &commit[..12]);
            (Some(t), p)
        }
        _ => {
            let p = crate::pull::resolve(model)?;
            println!("model:         {}", p.display());
            (None, p)
        }
    };
    plan_and_print(
        model,
        &path,
        ctx,
        c,
        download,
        &others,
        chosen_quant.as_deref(),
    )
}

/// Plan the model at `path` (real files or header skeletons) as loading does, probe this
/// machine, and print the verdict.
fn plan_and_print(
    model: &str,
    path: &Path,
    ctx: usize,
    c: &crate::Common,
    download: u64,
    others: &[hearth_hub::GgufSet],
    chosen_quant: Option<&str>,
) -> Result<()> {
    let files = ModelFiles::open(path).with_context(|| format!("{model}: reading its headers"))?;
    // the program and its tokenizer, measured: this process holds both once it is built
    // (a safetensors plan without tokenizer.json measures the program alone)
    let tok = hearth_tokenizer::Tokenizer::from_files(&files).ok();
    hearth_engine::release_free_heap();
    let base = resident_bytes().unwrap_or(0);
    drop(tok);
    let arch = match &files.source {
        Source::Gguf(g) => g.architecture().unwrap_or("?").to_string(),
        Source::Hf(h) => h.config["model_type"].as_str().unwrap_or("?").to_string(),
    };
    // the placement loading uses, on backends that prepare nothing
    let pl = crate::placement_wrapped(c, &files, ctx, hearth_engine::PlanOnly::wrap)?;
    let place = pl.place;
    let devs: Vec<Arc<dyn Backend>> = pl
        .devs
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            if i == 0 {
                b
            } else {
                // the CPU the placement flags add: wrapped too
                hearth_engine::PlanOnly::wrap(b)
            }
        })
        .collect();
    let mut m = hearth_engine::load_model_placed(&files, devs, &*place)
        .with_context(|| format!("{model}: planning its load"))?;
    let (kt, vt) = c.kv.types()?;
    m.set_kv_types(kt, vt)?;
    let plan = m.plan();
    let weights: u64 = plan.iter().map(|d| d.weight_bytes as u64).sum();
    let kv_tok: u64 = plan.iter().map(|d| d.kv_bytes_per_token as u64).sum();
    let state: u64 = plan.iter().map(|d| d.state_bytes_per_seq as u64).sum();
    // the activations of one prompt chunk (engine's batch of 512 tokens)
    let runtime = base.saturating_add(m.batch_bytes(512.min(ctx.max(1))) as u64);
    let need = weights
        .saturating_add(kv_tok.saturating_mul(ctx as u64))
        .saturating_add(state)
        .saturating_add(runtime);
    println!(
        "architecture:  {arch}, {} parameters ({} active per token), {:.1} MiB of files",
        crate::human(m.n_params() as f64),
        crate::human(m.n_active_params() as f64),
        mib(files.file_size())
    );
    println!(
        "memory:        {:.1} MiB of weights + {} B/token of KV cache x {ctx} tokens{} + {:.1} MiB to run (the program and tokenizer, {:.1} MiB measured here, and the activations of a prompt chunk) = {:.1} MiB",
        mib(weights),
        kv_tok,
        if state > 0 {
            format!(" + {:.1} MiB of recurrent state", mib(state))
        } else {
            String::new()
        },
        mib(runtime),
        mib(base),
        mib(need)
    );
    let ram = hearth_engine::available_memory();
    crate::print_plan(&plan, ctx);
    // each device against its memory (the host's: what the system can still hand out)
    let mut fits = Some(true);
    let mut host_need = runtime;
    for d in &plan {
        let n = (d.weight_bytes as u64)
            .saturating_add((d.kv_bytes_per_token as u64).saturating_mul(ctx as u64))
            .saturating_add(d.state_bytes_per_seq as u64);
        match d.memory {
            Some(mem) if n > mem => fits = Some(false),
            Some(_) => {}
            None => host_need = host_need.saturating_add(n),
        }
    }
    match ram {
        Some(r) => {
            if host_need > r {
                fits = Some(false);
            }
            println!(
                "RAM:           {:.1} GiB available, {:.1} MiB needed: {}",
                gib(r as f64),
                mib(host_need),
                if host_need <= r {
                    "fits"
                } else if host_need.saturating_sub(r) <= kv_tok.saturating_mul(ctx as u64) {
                    "the weights fit, this context does not (lower --ctx)"
                } else {
                    "DOES NOT FIT (the weights would be read from disk on every token)"
                }
            )
        }
        None => {
            fits = None;
            println!("RAM:           unknown")
        }
    }
    match hearth_vulkan::devices() {
        Ok(ds) if !ds.is_empty() => {
            for d in ds {
                println!(
                    "GPU:           vulkan:{} {} with {:.1} GiB{}",
                    d.index,
                    d.name,
                    gib(d.memory as f64),
                    if plan.iter().any(|p| p.memory.is_some()) {
                        String::new()
                    } else {
                        format!(
                            " (plan on it with --device vulkan:{} and the placement flags: --cpu-moe, --n-cpu-moe N, --gpu-layers N, --ot)",
                            d.index
                        )
                    }
                );
            }
        }
        _ => println!("GPU:           none (no Vulkan device)"),
    }
    let cache = hearth_hub::cache_dir();
    match free_disk(&cache) {
        Some(free) => println!(
            "disk:          {:.1} MiB to download, {:.1} GiB free in {}: {}",
            mib(download),
            gib(free as f64),
            cache.display(),
            if download <= free {
                "fits"
            } else {
                "DOES NOT FIT"
            }
        ),
        None => println!("disk:          {:.1} MiB to download", mib(download)),
    }
    // each device reads its own weights and KV cache at its own bandwidth, measured here
    let bw_threads = hearth_cpu::Cpu::threads_for(c.threads);
    let cpu_bw = hearth_engine::bench::bandwidth_probe(bw_threads);
    let by_dev = m.bytes_per_token_by_device();
    let (mut t0, mut t_ctx) = (0f64, 0f64);
    let mut bws = Vec::new();
    for (d, p) in plan.iter().enumerate() {
        let bytes = by_dev.get(d).copied().unwrap_or(0) as f64;
        let kv = p.kv_bytes_per_token as f64 * ctx as f64;
        if bytes + kv == 0.0 {
            continue;
        }
        let vk_index = p
            .name
            .strip_prefix("vulkan:")
            .and_then(|r| r.split(' ').next()?.parse::<usize>().ok());
        let bw = match vk_index {
            Some(i) => match hearth_vulkan::bandwidth(i) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("hearth: measuring vulkan:{i}'s bandwidth: {e}; using the CPU's");
                    cpu_bw
                }
            },
            None => cpu_bw,
        };
        bws.push(format!(
            "{}: {:.1} MiB at {bw:.1} GB/s",
            p.name.split(' ').next().unwrap_or(&p.name),
            bytes / 1048576.0
        ));
        t0 += bytes / (bw * 1e9).max(1.0);
        t_ctx += (bytes + kv) / (bw * 1e9).max(1.0);
    }
    let per_tok = m.bytes_per_token() as f64;
    println!(
        "decode speed:  at most {:.1} tokens/s at the start of the context, {:.1} at {ctx} tokens ({:.1} MiB of the file's weights{} read per token; each device's copy and its bandwidth, measured: {})",
        1.0 / t0.max(1e-12),
        1.0 / t_ctx.max(1e-12),
        per_tok / 1048576.0,
        if kv_tok > 0 { " plus the KV cache" } else { "" },
        bws.join(", ")
    );
    if others.len() > 1
        && let Some(r) = ram
    {
        // another quant's copies (packed) in the planned one's proportion to its files
        let copies = weights as f64 / files.file_size().max(1) as f64;
        println!(
            "quants of this repository with a context of {ctx} tokens (files and the CPU's copies in the planned quant's proportion, {copies:.2}x, + KV cache + running):"
        );
        for s in others {
            let n = ((s.size() as f64 * copies) as u64)
                .saturating_add(kv_tok.saturating_mul(ctx as u64))
                .saturating_add(state)
                .saturating_add(runtime);
            println!(
                "  {:<14} {:>10}  {}{}",
                s.quant,
                size(s.size()),
                if n <= r { "fits" } else { "does not fit" },
                if chosen_quant == Some(s.quant.as_str()) {
                    "  (planned above)"
                } else {
                    ""
                }
            );
        }
    }
    println!(
        "verdict:       {}",
        match fits {
            Some(true) => format!("{model} fits with a context of {ctx} tokens"),
            Some(false) => format!(
                "{model} DOES NOT FIT in this machine's memory with a context of {ctx} tokens"
            ),
            None => "unknown (the available memory cannot be read)".into(),
        }
    );
    Ok(())
}
