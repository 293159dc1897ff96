//! safetensors headers and tensor views.
#![no_main]

#[path = "common.rs"]
#[macro_use]
mod common;

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let len = data.len();
    let ts = match hearth_formats::hf::safetensors_bytes(Arc::new(data.to_vec()), "fuzz") {
        Ok(ts) => ts,
        Err(e) => {
            note!("safetensors: {e}");
            return;
        }
    };
    note!("safetensors: {} tensors", ts.len());
    for t in &ts {
        let _ = hearth_formats::names::canonical_from_hf(&t.name);
        assert!(t.bytes().len() <= len);
        let _ = (t.numel(), t.row_len(), t.row_bytes());
        let rows = t.n_rows();
        if rows > 0 {
            let _ = t.row(0);
            let _ = t.row(rows - 1);
        }
        let _ = t.slice_outer(0);
    }
});
