//! The special-token tool syntaxes with JSON arguments: DeepSeek (R1's
//! `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>` and
//! V3.1's `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>`) and Kimi K2
//! (`<|tool_call_begin|>functions.NAME:i<|tool_call_argument_begin|>ARGS<|tool_call_end|>`).
//! Arguments stream as generated.
use super::{Calls, ToolSyntax, find_first, safe_len};

pub struct Syn {
    block_open: &'static str,
    block_close: &'static str,
    call_open: &'static str,
    sep: &'static str,
    call_close: &'static str,
    /// Kimi: the head is the call's id, `functions.NAME:i`.
    kimi: bool,
}

pub static DEEPSEEK: Syn = Syn {
    block_open: "<｜tool▁calls▁begin｜>",
    block_close: "<｜tool▁calls▁end｜>",
    call_open: "<｜tool▁call▁begin｜>",
    sep: "<｜tool▁sep｜>",
    call_close: "<｜tool▁call▁end｜>",
    kimi: false,
};

pub static KIMI: Syn = Syn {
    block_open: "<|tool_calls_section_begin|>",
    block_close: "<|tool_calls_section_end|>",
    call_open: "<|tool_call_begin|>",
    sep: "<|tool_call_argument_begin|>",
    call_close: "<|tool_call_end|>",
    kimi: true,
};

enum St {
    Text,
    Block,
    Head,
    Args {
        fence: bool,
    },
    /// After R1's closing fence: skip to the call's end.
    Tail,
}

pub struct Special {
    syn: &'static Syn,
    st: St,
    args: String,
}

const MAX_HEAD: usize = 512;

impl Special {
    pub fn new(syn: &'static Syn) -> Special {
        Special {
            syn,
            st: St::Text,
            args: String::new(),
        }
    }
    fn close_call(&mut self, out: &mut Calls) {
        let a = std::mem::take(&mut self.args);
        if a.trim().is_empty() {
            out.args("{}");
        } else if let Some(fix) = close_json(&a) {
            out.args(&fix);
        }
        out.end();
    }
    fn args(&mut self, s: &str, out: &mut Calls) {
        self.args.push_str(s);
        out.args(s);
    }
}

/// What closes the cut-off JSON text `s` (unclosed strings, arrays and objects), if that
/// makes it valid; "" when it already is.
pub(crate) fn close_json(s: &str) -> Option<String> {
    if serde_json::from_str::<serde_json::Value>(s).is_ok() {
        return Some(String::new());
    }
    let (mut stack, mut in_str, mut esc) = (Vec::new(), false, false);
    for c in s.chars() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' => stack.push('}'),
            '[' => stack.push(']'),
            '}' | ']' if stack.pop() != Some(c) => return None,
            _ => {}
        }
    }
    let mut fix = String::new();
    if in_str {
        fix.push('"');
    }
    fix.extend(stack.iter().rev());
    let whole = format!("{s}{fix}");
    serde_json::from_str::<serde_json::Value>(&whole)
        .ok()
        .map(|_| fix)
}

impl ToolSyntax for Special {
    fn step(&mut self, buf: &str, end: bool, out: &mut Calls) -> usize {
        let syn = self.syn;
        match self.st {
            St::Text => match find_first(buf, &[syn.block_open, syn.call_open]) {
                Some((i, k)) => {
                    out.text(&buf[..i]);
                    self.st = St::Block;
                    if k == 0 {
                        i + syn.block_open.len()
                    } else if i == 0 {
                        self.step(buf, end, out)
                    } else {
                        i
                    }
                }
                None => {
                    let n = if end {
                        buf.len()
                    } else {
                        safe_len(buf, &[syn.block_open, syn.call_open])
                    };
                    out.text(&buf[..n]);
                    n
                }
            },
            St::Block => {
                let body = buf.trim_start();
                let ws = buf.len() - body.len();
                if body.starts_with(syn.call_open) {
                    self.st = St::Head;
                    return ws + syn.call_open.len();
                }
                if body.starts_with(syn.block_close) {
                    self.st = St::Text;
                    return ws + syn.block_close.len();
                }
                if body.is_empty()
                    || (!end
                        && (syn.call_open.starts_with(body) || syn.block_close.starts_with(body)))
                {
                    return if end { buf.len() } else { ws };
                }
                // text after the calls (the section's end is missing)
                self.st = St::Text;
                ws
            }
            St::Head => {
                let Some(i) = buf.find(syn.sep) else {
                    if end || buf.len() > MAX_HEAD {
                        let head = buf.trim();
                        let name = if syn.kimi {
                            kimi_name(head)
                        } else {
                            Some(head)
                        };
                        match name.filter(|n| valid(n)) {
                            Some(n) if end => {
                                out.start(n, syn.kimi.then(|| head.to_string()));
                                out.args("{}");
                                out.end();
                            }
                            _ => out.text(&format!("{}{buf}", syn.call_open)),
                        }
                        self.st = St::Text;
                        return buf.len();
                    }
                    return 0;
                };
                let head = buf[..i].trim();
                let rest = &buf[i + syn.sep.len()..];
                let (name, used, fence) = if syn.kimi {
                    (kimi_name(head), i + syn.sep.len(), false)
                } else if head == "function" && !rest.trim_start().starts_with('{') {
                    // R1: the name on its own line, then a ```json fence
                    let Some(nl) = rest.find('\n') else {
                        return if end || rest.len() > MAX_HEAD {
                            self.st = St::Text;
                            out.text(&format!("{}{buf}", syn.call_open));
                            buf.len()
                        } else {
                            0
                        };
                    };
                    let after = &rest[nl + 1..];
                    let fence_len = if after.starts_with("```") {
                        match after.find('\n') {
                            Some(f) => f + 1,
                            None if !end => return 0,
                            None => after.len(),
                        }
                    } else if !end && "```".starts_with(after) {
                        return 0;
                    } else {
                        0
                    };
                    (
                        Some(rest[..nl].trim()),
                        i + syn.sep.len() + nl + 1 + fence_len,
                        fence_len > 0,
                    )
                } else {
                    (Some(head), i + syn.sep.len(), false)
                };
                match name.filter(|n| valid(n)) {
                    Some(n) => {
                        out.start(n, syn.kimi.then(|| head.to_string()));
                        self.args.clear();
                        self.st = St::Args { fence };
                        used
                    }
                    None => {
                        out.text(&format!("{}{}", syn.call_open, &buf[..used]));
                        self.st = St::Text;
                        used
                    }
                }
            }
            St::Args { fence } => {
                let ends: &[&str] = if fence {
                    &[syn.call_close, "```"]
                } else {
                    &[syn.call_close]
                };
                if let Some((i, k)) = find_first(buf, ends) {
                    let a = if fence {
                        buf[..i].trim_end()
                    } else {
                        &buf[..i]
                    };
                    self.args(a, out);
                    self.close_call(out);
                    if k == 1 {
                        self.st = St::Tail;
                        return i + 3;
                    }
                    self.st = St::Block;
                    return i + syn.call_close.len();
                }
                if end {
                    let n = safe_len(buf, ends);
                    self.args(&buf[..n], out);
                    self.close_call(out);
                    self.st = St::Text;
                    return buf.len();
                }
                let n = safe_len(buf, ends);
                self.args(&buf[..n], out);
                n
            }
            St::Tail => match buf.find(syn.call_close) {
                Some(i) => {
                    self.st = St::Block;
                    i + syn.call_close.len()
                }
                None if end || buf.len() > MAX_HEAD => {
                    self.st = St::Text;
                    buf.len()
                }
                None => 0,
            },
        }
    }
}

fn valid(n: &str) -> bool {
    !n.is_empty() && n.len() <= 256 && !n.contains(|c: char| c == '<' || c.is_whitespace())
}

/// Kimi's call id `functions.NAME:i` → NAME.
fn kimi_name(head: &str) -> Option<&str> {
    let h = head.strip_prefix("functions.").unwrap_or(head);
    Some(h.rsplit_once(':').map(|(n, _)| n).unwrap_or(h))
}
