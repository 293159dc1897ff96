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
    }
    common::touch_views(&ts, len as u64);
});
