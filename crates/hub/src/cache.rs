//! The hub cache on disk: what a repository's snapshot holds, the models in the cache, and
//! removing one of them.
use crate::select::{self, Kind};
use crate::{Error, RepoFile, RepoInfo, Result, Spec, io, is_hex};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Record `revision` → `commit` in `refs/` (a revision that is the commit itself needs none).
pub fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> Result<()> {
    if revision == commit || revision.contains(['/', '\\', '.']) {
        return Ok(());
    }
    let refs = repo_dir.join("refs");
    std::fs::create_dir_all(&refs).map_err(io(format!("cannot create {}", refs.display())))?;
    let p = refs.join(revision);
    if std::fs::read_to_string(&p).is_ok_and(|c| c.trim() == commit) {
        return Ok(());
    }
    std::fs::write(&p, commit).map_err(io(format!("cannot write {}", p.display())))
}

/// The commit a revision points to in the cache.
pub fn commit_of(repo_dir: &Path, revision: &str) -> Option<String> {
    if is_hex(revision, 40) {
        return Some(revision.to_ascii_lowercase());
    }
    if revision.contains(['/', '\\', '.']) {
        return None;
    }
    let c = std::fs::read_to_string(repo_dir.join("refs").join(revision)).ok()?;
    let c = c.trim();
    is_hex(c, 40).then(|| c.to_ascii_lowercase())
}

/// The files of a snapshot directory (sizes from the blobs they link to; sha256s unknown).
pub fn snapshot_files(snap: &Path) -> Result<Vec<RepoFile>> {
    let mut out = Vec::new();
    let mut stack = vec![(snap.to_path_buf(), String::new(), 0usize)];
    while let Some((dir, prefix, depth)) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(io(format!("cannot list {}", dir.display())))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let p = e.path();
            let Ok(meta) = std::fs::metadata(&p) else {
                continue; // a link whose blob is gone
            };
            if meta.is_dir() {
                if depth < 8 && !std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_symlink()) {
                    stack.push((p, rel, depth + 1));
                }
                continue;
            }
            let blob = std::fs::read_link(&p)
                .ok()
                .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or(name);
            out.push(RepoFile {
                path: rel,
                size: meta.len(),
                blob,
                sha256: None,
            });
            if out.len() > 100_000 {
                return Err(Error::Protocol(format!(
                    "{} holds more than 100000 files",
                    snap.display()
                )));
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// A repository's files at `revision` as the cache has them; None when it has no snapshot.
pub fn listing(repo_dir: &Path, revision: &str) -> Result<Option<RepoInfo>> {
    let Some(commit) = commit_of(repo_dir, revision) else {
        return Ok(None);
    };
    let snap = repo_dir.join("snapshots").join(&commit);
    if !snap.is_dir() {
        return Ok(None);
    }
    Ok(Some(RepoInfo {
        files: snapshot_files(&snap)?,
        commit,
    }))
}

/// A model in the cache.
#[derive(Debug)]
pub struct CachedModel {
    /// `ORG/REPO`.
    pub repo: String,
    /// The snapshot's commit.
    pub commit: String,
    /// The GGUF quant, or None for safetensors.
    pub quant: Option<String>,
    /// Bytes of its files.
    pub size: u64,
    /// What to open.
    pub path: PathBuf,
}

/// `models--ORG--REPO` → `ORG/REPO`.
fn repo_of_dir(name: &str) -> Option<String> {
    let rest = name.strip_prefix("models--")?;
    let (org, repo) = rest.split_once("--")?;
    Some(format!("{org}/{repo}"))
}

/// Every model of every snapshot in the cache.
pub fn models(cache: &Path) -> Result<Vec<CachedModel>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(cache) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::Io(format!("cannot list {}", cache.display()), e)),
    };
    let mut dirs: Vec<(String, PathBuf)> = rd
        .flatten()
        .filter_map(|e| Some((repo_of_dir(&e.file_name().to_string_lossy())?, e.path())))
        .collect();
    dirs.sort();
    for (repo, dir) in dirs {
        let Ok(snaps) = std::fs::read_dir(dir.join("snapshots")) else {
            continue;
        };
        let mut commits: Vec<String> = snaps
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|c| is_hex(c, 40))
            .collect();
        commits.sort();
        for commit in commits {
            let snap = dir.join("snapshots").join(&commit);
            let files = snapshot_files(&snap)?;
            let sets = select::gguf_sets(&files);
            for s in &sets {
                out.push(CachedModel {
                    repo: repo.clone(),
                    commit: commit.clone(),
                    quant: Some(s.quant.clone()),
                    size: s.size(),
                    path: snap.join(&s.files[0].path),
                });
            }
            if sets.is_empty()
                && let Ok(sel) = select::select(&repo, &files, None)
                && sel.kind == Kind::Safetensors
            {
                out.push(CachedModel {
                    repo: repo.clone(),
                    commit: commit.clone(),
                    quant: None,
                    size: sel.files.iter().map(|f| f.size).sum(),
                    path: snap.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// What [`remove`] did.
#[derive(Debug, Default)]
pub struct Removed {
    /// Snapshot links removed.
    pub links: usize,
    /// Blobs deleted (nothing linked to them any more).
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Remove a model from the cache: with a quant, that quant's files in every snapshot; without,
/// every file of the repository. A blob is deleted only when no snapshot links to it any more.
pub fn remove(cache: &Path, spec: &Spec) -> Result<Removed> {
    let dir = cache.join(format!("models--{}", spec.repo.replace('/', "--")));
    let snaps_dir = dir.join("snapshots");
    let commits: Vec<PathBuf> = match std::fs::read_dir(&snaps_dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(_) => {
            return Err(Error::NotFound(format!(
                "{} is not in the cache at {}",
                spec.repo,
                cache.display()
            )));
        }
    };
    let mut r = Removed::default();
    let mut dropped: HashSet<String> = HashSet::new();
    for snap in &commits {
        let files = snapshot_files(snap)?;
        let chosen: Vec<RepoFile> = match &spec.quant {
            None => files,
            Some(q) => select::matching(&select::gguf_sets(&files), q)
                .into_iter()
                .flat_map(|s| s.files.clone())
                .collect(),
        };
        for f in chosen {
            let p = snap.join(&f.path);
            if std::fs::remove_file(&p).is_ok() {
                r.links += 1;
                dropped.insert(f.blob);
            }
        }
    }
    if r.links == 0 {
        return Err(Error::NotFound(format!("{spec} is not in the cache")));
    }
    // blobs some remaining link still uses
    let mut used: HashSet<String> = HashSet::new();
    for snap in &commits {
        for f in snapshot_files(snap)? {
            used.insert(f.blob);
        }
        remove_empty_dirs(snap);
    }
    for b in dropped.difference(&used) {
        if !(is_hex(b, 40) || is_hex(b, 64)) {
            continue; // not a blob name: never delete by a name read from a link
        }
        let p = dir.join("blobs").join(b);
        if let Ok(m) = std::fs::metadata(&p)
            && std::fs::remove_file(&p).is_ok()
        {
            r.blobs += 1;
            r.bytes += m.len();
        }
    }
    let empty = std::fs::read_dir(&snaps_dir).map_or(true, |mut d| d.next().is_none());
    if empty {
        // nothing of the repository is left: its refs, locks and partial files go too
        std::fs::remove_dir_all(&dir).map_err(io(format!("cannot remove {}", dir.display())))?;
    }
    Ok(r)
}

/// Remove the empty directories under `dir`, and `dir` itself if it ends up empty.
fn remove_empty_dirs(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
