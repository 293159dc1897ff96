//! A model's output split into reasoning, answer text and tool calls, in the syntax of the
//! model's family, incrementally: text goes in as it is generated and events come out as soon
//! as they are certain, so reasoning, text and tool-call arguments stream.
//!
//! The family is chosen from the chat template's text (and the architecture as a fallback):
//! Hermes/Qwen JSON, Qwen3-Coder/Qwen3.5 XML, DeepSeek R1/V3.1 special tokens, GLM-4.5+
//! `<arg_key>`, Kimi K2 sections, MiniMax M2 `<minimax:tool_call>`, gpt-oss harmony.
//! `<think>…</think>` reasoning is split off in front of the tool parser for the families
//! whose template has it. Output that is not a well-formed call stays text; a call cut short
//! at the end (an unclosed final tag) is closed.
mod harmony;
mod hermes;
mod special;
#[cfg(test)]
mod tests;
mod xml;

use crate::grammar::{Grammar, KvSyntax};
use serde_json::Value;
use std::collections::HashMap;

/// Something the output parser found.
#[derive(Clone, Debug, PartialEq)]
pub enum Ev {
    /// Answer text.
    Text(String),
    /// Reasoning text.
    Think(String),
    /// A tool call begins (its index among this output's calls, its id and its name).
    Call {
        index: usize,
        id: String,
        name: String,
    },
    /// More of the arguments (JSON text) of call `index`.
    Args { index: usize, delta: String },
}

/// How a model family writes tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `<tool_call>{"name": …, "arguments": …}</tool_call>` (Hermes, Qwen2.5, Qwen3).
    Hermes,
    /// `<tool_call><function=NAME><parameter=K>V</parameter></function></tool_call>`.
    QwenXml,
    /// `<｜tool▁call▁begin｜>…<｜tool▁sep｜>…<｜tool▁call▁end｜>` (DeepSeek V3, R1, V3.1).
    DeepSeek,
    /// `<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value></tool_call>`.
    Glm,
    /// `<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:i…`.
    Kimi,
    /// `<minimax:tool_call><invoke name="NAME"><parameter name="K">V</parameter>…`.
    MiniMax,
    /// gpt-oss: `<|channel|>analysis|commentary to=functions.NAME|final<|message|>…`.
    Harmony,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 7] = [
        Family::Hermes,
        Family::QwenXml,
        Family::DeepSeek,
        Family::Glm,
        Family::Kimi,
        Family::MiniMax,
        Family::Harmony,
    ];

    /// The family of a model with chat template `template` and architecture `arch`.
    pub fn detect(template: &str, arch: &str) -> Family {
        let arch = arch.to_ascii_lowercase();
        if template.contains("<|channel|>") || arch.starts_with("gpt_oss") || arch == "gpt-oss" {
            Family::Harmony
        } else if template.contains("minimax:tool_call") || arch == "minimax_m2" {
            Family::MiniMax
        } else if template.contains("tool_calls_section_begin") || arch.starts_with("kimi") {
            Family::Kimi
        } else if template.contains("<arg_key>") || arch.starts_with("glm4_moe") {
            Family::Glm
        } else if template.contains("tool▁call▁begin") || arch.starts_with("deepseek") {
            Family::DeepSeek
        } else if template.contains("<function=") || template.contains("<parameter=") {
            Family::QwenXml
        } else {
            Family::Hermes
        }
    }

    /// The family's name in logs and tests.
    pub fn name(self) -> &'static str {
        match self {
            Family::Hermes => "hermes",
            Family::QwenXml => "qwen3-coder",
            Family::DeepSeek => "deepseek",
            Family::Glm => "glm",
            Family::Kimi => "kimi",
            Family::MiniMax => "minimax",
            Family::Harmony => "harmony",
        }
    }
}

/// How a family writes one forced tool call, for constrained decoding (`tool_choice`
/// required or named).
#[derive(Clone, Debug)]
pub enum Frame {
    /// JSON arguments: `open`, then `pre` (with the call's name for `{name}`), the arguments,
    /// `post`, then `close`.
    Json {
        open: &'static str,
        close: &'static str,
        pre: &'static str,
        post: &'static str,
    },
    /// Key/value arguments in the family's markup (the XML families).
    Kv(KvSyntax),
}

/// Qwen3-Coder and Qwen3.5, as their templates write a call.
const QWEN_KV: KvSyntax = KvSyntax {
    open: "<tool_call>\n",
    close: "</tool_call>",
    call_open: "<function={name}>\n",
    call_close: "</function>\n",
    key: "<parameter={key}>\n",
    pad: "\n",
    val_close: "</parameter>",
    after: "\n",
};

/// GLM-4.5 and later.
const GLM_KV: KvSyntax = KvSyntax {
    open: "<tool_call>",
    close: "</tool_call>",
    call_open: "{name}\n",
    call_close: "",
    key: "<arg_key>{key}</arg_key>\n<arg_value>",
    pad: "",
    val_close: "</arg_value>",
    after: "\n",
};

/// MiniMax M2.
const MINIMAX_KV: KvSyntax = KvSyntax {
    open: "<minimax:tool_call>\n",
    close: "</minimax:tool_call>",
    call_open: "<invoke name=\"{name}\">\n",
    call_close: "</invoke>\n",
    key: "<parameter name=\"{key}\">",
    pad: "",
    val_close: "</parameter>",
    after: "\n",
};

impl Frame {
    /// The family's frame; None for Hermes, whose forced call is the Hermes JSON form.
    pub fn of(family: Family, template: &str) -> Option<Frame> {
        let f = |open, pre, post, close| {
            Some(Frame::Json {
                open,
                close,
                pre,
                post,
            })
        };
        match family {
            Family::DeepSeek if template.contains("```json") => f(
                "<｜tool▁calls▁begin｜>",
                "<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n",
                "\n```<｜tool▁call▁end｜>",
                "<｜tool▁calls▁end｜>",
            ),
            Family::DeepSeek => f(
                "<｜tool▁calls▁begin｜>",
                "<｜tool▁call▁begin｜>{name}<｜tool▁sep｜>",
                "<｜tool▁call▁end｜>",
                "<｜tool▁calls▁end｜>",
            ),
            Family::Kimi => f(
                "<|tool_calls_section_begin|>",
                "<|tool_call_begin|>functions.{name}:0<|tool_call_argument_begin|>",
                "<|tool_call_end|>",
                "<|tool_calls_section_end|>",
            ),
            Family::Harmony => f(
                "",
                "<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>",
                "",
                "",
            ),
            Family::QwenXml => Some(Frame::Kv(QWEN_KV)),
            Family::Glm => Some(Frame::Kv(GLM_KV)),
            Family::MiniMax => Some(Frame::Kv(MINIMAX_KV)),
            Family::Hermes => None,
        }
    }

    /// The grammar of one call of one of `tools` (`(name, parameters schema)`) in this frame.
    pub fn grammar(&self, tools: &[(String, Value)]) -> Result<Grammar, String> {
        match self {
            Frame::Json {
                open,
                close,
                pre,
                post,
            } => Grammar::tool_call_framed(tools, open, close, &|n| {
                (pre.replace("{name}", n), post.to_string())
            }),
            Frame::Kv(syn) => Grammar::tool_call_kv(tools, syn),
        }
    }
}

/// Whether a template writes `<think>` reasoning.
pub fn template_thinks(template: &str) -> bool {
    template.contains("<think>") || template.contains("</think>")
}

/// The JSON types of each tool's parameters (from the request's schemas), which the XML
/// families need to tell the string "3" from the number 3.
pub type ParamTypes = HashMap<String, HashMap<String, String>>;

/// Parameter types from OpenAI-style `{"name", "parameters"}` function definitions.
pub fn param_types<'a>(
    functions: impl Iterator<Item = (&'a str, Option<&'a Value>)>,
) -> ParamTypes {
    let mut out = ParamTypes::new();
    for (name, params) in functions {
        let mut m = HashMap::new();
        if let Some(Value::Object(props)) = params.and_then(|p| p.get("properties")) {
            for (k, v) in props {
                // ["string", "null"] and the like: a string if it may be one (as the forced
                // call's grammar writes it)
                let t = match v.get("type") {
                    _ if crate::grammar::is_string(v) => "string".into(),
                    Some(Value::String(t)) => t.clone(),
                    _ => "any".into(),
                };
                m.insert(k.clone(), t);
            }
        }
        out.insert(name.to_string(), m);
    }
    out
}

/// One family's tool-call parser (behind the reasoning split).
trait ToolSyntax: Send {
    /// Consume what can be decided of `buf` (the text not consumed so far); `end` when no
    /// more text will come. Returns how many bytes were consumed.
    fn step(&mut self, buf: &str, end: bool, out: &mut Calls) -> usize;
}

/// The events out, with the call numbering.
pub struct Calls {
    evs: Vec<Ev>,
    n: usize,
    open: bool,
    types: std::sync::Arc<ParamTypes>,
}

impl Calls {
    fn text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        if let Some(Ev::Text(t)) = self.evs.last_mut() {
            t.push_str(s);
        } else {
            self.evs.push(Ev::Text(s.to_string()));
        }
    }
    fn start(&mut self, name: &str, id: Option<String>) {
        self.evs.push(Ev::Call {
            index: self.n,
            id: id.unwrap_or_else(|| crate::api::new_id("call")),
            name: name.to_string(),
        });
        self.n += 1;
        self.open = true;
    }
    fn args(&mut self, s: &str) {
        if s.is_empty() || self.n == 0 {
            return;
        }
        let index = self.n - 1;
        if let Some(Ev::Args { index: i, delta }) = self.evs.last_mut()
            && *i == index
        {
            delta.push_str(s);
            return;
        }
        self.evs.push(Ev::Args {
            index,
            delta: s.to_string(),
        });
    }
    fn end(&mut self) {
        self.open = false;
    }
    /// The JSON type of parameter `key` of the open call ("any" when unknown).
    fn param_type(&self, name: &str, key: &str) -> &str {
        self.types
            .get(name)
            .and_then(|m| m.get(key))
            .map(String::as_str)
            .unwrap_or("any")
    }
}

/// Where `s` may end in the middle of one of `markers`: the length of the prefix of `s`
/// that is certainly not part of one.
pub(crate) fn safe_len(s: &str, markers: &[&str]) -> usize {
    let mut safe = s.len();
    for m in markers {
        for k in (1..m.len()).rev() {
            if k <= s.len() && m.is_char_boundary(k) && s.ends_with(&m[..k]) {
                safe = safe.min(s.len() - k);
                break;
            }
        }
    }
    safe
}

/// The first of `markers` in `s`: (position, which).
pub(crate) fn find_first(s: &str, markers: &[&str]) -> Option<(usize, usize)> {
    markers
        .iter()
        .enumerate()
        .filter_map(|(k, m)| s.find(m).map(|i| (i, k)))
        .min_by_key(|&(i, k)| (i, std::cmp::Reverse(markers[k].len())))
}

#[derive(PartialEq)]
enum Think {
    /// No reasoning split (the template has none).
    Off,
    /// Before any output: `<think>` may open.
    Start,
    /// Inside `<think>`.
    In,
    /// After reasoning (or answer text began).
    Done,
}

/// The whole output parser: reasoning split, then the family's tool syntax.
pub struct OutputParser {
    /// Output not yet through the reasoning split.
    buf: String,
    think: Think,
    tool: Option<Box<dyn ToolSyntax>>,
    harmony: Option<harmony::Harmony>,
    /// Answer text not yet consumed by the tool parser.
    tbuf: String,
    out: Calls,
    /// Skip whitespace before the answer (after reasoning).
    trim_text: bool,
}

/// Longest tool-call or marker text held back before it is given up on as text.
const MAX_HELD: usize = 1 << 20;

impl OutputParser {
    /// A parser for `family`. `thinks`: the template writes `<think>` reasoning;
    /// `in_think`: the prompt ends inside an open `<think>`; `tools`: parse tool calls.
    pub fn new(family: Family, thinks: bool, in_think: bool, tools: Option<ParamTypes>) -> Self {
        let parse_tools = tools.is_some();
        let out = Calls {
            evs: Vec::new(),
            n: 0,
            open: false,
            types: std::sync::Arc::new(tools.unwrap_or_default()),
        };
        let (tool, harmony): (Option<Box<dyn ToolSyntax>>, _) = match family {
            Family::Harmony => (None, Some(harmony::Harmony::new(parse_tools))),
            _ if !parse_tools => (None, None),
            Family::Hermes => (Some(Box::new(hermes::Hermes::default())), None),
            Family::QwenXml => (Some(Box::new(xml::Xml::new(&xml::QWEN))), None),
            Family::Glm => (Some(Box::new(xml::Xml::new(&xml::GLM))), None),
            Family::MiniMax => (Some(Box::new(xml::Xml::new(&xml::MINIMAX))), None),
            Family::DeepSeek => (
                Some(Box::new(special::Special::new(&special::DEEPSEEK))),
                None,
            ),
            Family::Kimi => (Some(Box::new(special::Special::new(&special::KIMI))), None),
        };
        let think = match (thinks && family != Family::Harmony, in_think) {
            (false, _) => Think::Off,
            (true, true) => Think::In,
            (true, false) => Think::Start,
        };
        OutputParser {
            buf: String::new(),
            trim_text: think == Think::In,
            think,
            tool,
            harmony,
            tbuf: String::new(),
            out,
        }
    }

    /// Feed more output; returns the events it settles.
    pub fn push(&mut self, s: &str) -> Vec<Ev> {
        self.buf.push_str(s);
        self.run(false);
        std::mem::take(&mut self.out.evs)
    }

    /// The output is complete: everything left, with an unclosed final call closed.
    pub fn finish(&mut self) -> Vec<Ev> {
        self.run(true);
        std::mem::take(&mut self.out.evs)
    }

    fn run(&mut self, end: bool) {
        if let Some(h) = &mut self.harmony {
            let n = h.step(&self.buf, end, &mut self.out);
            self.buf.drain(..n);
            return;
        }
        // the reasoning split
        loop {
            match self.think {
                Think::Off | Think::Done => {
                    let s = std::mem::take(&mut self.buf);
                    self.answer(&s);
                    break;
                }
                Think::Start => {
                    let t = self.buf.trim_start();
                    if t.starts_with("<think>") {
                        let skip = self.buf.len() - t.len() + "<think>".len();
                        self.buf.drain(..skip);
                        self.think = Think::In;
                        self.trim_text = true;
                    } else if !end && "<think>".starts_with(t) {
                        break; // maybe
                    } else {
                        self.think = Think::Done;
                    }
                }
                Think::In => {
                    if let Some(i) = self.buf.find("</think>") {
                        let r = self.buf[..i].to_string();
                        self.reason(&r);
                        self.buf.drain(..i + "</think>".len());
                        self.think = Think::Done;
                        continue;
                    }
                    let n = if end {
                        self.buf.len()
                    } else {
                        safe_len(&self.buf, &["</think>"])
                    };
                    let r: String = self.buf.drain(..n).collect();
                    self.reason(&r);
                    break;
                }
            }
        }
        // the tool syntax
        let Some(tool) = &mut self.tool else {
            let s = std::mem::take(&mut self.tbuf);
            self.out.text(&s);
            return;
        };
        loop {
            let n = tool.step(&self.tbuf, end, &mut self.out);
            self.tbuf.drain(..n);
            if n == 0 || self.tbuf.is_empty() {
                break;
            }
        }
        if end && !self.tbuf.is_empty() {
            let s = std::mem::take(&mut self.tbuf);
            self.out.text(&s);
        } else if self.tbuf.len() > MAX_HELD && !self.out.open {
            // a marker that never completes: give it up as text
            let s = std::mem::take(&mut self.tbuf);
            self.out.text(&s);
        }
    }

    fn reason(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        if let Some(Ev::Think(t)) = self.out.evs.last_mut() {
            t.push_str(s);
        } else {
            self.out.evs.push(Ev::Think(s.to_string()));
        }
    }

    fn answer(&mut self, s: &str) {
        let s = if self.trim_text {
            let t = s.trim_start();
            if !t.is_empty() {
                self.trim_text = false;
            }
            t
        } else {
            s
        };
        self.tbuf.push_str(s);
    }
}

/// The fuzz target's part: `output` through every family's parser, in chunks of 1 to 7
/// bytes' worth of characters.
pub fn fuzz_output(output: &[u8]) {
    let text = String::from_utf8_lossy(output);
    let fams = Family::ALL;
    for (i, fam) in fams.into_iter().enumerate() {
        let mut p = OutputParser::new(fam, i % 2 == 0, i % 3 == 0, Some(ParamTypes::new()));
        let mut evs = Vec::new();
        let mut rest: &str = &text;
        let mut k = i;
        while !rest.is_empty() {
            k = (k % 1_000) * 7 + 3;
            let mut n = (k % 7 + 1).min(rest.len());
            while !rest.is_char_boundary(n) {
                n += 1;
            }
            evs.extend(p.push(&rest[..n]));
            rest = &rest[n..];
        }
        evs.extend(p.finish());
        let _ = collect(&evs);
    }
}

/// All of an output's events merged: (reasoning, text, calls as (id, name, arguments)).
pub fn collect(evs: &[Ev]) -> (String, String, Vec<(String, String, String)>) {
    let (mut r, mut t, mut calls) = (String::new(), String::new(), Vec::new());
    for e in evs {
        match e {
            Ev::Text(s) => t.push_str(s),
            Ev::Think(s) => r.push_str(s),
            Ev::Call { id, name, .. } => calls.push((id.clone(), name.clone(), String::new())),
            Ev::Args { index, delta } => {
                if let Some(c) = calls.get_mut(*index) {
                    c.2.push_str(delta);
                }
            }
        }
    }
    (r, t, calls)
}
