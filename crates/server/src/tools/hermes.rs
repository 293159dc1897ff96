//! Hermes / Qwen2.5 / Qwen3: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`. A
//! call is sent when its closing tag (or the end) arrives; a body that is not such JSON
//! stays text.
use super::special::close_json;
use super::{Calls, ToolSyntax, safe_len};
use serde_json::Value;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

#[derive(Default)]
pub struct Hermes {
    in_call: bool,
}

/// The call in `body`: (name, arguments as JSON text).
fn call(body: &str) -> Option<(String, String)> {
    let t = body.trim();
    let v: Value = serde_json::from_str(t)
        .ok()
        .or_else(|| close_json(t).and_then(|f| serde_json::from_str(&format!("{t}{f}")).ok()))?;
    let name = v.get("name")?.as_str()?.to_string();
    let args = match v.get("arguments").or_else(|| v.get("parameters")) {
        None => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(a) => a.to_string(),
    };
    Some((name, args))
}

impl ToolSyntax for Hermes {
    fn step(&mut self, buf: &str, end: bool, out: &mut Calls) -> usize {
        if !self.in_call {
            if let Some(i) = buf.find(OPEN) {
                out.text(&buf[..i]);
                self.in_call = true;
                return i + OPEN.len();
            }
            let n = if end {
                buf.len()
            } else {
                safe_len(buf, &[OPEN])
            };
            out.text(&buf[..n]);
            return n;
        }
        let (body, used) = match buf.find(CLOSE) {
            Some(i) => (&buf[..i], i + CLOSE.len()),
            None if end => (&buf[..safe_len(buf, &[CLOSE])], buf.len()),
            None => return 0,
        };
        self.in_call = false;
        match call(body) {
            Some((name, args)) => {
                out.start(&name, None);
                out.args(&args);
                out.end();
            }
            None => out.text(&format!("{OPEN}{}", &buf[..used])),
        }
        used
    }
}
