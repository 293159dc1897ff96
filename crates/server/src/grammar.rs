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
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Longest run of whitespace allowed between JSON tokens (with at most one line break).
const MAX_WS: u8 = 24;
/// Most alternative parses followed at once.
const MAX_STACKS: usize = 64;

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
    AnyOf(Vec<usize>),
    Seq(Vec<usize>),
    /// Placeholder while a `$ref` is being compiled.
    Pending,
}

/// A compiled grammar.
#[derive(Debug)]
pub struct Grammar {
    nodes: Vec<Node>,
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
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\t' | b'\r')
}

struct Compiler<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
    refs: HashMap<String, usize>,
    depth: usize,
}

impl Compiler<'_> {
    fn push(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn literal(&mut self, v: &Value) -> usize {
        self.push(Node::Literal(v.to_string().into_bytes()))
    }

    fn compile(&mut self, s: &Value) -> Result<usize, String> {
        self.depth += 1;
        if self.depth > 64 {
            return Err("the schema nests too deeply".into());
        }
        let r = self.compile_inner(s);
        self.depth -= 1;
        r
    }

    fn compile_inner(&mut self, s: &Value) -> Result<usize, String> {
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
            let alts = e.iter().map(|v| self.literal(v)).collect();
            return Ok(self.push(Node::AnyOf(alts)));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(a) = o.get(key) {
                let a = a
                    .as_array()
                    .ok_or_else(|| format!("{key} must be an array"))?;
                if a.is_empty() {
                    return Err(format!("{key} must not be empty"));
                }
                let alts = a
                    .iter()
                    .map(|v| self.compile(v))
                    .collect::<Result<_, _>>()?;
                return Ok(self.push(Node::AnyOf(alts)));
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

    fn object(&mut self, o: &serde_json::Map<String, Value>) -> Result<usize, String> {
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

impl Grammar {
    /// A grammar for JSON documents that `schema` accepts.
    pub fn json_schema(schema: &Value) -> Result<Grammar, String> {
        let mut c = Compiler {
            root: schema,
            nodes: Vec::new(),
            refs: HashMap::new(),
            depth: 0,
        };
        let root = c.compile(schema)?;
        Ok(Grammar {
            nodes: c.nodes,
            root,
        })
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
        let mut c = Compiler {
            root: &schema,
            nodes: Vec::new(),
            refs: HashMap::new(),
            depth: 0,
        };
        let body = c.compile(&schema)?;
        let open = c.push(Node::Raw(b"<tool_call>\n".to_vec()));
        let close = c.push(Node::Raw(b"\n</tool_call>".to_vec()));
        let root = c.push(Node::Seq(vec![open, body, close]));
        Ok(Grammar {
            nodes: c.nodes,
            root,
        })
    }

    fn lit(&self, node: usize) -> &[u8] {
        match &self.nodes[node] {
            Node::Literal(b) | Node::Raw(b) => b,
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

    /// Feed `b` to `st`, adding every surviving continuation to `out`.
    fn step(&self, mut st: Stack, b: u8, out: &mut Vec<Stack>) {
        if out.len() >= MAX_STACKS {
            return;
        }
        let Some(top) = st.frames.pop() else {
            return; // complete: nothing may follow
        };
        if is_ws(b) {
            let between_tokens = match &top {
                Frame::Value(n) => !matches!(self.nodes[*n], Node::Raw(_) | Node::Seq(_)),
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
                Node::AnyOf(alts) => {
                    for &a in alts {
                        let mut s2 = st.clone();
                        s2.frames.push(Frame::Value(a));
                        self.step(s2, b, out);
                    }
                }
                Node::Seq(parts) => {
                    for &p in parts.iter().rev() {
                        st.frames.push(Frame::Value(p));
                    }
                    self.step(st, b, out);
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
                    self.step(st, b, out);
                }
                Node::Pending => {}
            },
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
                    None if matches!(ns, Zero | Int | Frac | Exp) => self.step(st, b, out),
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
                        key.push(c);
                        let (props, _, extra, last) = self.key_options(node, next);
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
                        self.step(st, b, out);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Where a generation stands in a grammar.
#[derive(Clone, Debug)]
pub struct Matcher {
    g: Arc<Grammar>,
    stacks: Vec<Stack>,
}

impl Matcher {
    /// At the start of a document.
    pub fn new(g: Arc<Grammar>) -> Matcher {
        let root = g.root;
        Matcher {
            g,
            stacks: vec![Stack {
                frames: vec![Frame::Value(root)],
                ws: 0,
                nl: false,
            }],
        }
    }

    fn advance(&self, bytes: &[u8]) -> Vec<Stack> {
        let mut cur = self.stacks.clone();
        for &b in bytes {
            let mut next = Vec::new();
            for s in cur {
                self.g.step(s, b, &mut next);
            }
            next.dedup();
            if next.is_empty() {
                return next;
            }
            cur = next;
        }
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
}
