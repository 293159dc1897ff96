//! Shared by the fuzz targets (each includes it as `#[path = "common.rs"] mod common;`).
#![allow(dead_code)]

/// Set `HEARTH_FUZZ_DEBUG=1` to have the targets say on stderr what they made of each
/// input (e.g. `cargo fuzz run gguf fuzz/corpus/gguf/seed_tensors.gguf`), to check that a
/// seed reaches the code it is meant for.
pub fn debug() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HEARTH_FUZZ_DEBUG").is_some_and(|v| v != "0"))
}

/// Split at the first 0 byte (the 0 itself belongs to neither part).
pub fn split0(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Print when debugging.
#[allow(unused_macros)]
macro_rules! note {
    ($($t:tt)*) => {
        if common::debug() {
            eprintln!($($t)*);
        }
    };
}

/// Every view of a parsed tensor: its bytes (at most `file_len`, since parsing checked every
/// extent), its row geometry, its first and last rows and its first outer slice.
pub fn touch_views(ts: &[hearth_core::Tensor], file_len: u64) {
    for t in ts {
        assert!(t.bytes().len() as u64 <= file_len);
        let _ = (t.numel(), t.row_len(), t.row_bytes());
        let rows = t.n_rows();
        if rows > 0 {
            let _ = t.row(0);
            let _ = t.row(rows - 1);
        }
        let _ = t.slice_outer(0);
    }
}
