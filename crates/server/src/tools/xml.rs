//! The XML-like tool syntaxes, whose arguments are key/value pairs: Qwen3-Coder/Qwen3.5
//! (`<function=NAME><parameter=K>V</parameter>`), GLM-4.5+ (`NAME<arg_key>K</arg_key>
//! <arg_value>V</arg_value>`) and MiniMax M2 (`<invoke name="NAME"><parameter name="K">V`).
//! Values of string parameters stream as they are generated (as JSON string text); others
//! are parsed as JSON when complete, and kept as strings when they are not JSON.
use super::{Calls, ToolSyntax, safe_len};

/// One family's markers.
pub struct Syn {
    block_open: &'static str,
    block_close: &'static str,
    name_open: &'static str,
    /// What ends a name; only the first is part of the name's markup (the others begin
    /// what follows it).
    name_close: &'static [&'static str],
    key_open: &'static str,
    key_close: &'static str,
    val_open: &'static str,
    val_close: &'static str,
    call_close: &'static str,
    /// Values are written between newlines (`<parameter=K>\nV\n</parameter>`).
    trim_nl: bool,
}

pub static QWEN: Syn = Syn {
    block_open: "<tool_call>",
    block_close: "</tool_call>",
    name_open: "<function=",
    name_close: &[">"],
    key_open: "<parameter=",
    key_close: ">",
    val_open: "",
    val_close: "</parameter>",
    call_close: "</function>",
    trim_nl: true,
};

pub static GLM: Syn = Syn {
    block_open: "<tool_call>",
    block_close: "</tool_call>",
    name_open: "",
    name_close: &["\n", "<arg_key>", "</tool_call>"],
    key_open: "<arg_key>",
    key_close: "</arg_key>",
    val_open: "<arg_value>",
    val_close: "</arg_value>",
    call_close: "</tool_call>",
    trim_nl: false,
};

pub static MINIMAX: Syn = Syn {
    block_open: "<minimax:tool_call>",
    block_close: "</minimax:tool_call>",
    name_open: "<invoke name=\"",
    name_close: &["\">"],
    key_open: "<parameter name=\"",
    key_close: "\">",
    val_open: "",
    val_close: "</parameter>",
    call_close: "</invoke>",
    trim_nl: false,
};

enum St {
    Text,
    /// At a call's head; `first`: the block's opening marker is still at the buffer's start.
    Head {
        first: bool,
    },
    Params,
    Value {
        string: bool,
        started: bool,
    },
}

pub struct Xml {
    syn: &'static Syn,
    st: St,
    name: String,
    n_params: usize,
    /// The value being read is a boolean parameter's.
    boolean: bool,
}

/// Longest name or key.
const MAX_NAME: usize = 256;

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && !s.contains(|c: char| c == '<' || c == '>' || c == '"' || c.is_whitespace())
}

/// Bytes of the first character of `s` (0 when empty).
fn first_char_len(s: &str) -> usize {
    s.chars().next().map_or(0, char::len_utf8)
}

fn json_str_body(s: &str) -> String {
    let q = serde_json::to_string(s).unwrap_or_default();
    q[1..q.len() - 1].to_string()
}

impl Xml {
    pub fn new(syn: &'static Syn) -> Xml {
        Xml {
            syn,
            st: St::Text,
            name: String::new(),
            n_params: 0,
            boolean: false,
        }
    }

    fn close_call(&mut self, out: &mut Calls) {
        out.args(if self.n_params == 0 { "{}" } else { "}" });
        out.end();
    }

    /// The end of a value: `raw` is all of it (minus what was streamed, for strings).
    fn close_value(&mut self, raw: &str, string: bool, started: bool, out: &mut Calls) {
        let mut v = raw;
        if self.syn.trim_nl {
            if !started {
                v = v.strip_prefix('\n').unwrap_or(v);
            }
            v = v.strip_suffix('\n').unwrap_or(v);
        }
        if string {
            out.args(&json_str_body(v));
            out.args("\"");
        } else {
            let t = v.trim();
            match serde_json::from_str::<serde_json::Value>(t) {
                Ok(j) => out.args(&j.to_string()),
                // Qwen3-Coder's template writes booleans as Python does
                Err(_) if self.boolean && (t == "True" || t == "False") => {
                    out.args(if t == "True" { "true" } else { "false" })
                }
                Err(_) => out.args(&serde_json::Value::String(v.to_string()).to_string()),
            }
        }
    }
}

impl ToolSyntax for Xml {
    fn step(&mut self, buf: &str, end: bool, out: &mut Calls) -> usize {
        let syn = self.syn;
        match self.st {
            St::Text => {
                if let Some(i) = buf.find(syn.block_open) {
                    out.text(&buf[..i]);
                    self.st = St::Head { first: true };
                    if i == 0 {
                        return self.step(buf, end, out);
                    }
                    return i;
                }
                let n = if end {
                    buf.len()
                } else {
                    safe_len(buf, &[syn.block_open])
                };
                out.text(&buf[..n]);
                n
            }
            St::Head { first } => {
                let skip = if first { syn.block_open.len() } else { 0 };
                let rest = &buf[skip..];
                let body = rest.trim_start();
                let ws = rest.len() - body.len();
                if !first && body.starts_with(syn.block_close) {
                    self.st = St::Text;
                    return skip + ws + syn.block_close.len();
                }
                let not_call = |this: &mut Xml, out: &mut Calls| -> usize {
                    this.st = St::Text;
                    if first {
                        out.text(syn.block_open);
                        syn.block_open.len()
                    } else {
                        // stray text between calls: skip to the next tag
                        let c = first_char_len(body);
                        let k = body[c..].find('<').map(|k| k + c);
                        this.st = St::Head { first: false };
                        match k {
                            Some(k) => skip + ws + k,
                            None if end => buf.len(),
                            None => skip + ws,
                        }
                    }
                };
                if !body.starts_with(syn.name_open) {
                    if syn.name_open.starts_with(body) && !end {
                        return 0;
                    }
                    if body.is_empty() && end {
                        return 0;
                    }
                    return not_call(self, out);
                }
                let after = &body[syn.name_open.len()..];
                let close = super::find_first(after, syn.name_close);
                match close {
                    Some((i, k)) => {
                        let name = after[..i].trim();
                        if !valid_name(name) {
                            return not_call(self, out);
                        }
                        self.name = name.to_string();
                        self.n_params = 0;
                        out.start(name, None);
                        self.st = St::Params;
                        let used = if k == 0 { syn.name_close[0].len() } else { 0 };
                        skip + ws + syn.name_open.len() + i + used
                    }
                    None if end => {
                        // cut off after the name: close the call
                        let name = after.trim();
                        if valid_name(name) {
                            self.name = name.to_string();
                            out.start(name, None);
                            out.args("{}");
                            out.end();
                            self.st = St::Text;
                            return buf.len();
                        }
                        if first {
                            not_call(self, out)
                        } else {
                            buf.len()
                        }
                    }
                    None if after.len() > MAX_NAME => not_call(self, out),
                    None => 0,
                }
            }
            St::Params => {
                let body = buf.trim_start();
                let ws = buf.len() - body.len();
                if body.starts_with(syn.call_close) {
                    self.close_call(out);
                    self.st = if syn.call_close == syn.block_close {
                        St::Text
                    } else {
                        St::Head { first: false }
                    };
                    return ws + syn.call_close.len();
                }
                if body.starts_with(syn.block_close) {
                    // the call's own end is missing
                    self.close_call(out);
                    self.st = St::Text;
                    return ws + syn.block_close.len();
                }
                if let Some(after) = body.strip_prefix(syn.key_open) {
                    if let Some(i) = after.find(syn.key_close) {
                        let key = after[..i].trim().to_string();
                        let rest = &after[i + syn.key_close.len()..];
                        let rest_t = rest.trim_start();
                        if !rest_t.starts_with(syn.val_open) {
                            if !end && syn.val_open.starts_with(rest_t) {
                                return ws;
                            }
                            // a key without its value: skip it
                            return ws + syn.key_open.len() + i + syn.key_close.len();
                        }
                        let used = ws
                            + syn.key_open.len()
                            + i
                            + syn.key_close.len()
                            + (rest.len() - rest_t.len())
                            + syn.val_open.len();
                        let ty = out.param_type(&self.name, &key);
                        let string = ty == "string";
                        self.boolean = ty == "boolean";
                        let sep = if self.n_params == 0 { "{" } else { ", " };
                        self.n_params += 1;
                        let k = serde_json::Value::String(key).to_string();
                        out.args(&format!("{sep}{k}: "));
                        if string {
                            out.args("\"");
                        }
                        self.st = St::Value {
                            string,
                            started: false,
                        };
                        return used;
                    }
                    if after.len() > MAX_NAME || end {
                        self.close_call(out);
                        self.st = St::Text;
                        return buf.len();
                    }
                    return ws;
                }
                if end {
                    self.close_call(out);
                    self.st = St::Text;
                    return buf.len();
                }
                let could = [syn.call_close, syn.block_close, syn.key_open]
                    .iter()
                    .any(|m| m.starts_with(body));
                if body.is_empty() || could {
                    return ws;
                }
                // stray text inside a call: skip to the next tag
                let c = first_char_len(body);
                match body[c..].find('<') {
                    Some(k) => ws + c + k,
                    None => buf.len(),
                }
            }
            St::Value { string, started } => {
                if let Some(i) = buf.find(syn.val_close) {
                    self.close_value(&buf[..i], string, started, out);
                    self.st = St::Params;
                    return i + syn.val_close.len();
                }
                if end {
                    let n = safe_len(buf, &[syn.val_close]);
                    self.close_value(&buf[..n], string, started, out);
                    self.close_call(out);
                    self.st = St::Text;
                    return buf.len();
                }
                if !string {
                    return 0;
                }
                let mut from = 0;
                if !started && syn.trim_nl {
                    if buf.is_empty() {
                        return 0;
                    }
                    if buf.starts_with('\n') {
                        from = 1;
                    }
                }
                let close_nl = format!("\n{}", syn.val_close);
                let n = safe_len(buf, &[syn.val_close, &close_nl]);
                let n = if syn.trim_nl && buf[..n].ends_with('\n') {
                    n - 1
                } else {
                    n
                };
                if n <= from {
                    if from > 0 {
                        self.st = St::Value {
                            string,
                            started: true,
                        };
                    }
                    return from;
                }
                out.args(&json_str_body(&buf[from..n]));
                self.st = St::Value {
                    string,
                    started: true,
                };
                n
            }
        }
    }
}
