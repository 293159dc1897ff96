//! JSON-schema grammars: compile an arbitrary schema, then drive a matcher with arbitrary
//! output bytes, as constrained decoding does token by token.
//!
//! Input: the schema as JSON, a 0 byte, then the model output. The matcher keeps the step
//! budget it starts with (`TOKEN_FUEL`), so the work per input is bounded.
#![no_main]

#[path = "common.rs"]
#[macro_use]
mod common;

use hearth_server::grammar::{Grammar, Matcher};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::Arc;

fn drive(g: Grammar, output: &[u8]) -> String {
    let mut m = Matcher::new(Arc::new(g));
    // Chunks of 1..=4 bytes, sized by the output itself, like tokens of varying length.
    let mut rest = output;
    let mut rejected = 0;
    while !rest.is_empty() {
        let n = (rest[0] as usize % 4 + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let allowed = m.allows(chunk);
        rejected += usize::from(!allowed);
        let accepted = m.accept(chunk);
        if m.out_of_fuel() {
            // the step budget (one token's worth, as the scheduler gives) is spent: answers
            // from here on are "no" and mean nothing
            return format!("out of fuel after {} steps", m.steps());
        }
        assert_eq!(allowed, accepted, "allows and accept disagree on {chunk:?}");
        if m.is_finished() {
            assert!(m.is_complete(), "a finished document must be complete");
        }
    }
    format!(
        "{rejected} chunks rejected, complete {}, finished {}",
        m.is_complete(),
        m.is_finished()
    )
}

fuzz_target!(|data: &[u8]| {
    let (schema, output) = common::split0(data);
    let schema = match serde_json::from_slice::<Value>(schema) {
        Ok(s) => s,
        Err(e) => {
            note!("json_schema: not JSON: {e}");
            return;
        }
    };
    match Grammar::json_schema(&schema) {
        Ok(g) => {
            let r = drive(g, output);
            note!("json_schema: {r}");
        }
        Err(e) => note!("json_schema: {e}"),
    }
    match Grammar::tool_call(&[("f".to_string(), schema.clone())]) {
        Ok(g) => {
            let r = drive(g, output);
            note!("json_schema tool_call: {r}");
        }
        Err(e) => note!("json_schema tool_call: {e}"),
    }
});
