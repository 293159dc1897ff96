//! gpt-oss's harmony format: messages `<|channel|>CHANNEL [to=functions.NAME]
//! [<|constrain|>json]<|message|>BODY<|end|>` (or `<|call|>`, `<|return|>`), each after
//! `<|start|>assistant`. The analysis channel is reasoning, final (and commentary without a
//! recipient) is answer text, and a message to `functions.NAME` is a tool call whose body
//! is its JSON arguments.
use super::special::close_json;
use super::{Calls, find_first, safe_len};

const MESSAGE: &str = "<|message|>";
const ENDS: &[&str] = &[
    "<|end|>",
    "<|call|>",
    "<|return|>",
    "<|start|>",
    "<|channel|>",
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Think,
    Text,
    Call,
}

enum St {
    /// Reading a message's header (up to `<|message|>`).
    Header,
    Body(Kind),
}

pub struct Harmony {
    st: St,
    tools: bool,
    args: String,
}

const MAX_HEADER: usize = 1024;

impl Harmony {
    pub fn new(tools: bool) -> Harmony {
        Harmony {
            st: St::Header,
            tools,
            args: String::new(),
        }
    }

    fn emit(&mut self, kind: Kind, s: &str, out: &mut Calls) {
        match kind {
            Kind::Think => {
                if s.is_empty() {
                    return;
                }
                if let Some(super::Ev::Think(t)) = out.evs.last_mut() {
                    t.push_str(s);
                } else {
                    out.evs.push(super::Ev::Think(s.to_string()));
                }
            }
            Kind::Text => out.text(s),
            Kind::Call => {
                self.args.push_str(s);
                out.args(s);
            }
        }
    }

    fn close(&mut self, kind: Kind, out: &mut Calls) {
        if kind == Kind::Call {
            let a = std::mem::take(&mut self.args);
            if a.trim().is_empty() {
                out.args("{}");
            } else if let Some(f) = close_json(&a) {
                out.args(&f);
            }
            out.end();
        }
    }

    pub fn step(&mut self, buf: &str, end: bool, out: &mut Calls) -> usize {
        let mut used = 0;
        loop {
            let b = &buf[used..];
            match self.st {
                St::Header => {
                    let t = b.trim_start();
                    if t.is_empty() {
                        return if end { buf.len() } else { used };
                    }
                    if !t.starts_with("<|") {
                        // no harmony markup: plain text up to the next marker
                        self.st = St::Body(Kind::Text);
                        continue;
                    }
                    let Some(i) = b.find(MESSAGE) else {
                        if end || b.len() > MAX_HEADER {
                            return buf.len(); // a header without a message
                        }
                        return used;
                    };
                    let header = &b[..i];
                    let channel = header
                        .split("<|channel|>")
                        .nth(1)
                        .map(|c| {
                            c.trim_start()
                                .split(|ch: char| !ch.is_ascii_alphanumeric())
                                .next()
                                .unwrap_or("")
                        })
                        .unwrap_or("");
                    let to = header.find("to=").map(|k| {
                        header[k + 3..]
                            .split(|ch: char| ch.is_whitespace() || ch == '<')
                            .next()
                            .unwrap_or("")
                    });
                    let kind = match (to.and_then(|r| r.strip_prefix("functions.")), channel) {
                        (Some(name), _) if self.tools && !name.is_empty() => {
                            out.start(name, None);
                            self.args.clear();
                            Kind::Call
                        }
                        (_, "analysis") => Kind::Think,
                        _ => Kind::Text,
                    };
                    self.st = St::Body(kind);
                    used += i + MESSAGE.len();
                }
                St::Body(kind) => match find_first(b, ENDS) {
                    Some((i, k)) => {
                        self.emit(kind, &b[..i], out);
                        self.close(kind, out);
                        self.st = St::Header;
                        // `<|start|>` and `<|channel|>` begin the next header; the others
                        // end a message
                        let keep = matches!(ENDS[k], "<|start|>" | "<|channel|>");
                        used += i + if keep { 0 } else { ENDS[k].len() };
                    }
                    None => {
                        let n = if end { b.len() } else { safe_len(b, ENDS) };
                        self.emit(kind, &b[..n], out);
                        if end {
                            self.close(kind, out);
                            self.st = St::Header;
                        }
                        return used + n;
                    }
                },
            }
        }
    }
}
