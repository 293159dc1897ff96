//! Reading the start of a remote file with range requests: a GGUF's header and tensor table,
//! or a safetensors file's JSON header, without downloading the weights.
use crate::{Error, Hub, RepoFile, Result};
use std::io::Read;

/// The most bytes of a header read: a GGUF's metadata holds the vocabulary (a few MiB).
const MAX_HEADER: u64 = 256 << 20;

/// How long a GGUF header (magic, metadata, tensor table) is, when `b` holds all of it; None
/// when more bytes are needed; an error when it is not GGUF.
pub fn gguf_header_len(b: &[u8]) -> Result<Option<usize>> {
    struct C<'a>(&'a [u8], usize);
    impl C<'_> {
        fn skip(&mut self, n: u64) -> Option<()> {
            let e = (self.1 as u64).checked_add(n)?;
            (e <= self.0.len() as u64).then(|| self.1 = e as usize)
        }
        fn u32(&mut self) -> Option<u32> {
            let s = self.0.get(self.1..self.1 + 4)?;
            self.1 += 4;
            Some(u32::from_le_bytes(s.try_into().ok()?))
        }
        fn u64(&mut self) -> Option<u64> {
            let s = self.0.get(self.1..self.1 + 8)?;
            self.1 += 8;
            Some(u64::from_le_bytes(s.try_into().ok()?))
        }
        fn value(&mut self, ty: u32, depth: u32) -> Option<std::result::Result<(), String>> {
            let size = match ty {
                0 | 1 | 7 => 1,
                2 | 3 => 2,
                4..=6 => 4,
                10..=12 => 8,
                8 => {
                    let n = self.u64()?;
                    self.skip(n)?;
                    return Some(Ok(()));
                }
                9 if depth < 4 => {
                    let ety = self.u32()?;
                    let n = self.u64()?;
                    for _ in 0..n {
                        match self.value(ety, depth + 1)? {
                            Ok(()) => {}
                            e => return Some(e),
                        }
                    }
                    return Some(Ok(()));
                }
                t => return Some(Err(format!("unknown GGUF value type {t}"))),
            };
            self.skip(size)?;
            Some(Ok(()))
        }
    }
    if b.len() >= 4 && &b[..4] != b"GGUF" {
        return Err(Error::Protocol("not a GGUF file (bad magic)".into()));
    }
    let mut c = C(b, 4);
    let walk = |c: &mut C| -> Option<std::result::Result<(), String>> {
        c.u32()?;
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        if n_tensors > 1 << 24 || n_kv > 1 << 24 {
            return Some(Err(format!(
                "header claims {n_tensors} tensors and {n_kv} metadata entries"
            )));
        }
        for _ in 0..n_kv {
            let n = c.u64()?;
            c.skip(n)?;
            let ty = c.u32()?;
            if let Err(e) = c.value(ty, 0)? {
                return Some(Err(e));
            }
        }
        for _ in 0..n_tensors {
            let n = c.u64()?;
            c.skip(n)?;
            let dims = c.u32()?;
            if dims > 8 {
                return Some(Err(format!("a tensor with {dims} dimensions")));
            }
            c.skip(dims as u64 * 8 + 4 + 8)?;
        }
        Some(Ok(()))
    };
    match walk(&mut c) {
        None => Ok(None),
        Some(Ok(())) => Ok(Some(c.1)),
        Some(Err(e)) => Err(Error::Protocol(format!("GGUF header: {e}"))),
    }
}

/// Bytes `[start, start + len)` of a file at a commit (fewer when the file is shorter).
pub fn read_range(
    hub: &Hub,
    repo: &str,
    commit: &str,
    path: &str,
    start: u64,
    len: u64,
) -> Result<Vec<u8>> {
    let url = hub.file_url(repo, commit, path);
    let resp = hub.get(&url, Some((start, Some(start + len.max(1) - 1))))?;
    let status = resp.status().as_u16();
    let skip = match status {
        206 => 0,
        // a server without ranges sends the whole file: read only what is needed
        200 => start,
        _ => return Err(hub.status_error(&resp, repo, path)),
    };
    let mut r = resp
        .into_body()
        .into_with_config()
        .limit(u64::MAX)
        .reader()
        .take(skip + len);
    std::io::copy(&mut (&mut r).take(skip), &mut std::io::sink())
        .map_err(|e| Error::Network(format!("{url}: {e}")))?;
    let mut out = Vec::with_capacity(len.min(MAX_HEADER) as usize);
    r.read_to_end(&mut out)
        .map_err(|e| Error::Network(format!("{url}: {e}")))?;
    Ok(out)
}

/// The start of a GGUF file up to the end of its tensor table, read in growing ranges.
pub fn gguf_header(hub: &Hub, repo: &str, commit: &str, f: &RepoFile) -> Result<Vec<u8>> {
    let mut len = (4u64 << 20).min(f.size);
    loop {
        let b = read_range(hub, repo, commit, &f.path, 0, len)?;
        if let Some(n) =
            gguf_header_len(&b).map_err(|e| Error::Protocol(format!("{}: {e}", f.path)))?
        {
            let mut b = b;
            b.truncate(n);
            return Ok(b);
        }
        if len >= f.size || (b.len() as u64) < len {
            return Err(Error::Protocol(format!(
                "{}: the GGUF header runs past the end of the file",
                f.path
            )));
        }
        if len >= MAX_HEADER {
            return Err(Error::Protocol(format!(
                "{}: the GGUF header is larger than {} MiB",
                f.path,
                MAX_HEADER >> 20
            )));
        }
        len = (len * 4).min(MAX_HEADER).min(f.size);
    }
}

/// A safetensors file's first `8 + n` bytes (its length prefix and JSON header).
pub fn safetensors_header(hub: &Hub, repo: &str, commit: &str, f: &RepoFile) -> Result<Vec<u8>> {
    let head = read_range(hub, repo, commit, &f.path, 0, 8)?;
    let n = head
        .get(..8)
        .map(|h| u64::from_le_bytes(h.try_into().unwrap_or([0; 8])))
        .ok_or_else(|| Error::Protocol(format!("{}: shorter than 8 bytes", f.path)))?;
    if n > 100 << 20 || n + 8 > f.size {
        return Err(Error::Protocol(format!(
            "{}: a safetensors header of {n} bytes is not plausible",
            f.path
        )));
    }
    let b = read_range(hub, repo, commit, &f.path, 0, 8 + n)?;
    if b.len() as u64 != 8 + n {
        return Err(Error::Protocol(format!(
            "{}: the header was cut short",
            f.path
        )));
    }
    Ok(b)
}

/// A small file whole (config.json), at most `max` bytes.
pub fn small_file(hub: &Hub, repo: &str, commit: &str, f: &RepoFile, max: u64) -> Result<Vec<u8>> {
    if f.size > max {
        return Err(Error::Protocol(format!(
            "{} is larger than {max} bytes",
            f.path
        )));
    }
    read_range(hub, repo, commit, &f.path, 0, f.size.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_len() {
        // magic, version 3, 1 tensor, 1 kv: "a" = u32 7; tensor "t" 1 dim of 4, type 0, offset 0
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.push(b'a');
        b.extend(4u32.to_le_bytes());
        b.extend(7u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.push(b't');
        b.extend(1u32.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        let n = b.len();
        b.extend([0u8; 64]);
        assert_eq!(gguf_header_len(&b).unwrap(), Some(n));
        for cut in 0..n {
            assert_eq!(gguf_header_len(&b[..cut]).unwrap(), None, "{cut}");
        }
        assert!(gguf_header_len(b"GGML....").is_err());
        // a string claiming 2^63 bytes needs more, it does not allocate
        let mut h = b[..24].to_vec();
        h.extend((1u64 << 63).to_le_bytes());
        assert_eq!(gguf_header_len(&h).unwrap(), None);
    }
}
