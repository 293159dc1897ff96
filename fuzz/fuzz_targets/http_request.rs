//! OpenAI-compatible request handling without a model: parsing, validation, sampling
//! settings, tool and response-format grammars (fed the model output).
//!
//! Input: one byte that picks the endpoint, then the request body, a 0 byte, and the model
//! output.
#![no_main]

#[path = "common.rs"]
#[macro_use]
mod common;

use libfuzzer_sys::fuzz_target;

const PATHS: [&str; 7] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/tokenize",
    "/detokenize",
    "/v1/messages",
    "/v1/responses",
    // the model output through every family's tool-call and reasoning parser
    "/output",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let path = PATHS[sel as usize % PATHS.len()];
    let (body, output) = common::split0(rest);
    hearth_server::api::fuzz_request(path, body, output);
});
