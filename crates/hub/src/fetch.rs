//! Downloading a model's files into the cache: several files, and the parts of a large file,
//! at once; each resumed from what an earlier try left (`<blob>.incomplete`, or
//! `<blob>.incomplete.partKofN` for parts) with a Range request; every file checked against its
//! digest (LFS sha256, or git blob id) before it becomes a blob.
use crate::{Error, Hub, RepoFile, Result, io, link};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// One unit of work: part `k` of `n` of file `fi` (`n == 1`: the whole file).
#[derive(Clone, Copy)]
struct Job {
    fi: usize,
    k: u64,
    n: u64,
}

/// Bytes `[start, end)` of part `k` of `n` of a file of `size` bytes.
fn part_range(size: u64, k: u64, n: u64) -> (u64, u64) {
    let at = |i: u64| (size as u128 * i as u128 / n as u128) as u64;
    (at(k), at(k + 1))
}

/// Where the download of one blob stands on disk and what guards it.
struct Paths {
    dest: std::path::PathBuf,
    incomplete: std::path::PathBuf,
    locks: std::path::PathBuf,
}

impl Paths {
    fn new(hub: &Hub, repo: &str, blobs: &Path, f: &RepoFile) -> Paths {
        Paths {
            dest: blobs.join(&f.blob),
            incomplete: blobs.join(format!("{}.incomplete", f.blob)),
            locks: hub
                .cache
                .join(".locks")
                .join(format!("models--{}", repo.replace('/', "--"))),
        }
    }
    fn part(&self, k: u64, n: u64) -> std::path::PathBuf {
        let mut s = self.incomplete.clone().into_os_string();
        s.push(format!(".part{}of{n}", k + 1));
        s.into()
    }
    /// An exclusive flock on `.locks/models--ORG--REPO/<name>.lock`: for a whole blob the lock
    /// huggingface_hub takes, so that hearth and Python never write one blob at once.
    fn lock(&self, name: &str) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.locks)
            .map_err(io(format!("cannot create {}", self.locks.display())))?;
        let p = self.locks.join(format!("{name}.lock"));
        let l = std::fs::File::create(&p).map_err(io(format!("cannot create {}", p.display())))?;
        l.lock()
            .map_err(io(format!("cannot lock {}", p.display())))?;
        Ok(l)
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
    if todo.is_empty() {
        for f in files {
            link(&dir, commit, f)?;
        }
        return Ok(0);
    }
    // a large file comes in parts at once, unless a whole-file download (hearth's or
    // huggingface_hub's) was under way
    let workers = hub.parallel.clamp(1, 16);
    let mut jobs = Vec::new();
    for (fi, f) in todo.iter().enumerate() {
        let whole = Paths::new(hub, repo, &blobs, f).incomplete.exists();
        let n = if whole {
            1
        } else {
            (f.size / hub.part_min.max(1)).clamp(1, workers as u64)
        };
        jobs.extend((0..n).rev().map(|k| Job { fi, k, n }));
    }
    jobs.reverse();
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
    let parts_left: Vec<AtomicUsize> = todo.iter().map(|_| AtomicUsize::new(0)).collect();
    for j in &jobs {
        parts_left[j.fi].fetch_add(1, Ordering::Relaxed);
    }
    jobs.reverse(); // popped from the end: the first file's parts first
    let queue = Mutex::new(jobs);
    let errors: Mutex<Vec<Error>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                    let Some(job) = next else { break };
                    let f = todo[job.fi];
                    let paths = Paths::new(hub, repo, &blobs, f);
                    let r = retrying(hub, &bar, |counted| {
                        run_job(hub, repo, commit, f, &paths, job, &bar, counted)
                    })
                    .and_then(|()| {
                        // the last part of a file done: join the parts
                        if job.n > 1 && parts_left[job.fi].fetch_sub(1, Ordering::AcqRel) == 1 {
                            assemble(repo, f, &paths, job.n)
                        } else {
                            Ok(())
                        }
                    });
                    if let Err(e) = r {
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
    for f in files {
        link(&dir, commit, f)?;
    }
    Ok(total)
}

/// `job`, resumed after an interruption up to `hub.retries` times (`counted`: the bytes of it
/// the progress bar already shows).
fn retrying(
    hub: &Hub,
    bar: &indicatif::ProgressBar,
    mut job: impl FnMut(&mut u64) -> Result<()>,
) -> Result<()> {
    let (mut tries, mut counted) = (0, 0u64);
    loop {
        match job(&mut counted) {
            Err(Error::Interrupted(m)) if tries < hub.retries => {
                tries += 1;
                bar.suspend(|| eprintln!("hearth: {m}; resuming"));
                std::thread::sleep(std::time::Duration::from_millis(200 * tries as u64));
            }
            r => return r,
        }
    }
}

/// Download a whole file (checked, then moved to its blob) or one part of it.
#[allow(clippy::too_many_arguments)]
fn run_job(
    hub: &Hub,
    repo: &str,
    commit: &str,
    f: &RepoFile,
    paths: &Paths,
    job: Job,
    bar: &indicatif::ProgressBar,
    counted: &mut u64,
) -> Result<()> {
    if job.n > 1 {
        let (start, end) = part_range(f.size, job.k, job.n);
        let _lock = paths.lock(&format!("{}.part{}of{}", f.blob, job.k + 1, job.n))?;
        if paths.dest.exists() {
            return Ok(());
        }
        let part = paths.part(job.k, job.n);
        return fetch_range(
            hub,
            repo,
            commit,
            f,
            &part,
            (start, end),
            None,
            bar,
            counted,
        );
    }
    let _lock = paths.lock(&f.blob)?;
    if std::fs::metadata(&paths.dest).is_ok_and(|m| m.len() == f.size) {
        return Ok(()); // another process fetched it meanwhile
    }
    let mut check = Check::new(f);
    fetch_range(
        hub,
        repo,
        commit,
        f,
        &paths.incomplete,
        (0, f.size),
        Some(&mut check),
        bar,
        counted,
    )?;
    finish(repo, f, paths, check)
}

/// Check a complete `.incomplete` file and make it the blob (a mismatch deletes it).
fn finish(repo: &str, f: &RepoFile, paths: &Paths, check: Check) -> Result<()> {
    let (what, want, got) = check.finish();
    if got != want {
        let _ = std::fs::remove_file(&paths.incomplete);
        return Err(Error::Checksum(format!(
            "{repo}: {} does not match the {what} the hub lists (expected {want}, got {got}); nothing was kept",
            f.path
        )));
    }
    std::fs::rename(&paths.incomplete, &paths.dest)
        .map_err(io(format!("cannot move {}", paths.incomplete.display())))
}

/// Join the `n` parts of a file into its `.incomplete` file, hashing them on the way, then
/// check it like a whole download. The parts go whatever the outcome: a mismatch keeps
/// nothing, and an interrupted join leaves an `.incomplete` file a whole download resumes.
fn assemble(repo: &str, f: &RepoFile, paths: &Paths, n: u64) -> Result<()> {
    let _lock = paths.lock(&f.blob)?;
    let parts: Vec<_> = (0..n).map(|k| paths.part(k, n)).collect();
    let remove_parts = || {
        for p in &parts {
            let _ = std::fs::remove_file(p);
        }
    };
    if paths.dest.exists() {
        remove_parts();
        return Ok(());
    }
    let mut out = std::fs::File::create(&paths.incomplete)
        .map_err(io(format!("cannot create {}", paths.incomplete.display())))?;
    let mut check = Check::new(f);
    let mut buf = vec![0u8; 1 << 20];
    for (k, p) in parts.iter().enumerate() {
        let (start, end) = part_range(f.size, k as u64, n);
        let mut r = std::fs::File::open(p).map_err(io(format!("cannot open {}", p.display())))?;
        let mut got = 0u64;
        loop {
            let m = r
                .read(&mut buf)
                .map_err(io(format!("cannot read {}", p.display())))?;
            if m == 0 {
                break;
            }
            got += m as u64;
            check.update(&buf[..m]);
            out.write_all(&buf[..m])
                .map_err(io(format!("cannot write {}", paths.incomplete.display())))?;
        }
        if got != end - start {
            return Err(Error::Protocol(format!(
                "{}: part {} holds {got} bytes, not {}",
                f.path,
                k + 1,
                end - start
            )));
        }
    }
    out.sync_all()
        .map_err(io(format!("cannot write {}", paths.incomplete.display())))?;
    drop(out);
    remove_parts();
    finish(repo, f, paths, check)
}

/// Download bytes `start..end` of a file into `out_path`, after the bytes an earlier try left
/// there (hashed first into `check` when given).
#[allow(clippy::too_many_arguments)]
fn fetch_range(
    hub: &Hub,
    repo: &str,
    commit: &str,
    f: &RepoFile,
    out_path: &Path,
    (start, end): (u64, u64),
    mut check: Option<&mut Check>,
    bar: &indicatif::ProgressBar,
    counted: &mut u64,
) -> Result<()> {
    let want = end - start;
    let shown = out_path.display();
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(out_path)
        .map_err(io(format!("cannot open {shown}")))?;
    let mut have = out
        .metadata()
        .map_err(io(format!("cannot stat {shown}")))?
        .len();
    if have > want {
        have = 0;
    }
    if have > 0
        && let Some(c) = check.as_deref_mut()
    {
        // the bytes already there count towards the digest: read them back
        out.seek(SeekFrom::Start(0))
            .map_err(io(format!("cannot read {shown}")))?;
        let mut r = (&mut out).take(have);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r
                .read(&mut buf)
                .map_err(io(format!("cannot read {shown}")))?;
            if n == 0 {
                break;
            }
            c.update(&buf[..n]);
        }
    }
    let url = hub.file_url(repo, commit, &f.path);
    let from = start + have;
    let mut status = 416;
    let mut body = None;
    if have < want || want == 0 {
        let range = (from > 0 || end < f.size).then_some((from, Some(end.max(1) - 1)));
        let resp = hub.get(&url, range).map_err(|e| match e {
            Error::Network(m) => Error::Interrupted(m),
            e => e,
        })?;
        status = resp.status().as_u16();
        match status {
            200 if start == 0 => {
                if have > 0 {
                    // the server ignored the range: start over
                    have = 0;
                    if let Some(c) = check.as_deref_mut() {
                        *c = Check::new(f);
                    }
                }
            }
            200 => {
                return Err(Error::Protocol(format!(
                    "{url}: the server ignores Range requests (asked for bytes from {from})"
                )));
            }
            206 => {
                let got = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if got != Some(from) {
                    return Err(Error::Protocol(format!(
                        "{url}: asked for bytes from {from}, the server sent a range starting at {got:?}"
                    )));
                }
            }
            416 if have == want => {}
            _ => return Err(hub.status_error(&resp, repo, &f.path)),
        }
        body = Some(resp);
    }
    out.set_len(have)
        .and_then(|_| out.seek(SeekFrom::Start(have)).map(|_| ()))
        .map_err(io(format!("cannot write {shown}")))?;
    // the bar counts each byte once over the tries
    if have >= *counted {
        bar.inc(have - *counted);
    } else {
        bar.dec(*counted - have);
    }
    *counted = have;
    if let Some(resp) = body.filter(|_| status != 416) {
        // one byte more than asked for is read, to notice a server that sends more (a whole
        // file sent for a first part is cut at the part's end)
        let extra = u64::from(status == 206 || end == f.size);
        let mut r = resp
            .into_body()
            .into_with_config()
            .limit(u64::MAX)
            .reader()
            .take(want - have + extra);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match r.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let _ = out.flush();
                    return Err(Error::Interrupted(format!(
                        "download of {} stopped at {} of {} bytes ({e})",
                        f.path,
                        start + have,
                        f.size
                    )));
                }
            };
            if n == 0 {
                break;
            }
            have += n as u64;
            if have > want {
                drop(out);
                let _ = std::fs::remove_file(out_path);
                return Err(Error::Protocol(format!(
                    "{url}: the server sent more than the {want} bytes asked for ({} listed)",
                    f.size
                )));
            }
            if let Some(c) = check.as_deref_mut() {
                c.update(&buf[..n]);
            }
            out.write_all(&buf[..n])
                .map_err(io(format!("cannot write {shown}")))?;
            bar.inc(n as u64);
            *counted += n as u64;
        }
        if have < want {
            let _ = out.flush();
            return Err(Error::Interrupted(format!(
                "download of {} stopped at {} of {} bytes",
                f.path,
                start + have,
                f.size
            )));
        }
    }
    out.sync_all().map_err(io(format!("cannot write {shown}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_file() {
        for (size, n) in [(0u64, 1u64), (10, 3), (98362432, 4), (u64::MAX, 16)] {
            let mut at = 0;
            for k in 0..n {
                let (a, b) = part_range(size, k, n);
                assert_eq!(a, at);
                assert!(b >= a);
                at = b;
            }
            assert_eq!(at, size);
        }
    }

    #[test]
    fn git_blob_id() {
        // `git hash-object` of "hello\n"
        let f = RepoFile {
            path: "a".into(),
            size: 6,
            blob: "ce013625030ba8dba906f756967f9e9ca394464a".into(),
            sha256: None,
        };
        let mut c = Check::new(&f);
        c.update(b"hello\n");
        let (_, want, got) = c.finish();
        assert_eq!(want, got);
    }
}
