//! Constrained decoding: a JSON schema compiled to a byte-level pushdown matcher.
//!
//! The matcher follows every way the bytes so far can continue to a document the schema
//! accepts (several at once where `anyOf` or an untyped value leaves a choice). A token is
//! allowed when its bytes keep at least one of them alive; the end of generation is allowed
//! once the document is complete. Object properties come in the schema's order, required
//! ones are never skipped, and whitespace between tokens is at most one line break plus
//! indentation, so generation cannot wander off or stall. Supported: `type` (one or a list), `properties`/`required`,
//! `additionalProperties` (for objects without properties), `items`/`minItems`/`maxItems`,
//! `enum`, `const`, `anyOf`/`oneOf`, a one-element `allOf`, and `$ref` into `$defs` /
//! `definitions` (recursion included). String formats, patterns and numeric bounds are not
//! enforced.
//!
//! Everything a request controls is bounded, because the matcher runs on the scheduler's
//! thread between forward passes:
//! - compilation refuses schemas past [`MAX_NODES`] nodes or [`MAX_TRIE_STATES`] bytes of
//!   literal text, `$ref` cycles that consume no input (they would expand forever), and values
//!   that can start more than [`MAX_FANOUT`] ways;
//! - `enum`s and `const` alternatives become one byte trie, so following them costs the same
//!   for ten values as for a hundred thousand;
//! - the matcher never recurses: each byte is one loop over a work list, documents nest at
//!   most [`MAX_DEPTH`] deep, and a step budget ([`Matcher::refuel`]) caps the work spent
//!   choosing one token.
use serde_json::Value;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

/// Longest run of whitespace allowed between JSON tokens (with at most one line break).
const MAX_WS: u8 = 24;
/// Most alternative parses followed at once.
const MAX_STACKS: usize = 64;
/// Deepest nesting (objects, arrays, strings, literals) a generated document may reach.
pub const MAX_DEPTH: usize = 128;
/// Most nodes one schema may compile to.
pub const MAX_NODES: usize = 100_000;
/// Most trie states (about the bytes of `enum` and `const` text) one schema may compile to.
pub const MAX_TRIE_STATES: usize = 2_000_000;
/// Most ways one value may start (`anyOf`/`oneOf` members, type lists and `$ref`s flattened).
pub const MAX_FANOUT: usize = 1024;

#[derive(Clone, Debug)]
enum Node {
    Object {
        props: Vec<(Vec<u8>, usize)>,
        required: Vec<bool>,
        extra: Option<usize>,
    },
    Array {
        items: usize,
        min: usize,
        max: usize,
    },
    Str,
    Number {
        integer: bool,
    },
    /// JSON text that must appear exactly (a const, an enum member, true/false/null).
    Literal(Vec<u8>),
    /// Raw text, no whitespace before it (the wrapper around a tool call).
    Raw(Vec<u8>),
    /// Any text up to and including the first occurrence of the stop text (a raw string
    /// value in a tool call's markup, ended by its closing tag).
    Text(Vec<u8>),
    /// One of several raw texts: a trie of `tries`, no whitespace before it.
    RawTrie(usize),
    /// The value, or nothing.
    Opt(usize),
    /// One of several markup texts: an [`Node::AnyOf`] with no whitespace before it.
    Alt(Vec<usize>),
    /// The value, in whose text the stop text must not appear (a JSON value between markup
    /// tags, which would end it early).
    Guard(usize, Vec<u8>),
    /// One of several JSON texts (an `enum`, or `const` alternatives): a trie of `tries`.
    Trie(usize),
    AnyOf(Vec<usize>),
    Seq(Vec<usize>),
    /// Placeholder while a `$ref` is being compiled.
    Pending,
}

/// A byte trie in first-child / next-sibling form; state 0 is the root.
#[derive(Debug, Default)]
struct Trie {
    byte: Vec<u8>,
    child: Vec<u32>,
    sibling: Vec<u32>,
    term: Vec<bool>,
}

const NONE: u32 = u32::MAX;

impl Trie {
    fn new() -> Trie {
        let mut t = Trie::default();
        t.add(0);
        t
    }

    fn add(&mut self, b: u8) -> u32 {
        self.byte.push(b);
        self.child.push(NONE);
        self.sibling.push(NONE);
        self.term.push(false);
        (self.byte.len() - 1) as u32
    }

    fn len(&self) -> usize {
        self.byte.len()
    }

    /// The state after `b` from `st`.
    fn next(&self, st: u32, b: u8) -> Option<u32> {
        let mut c = self.child[st as usize];
        while c != NONE {
            if self.byte[c as usize] == b {
                return Some(c);
            }
            c = self.sibling[c as usize];
        }
        None
    }

    fn insert(&mut self, text: &[u8]) {
        let mut st = 0;
        for &b in text {
            st = match self.next(st, b) {
                Some(n) => n,
                None => {
                    let n = self.add(b);
                    self.sibling[n as usize] = self.child[st as usize];
                    self.child[st as usize] = n;
                    n
                }
            };
        }
        self.term[st as usize] = true;
    }
}

/// How a model family writes a tool call whose arguments are key/value pairs (Qwen3-Coder's
/// `<parameter=K>`, GLM's `<arg_key>`, MiniMax's `<parameter name="K">`): the call is `open`,
/// `call_open` (with `{name}` the tool's name), each parameter as `key` (with `{key}` its
/// name), its value and `after`, then `call_close` and `close`. A free string value is raw
/// text that ends with `val_close`; any other value is followed by `pad` and `val_close`.
#[derive(Clone, Debug)]
pub struct KvSyntax {
    /// Before the call.
    pub open: &'static str,
    /// After the call.
    pub close: &'static str,
    /// Before the parameters (`{name}`: the tool's name).
    pub call_open: &'static str,
    /// After the parameters.
    pub call_close: &'static str,
    /// Before a value (`{key}`: the parameter's name).
    pub key: &'static str,
    /// Between a value that is not free text and `val_close`.
    pub pad: &'static str,
    /// What ends a value.
    pub val_close: &'static str,
    /// After each value's `val_close`.
    pub after: &'static str,
}

/// Whether a parameter's schema makes its value a string in the key/value syntaxes (its type
/// is string, or a list of types with string among them), as the output parser reads it.
pub fn is_string(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "string",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "string"),
        _ => false,
    }
}

/// A compiled grammar.
#[derive(Debug)]
pub struct Grammar {
    nodes: Vec<Node>,
    tries: Vec<Trie>,
    root: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ObjSt {
    Open,
    Key,
    Colon,
    After,
    Comma,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumSt {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Frame {
    Value(usize),
    Lit {
        node: usize,
        pos: usize,
    },
    Trie {
        trie: u32,
        st: u32,
    },
    Obj {
        node: usize,
        st: ObjSt,
        next: usize,
        key: Vec<u8>,
        cur: usize,
    },
    Arr {
        node: usize,
        st: ObjSt,
        count: usize,
    },
    Str {
        esc: u8,
    },
    /// The end of a [`Node::Guard`]'s value.
    EndGuard,
    /// Inside a [`Node::Text`]: `m` bytes of its stop text are matched so far.
    Text {
        node: usize,
        m: usize,
    },
    Num {
        integer: bool,
        st: NumSt,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stack {
    frames: Vec<Frame>,
    ws: u8,
    /// The current whitespace run has its one newline.
    nl: bool,
    /// Inside a [`Node::Guard`]: that node, and how much of its stop text the text ends with.
    guard: Option<(usize, usize)>,
}

/// How much of `stop` a text ends with after `b`, when it ended with `m` bytes of it before
/// (`stop.len()`: the stop text is complete).
fn stop_next(stop: &[u8], m: usize, b: u8) -> usize {
    (1..=m + 1)
        .rev()
        .find(|&k| k <= stop.len() && stop[k - 1] == b && stop[..k - 1] == stop[m + 1 - k..m])
        .unwrap_or(0)
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\t' | b'\r')
}

struct Compiler<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
    tries: Vec<Trie>,
    trie_states: usize,
    refs: HashMap<String, usize>,
    depth: usize,
}

/// The error for a schema past one of the limits.
fn too_large(what: &str) -> String {
    format!("the schema is too large: {what}")
}

impl<'a> Compiler<'a> {
    fn new(root: &'a Value) -> Compiler<'a> {
        Compiler {
            root,
            nodes: Vec::new(),
            tries: Vec::new(),
            trie_states: 0,
            refs: HashMap::new(),
            depth: 0,
        }
    }

    fn push(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn literal(&mut self, v: &Value) -> usize {
        self.push(Node::Literal(v.to_string().into_bytes()))
    }

    /// One trie node for all of `values` (JSON texts).
    fn trie<'v>(&mut self, values: impl Iterator<Item = &'v Value>) -> Result<usize, String> {
        let id = self.trie_of(values.map(|v| v.to_string()))?;
        Ok(self.push(Node::Trie(id)))
    }

    /// A trie of `texts`; its index in `tries`.
    fn trie_of(&mut self, texts: impl Iterator<Item = String>) -> Result<usize, String> {
        let mut t = Trie::new();
        for v in texts {
            t.insert(v.as_bytes());
            if self.trie_states + t.len() > MAX_TRIE_STATES {
                return Err(too_large(&format!(
                    "its enum and const values exceed {MAX_TRIE_STATES} bytes"
                )));
            }
        }
        self.trie_states += t.len();
        self.tries.push(t);
        Ok(self.tries.len() - 1)
    }

    fn compile(&mut self, s: &'a Value) -> Result<usize, String> {
        self.depth += 1;
        if self.depth > 64 {
            return Err("the schema nests too deeply".into());
        }
        if self.nodes.len() > MAX_NODES {
            return Err(too_large(&format!("it compiles to over {MAX_NODES} nodes")));
        }
        let r = self.compile_inner(s);
        self.depth -= 1;
        r
    }

    fn compile_inner(&mut self, s: &'a Value) -> Result<usize, String> {
        let o = match s {
            Value::Bool(true) => return Ok(self.any_value()),
            Value::Object(o) => o,
            _ => return Err(format!("unsupported schema {s}")),
        };
        if let Some(r) = o.get("$ref") {
            let r = r.as_str().ok_or("$ref must be a string")?;
            if let Some(&id) = self.refs.get(r) {
                return Ok(id);
            }
            let path = r
                .strip_prefix("#/")
                .ok_or_else(|| format!("only local $refs are supported, not {r}"))?;
            let mut target = self.root;
            for part in path.split('/') {
                target = target
                    .get(part)
                    .ok_or_else(|| format!("$ref {r} points nowhere"))?;
            }
            let id = self.push(Node::Pending);
            self.refs.insert(r.to_string(), id);
            let inner = self.compile(target)?;
            self.nodes[id] = Node::AnyOf(vec![inner]);
            return Ok(id);
        }
        if let Some(c) = o.get("const") {
            return Ok(self.literal(c));
        }
        if let Some(e) = o.get("enum") {
            let e = e.as_array().ok_or("enum must be an array")?;
            if e.is_empty() {
                return Err("enum must not be empty".into());
            }
            return self.trie(e.iter());
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(a) = o.get(key) {
                let a = a
                    .as_array()
                    .ok_or_else(|| format!("{key} must be an array"))?;
                if a.is_empty() {
                    return Err(format!("{key} must not be empty"));
                }
                // members that are plain values (const, enum) share one trie
                let fixed = |v: &'a Value| -> Option<Vec<&'a Value>> {
                    if v.get("$ref").is_some() {
                        return None;
                    }
                    if let Some(c) = v.get("const") {
                        return Some(vec![c]);
                    }
                    Some(v.get("enum")?.as_array()?.iter().collect())
                };
                let values: Vec<&Value> = a.iter().filter_map(fixed).flatten().collect();
                let mut alts = Vec::new();
                if !values.is_empty() {
                    alts.push(self.trie(values.into_iter())?);
                }
                for v in a.iter().filter(|v| fixed(v).is_none()) {
                    alts.push(self.compile(v)?);
                }
                if alts.is_empty() {
                    return Err(format!("no member of {key} can match anything"));
                }
                return Ok(if alts.len() == 1 {
                    alts[0]
                } else {
                    self.push(Node::AnyOf(alts))
                });
            }
        }
        if let Some(a) = o.get("allOf") {
            match a.as_array().map(|a| a.as_slice()) {
                Some([one]) => return self.compile(one),
                _ => return Err("allOf is supported with one member only".into()),
            }
        }
        let types: Vec<&str> = match o.get("type") {
            None if o.contains_key("properties") => vec!["object"],
            None if o.contains_key("items") => vec!["array"],
            None => return Ok(self.any_value()),
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts
                .iter()
                .map(|t| t.as_str().ok_or("type must be a string or strings"))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("type must be a string or strings".into()),
        };
        let mut alts = Vec::new();
        for t in types {
            let id = match t {
                "string" => self.push(Node::Str),
                "number" => self.push(Node::Number { integer: false }),
                "integer" => self.push(Node::Number { integer: true }),
                "boolean" => {
                    let t = self.literal(&Value::Bool(true));
                    let f = self.literal(&Value::Bool(false));
                    self.push(Node::AnyOf(vec![t, f]))
                }
                "null" => self.literal(&Value::Null),
                "array" => {
                    let items = match o.get("items") {
                        Some(i) => self.compile(i)?,
                        None => self.any_value(),
                    };
                    let num = |k: &str, d: usize| {
                        o.get(k).and_then(Value::as_u64).map_or(d, |v| v as usize)
                    };
                    let (min, max) = (num("minItems", 0), num("maxItems", usize::MAX));
                    if min > max {
                        return Err("minItems is larger than maxItems".into());
                    }
                    self.push(Node::Array { items, min, max })
                }
                "object" => self.object(o)?,
                other => return Err(format!("unsupported type {other}")),
            };
            alts.push(id);
        }
        Ok(if alts.len() == 1 {
            alts[0]
        } else {
            self.push(Node::AnyOf(alts))
        })
    }

    fn object(&mut self, o: &'a serde_json::Map<String, Value>) -> Result<usize, String> {
        let props = o.get("properties").and_then(Value::as_object);
        let required: Vec<&str> = o
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match props {
            Some(p) if !p.is_empty() => {
                let mut list = Vec::new();
                let mut req = Vec::new();
                for (k, v) in p {
                    let id = self.compile(v)?;
                    // the key as it appears between the quotes
                    let quoted = Value::String(k.clone()).to_string();
                    list.push((quoted.as_bytes()[1..quoted.len() - 1].to_vec(), id));
                    req.push(required.contains(&k.as_str()));
                }
                if let Some(missing) = required.iter().find(|r| !p.contains_key(**r)) {
                    return Err(format!("required property {missing} is not in properties"));
                }
                Ok(self.push(Node::Object {
                    props: list,
                    required: req,
                    extra: None,
                }))
            }
            _ => {
                let extra = match o.get("additionalProperties") {
                    Some(Value::Bool(false)) => None,
                    Some(s @ Value::Object(_)) => Some(self.compile(s)?),
                    _ => Some(self.any_value()),
                };
                Ok(self.push(Node::Object {
                    props: Vec::new(),
                    required: Vec::new(),
                    extra,
                }))
            }
        }
    }

    /// Any JSON value (built once; it refers to itself).
    fn any_value(&mut self) -> usize {
        if let Some(&id) = self.refs.get("#any") {
            return id;
        }
        let id = self.push(Node::Pending);
        self.refs.insert("#any".into(), id);
        let obj = self.push(Node::Object {
            props: Vec::new(),
            required: Vec::new(),
            extra: Some(id),
        });
        let arr = self.push(Node::Array {
            items: id,
            min: 0,
            max: usize::MAX,
        });
        let s = self.push(Node::Str);
        let n = self.push(Node::Number { integer: false });
        let t = self.literal(&Value::Bool(true));
        let f = self.literal(&Value::Bool(false));
        let z = self.literal(&Value::Null);
        self.nodes[id] = Node::AnyOf(vec![obj, arr, s, n, t, f, z]);
        id
    }
}

impl Compiler<'_> {
    /// The grammar with `root`, after checking that no value can expand into itself without
    /// consuming input (a `$ref` cycle such as `a -> a`, which no text could ever finish) and
    /// that no value starts more than [`MAX_FANOUT`] ways. An explicit work list, not
    /// recursion: the schema decides how deep the graph is.
    fn finish(self, root: usize) -> Result<Grammar, String> {
        let n = self.nodes.len();
        if n > MAX_NODES {
            return Err(too_large(&format!("it compiles to over {MAX_NODES} nodes")));
        }
        // the nodes a value may continue to without consuming a byte
        let eps = |i: usize| -> &[usize] {
            match &self.nodes[i] {
                Node::AnyOf(alts) | Node::Alt(alts) => alts,
                Node::Opt(v) | Node::Guard(v, _) => std::slice::from_ref(v),
                Node::Seq(parts) => &parts[..parts.len().min(1)],
                _ => &[],
            }
        };
        let ref_name = |i: usize| self.refs.iter().find(|(_, v)| **v == i).map(|(k, _)| k);
        let mut state = vec![0u8; n]; // 0 new, 1 on the path, 2 done
        let mut fan = vec![0usize; n];
        for start in 0..n {
            if state[start] != 0 {
                continue;
            }
            state[start] = 1;
            let mut path: Vec<(usize, usize)> = vec![(start, 0)];
            while let Some(&mut (node, ref mut next)) = path.last_mut() {
                let kids = eps(node);
                if *next < kids.len() {
                    let k = kids[*next];
                    *next += 1;
                    match state[k] {
                        0 => {
                            state[k] = 1;
                            path.push((k, 0));
                        }
                        1 => {
                            let from = path.iter().position(|&(p, _)| p == k).unwrap_or(0);
                            let name = path[from..]
                                .iter()
                                .find_map(|&(p, _)| ref_name(p))
                                .map_or(String::new(), |r| format!(" at $ref {r}"));
                            return Err(format!(
                                "the schema refers to itself without consuming any input{name}: it can never be satisfied"
                            ));
                        }
                        _ => {}
                    }
                    continue;
                }
                fan[node] = match &self.nodes[node] {
                    Node::AnyOf(_) | Node::Alt(_) | Node::Seq(_) => {
                        kids.iter().fold(0usize, |a, &k| a.saturating_add(fan[k]))
                    }
                    Node::Opt(v) => fan[*v].saturating_add(1),
                    Node::Guard(v, _) => fan[*v],
                    Node::Pending => {
                        return Err("internal error: an unresolved $ref".into());
                    }
                    _ => 1,
                };
                if fan[node] > MAX_FANOUT {
                    return Err(too_large(&format!(
                        "a value can start in over {MAX_FANOUT} ways (anyOf/oneOf members and $refs)"
                    )));
                }
                state[node] = 2;
                path.pop();
            }
        }
        Ok(Grammar {
            nodes: self.nodes,
            tries: self.tries,
            root,
        })
    }
}

impl Grammar {
    /// A grammar for JSON documents that `schema` accepts.
    pub fn json_schema(schema: &Value) -> Result<Grammar, String> {
        let mut c = Compiler::new(schema);
        let root = c.compile(schema)?;
        c.finish(root)
    }

    /// Any JSON object (`response_format: json_object`).
    pub fn json_object() -> Grammar {
        Grammar::json_schema(&serde_json::json!({"type": "object"}))
            .expect("the object schema compiles")
    }

    /// One Hermes-style tool call: `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>`
    /// for one of `tools` (`(name, parameters schema)`).
    pub fn tool_call(tools: &[(String, Value)]) -> Result<Grammar, String> {
        let alts: Vec<Value> = tools
            .iter()
            .map(|(name, params)| {
                serde_json::json!({
                    "type": "object",
                    "properties": {"name": {"const": name}, "arguments": params},
                    "required": ["name", "arguments"],
                })
            })
            .collect();
        let schema = serde_json::json!({"anyOf": alts});
        let mut c = Compiler::new(&schema);
        let body = c.compile(&schema)?;
        let open = c.push(Node::Raw(b"<tool_call>\n".to_vec()));
        let close = c.push(Node::Raw(b"\n</tool_call>".to_vec()));
        let root = c.push(Node::Seq(vec![open, body, close]));
        c.finish(root)
    }

    /// One tool call in a model family's own syntax: `open`, then for one of `tools`
    /// (`(name, parameters schema)`) the text `frame(name)` gives before its JSON arguments,
    /// the arguments, the text after them, then `close`.
    pub fn tool_call_framed(
        tools: &[(String, Value)],
        open: &str,
        close: &str,
        frame: &dyn Fn(&str) -> (String, String),
    ) -> Result<Grammar, String> {
        let params: Vec<Value> = tools.iter().map(|(_, p)| p.clone()).collect();
        let schema = serde_json::json!({"anyOf": params});
        let mut c = Compiler::new(&schema);
        // (empty text is left out: a Raw node matches at least one byte)
        let raw = |c: &mut Compiler, parts: &mut Vec<usize>, t: &str| {
            if !t.is_empty() {
                parts.push(c.push(Node::Raw(t.as_bytes().to_vec())));
            }
        };
        let mut alts = Vec::new();
        for (i, (name, _)) in tools.iter().enumerate() {
            let (pre, post) = frame(name);
            let mut parts = Vec::new();
            raw(&mut c, &mut parts, &pre);
            parts.push(c.compile(&schema["anyOf"][i])?);
            raw(&mut c, &mut parts, &post);
            alts.push(c.push(Node::Seq(parts)));
        }
        let mut parts = Vec::new();
        raw(&mut c, &mut parts, open);
        parts.push(c.push(Node::AnyOf(alts)));
        raw(&mut c, &mut parts, close);
        let root = c.push(Node::Seq(parts));
        c.finish(root)
    }

    /// One tool call in a family's key/value markup (`syn`): for one of `tools` (`(name,
    /// parameters schema)`), each of its parameters in the schema's order, the required ones
    /// always and the others when the model writes them. A string parameter's value is raw
    /// text (one of its `enum` members when it has them), a boolean's `true` or `false` (or
    /// Python's `True` / `False`); any other is JSON text its schema accepts.
    pub fn tool_call_kv(tools: &[(String, Value)], syn: &KvSyntax) -> Result<Grammar, String> {
        let none = Value::Null;
        let mut c = Compiler::new(&none);
        let raw = |c: &mut Compiler, parts: &mut Vec<usize>, t: &str| {
            if !t.is_empty() {
                parts.push(c.push(Node::Raw(t.as_bytes().to_vec())));
            }
        };
        let mut alts = Vec::new();
        let close = syn.val_close.as_bytes().to_vec();
        for (name, params) in tools {
            // (a $ref points into this tool's own parameters)
            c.root = params;
            c.refs.clear();
            let mut parts = Vec::new();
            raw(&mut c, &mut parts, &syn.call_open.replace("{name}", name));
            let required: Vec<&str> = params
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let props = params.get("properties").and_then(Value::as_object);
            for (key, schema) in props.into_iter().flatten() {
                let mut p = Vec::new();
                raw(&mut c, &mut p, &syn.key.replace("{key}", key));
                let strings = schema.get("enum").and_then(Value::as_array).and_then(|e| {
                    e.iter()
                        .map(|v| v.as_str().map(str::to_string))
                        .collect::<Option<Vec<String>>>()
                });
                if is_string(schema) {
                    match strings {
                        Some(e) if !e.is_empty() => {
                            let t = c.trie_of(e.into_iter())?;
                            p.push(c.push(Node::RawTrie(t)));
                            raw(&mut c, &mut p, &format!("{}{}", syn.pad, syn.val_close));
                        }
                        _ => p.push(c.push(Node::Text(syn.val_close.as_bytes().to_vec()))),
                    }
                } else {
                    if schema.get("type").and_then(Value::as_str) == Some("boolean") {
                        // also as Python writes them (Qwen3-Coder's template does)
                        let t = ["true", "false", "True", "False"].map(String::from);
                        let t = c.trie_of(t.into_iter())?;
                        p.push(c.push(Node::RawTrie(t)));
                    } else {
                        // (its text must not hold the closing tag, which would end it early)
                        let v = c.compile(schema)?;
                        p.push(c.push(Node::Guard(v, close.clone())));
                    }
                    raw(&mut c, &mut p, &format!("{}{}", syn.pad, syn.val_close));
                }
                raw(&mut c, &mut p, syn.after);
                let one = c.push(Node::Seq(p));
                parts.push(if required.contains(&key.as_str()) {
                    one
                } else {
                    c.push(Node::Opt(one))
                });
            }
            raw(&mut c, &mut parts, syn.call_close);
            alts.push(c.push(Node::Seq(parts)));
        }
        let mut parts = Vec::new();
        raw(&mut c, &mut parts, syn.open);
        parts.push(c.push(Node::Alt(alts)));
        raw(&mut c, &mut parts, syn.close);
        let root = c.push(Node::Seq(parts));
        c.finish(root)
    }

    fn lit(&self, node: usize) -> &[u8] {
        match &self.nodes[node] {
            Node::Literal(b) | Node::Raw(b) | Node::Text(b) => b,
            _ => &[],
        }
    }

    /// Keys the object frame may start or continue with `key` as typed so far.
    fn key_options(
        &self,
        node: usize,
        next: usize,
    ) -> (&[(Vec<u8>, usize)], &[bool], Option<usize>, usize) {
        match &self.nodes[node] {
            Node::Object {
                props,
                required,
                extra,
            } => {
                // a required property cannot be skipped: keys run from `next` up to the first
                // required one not yet written
                let last = (next..props.len())
                    .find(|&i| required[i])
                    .unwrap_or(props.len().saturating_sub(1));
                (props, required, *extra, last)
            }
            _ => (&[], &[], None, 0),
        }
    }

    fn can_close_obj(&self, node: usize, next: usize) -> bool {
        match &self.nodes[node] {
            Node::Object { required, .. } => !required[next.min(required.len())..].contains(&true),
            _ => false,
        }
    }

    fn any_key_left(&self, node: usize, next: usize) -> bool {
        let (props, _, extra, _) = self.key_options(node, next);
        extra.is_some() || next < props.len()
    }

    /// Feed `b` to `st`, adding every surviving continuation to `out`; each unit of work
    /// takes one from `fuel`, and none is done without it.
    fn step(&self, st: Stack, b: u8, out: &mut Vec<Stack>, fuel: &mut u64) {
        let start = out.len();
        let mut todo = vec![st];
        while let Some(st) = todo.pop() {
            if out.len() >= MAX_STACKS || *fuel == 0 {
                break;
            }
            *fuel -= 1;
            self.step_one(st, b, out, &mut todo);
        }
        // `b` went into the text of the guarded values: those it completes a stop text in die
        let mut i = start;
        while i < out.len() {
            if let Some((node, m)) = out[i].guard {
                let Node::Guard(_, stop) = &self.nodes[node] else {
                    i += 1;
                    continue;
                };
                let k = stop_next(stop, m, b);
                if k == stop.len() {
                    out.remove(i);
                    continue;
                }
                out[i].guard = Some((node, k));
            }
            i += 1;
        }
    }

    /// One unit of [`Grammar::step`]: continuations that consumed `b` go to `out`, those that
    /// still have to (an alternative taken, a value opened) to `todo`.
    fn step_one(&self, mut st: Stack, b: u8, out: &mut Vec<Stack>, todo: &mut Vec<Stack>) {
        if st.frames.len() > MAX_DEPTH {
            return; // nested too deeply: this continuation dies
        }
        let Some(top) = st.frames.pop() else {
            return; // complete: nothing may follow
        };
        if is_ws(b) {
            let between_tokens = match &top {
                Frame::Value(n) => !matches!(
                    self.nodes[*n],
                    Node::Raw(_)
                        | Node::Seq(_)
                        | Node::Text(_)
                        | Node::RawTrie(_)
                        | Node::Opt(_)
                        | Node::Alt(_)
                ),
                Frame::Obj { st, .. } => *st != ObjSt::Key,
                Frame::Arr { .. } => true,
                _ => false,
            };
            if between_tokens {
                // a run of whitespace: at most one line break, then indentation
                let second_nl = matches!(b, b'\n' | b'\r') && st.nl;
                if st.ws < MAX_WS && !second_nl {
                    st.ws += 1;
                    st.nl |= b == b'\n';
                    st.frames.push(top);
                    out.push(st);
                }
                return;
            }
        } else {
            st.ws = 0;
            st.nl = false;
        }
        match top {
            Frame::Value(n) => match &self.nodes[n] {
                Node::AnyOf(alts) | Node::Alt(alts) => {
                    // the work list is a stack: push the last first, so the first is tried first
                    for &a in alts.iter().rev() {
                        let mut s2 = st.clone();
                        s2.frames.push(Frame::Value(a));
                        todo.push(s2);
                    }
                }
                Node::Seq(parts) => {
                    for &p in parts.iter().rev() {
                        st.frames.push(Frame::Value(p));
                    }
                    todo.push(st);
                }
                Node::Object { .. } => {
                    if b == b'{' {
                        st.frames.push(Frame::Obj {
                            node: n,
                            st: ObjSt::Open,
                            next: 0,
                            key: Vec::new(),
                            cur: 0,
                        });
                        out.push(st);
                    }
                }
                Node::Array { .. } => {
                    if b == b'[' {
                        st.frames.push(Frame::Arr {
                            node: n,
                            st: ObjSt::Open,
                            count: 0,
                        });
                        out.push(st);
                    }
                }
                Node::Str => {
                    if b == b'"' {
                        st.frames.push(Frame::Str { esc: 0 });
                        out.push(st);
                    }
                }
                Node::Number { integer } => {
                    let ns = match b {
                        b'-' => NumSt::Minus,
                        b'0' => NumSt::Zero,
                        b'1'..=b'9' => NumSt::Int,
                        _ => return,
                    };
                    st.frames.push(Frame::Num {
                        integer: *integer,
                        st: ns,
                    });
                    out.push(st);
                }
                Node::Literal(_) | Node::Raw(_) => {
                    st.frames.push(Frame::Lit { node: n, pos: 0 });
                    todo.push(st);
                }
                Node::Trie(t) | Node::RawTrie(t) => {
                    st.frames.push(Frame::Trie {
                        trie: *t as u32,
                        st: 0,
                    });
                    todo.push(st);
                }
                Node::Text(_) => {
                    st.frames.push(Frame::Text { node: n, m: 0 });
                    todo.push(st);
                }
                Node::Guard(v, _) => {
                    st.frames.push(Frame::EndGuard);
                    st.frames.push(Frame::Value(*v));
                    st.guard = Some((n, 0));
                    todo.push(st);
                }
                Node::Opt(v) => {
                    let mut s2 = st.clone();
                    s2.frames.push(Frame::Value(*v));
                    todo.push(st);
                    todo.push(s2);
                }
                Node::Pending => {}
            },
            Frame::Trie { trie, st: ts } => {
                let t = &self.tries[trie as usize];
                if let Some(n) = t.next(ts, b) {
                    // a value may end here and also go on (enum [1, 12])
                    if t.child[n as usize] != NONE {
                        let mut s2 = st.clone();
                        s2.frames.push(Frame::Trie { trie, st: n });
                        out.push(s2);
                    }
                    if t.term[n as usize] {
                        out.push(st);
                    }
                }
            }
            Frame::Lit { node, pos } => {
                let bytes = self.lit(node);
                if bytes.get(pos) == Some(&b) {
                    if pos + 1 < bytes.len() {
                        st.frames.push(Frame::Lit { node, pos: pos + 1 });
                    }
                    out.push(st);
                }
            }
            Frame::Str { esc } => {
                let next = match (esc, b) {
                    (0, b'"') => None,
                    (0, b'\\') => Some(1),
                    (0, c) if c < 0x20 => return,
                    (0, _) => Some(0),
                    (1, b'u') => Some(5),
                    (1, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Some(0),
                    (1, _) => return,
                    (e, c) if c.is_ascii_hexdigit() => Some(if e == 2 { 0 } else { e - 1 }),
                    _ => return,
                };
                if let Some(e) = next {
                    st.frames.push(Frame::Str { esc: e });
                }
                out.push(st);
            }
            Frame::EndGuard => {
                st.guard = None;
                todo.push(st);
            }
            Frame::Text { node, m } => {
                let k = stop_next(self.lit(node), m, b);
                if k < self.lit(node).len() {
                    st.frames.push(Frame::Text { node, m: k });
                }
                out.push(st);
            }
            Frame::Num { integer, st: ns } => {
                use NumSt::*;
                let next = match (ns, b) {
                    (Minus, b'0') => Some(Zero),
                    (Minus, b'1'..=b'9') => Some(Int),
                    (Int, b'0'..=b'9') => Some(Int),
                    (Zero | Int, b'.') if !integer => Some(Dot),
                    (Zero | Int | Frac, b'e' | b'E') if !integer => Some(E),
                    (Dot | Frac, b'0'..=b'9') => Some(Frac),
                    (E, b'+' | b'-') => Some(ESign),
                    (E | ESign | Exp, b'0'..=b'9') => Some(Exp),
                    _ => None,
                };
                match next {
                    Some(n2) => {
                        st.frames.push(Frame::Num { integer, st: n2 });
                        out.push(st);
                    }
                    None if matches!(ns, Zero | Int | Frac | Exp) => todo.push(st),
                    None => {}
                }
            }
            Frame::Obj {
                node,
                st: os,
                next,
                mut key,
                cur,
            } => {
                let push = |st: &mut Stack, os: ObjSt, next: usize, key: Vec<u8>, cur: usize| {
                    st.frames.push(Frame::Obj {
                        node,
                        st: os,
                        next,
                        key,
                        cur,
                    });
                };
                match (os, b) {
                    (ObjSt::Open | ObjSt::Comma, b'"') if self.any_key_left(node, next) => {
                        push(&mut st, ObjSt::Key, next, Vec::new(), 0);
                        out.push(st);
                    }
                    (ObjSt::Open | ObjSt::After, b'}') if self.can_close_obj(node, next) => {
                        out.push(st);
                    }
                    (ObjSt::After, b',') if self.any_key_left(node, next) => {
                        push(&mut st, ObjSt::Comma, next, Vec::new(), 0);
                        out.push(st);
                    }
                    (ObjSt::Key, b'"') => {
                        let (props, _, extra, last) = self.key_options(node, next);
                        let hit = props
                            .iter()
                            .enumerate()
                            .skip(next)
                            .take(last + 1 - next.min(last + 1))
                            .find(|(_, (k, _))| *k == key);
                        match (hit, extra) {
                            (Some((i, (_, v))), _) => {
                                push(&mut st, ObjSt::Colon, i + 1, Vec::new(), *v);
                                out.push(st);
                            }
                            (None, Some(v)) if props.is_empty() => {
                                push(&mut st, ObjSt::Colon, next, Vec::new(), v);
                                out.push(st);
                            }
                            _ => {}
                        }
                    }
                    (ObjSt::Key, c) if c >= 0x20 && c != b'\\' => {
                        let (props, _, extra, last) = self.key_options(node, next);
                        // free keys are not kept: only named properties are matched
                        if !props.is_empty() {
                            key.push(c);
                        }
                        let ok = (props.is_empty() && extra.is_some())
                            || props
                                .iter()
                                .skip(next)
                                .take(last + 1 - next.min(last + 1))
                                .any(|(k, _)| k.starts_with(&key));
                        if ok {
                            push(&mut st, ObjSt::Key, next, key, 0);
                            out.push(st);
                        }
                    }
                    (ObjSt::Colon, b':') => {
                        push(&mut st, ObjSt::After, next, Vec::new(), 0);
                        st.frames.push(Frame::Value(cur));
                        out.push(st);
                    }
                    _ => {}
                }
            }
            Frame::Arr {
                node,
                st: os,
                count,
            } => {
                let Node::Array { items, min, max } = self.nodes[node] else {
                    return;
                };
                match (os, b) {
                    (ObjSt::Open | ObjSt::After, b']') if count >= min => out.push(st),
                    (ObjSt::After, b',') if count < max => {
                        st.frames.push(Frame::Arr {
                            node,
                            st: ObjSt::Comma,
                            count,
                        });
                        out.push(st);
                    }
                    (ObjSt::Open | ObjSt::Comma, _) if count < max => {
                        st.frames.push(Frame::Arr {
                            node,
                            st: ObjSt::After,
                            count: count + 1,
                        });
                        st.frames.push(Frame::Value(items));
                        todo.push(st);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Matcher steps one token's choice may take by default. Checking SmolLM2's whole vocabulary
/// (49,152 tokens) took 83k steps at the start of an object, 330k inside a string and 577k
/// at the start of an untyped value (5-24 ms, about 24M steps/s); this allows about ten
/// times the worst of those, some 0.2 s of the scheduler's time per token at most.
pub const TOKEN_FUEL: u64 = 5_000_000;

/// Where a generation stands in a grammar.
#[derive(Clone, Debug)]
pub struct Matcher {
    g: Arc<Grammar>,
    stacks: Vec<Stack>,
    /// Steps left before [`Matcher::refuel`] (shared by `allows` and `accept`).
    fuel: Cell<u64>,
    /// Steps taken in all.
    steps: Cell<u64>,
}

impl Matcher {
    /// At the start of a document, with [`TOKEN_FUEL`].
    pub fn new(g: Arc<Grammar>) -> Matcher {
        let root = g.root;
        Matcher {
            g,
            stacks: vec![Stack {
                frames: vec![Frame::Value(root)],
                ws: 0,
                nl: false,
                guard: None,
            }],
            fuel: Cell::new(TOKEN_FUEL),
            steps: Cell::new(0),
        }
    }

    /// Allow `fuel` more steps (the scheduler does this before choosing each token).
    pub fn refuel(&self, fuel: u64) {
        self.fuel.set(fuel);
    }

    /// The step budget ran out: answers since then are "not allowed" and not to be trusted.
    pub fn out_of_fuel(&self) -> bool {
        self.fuel.get() == 0
    }

    /// Steps taken so far (how much work following the grammar has cost).
    pub fn steps(&self) -> u64 {
        self.steps.get()
    }

    fn advance(&self, bytes: &[u8]) -> Vec<Stack> {
        let mut fuel = self.fuel.get();
        let before = fuel;
        let mut cur = self.stacks.clone();
        for &b in bytes {
            let mut next = Vec::new();
            for s in cur {
                self.g.step(s, b, &mut next, &mut fuel);
            }
            next.dedup();
            if next.is_empty() || fuel == 0 {
                cur = Vec::new();
                break;
            }
            cur = next;
        }
        self.fuel.set(fuel);
        self.steps.set(self.steps.get() + (before - fuel));
        cur
    }

    /// Whether `bytes` can come next.
    pub fn allows(&self, bytes: &[u8]) -> bool {
        !bytes.is_empty() && !self.advance(bytes).is_empty()
    }

    /// Take `bytes` (false, leaving the matcher as it was, if they are not allowed).
    pub fn accept(&mut self, bytes: &[u8]) -> bool {
        let next = self.advance(bytes);
        if next.is_empty() {
            return false;
        }
        self.stacks = next;
        true
    }

    /// The document is complete (the end of generation is allowed).
    pub fn is_complete(&self) -> bool {
        self.stacks.iter().any(|s| match s.frames.as_slice() {
            [] => true,
            [Frame::Num { st, .. }] => {
                matches!(st, NumSt::Zero | NumSt::Int | NumSt::Frac | NumSt::Exp)
            }
            _ => false,
        })
    }

    /// Nothing more can be added.
    pub fn is_finished(&self) -> bool {
        self.stacks.iter().all(|s| s.frames.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(schema: Value) -> Matcher {
        Matcher::new(Arc::new(Grammar::json_schema(&schema).unwrap()))
    }

    fn full(mut mt: Matcher, text: &str) -> bool {
        mt.accept(text.as_bytes()) && mt.is_complete()
    }

    #[test]
    fn kv_calls_free_text_ends_at_the_closing_tag_and_json_never_holds_it() {
        let syn = KvSyntax {
            open: "<c>",
            close: "</c>",
            call_open: "{name}:",
            call_close: "",
            key: "[{key}]",
            pad: "",
            val_close: "</v>",
            after: ";",
        };
        let tools = vec![(
            "f".to_string(),
            json!({"type": "object", "properties": {"s": {"type": "string"}, "n": {"type": "integer"},
                "b": {"type": "boolean"}, "o": {"type": "object"}}, "required": ["s"]}),
        )];
        let g = Arc::new(Grammar::tool_call_kv(&tools, &syn).unwrap());
        let ok = |t: &str| full(Matcher::new(g.clone()), t);
        // free text with near misses of its closing tag
        assert!(ok("<c>f:[s]a </v x<</</v>;</c>"));
        assert!(ok("<c>f:[s]</v>;[n]42</v>;</c>"));
        assert!(ok("<c>f:[s]x</v>;[b]True</v>;</c>"));
        assert!(!ok("<c>f:[s]x</v>;[b]yes</v>;</c>"));
        // s is required, n an integer, and the parameters come in the schema's order
        assert!(!ok("<c>f:[n]42</v>;</c>"));
        assert!(!ok("<c>f:[s]x</v>;[n]4.5</v>;</c>"));
        assert!(!ok("<c>f:[s]x</v>;[o]{}</v>;[n]1</v>;</c>"));
        // the closing tag inside JSON text would end the value early
        assert!(ok(r#"<c>f:[s]x</v>;[o]{"k": "<\/v>"}</v>;</c>"#));
        assert!(!ok(r#"<c>f:[s]x</v>;[o]{"k": "</v>"}</v>;</c>"#));
        // no whitespace inside the markup
        assert!(!ok("<c> f:[s]x</v>;</c>"));
        assert!(!ok("<c>f:[s]x</v>; </c>"));
    }

    #[test]
    fn schema_documents_are_accepted_and_others_rejected() {
        let s = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
                "ok": {"type": ["boolean", "null"]}
            },
            "required": ["name", "age"]
        });
        let good = [
            r#"{"name": "Bo \"x\" \u00e9", "age": -12}"#,
            r#"{ "name":"", "age":0, "tags":["a","b"], "ok":null }"#,
            "{\n  \"name\": \"a\",\n  \"age\": 3,\n  \"ok\": true\n}",
        ];
        for g in good {
            assert!(full(m(s.clone()), g), "{g}");
        }
        let bad = [
            r#"{"age": 3, "name": "a"}"#,         // out of order
            r#"{"name": "a"}"#,                   // age missing
            r#"{"name": "a", "age": 1.5}"#,       // not an integer
            r#"{"name": "a", "age": 01}"#,        // leading zero
            r#"{"name": "a", "age": 1, "x": 1}"#, // unknown key
            r#"{"name": "a", "age": 1, "tags": ["c"]}"#,
            r#"{"name": "a", "age": 1, "tags": ["a","a","a"]}"#,
            r#"{"name": "a", "age": 1} x"#,
        ];
        for b in bad {
            assert!(!full(m(s.clone()), b), "{b}");
        }
        // prefixes of a good document are alive but not complete
        let mut mt = m(s.clone());
        assert!(mt.accept(br#"{"name": "a", "age": 1"#));
        assert!(!mt.is_complete() && !mt.is_finished());
        assert!(mt.allows(b"}") && mt.allows(b", \"ok") && !mt.allows(b", \"zz"));
        assert!(mt.accept(b"}"));
        assert!(mt.is_finished());
    }

    #[test]
    fn any_json_refs_and_tool_calls() {
        let obj = Matcher::new(Arc::new(Grammar::json_object()));
        assert!(full(
            obj.clone(),
            r#"{"a": [1, {"b": null}, "x", 2.5e-3], "c": {}}"#
        ));
        assert!(!full(obj.clone(), r#"[1]"#));
        assert!(!full(obj, r#"{"a": tru}"#));
        let rec = json!({
            "$defs": {"node": {"type": "object", "properties": {
                "v": {"type": "integer"},
                "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}
            }, "required": ["v"]}},
            "$ref": "#/$defs/node"
        });
        assert!(full(
            m(rec.clone()),
            r#"{"v": 1, "kids": [{"v": 2, "kids": []}]}"#
        ));
        assert!(!full(m(rec), r#"{"v": 1, "kids": [{"kids": []}]}"#));
        let tools = vec![
            (
                "get_weather".to_string(),
                json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
            ),
            (
                "get_time".to_string(),
                json!({"type": "object", "properties": {}}),
            ),
        ];
        let g = Arc::new(Grammar::tool_call(&tools).unwrap());
        assert!(full(
            Matcher::new(g.clone()),
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
        ));
        assert!(!full(
            Matcher::new(g.clone()),
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>"
        ));
        assert!(!full(
            Matcher::new(g),
            "{\"name\": \"get_time\", \"arguments\": {}}"
        ));
        // whitespace runs are capped
        let mut mt = m(json!({"type": "object"}));
        assert!(mt.accept(b"{"));
        assert!(!mt.allows(&[b' '; 40]));
        // one line break per gap, then indentation
        assert!(mt.allows(b"\n    ") && !mt.allows(b"\n\n") && !mt.allows(b" \n \n"));
    }

    #[test]
    fn a_self_referencing_ref_is_an_error_not_a_stack_overflow() {
        // issue 22: this schema overflowed the scheduler's stack and killed the server
        let e = Grammar::json_schema(
            &json!({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}),
        )
        .unwrap_err();
        assert!(
            e.contains("refers to itself") && e.contains("#/$defs/a"),
            "{e}"
        );
        // through anyOf, and a two-step cycle
        for s in [
            json!({"$defs": {"a": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"}),
            json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"oneOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"}),
        ] {
            let e = Grammar::json_schema(&s).unwrap_err();
            assert!(e.contains("refers to itself"), "{e}");
        }
        // recursion through a container consumes input and stays allowed
        let ok = json!({"$defs": {"a": {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"$ref": "#/$defs/a"}}]}}, "$ref": "#/$defs/a"});
        assert!(full(m(ok), "[1, [2, [[]]]]"));
    }

    #[test]
    fn enum_mask_work_does_not_grow_with_the_enum() {
        // issue 22: an enum of 100,000 values kept the scheduler busy for minutes
        let work = |n: usize| {
            let values: Vec<Value> = (0..n).map(|i| json!(format!("value{i}"))).collect();
            let t0 = std::time::Instant::now();
            let mt = m(json!({"enum": values}));
            let compile = t0.elapsed();
            let before = mt.steps();
            for probe in [&b"\"value9"[..], b"\"val", b"\"x", b"\"value12\""] {
                mt.allows(probe);
            }
            (mt.steps() - before, compile)
        };
        let (small, _) = work(20);
        let (large, t_large) = work(100_000);
        assert_eq!(small, large, "steps for 20 values vs 100,000");
        assert!(t_large.as_secs_f64() < 5.0, "compiling took {t_large:?}");
        // every value stays reachable (a scan of 64 parses once cut the enum short)
        let values: Vec<Value> = (0..1000).map(|i| json!(format!("v{i}"))).collect();
        assert!(full(m(json!({"enum": values.clone()})), "\"v999\""));
        let consts: Vec<Value> = values.iter().map(|v| json!({"const": v})).collect();
        assert!(full(m(json!({"anyOf": consts.clone()})), "\"v777\""));
        assert!(!full(m(json!({"anyOf": consts})), "\"v1000\""));
        // a value that is a prefix of another
        let mt = m(json!({"enum": [1, 12, "a"]}));
        assert!(full(mt.clone(), "1") && full(mt.clone(), "12") && !full(mt, "123"));
    }

    #[test]
    fn schemas_past_the_limits_are_refused() {
        let refused = |s: Value| match Grammar::json_schema(&s) {
            Ok(_) => panic!("accepted a schema past the limits"),
            Err(e) => e,
        };
        let objs: Vec<Value> = (0..MAX_FANOUT + 1)
            .map(|i| json!({"type": "object", "properties": {format!("k{i}"): {"type": "string"}}}))
            .collect();
        let e = refused(json!({"anyOf": objs}));
        assert!(e.contains("too large"), "{e}");
        let props: serde_json::Map<String, Value> = (0..MAX_NODES + 1)
            .map(|i| (format!("p{i}"), json!({"type": "integer"})))
            .collect();
        let e = refused(json!({"type": "object", "properties": props}));
        assert!(e.contains("too large"), "{e}");
        let long: Vec<Value> = (0..MAX_TRIE_STATES / 1000 + 10)
            .map(|i| json!(format!("{i}-{}", "x".repeat(1000))))
            .collect();
        let e = refused(json!({"enum": long}));
        assert!(e.contains("too large"), "{e}");
        // an empty enum inside anyOf leaves nothing to match
        refused(json!({"anyOf": [{"enum": []}]}));
    }

    #[test]
    fn nesting_depth_and_work_are_bounded() {
        let mut mt = Matcher::new(Arc::new(Grammar::json_schema(&json!({})).unwrap()));
        let deep = "[".repeat(MAX_DEPTH + 10);
        assert!(!mt.allows(deep.as_bytes()));
        assert!(mt.accept("[".repeat(MAX_DEPTH - 2).as_bytes()));
        // a budget of a few steps runs out, and says so
        mt.refuel(3);
        assert!(!mt.allows(b"1, 2, 3, 4, 5"));
        assert!(mt.out_of_fuel());
        mt.refuel(TOKEN_FUEL);
        assert!(mt.allows(b"1, 2, 3, 4, 5") && !mt.out_of_fuel());
    }
}
