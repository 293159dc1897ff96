//! Hermes / Qwen2.5 / Qwen3: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`. When a
//! call opens with its name and an object of arguments (the usual order), the arguments
//! stream as generated; otherwise the call is read whole at its closing tag. A body that is
//! not such JSON stays text.
use super::special::close_json;
use super::{Calls, ToolSyntax, safe_len};
use serde_json::Value;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

#[derive(Default, PartialEq)]
enum St {
    #[default]
    Text,
    /// After `<tool_call>`: reading up to the arguments.
    Head,
    /// Streaming the arguments object (`args`: what was sent).
    Args,
    /// Reading the whole body (another key order, or string arguments).
    Whole,
}

#[derive(Default)]
pub struct Hermes {
    st: St,
    args: String,
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

/// `{"name": "NAME", "arguments": {` at the start of `s`: Ok(Some((name, where the arguments
/// begin))), Ok(None) while it may still come, Err when the body has another shape.
fn head(s: &str) -> Result<Option<(String, usize)>, ()> {
    let mut i = 0;
    let b = s.as_bytes();
    let ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    // expect `lit` at i (a prefix of it at the end is "more to come")
    let lit = |i: &mut usize, lit: &str| -> Result<bool, ()> {
        let rest = &s[*i..];
        if rest.starts_with(lit) {
            *i += lit.len();
            Ok(true)
        } else if lit.starts_with(rest) {
            Ok(false)
        } else {
            Err(())
        }
    };
    ws(&mut i);
    for l in ["{", "\"name\""] {
        if !lit(&mut i, l)? {
            return Ok(None);
        }
        ws(&mut i);
    }
    if !lit(&mut i, ":")? {
        return Ok(None);
    }
    ws(&mut i);
    // the name: a JSON string
    if i >= b.len() {
        return Ok(None);
    }
    if b[i] != b'"' {
        return Err(());
    }
    let mut j = i + 1;
    let mut esc = false;
    while j < b.len() && (esc || b[j] != b'"') {
        esc = !esc && b[j] == b'\\';
        j += 1;
    }
    if j >= b.len() {
        return if j - i > 256 { Err(()) } else { Ok(None) };
    }
    let name: String = serde_json::from_str(&s[i..=j]).map_err(|_| ())?;
    i = j + 1;
    ws(&mut i);
    for l in [",", "\"arguments\"", ":"] {
        if !lit(&mut i, l)? {
            return Ok(None);
        }
        ws(&mut i);
    }
    match b.get(i) {
        None => Ok(None),
        Some(b'{') => Ok(Some((name, i))),
        Some(_) => Err(()),
    }
}

impl ToolSyntax for Hermes {
    fn step(&mut self, buf: &str, end: bool, out: &mut Calls) -> usize {
        match self.st {
            St::Text => {
                if let Some(i) = buf.find(OPEN) {
                    out.text(&buf[..i]);
                    self.st = St::Head;
                    return i + OPEN.len();
                }
                let n = if end {
                    buf.len()
                } else {
                    safe_len(buf, &[OPEN])
                };
                out.text(&buf[..n]);
                n
            }
            St::Head => match head(buf) {
                Ok(Some((name, at))) if !name.is_empty() => {
                    out.start(&name, None);
                    self.args.clear();
                    self.st = St::Args;
                    at
                }
                Ok(None) if !end && buf.len() < 1024 => 0,
                _ => {
                    self.st = St::Whole;
                    self.step(buf, end, out)
                }
            },
            St::Args => {
                let (upto, closed) = match buf.find(CLOSE) {
                    Some(i) => (i, true),
                    None if end => (safe_len(buf, &[CLOSE]), true),
                    None => (safe_len(buf, &[CLOSE]), false),
                };
                let s = &buf[..upto];
                if closed {
                    // the outer object's `}` ends the body
                    let t = s.trim_end();
                    let t = t.strip_suffix('}').unwrap_or(t).trim_end();
                    self.args.push_str(t);
                    out.args(t);
                    if let Some(fix) = close_json(&self.args) {
                        out.args(&fix);
                    }
                    out.end();
                    self.st = St::Text;
                    return if upto < buf.len() && buf[upto..].starts_with(CLOSE) {
                        upto + CLOSE.len()
                    } else {
                        buf.len()
                    };
                }
                // hold back what may be the outer object's end
                let t = s.trim_end();
                let n = t.strip_suffix('}').unwrap_or(t).len();
                self.args.push_str(&s[..n]);
                out.args(&s[..n]);
                n
            }
            St::Whole => {
                let (body, used) = match buf.find(CLOSE) {
                    Some(i) => (&buf[..i], i + CLOSE.len()),
                    None if end => (&buf[..safe_len(buf, &[CLOSE])], buf.len()),
                    None => return 0,
                };
                self.st = St::Text;
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
    }
}
