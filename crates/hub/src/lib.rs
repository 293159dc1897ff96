//! hearth-hub: models from the Hugging Face hub, kept in the hub's own cache.
//!
//! `ORG/REPO[:QUANT]` is resolved through the hub API (`HF_ENDPOINT`, default
//! `https://huggingface.co`; `HF_TOKEN` for gated repos) and the files land in the cache
//! exactly as `huggingface_hub` lays it out (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`): `models--ORG--REPO/blobs/<sha256 or git oid>`,
//! `snapshots/<commit>/<file>` as relative links to the blobs, `refs/main` holding the commit.
//! Downloads resume from `blobs/<name>.incomplete` with HTTP Range requests, run several files
//! at once under one progress bar, and LFS files are checked against the sha256 the hub lists
//! (a mismatch keeps nothing). With `HF_HUB_OFFLINE=1`, or when the hub cannot be reached, a
//! model already in the cache is used without the network.
#![deny(missing_docs)]

pub mod cache;
mod fetch;
pub mod remote;
pub mod select;

pub use select::{GgufSet, Kind, Selection};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// What can go wrong.
#[derive(Debug)]
pub enum Error {
    /// The repository, revision, file or quant does not exist.
    NotFound(String),
    /// 401/403: gated, private, or a bad token.
    Denied(String),
    /// The hub could not be reached (DNS, connection, TLS, timeout).
    Network(String),
    /// The server answered something hearth cannot use.
    Protocol(String),
    /// A download's bytes do not match the listed sha256.
    Checksum(String),
    /// A download stopped before its end (run again to resume).
    Interrupted(String),
    /// Offline, and the model is not in the cache.
    Offline(String),
    /// A file-system operation failed.
    Io(String, std::io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotFound(m)
            | Error::Denied(m)
            | Error::Network(m)
            | Error::Protocol(m)
            | Error::Checksum(m)
            | Error::Interrupted(m)
            | Error::Offline(m) => f.write_str(m),
            Error::Io(m, e) => write!(f, "{m}: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let w = what.into();
    move |e| Error::Io(w, e)
}

/// A model named on the command line: `ORG/REPO[@REVISION][:QUANT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// `ORG/REPO`.
    pub repo: String,
    /// The quant, if named.
    pub quant: Option<String>,
    /// The revision: a branch or tag name, or a commit (`main` unless named).
    pub revision: String,
}

impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repo)?;
        if self.revision != "main" {
            write!(f, "@{}", self.revision)?;
        }
        match &self.quant {
            Some(q) => write!(f, ":{q}"),
            None => Ok(()),
        }
    }
}

fn valid_name_part(s: &str) -> bool {
    (1..=96).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !s.starts_with(['.', '-'])
        && !s.ends_with(['.', '-'])
        && !s.contains("..")
        && !s.contains("--")
}

/// Parse `ORG/REPO[@REVISION][:QUANT]` (an `hf.co/` or `huggingface.co/` prefix is
/// allowed; a revision is a branch or tag name without `/`, or a commit); None when the text
/// is not of that shape.
pub fn parse_spec(s: &str) -> Option<Spec> {
    let s = s
        .strip_prefix("https://")
        .unwrap_or(s)
        .trim_start_matches("huggingface.co/")
        .trim_start_matches("hf.co/");
    let (repo, quant) = match s.split_once(':') {
        Some((r, q)) => (r, Some(q)),
        None => (s, None),
    };
    let (repo, revision) = match repo.split_once('@') {
        Some((r, rev)) => (r, rev),
        None => (repo, "main"),
    };
    if !valid_name_part(revision) {
        return None;
    }
    let (org, name) = repo.split_once('/')?;
    if !valid_name_part(org) || !valid_name_part(name) {
        return None;
    }
    // `dir/model.gguf` is a path that does not exist, not a repository
    let lower = name.to_ascii_lowercase();
    if [".gguf", ".safetensors", ".bin", ".json"]
        .iter()
        .any(|x| lower.ends_with(x))
    {
        return None;
    }
    if let Some(q) = quant
        && (q.is_empty()
            || q.len() > 64
            || !q
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    {
        return None;
    }
    Some(Spec {
        repo: repo.to_string(),
        quant: quant.map(str::to_string),
        revision: revision.to_string(),
    })
}

/// A file of a repository at a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoFile {
    /// Its path in the repository (checked: relative, no `..`).
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Its blob's name in the cache: the LFS sha256, else the git blob id (the hub's ETag).
    pub blob: String,
    /// The LFS sha256 the content must have.
    pub sha256: Option<String>,
}

/// A repository at a commit: its files.
#[derive(Clone, Debug)]
pub struct RepoInfo {
    /// The commit (40 hex digits).
    pub commit: String,
    /// Every file.
    pub files: Vec<RepoFile>,
}

/// A path inside a repository is relative, without `.`/`..`/empty parts or backslashes:
/// anything else could write outside the cache.
pub fn valid_repo_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && !p.starts_with('/')
        && !p.contains('\\')
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

pub(crate) fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The hub cache: `$HF_HUB_CACHE` (or the older `$HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
/// else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    for k in ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"] {
        if let Some(d) = std::env::var_os(k).filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
    }
    hf_home().join("hub")
}

fn hf_home() -> PathBuf {
    if let Some(d) = std::env::var_os("HF_HOME") {
        return PathBuf::from(d);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("huggingface")
}

fn env_true(k: &str) -> bool {
    std::env::var(k)
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// A client of one hub endpoint and one cache.
pub struct Hub {
    /// The endpoint, without a trailing slash.
    pub endpoint: String,
    /// The token sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// The cache directory.
    pub cache: PathBuf,
    /// Never use the network.
    pub offline: bool,
    /// Files (or parts of a file) downloaded at once.
    pub parallel: usize,
    /// A file comes in parts at once when it holds at least two of this many bytes (64 MiB;
    /// `HEARTH_HUB_PART_MIB`).
    pub part_min: u64,
    /// Times a download that stops halfway is resumed before giving up.
    pub retries: usize,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    agent: ureq::Agent,
}

impl Hub {
    /// A client configured as `huggingface_hub` is: `HF_ENDPOINT`, `HF_TOKEN` (else the token
    /// file `huggingface-cli login` writes), `HF_HUB_OFFLINE`, the cache directory; and
    /// `HEARTH_HUB_RETRIES`, how often a stopped download resumes (3), and
    /// `HEARTH_HUB_PART_MIB`, the smallest part of a file fetched in parts (64).
    pub fn from_env() -> Hub {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "https://huggingface.co".into());
        let token = std::env::var("HF_TOKEN")
            .ok()
            .or_else(|| {
                let p = std::env::var_os("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| hf_home().join("token"));
                std::fs::read_to_string(p).ok()
            })
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let mut hub = Hub::new(&endpoint, token, cache_dir(), env_true("HF_HUB_OFFLINE"));
        if let Some(r) = std::env::var("HEARTH_HUB_RETRIES")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            hub.retries = r;
        }
        if let Some(m) = std::env::var("HEARTH_HUB_PART_MIB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&m| m > 0)
        {
            hub.part_min = m << 20;
        }
        hub
    }

    /// A client of `endpoint` with `cache`.
    pub fn new(endpoint: &str, token: Option<String>, cache: PathBuf, offline: bool) -> Hub {
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .max_redirects(10)
            .user_agent(concat!("hearth/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Hub {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            cache,
            offline,
            parallel: 4,
            part_min: 64 << 20,
            retries: 3,
            progress: true,
            agent,
        }
    }

    /// `models--ORG--REPO` in the cache.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// A GET (with a byte range from `from` to `to`, inclusive, when given).
    pub(crate) fn get(
        &self,
        url: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut req = self.agent.get(url).header("Accept-Encoding", "identity");
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        if let Some((a, b)) = range {
            let r = match b {
                Some(b) => format!("bytes={a}-{b}"),
                None => format!("bytes={a}-"),
            };
            req = req.header("Range", &r);
        }
        req.call()
            .map_err(|e| Error::Network(format!("cannot reach {url}: {e}")))
    }

    /// The error an answer other than 2xx means, for `what` of `repo` (the hub names the
    /// reason in `X-Error-Code`: `RepoNotFound`, `GatedRepo`, `EntryNotFound`...).
    pub(crate) fn status_error(
        &self,
        resp: &ureq::http::Response<ureq::Body>,
        repo: &str,
        what: &str,
    ) -> Error {
        let status = resp.status().as_u16();
        let code = resp
            .headers()
            .get("x-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let page = format!("{}/{repo}", self.endpoint);
        match (status, code) {
            (_, "RepoNotFound") => Error::NotFound(format!(
                "{repo}: no such repository on {} (HTTP {status}; a private one needs HF_TOKEN)",
                self.endpoint
            )),
            (_, "RevisionNotFound") | (_, "EntryNotFound") | (404, _) => Error::NotFound(format!(
                "{repo}: {what} not found on {} (HTTP {status})",
                self.endpoint
            )),
            (401 | 403, _) => Error::Denied(match (&self.token, code) {
                (None, "GatedRepo") => format!(
                    "{repo} is a gated repository (HTTP {status}): accept its terms on {page} with your account, then set HF_TOKEN to a token of that account"
                ),
                (None, _) => format!(
                    "{repo}: the hub refused access (HTTP {status}) to {what}: the repository is gated or private (or does not exist). If it is gated, accept its terms on {page}; then set HF_TOKEN to a token of an account with access"
                ),
                (Some(_), _) => format!(
                    "{repo}: the hub refused access (HTTP {status}) to {what} with the token in HF_TOKEN: the repository is gated or private and this token's account has not been granted access (accept its terms on {page}), or the token is invalid"
                ),
            }),
            (s, _) => Error::Protocol(format!("{repo}: the hub answered HTTP {s} for {what}")),
        }
    }

    /// The repository at `revision`, from the hub API (`/api/models/{repo}/revision/{rev}` with
    /// blob ids, sizes and LFS sha256s).
    pub fn info(&self, repo: &str, revision: &str) -> Result<RepoInfo> {
        if self.offline {
            return Err(Error::Offline(format!(
                "HF_HUB_OFFLINE is set: cannot ask {} about {repo}",
                self.endpoint
            )));
        }
        let url = format!(
            "{}/api/models/{repo}/revision/{revision}?blobs=true",
            self.endpoint
        );
        let mut r = self.get(&url, None)?;
        if r.status().as_u16() != 200 {
            return Err(self.status_error(&r, repo, &format!("revision {revision}")));
        }
        let body = r
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| {
                Error::Protocol(format!(
                    "{url}: cannot read the answer (at most 64 MiB): {e}"
                ))
            })?;
        parse_info(repo, &body)
    }

    /// The model `spec` names, from the cache only.
    pub fn cached(&self, spec: &Spec) -> Result<(RepoInfo, Selection)> {
        let info =
            cache::listing(&self.repo_dir(&spec.repo), &spec.revision)?.ok_or_else(|| {
                Error::Offline(format!(
                    "{} is not in the cache at {}",
                    spec.repo,
                    self.cache.display()
                ))
            })?;
        let sel = select::select(&spec.repo, &info.files, spec.quant.as_deref())?;
        Ok((info, sel))
    }

    /// Fetch what `spec` names into the cache (nothing when it is there) and return the path
    /// to open: the GGUF (its first part), or the snapshot directory of a safetensors model.
    pub fn pull(&self, spec: &Spec) -> Result<Pulled> {
        let info = match self.info(&spec.repo, &spec.revision) {
            Ok(i) => i,
            Err(e @ (Error::Network(_) | Error::Offline(_))) => {
                let (info, sel) = self.cached(spec).map_err(|c| match c {
                    Error::Offline(m) => Error::Offline(format!("{e}; and {m}")),
                    c => c,
                })?;
                if !self.offline {
                    eprintln!("hearth: {e}; using the copy in the cache");
                }
                return Ok(self.pulled(spec, &info.commit, sel, 0));
            }
            Err(e) => return Err(e),
        };
        let sel = select::select(&spec.repo, &info.files, spec.quant.as_deref())?;
        let got = fetch::fetch_all(self, &spec.repo, &info.commit, &sel.files)?;
        cache::write_ref(&self.repo_dir(&spec.repo), &spec.revision, &info.commit)?;
        Ok(self.pulled(spec, &info.commit, sel, got))
    }

    fn pulled(&self, spec: &Spec, commit: &str, sel: Selection, downloaded: u64) -> Pulled {
        let snap = self.repo_dir(&spec.repo).join("snapshots").join(commit);
        let path = match &sel.kind {
            Kind::Gguf { first, .. } => snap.join(first),
            Kind::Safetensors => snap,
        };
        Pulled {
            path,
            selection: sel,
            commit: commit.to_string(),
            downloaded,
        }
    }

    /// The URL of a file at a commit.
    pub fn file_url(&self, repo: &str, commit: &str, path: &str) -> String {
        format!("{}/{repo}/resolve/{commit}/{path}", self.endpoint)
    }
}

/// A model in the cache.
#[derive(Debug)]
pub struct Pulled {
    /// What to open.
    pub path: PathBuf,
    /// The files.
    pub selection: Selection,
    /// The commit.
    pub commit: String,
    /// Bytes downloaded by this pull (0: everything was in the cache).
    pub downloaded: u64,
}

/// The answer of `/api/models/{repo}/revision/{rev}?blobs=true`, checked.
pub fn parse_info(repo: &str, body: &[u8]) -> Result<RepoInfo> {
    let bad = |m: String| Error::Protocol(format!("{repo}: the hub's file list {m}"));
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("is not JSON: {e}")))?;
    let commit = v["sha"]
        .as_str()
        .filter(|s| is_hex(s, 40))
        .ok_or_else(|| bad("has no commit (sha) of 40 hex digits".into()))?
        .to_ascii_lowercase();
    let sib = v["siblings"]
        .as_array()
        .ok_or_else(|| bad("has no siblings".into()))?;
    let mut files = Vec::with_capacity(sib.len().min(1 << 16));
    for s in sib {
        let path = s["rfilename"]
            .as_str()
            .ok_or_else(|| bad("has an entry without rfilename".into()))?;
        if !valid_repo_path(path) {
            return Err(bad(format!(
                "names a file with an unsafe path: {:?}",
                path.chars().take(200).collect::<String>()
            )));
        }
        let lfs = s.get("lfs").filter(|l| l.is_object());
        let sha256 = match lfs {
            Some(l) => Some(
                l["sha256"]
                    .as_str()
                    .filter(|h| is_hex(h, 64))
                    .ok_or_else(|| bad(format!("gives {path} no valid LFS sha256")))?
                    .to_ascii_lowercase(),
            ),
            None => None,
        };
        let size = lfs
            .and_then(|l| l["size"].as_u64())
            .or_else(|| s["size"].as_u64())
            .ok_or_else(|| {
                bad(format!(
                    "gives {path} no size (the endpoint must answer ?blobs=true as the hub does)"
                ))
            })?;
        let blob = match &sha256 {
            Some(h) => h.clone(),
            None => s["blobId"]
                .as_str()
                .filter(|h| is_hex(h, 40))
                .ok_or_else(|| bad(format!("gives {path} no blobId")))?
                .to_ascii_lowercase(),
        };
        files.push(RepoFile {
            path: path.to_string(),
            size,
            blob,
            sha256,
        });
    }
    Ok(RepoInfo { commit, files })
}

/// Where `path` sits under the snapshot directory, and the relative link from there to the
/// blob (`../../blobs/<blob>`, one more `..` per subdirectory).
pub(crate) fn link_target(path: &str, blob: &str) -> PathBuf {
    let depth = path.matches('/').count() + 2;
    let mut t = PathBuf::new();
    for _ in 0..depth {
        t.push("..");
    }
    t.join("blobs").join(blob)
}

/// Make `snapshots/<commit>/<path>` a link to `blobs/<blob>` (replacing whatever is there).
pub(crate) fn link(repo_dir: &Path, commit: &str, f: &RepoFile) -> Result<()> {
    let at = repo_dir.join("snapshots").join(commit).join(&f.path);
    if let Some(p) = at.parent() {
        std::fs::create_dir_all(p).map_err(io(format!("cannot create {}", p.display())))?;
    }
    let target = link_target(&f.path, &f.blob);
    if std::fs::read_link(&at).is_ok_and(|t| t == target) {
        return Ok(());
    }
    // a new link under a name of this process's own, renamed over the old one: two pulls of
    // one model (each after the blob's lock) may both get here, and neither may fail
    #[cfg(unix)]
    {
        let name = at
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = at.with_file_name(format!(".{name}.{}.link", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)
            .and_then(|()| std::fs::rename(&tmp, &at))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
            .map_err(io(format!("cannot link {}", at.display())))?;
    }
    #[cfg(not(unix))]
    let _ = std::fs::remove_file(&at);
    #[cfg(not(unix))]
    std::fs::copy(repo_dir.join("blobs").join(&f.blob), &at)
        .map(|_| ())
        .map_err(io(format!("cannot copy to {}", at.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = parse_spec("unsloth/Qwen3-8B-GGUF:UD-Q2_K_XL").unwrap();
        assert_eq!(s.repo, "unsloth/Qwen3-8B-GGUF");
        assert_eq!(s.quant.as_deref(), Some("UD-Q2_K_XL"));
        assert_eq!(parse_spec("hf.co/a/b").unwrap().repo, "a/b");
        assert_eq!(s.revision, "main");
        let r = parse_spec("a/b@v1.2:Q4_K_M").unwrap();
        assert_eq!((r.repo.as_str(), r.revision.as_str()), ("a/b", "v1.2"));
        assert_eq!(r.quant.as_deref(), Some("Q4_K_M"));
        assert_eq!(r.to_string(), "a/b@v1.2:Q4_K_M");
        assert_eq!(parse_spec("a/b:Q8_0").unwrap().to_string(), "a/b:Q8_0");
        for bad in [
            "a", "a/b/c", "../b", "a/..", "a/b:", "a/b:x/y", "/a/b", "a/.b", "./x.gguf", "a//b",
            "a/b@", "a/b@..", "a/b@x/y", "a/b@.x", "a@b/c",
        ] {
            assert!(parse_spec(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn info_is_checked() {
        let ok = br#"{"sha":"0123456789abcdef0123456789abcdef01234567","siblings":[
            {"rfilename":"config.json","size":10,"blobId":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
            {"rfilename":"q/m.gguf","size":5,"blobId":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
             "lfs":{"sha256":"cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","size":99,"pointerSize":130}}]}"#;
        let i = parse_info("a/b", ok).unwrap();
        assert_eq!(i.files[1].size, 99);
        assert_eq!(i.files[1].blob, "c".repeat(64));
        assert_eq!(i.files[0].blob, "a".repeat(40));
        for evil in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a\\b",
            "",
            "a//b",
            "./a",
        ] {
            let body = format!(
                r#"{{"sha":"0123456789abcdef0123456789abcdef01234567","siblings":[{{"rfilename":{},"size":1,"blobId":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}]}}"#,
                serde_json::Value::from(evil)
            );
            assert!(parse_info("a/b", body.as_bytes()).is_err(), "{evil}");
        }
        // a blob id that is not hex would become a file name: refused
        let body = br#"{"sha":"0123456789abcdef0123456789abcdef01234567","siblings":[{"rfilename":"x","size":1,"blobId":"../../../../etc/aaaaaaaaaaaaaaaaaaaaaaa"}]}"#;
        assert!(parse_info("a/b", body).is_err());
        assert!(parse_info("a/b", b"{\"sha\":\"nothex\",\"siblings\":[]}").is_err());
        assert!(parse_info("a/b", b"[1,2").is_err());
        assert_eq!(
            link_target("q/m.gguf", "ff"),
            PathBuf::from("../../../blobs/ff")
        );
    }
}
