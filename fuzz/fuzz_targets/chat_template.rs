//! Chat templates: compile an arbitrary Jinja source and render it with arbitrary messages.
//!
//! Input: template source, a 0 byte, then the messages as JSON: either a list of messages,
//! or an object `{"messages": [...], "tools": [...]}`. When the JSON does not parse, two
//! fixed messages carrying its text are rendered instead.
#![no_main]

#[path = "common.rs"]
#[macro_use]
mod common;

use hearth_tokenizer::ChatTemplate;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    let (src, rest) = common::split0(data);
    let src = String::from_utf8_lossy(src);
    let t = match ChatTemplate::new(&src, "<s>", "</s>") {
        Ok(t) => t,
        Err(e) => {
            note!("chat_template: {e}");
            return;
        }
    };
    let _ = t.mentions("tools");
    let (messages, tools) = match serde_json::from_slice::<Value>(rest) {
        Ok(Value::Object(mut o)) if o.contains_key("messages") => {
            let m = o.remove("messages").unwrap_or(Value::Null);
            (m, o.remove("tools"))
        }
        Ok(v) => (v, None),
        Err(_) => {
            let text = String::from_utf8_lossy(rest);
            (
                json!([
                    {"role": "system", "content": text},
                    {"role": "user", "content": text},
                ]),
                None,
            )
        }
    };
    let r = t.render_with(&messages, tools.as_ref(), true);
    note!("chat_template: {r:?}");
    let _ = t.render_with(&messages, None::<&Value>, false);
});
