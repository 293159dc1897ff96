//! Helpers the convert crate's test files share.
use hearth_convert::{Ftype, Options};
use std::path::PathBuf;

/// A file in the temporary directory, unique to this process (`prefix` names the test file).
pub fn tmp(prefix: &str, name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{prefix}_{}_{name}", std::process::id()))
}

/// Options for quantizing to type `t` on 2 threads, nothing else set.
pub fn opts(t: &str) -> Options {
    Options {
        ftype: Ftype::parse(t).unwrap(),
        overrides: vec![],
        imatrix: None,
        allow_requantize: false,
        pure: false,
        threads: 2,
    }
}
