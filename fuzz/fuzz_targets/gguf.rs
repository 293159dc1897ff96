//! GGUF parsing: header, metadata, tensor table and tensor views.
//!
//! (Building the tokenizer a file's `tokenizer.ggml.*` metadata describes is left out: it
//! compiles regexes and a minijinja environment, 50-200 ms an input under the sanitizer,
//! which would starve the parser of executions.)
#![no_main]

#[path = "common.rs"]
#[macro_use]
mod common;

use hearth_formats::{GgufFile, Value};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fn walk(v: &Value, depth: usize) -> usize {
    let _ = (v.as_u64(), v.as_i64(), v.as_f64(), v.as_bool());
    let mut n = v.as_str().map_or(0, str::len);
    if let Some(a) = v.as_array() {
        assert!(depth < 16, "the parser lets arrays nest {depth} deep");
        for x in a {
            n += walk(x, depth + 1);
        }
    }
    n
}

fn tensor_views(g: &GgufFile) {
    let ts = match g.tensors() {
        Ok(ts) => ts,
        Err(e) => {
            note!("gguf tensors: {e}");
            return;
        }
    };
    assert_eq!(ts.len(), g.tensor_infos.len());
    for t in &ts {
        let _ = hearth_formats::names::canonical_from_gguf(&t.name);
    }
    common::touch_views(&ts, g.file_size);
}

fuzz_target!(|data: &[u8]| {
    let g = match GgufFile::parse(Arc::new(data.to_vec())) {
        Ok(g) => g,
        Err(e) => {
            note!("gguf: {e}");
            return;
        }
    };
    note!(
        "gguf: v{} with {} metadata entries, {} tensors",
        g.version,
        g.metadata.len(),
        g.tensor_infos.len()
    );
    let _ = g.architecture();
    for (k, v) in &g.metadata {
        assert!(g.get(k).is_some());
        walk(v, 0);
    }
    tensor_views(&g);
});
