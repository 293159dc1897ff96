//! Downloading a model's files into the cache: several at once, each resumed from its
//! `.incomplete` file with a Range request, LFS files checked against their sha256.
use crate::{Error, Hub, RepoFile, Result, io, link};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Mutex;

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest a file is checked against: an LFS file's sha256, or a git file's blob id (the
/// sha1 of `blob <size>\0` and the content, which the hub lists and sends as its ETag).
enum Check {
    Lfs(Sha256, String),
    Git(Sha1, String),
}

impl Check {
    fn new(f: &RepoFile) -> Check {
        match &f.sha256 {
            Some(h) => Check::Lfs(Sha256::new(), h.clone()),
            None => {
                let mut s = Sha1::new();
                s.update(format!("blob {}\0", f.size).as_bytes());
                Check::Git(s, f.blob.clone())
            }
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            Check::Lfs(h, _) => h.update(b),
            Check::Git(h, _) => h.update(b),
        }
    }
    /// The digest's name, what it should be and what it is.
    fn finish(self) -> (&'static str, String, String) {
        match self {
            Check::Lfs(h, want) => ("sha256", want, hex(&h.finalize())),
            Check::Git(h, want) => ("git blob id", want, hex(&h.finalize())),
        }
    }
}

/// Fetch every file not yet in the cache and link them all into the snapshot; returns the
/// bytes downloaded.
pub(crate) fn fetch_all(hub: &Hub, repo: &str, commit: &str, files: &[RepoFile]) -> Result<u64> {
    let dir = hub.repo_dir(repo);
    let blobs = dir.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(io(format!("cannot create {}", blobs.display())))?;
    let have = |f: &RepoFile| {
        std::fs::metadata(blobs.join(&f.blob)).is_ok_and(|m| m.is_file() && m.len() == f.size)
    };
    let mut todo: Vec<&RepoFile> = files.iter().filter(|f| !have(f)).collect();
    // one blob may back several paths: fetch it once
    todo.sort_by(|a, b| a.blob.cmp(&b.blob));
    todo.dedup_by(|a, b| a.blob == b.blob);
    let total: u64 = todo.iter().map(|f| f.size).sum();
    if !todo.is_empty() {
        eprintln!(
            "hearth: downloading {} file(s) of {repo}, {:.1} MiB, into {}",
            todo.len(),
            total as f64 / 1048576.0,
            dir.display()
        );
        let bar = if hub.progress {
            indicatif::ProgressBar::new(total)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let queue = Mutex::new(todo);
        let errors: Mutex<Vec<Error>> = Mutex::new(Vec::new());
        let workers = hub.parallel.clamp(1, 16);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                        let Some(f) = next else { break };
                        if let Err(e) = fetch_retrying(hub, repo, commit, f, &blobs, &bar) {
                            if let Ok(mut es) = errors.lock() {
                                es.push(e);
                            }
                            // stop handing out work: the pull fails anyway
                            if let Ok(mut q) = queue.lock() {
                                q.clear();
                            }
                        }
                    }
                });
            }
        });
        bar.finish_and_clear();
        let mut errors = errors.into_inner().unwrap_or_default();
        if !errors.is_empty() {
            return Err(errors.swap_remove(0));
        }
    }
    for f in files {
        link(&dir, commit, f)?;
    }
    Ok(total)
}

/// One file, resumed after an interruption up to `hub.retries` times.
fn fetch_retrying(
    hub: &Hub,
    repo: &str,
    commit: &str,
    f: &RepoFile,
    blobs: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let (mut tries, mut counted) = (0, 0u64);
    loop {
        match fetch_one(hub, repo, commit, f, blobs, bar, &mut counted) {
            Err(Error::Interrupted(m)) if tries < hub.retries => {
                tries += 1;
                bar.suspend(|| eprintln!("hearth: {m}; resuming"));
                std::thread::sleep(std::time::Duration::from_millis(200 * tries as u64));
            }
            r => return r,
        }
    }
}

/// Download one file into `blobs/<blob>.incomplete` (from where an earlier try stopped), check
/// it, and move it to `blobs/<blob>`.
#[allow(clippy::too_many_arguments)]
fn fetch_one(
    hub: &Hub,
    repo: &str,
    commit: &str,
    f: &RepoFile,
    blobs: &Path,
    bar: &indicatif::ProgressBar,
    counted: &mut u64,
) -> Result<()> {
    let dest = blobs.join(&f.blob);
    let part = blobs.join(format!("{}.incomplete", f.blob));
    // the lock huggingface_hub takes on a blob (`.locks/models--ORG--REPO/<blob>.lock`, flock),
    // so that two downloads of one blob, by hearth or by Python, do not write one file at once
    let locks = hub
        .cache
        .join(".locks")
        .join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(&locks).map_err(io(format!("cannot create {}", locks.display())))?;
    let lock_path = locks.join(format!("{}.lock", f.blob));
    let lock = std::fs::File::create(&lock_path)
        .map_err(io(format!("cannot create {}", lock_path.display())))?;
    lock.lock()
        .map_err(io(format!("cannot lock {}", lock_path.display())))?;
    if std::fs::metadata(&dest).is_ok_and(|m| m.len() == f.size) {
        return Ok(()); // another process fetched it meanwhile
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&part)
        .map_err(io(format!("cannot open {}", part.display())))?;
    let mut have = out
        .metadata()
        .map_err(io(format!("cannot stat {}", part.display())))?
        .len();
    if have > f.size {
        have = 0;
    }
    let mut hasher = Check::new(f);
    if have > 0 {
        // the bytes already there count towards the hash: read them back
        out.seek(SeekFrom::Start(0))
            .map_err(io(format!("cannot read {}", part.display())))?;
        let mut r = (&mut out).take(have);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r
                .read(&mut buf)
                .map_err(io(format!("cannot read {}", part.display())))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    let url = hub.file_url(repo, commit, &f.path);
    if have < f.size || f.size == 0 {
        let range = (have > 0).then_some((have, None));
        let resp = hub.get(&url, range).map_err(|e| match e {
            Error::Network(m) => Error::Interrupted(m),
            e => e,
        })?;
        let status = resp.status().as_u16();
        match status {
            200 => {
                if have > 0 {
                    // the server ignored the range: start over
                    have = 0;
                    hasher = Check::new(f);
                }
            }
            206 => {
                let start = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(have) {
                    return Err(Error::Protocol(format!(
                        "{url}: asked for bytes from {have}, the server sent a range starting at {start:?}"
                    )));
                }
            }
            416 if have == f.size => {}
            _ => return Err(hub.status_error(&resp, repo, &f.path)),
        }
        out.set_len(have)
            .and_then(|_| out.seek(SeekFrom::Start(have)).map(|_| ()))
            .map_err(io(format!("cannot write {}", part.display())))?;
        // the bar counts each byte of the file once over the tries
        if have >= *counted {
            bar.inc(have - *counted);
        } else {
            bar.dec(*counted - have);
        }
        *counted = have;
        if status != 416 {
            // one byte more than the listed size is read, to notice a server that sends more
            let mut r = resp
                .into_body()
                .into_with_config()
                .limit(u64::MAX)
                .reader()
                .take(f.size - have + 1);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match r.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = out.flush();
                        return Err(Error::Interrupted(format!(
                            "download of {} stopped at {} of {} bytes ({e})",
                            f.path, have, f.size
                        )));
                    }
                };
                if n == 0 {
                    break;
                }
                have += n as u64;
                if have > f.size {
                    drop(out);
                    let _ = std::fs::remove_file(&part);
                    return Err(Error::Protocol(format!(
                        "{url}: the server sent more than the {} bytes the hub lists",
                        f.size
                    )));
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])
                    .map_err(io(format!("cannot write {}", part.display())))?;
                bar.inc(n as u64);
                *counted += n as u64;
            }
            if have < f.size {
                let _ = out.flush();
                return Err(Error::Interrupted(format!(
                    "download of {} stopped at {} of {} bytes",
                    f.path, have, f.size
                )));
            }
        }
    }
    out.sync_all()
        .map_err(io(format!("cannot write {}", part.display())))?;
    drop(out);
    let (what, want, got) = hasher.finish();
    if got != want {
        let _ = std::fs::remove_file(&part);
        return Err(Error::Checksum(format!(
            "{repo}: {} does not match the {what} the hub lists (expected {want}, got {got}); nothing was kept",
            f.path
        )));
    }
    std::fs::rename(&part, &dest).map_err(io(format!("cannot move {}", part.display())))?;
    Ok(())
}
