//! Golden round trips: messages with tool calls rendered by each family's real chat template
//! (tests/fixtures/templates, copied from llama.cpp's models/templates, which holds the
//! templates of the models' HF tokenizer_config.json), the assistant's part parsed back to
//! the same calls, whole and fed in small random chunks.
use super::*;
use hearth_tokenizer::ChatTemplate;
use serde_json::json;

fn fixture(name: &str) -> String {
    let p = format!(
        "{}/../../tests/fixtures/templates/{name}.jinja",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Feed `text` whole (seed 0) or in random chunks of 1 to 8 characters.
fn parse(p: &mut OutputParser, text: &str, seed: u64) -> Vec<Ev> {
    let mut evs = Vec::new();
    if seed == 0 {
        evs.extend(p.push(text));
    } else {
        let mut x = seed;
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = 1 + (x % 8) as usize;
            let s: String = chars[i..(i + n).min(chars.len())].iter().collect();
            evs.extend(p.push(&s));
            i += n;
        }
    }
    evs.extend(p.finish());
    evs
}

fn types() -> ParamTypes {
    let tools = tools();
    param_types(tools.iter().map(|t| {
        (
            t["function"]["name"].as_str().unwrap(),
            Some(&t["function"]["parameters"]),
        )
    }))
}

fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}, "required": ["city"]}}}),
        json!({"type": "function", "function": {"name": "add", "description": "Add numbers",
            "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}, "tags": {"type": "array"}}}}}),
    ]
}

fn calls() -> Vec<(String, Value)> {
    vec![
        (
            "get_weather".into(),
            json!({"city": "Saint-Étienne, \"FR\"\n<b>next</b> line", "unit": "celsius"}),
        ),
        ("add".into(), json!({"a": 2, "b": 3.5, "tags": ["x", "y"]})),
    ]
}

struct Case {
    template: &'static str,
    family: Family,
    /// The template takes arguments as a JSON string (else an object).
    string_args: bool,
    /// It renders one call per message.
    one_call: bool,
    /// The reasoning and text it renders back for the assistant message.
    reasoning: &'static str,
    text: &'static str,
    /// Where the assistant's turn ends in the rendered conversation.
    turn_end: &'static str,
}

const CASES: &[Case] = &[
    Case {
        template: "Qwen-Qwen3-0.6B",
        family: Family::Hermes,
        string_args: false,
        one_call: false,
        reasoning: "Need tools.",
        text: "Let me check.",
        turn_end: "<|im_end|>",
    },
    Case {
        template: "Qwen3-Coder",
        family: Family::QwenXml,
        string_args: false,
        one_call: false,
        reasoning: "",
        text: "Let me check.",
        turn_end: "<|im_end|>",
    },
    Case {
        template: "Qwen3.5-4B",
        family: Family::QwenXml,
        string_args: false,
        one_call: false,
        reasoning: "Need tools.",
        text: "Let me check.",
        turn_end: "<|im_end|>",
    },
    Case {
        template: "deepseek-ai-DeepSeek-R1-Distill-Llama-8B",
        family: Family::DeepSeek,
        string_args: true,
        one_call: false,
        reasoning: "Need tools.",
        text: "",
        turn_end: "<｜end▁of▁sentence｜>",
    },
    Case {
        template: "deepseek-ai-DeepSeek-V3.1",
        family: Family::DeepSeek,
        string_args: false,
        one_call: false,
        reasoning: "",
        text: "Let me check.",
        turn_end: "<｜end▁of▁sentence｜>",
    },
    Case {
        template: "GLM-4.6",
        family: Family::Glm,
        string_args: false,
        one_call: false,
        reasoning: "Need tools.",
        text: "Let me check.",
        turn_end: "<|observation|>",
    },
    Case {
        template: "Kimi-K2-Instruct",
        family: Family::Kimi,
        string_args: false,
        one_call: false,
        reasoning: "",
        text: "Let me check.",
        turn_end: "<|im_end|>",
    },
    Case {
        template: "MiniMax-M2",
        family: Family::MiniMax,
        string_args: false,
        one_call: false,
        reasoning: "Need tools.",
        text: "Let me check.",
        turn_end: "[e~[",
    },
    Case {
        template: "openai-gpt-oss-120b",
        family: Family::Harmony,
        string_args: false,
        one_call: true,
        reasoning: "Need tools.",
        text: "",
        turn_end: "<|start|>functions",
    },
];

/// The rendered prompt and the assistant's part of the rendered conversation.
fn render(c: &Case) -> (String, String, String) {
    let src = fixture(c.template);
    let t = ChatTemplate::new(&src, "<s>", "</s>").unwrap();
    let n = if c.one_call { 1 } else { 2 };
    let tcs: Vec<Value> = calls()
        .into_iter()
        .take(n)
        .enumerate()
        .map(|(i, (name, args))| {
            let a = if c.string_args {
                Value::String(args.to_string())
            } else {
                args
            };
            json!({"id": format!("call_{i}"), "type": "function", "function": {"name": name, "arguments": a}})
        })
        .collect();
    let mut asst = json!({"role": "assistant", "tool_calls": tcs});
    if c.family == Family::Harmony {
        asst["thinking"] = json!("Need tools.");
    } else {
        // R1's template renders the calls only of a message without content
        asst["content"] = if c.text.is_empty() {
            Value::Null
        } else {
            json!("Let me check.")
        };
        asst["reasoning_content"] = json!("Need tools.");
    }
    let mut msgs = vec![
        json!({"role": "system", "content": "You are terse."}),
        json!({"role": "user", "content": "Weather in Paris, and 2+3.5?"}),
    ];
    let prompt = t
        .render_with(&msgs, Some(&tools()), true)
        .unwrap_or_else(|e| panic!("{}: {e}", c.template));
    msgs.push(asst);
    msgs.push(json!({"role": "tool", "tool_call_id": "call_0", "content": "sunny"}));
    let full = t
        .render_with(&msgs, Some(&tools()), false)
        .unwrap_or_else(|e| panic!("{}: {e}", c.template));
    let lcp = prompt
        .char_indices()
        .zip(full.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or(prompt.len());
    // a tag both continue with is not shared
    let lcp = if prompt[..lcp].ends_with('<') {
        lcp - 1
    } else {
        lcp
    };
    let tail = &full[lcp..];
    let mut tail = tail[..tail.find(c.turn_end).unwrap_or(tail.len())].to_string();
    if prompt.trim_end().ends_with("<think>") && !tail.contains("</think>") {
        // the prompt opens <think> and the template drops past reasoning: the model
        // writes its reasoning and closes it first
        tail = format!("{}</think>\n\n{tail}", c.reasoning);
    }
    (src, prompt, tail)
}

#[test]
fn every_family_round_trips_its_own_template() {
    for c in CASES {
        let (src, prompt, tail) = render(c);
        assert_eq!(Family::detect(&src, ""), c.family, "{}", c.template);
        let n = if c.one_call { 1 } else { 2 };
        let want: Vec<(String, Value)> = calls().into_iter().take(n).collect();
        for seed in [0u64, 1, 7, 12345, 999_999] {
            let in_think = prompt.trim_end().ends_with("<think>");
            let mut p = OutputParser::new(c.family, template_thinks(&src), in_think, Some(types()));
            let evs = parse(&mut p, &tail, seed);
            let (r, t, got) = collect(&evs);
            let got: Vec<(String, Value)> = got
                .into_iter()
                .map(|(_, n, a)| {
                    let v = serde_json::from_str(&a)
                        .unwrap_or_else(|e| panic!("{} seed {seed}: {a}: {e}\n{tail}", c.template));
                    (n, v)
                })
                .collect();
            assert_eq!(got, want, "{} seed {seed}:\n{tail}", c.template);
            assert_eq!(r.trim(), c.reasoning, "{} seed {seed}:\n{tail}", c.template);
            assert_eq!(t.trim(), c.text, "{} seed {seed}:\n{tail}", c.template);
        }
    }
}

fn run(
    fam: Family,
    thinks: bool,
    in_think: bool,
    text: &str,
) -> (String, String, Vec<(String, Value)>) {
    let mut last = None;
    for seed in [0u64, 3, 11, 4242] {
        let mut p = OutputParser::new(fam, thinks, in_think, Some(types()));
        let (r, t, c) = collect(&parse(&mut p, text, seed));
        let c: Vec<(String, Value)> = c
            .into_iter()
            .map(|(_, n, a)| (n, serde_json::from_str(&a).unwrap_or(Value::String(a))))
            .collect();
        if let Some(l) = &last {
            assert_eq!(l, &(r.clone(), t.clone(), c.clone()), "seed {seed}: {text}");
        }
        last = Some((r, t, c));
    }
    last.unwrap()
}

#[test]
fn reasoning_is_split_from_the_answer() {
    let (r, t, c) = run(
        Family::Hermes,
        true,
        false,
        "<think>\nhmm, 2+2\n</think>\n\nIt is 4.",
    );
    assert_eq!((r.trim(), t.as_str(), c.len()), ("hmm, 2+2", "It is 4.", 0));
    // the prompt opened <think>: the output starts inside it
    let (r, t, _) = run(Family::DeepSeek, true, true, "so 4</think>It is 4.");
    assert_eq!((r.as_str(), t.as_str()), ("so 4", "It is 4."));
    // cut off while thinking: all reasoning
    let (r, t, _) = run(Family::DeepSeek, true, true, "still thinking <thi");
    assert_eq!((r.as_str(), t.as_str()), ("still thinking <thi", ""));
    // a template without <think>: the tags are text
    let (r, t, _) = run(Family::Hermes, false, false, "<think>x</think>y");
    assert_eq!((r.as_str(), t.as_str()), ("", "<think>x</think>y"));
    // harmony: analysis, then final
    let (r, t, c) = run(
        Family::Harmony,
        false,
        false,
        "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Answer.",
    );
    assert_eq!((r.as_str(), t.as_str(), c.len()), ("Think.", "Answer.", 0));
}

#[test]
fn an_unclosed_final_call_is_closed() {
    let w = json!({"city": "Oslo"});
    let cases: &[(Family, &str)] = &[
        (
            Family::Hermes,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"",
        ),
        (
            Family::QwenXml,
            "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n",
        ),
        (
            Family::QwenXml,
            "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo",
        ),
        (
            Family::Glm,
            "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Oslo</arg_value>",
        ),
        (
            Family::MiniMax,
            "<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"city\">Oslo</parameter>\n",
        ),
        (
            Family::DeepSeek,
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Oslo\"",
        ),
        (
            Family::Kimi,
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\":\"Oslo\"}",
        ),
        (
            Family::Harmony,
            "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Oslo",
        ),
    ];
    for (fam, text) in cases {
        let (_, t, c) = run(*fam, false, false, text);
        assert_eq!(
            c,
            vec![("get_weather".to_string(), w.clone())],
            "{fam:?}: {text}"
        );
        assert_eq!(t.trim(), "", "{fam:?}");
    }
}

#[test]
fn what_is_not_a_call_stays_text() {
    let cases: &[(Family, &str)] = &[
        (Family::Hermes, "Use <tool_call>not json</tool_call> tags."),
        (Family::QwenXml, "Write <tool_call> then text."),
        (Family::Glm, "a <tool_call>bad name here</tool_call> b"),
        (Family::MiniMax, "x <minimax:tool_call> y"),
    ];
    for (fam, text) in cases {
        let (_, t, c) = run(*fam, false, false, text);
        assert!(c.is_empty(), "{fam:?}: {c:?}");
        assert_eq!(t, *text, "{fam:?}");
    }
}

#[test]
fn string_arguments_stream_before_the_call_ends() {
    let mut p = OutputParser::new(Family::QwenXml, false, false, Some(types()));
    let mut evs = p.push("Sure.<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Fra");
    let (_, t, c) = collect(&evs);
    assert_eq!(t, "Sure.");
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].2, "{\"city\": \"San Fra", "{evs:?}");
    evs.extend(p.push("ncisco\n</parameter>\n</function>\n</tool_call>"));
    evs.extend(p.finish());
    let (_, _, c) = collect(&evs);
    assert_eq!(c[0].2, "{\"city\": \"San Francisco\"}");
    // JSON arguments stream as they come
    let mut p = OutputParser::new(Family::Kimi, false, false, Some(types()));
    let evs = p.push("<|tool_calls_section_begin|><|tool_call_begin|>functions.add:0<|tool_call_argument_begin|>{\"a\": 1");
    let (_, _, c) = collect(&evs);
    assert_eq!(
        (c[0].0.as_str(), c[0].2.as_str()),
        ("functions.add:0", "{\"a\": 1")
    );
}

/// Random mixes of every family's markers, multi-byte characters and JSON, in random
/// chunks: no panic, no text lost or invented outside calls, and the parser always ends.
#[test]
fn random_output_never_panics() {
    const PIECES: &[&str] = &[
        "<tool_call>",
        "</tool_call>",
        "<function=",
        "<function=f>",
        "<parameter=",
        "<parameter=city>",
        "</parameter>",
        "</function>",
        "<arg_key>",
        "</arg_key>",
        "<arg_value>",
        "</arg_value>",
        "<minimax:tool_call>",
        "</minimax:tool_call>",
        "<invoke name=\"",
        "\">",
        "</invoke>",
        "<parameter name=\"",
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁call▁begin｜>",
        "<｜tool▁sep｜>",
        "<｜tool▁call▁end｜>",
        "<|tool_calls_section_begin|>",
        "<|tool_call_begin|>",
        "<|tool_call_argument_begin|>",
        "<|tool_call_end|>",
        "<|channel|>",
        "analysis",
        "commentary to=functions.f ",
        "<|message|>",
        "<|end|>",
        "<|call|>",
        "<|start|>assistant",
        "<think>",
        "</think>",
        "{\"name\": \"f\", \"arguments\": {\"a\": ",
        "{",
        "}",
        "\"",
        "\\",
        "[",
        "]",
        "\n",
        " ",
        "é",
        "日本",
        "🦀",
        "<",
        ">",
        "x",
        "function",
        "```json\n",
        "```",
        "get_weather",
        ":0",
        "1",
    ];
    let families = Family::ALL;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..3000 {
        let n = 1 + next() % 40;
        let text: String = (0..n)
            .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
            .collect();
        let fam = families[round % families.len()];
        let thinks = next() % 2 == 0;
        let in_think = thinks && next() % 3 == 0;
        let tools = (next() % 4 != 0).then(types);
        let mut p = OutputParser::new(fam, thinks, in_think, tools);
        let evs = parse(&mut p, &text, next() | 1);
        let (r, t, calls) = collect(&evs);
        // without tool parsing or reasoning nothing is taken out of the text
        if !thinks && fam != Family::Harmony {
            let mut p = OutputParser::new(fam, false, false, None);
            let (_, t2, c2) = collect(&parse(&mut p, &text, 0));
            assert_eq!((t2.as_str(), c2.len()), (text.as_str(), 0), "{fam:?}");
        }
        assert!(r.len() + t.len() <= text.len() * 2 + 16, "{fam:?}: {text}");
        for (_, name, _) in calls {
            assert!(!name.is_empty(), "{fam:?}: {text}");
        }
    }
}

/// A forced call's grammar in the family's own syntax accepts the family's form of the call
/// (and not the Hermes form), and that form parses back to the call.
#[test]
fn forced_calls_are_written_in_the_familys_syntax() {
    use crate::grammar::{Grammar, Matcher};
    let list: Vec<(String, Value)> = tools()
        .iter()
        .map(|t| {
            (
                t["function"]["name"].as_str().unwrap().to_string(),
                t["function"]["parameters"].clone(),
            )
        })
        .collect();
    let accepts = |g: &std::sync::Arc<Grammar>, text: &str| {
        let mut m = Matcher::new(g.clone());
        for ch in text.as_bytes().chunks(3) {
            if !m.allows(ch) {
                return false;
            }
            let _ = m.accept(ch);
        }
        m.is_complete()
    };
    let args = json!({"city": "Paris", "unit": "celsius"});
    let mut framed = 0;
    for c in CASES {
        let src = fixture(c.template);
        let frame = Frame::of(c.family, &src);
        let Some(Frame::Json {
            open,
            close,
            pre,
            post,
        }) = frame.clone()
        else {
            assert!(
                matches!(
                    c.family,
                    Family::Hermes | Family::QwenXml | Family::Glm | Family::MiniMax
                ),
                "{}",
                c.template
            );
            continue;
        };
        framed += 1;
        let g = std::sync::Arc::new(frame.unwrap().grammar(&list).unwrap());
        let pre = pre.replace("{name}", "get_weather");
        let text = format!("{open}{pre}{args}{post}{close}");
        assert!(accepts(&g, &text), "{}: {text}", c.template);
        let hermes = format!(
            "<tool_call>\n{}\n</tool_call>",
            json!({"name": "get_weather", "arguments": args})
        );
        assert!(!accepts(&g, &hermes), "{}", c.template);
        // arguments that break the schema are refused
        let bad = format!("{open}{pre}{{\"city\": 3}}{post}{close}");
        assert!(!accepts(&g, &bad), "{}: {bad}", c.template);
        let mut p = OutputParser::new(c.family, false, false, Some(types()));
        let (_, t, calls) = collect(&parse(&mut p, &text, 5));
        assert_eq!(t.trim(), "", "{}", c.template);
        assert_eq!(calls.len(), 1, "{}: {text}", c.template);
        assert_eq!(calls[0].1, "get_weather");
        assert_eq!(serde_json::from_str::<Value>(&calls[0].2).unwrap(), args);
    }
    assert_eq!(framed, 4); // DeepSeek R1 and V3.1, Kimi, harmony
}

#[test]
fn hermes_arguments_stream_and_other_shapes_are_read_whole() {
    let mut p = OutputParser::new(Family::Hermes, false, false, Some(types()));
    let evs = p.push("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"tags\": [\"x\"");
    let (_, _, c) = collect(&evs);
    assert_eq!(
        (c[0].1.as_str(), c[0].2.as_str()),
        ("add", "{\"a\": 1, \"tags\": [\"x\"")
    );
    let mut evs = evs;
    evs.extend(p.push("]}}\n</tool_call>"));
    evs.extend(p.finish());
    let (_, _, c) = collect(&evs);
    assert_eq!(
        serde_json::from_str::<Value>(&c[0].2).unwrap(),
        json!({"a": 1, "tags": ["x"]})
    );
    // arguments first, or as a string: read at the end
    for text in [
        "<tool_call>{\"arguments\": {\"a\": 1}, \"name\": \"add\"}</tool_call>",
        "<tool_call>{\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>",
    ] {
        let (_, t, c) = run(Family::Hermes, false, false, text);
        assert_eq!(
            (t.as_str(), c),
            ("", vec![("add".to_string(), json!({"a": 1}))]),
            "{text}"
        );
    }
}

/// A tool whose parameters have every kind of type, some required.
fn booking_tool() -> (String, Value) {
    (
        "book".into(),
        json!({"type": "object", "properties": {
            "city": {"type": "string"},
            "nights": {"type": "integer"},
            "price": {"type": "number"},
            "breakfast": {"type": "boolean"},
            "prefs": {"type": "object", "properties": {"floor": {"type": "integer"}, "view": {"type": "string"}},
                      "required": ["floor"], "additionalProperties": false},
            "kind": {"type": "string", "enum": ["single", "double"]},
            "note": {"type": ["string", "null"]}
        }, "required": ["city", "nights", "breakfast", "prefs"]}),
    )
}

/// The call block (from the family's opening marker to its closing one) of `args` for `name`
/// as the template `src` renders a past assistant turn.
fn rendered_call(src: &str, family: Family, name: &str, args: &Value) -> String {
    let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
    let (open, close) = match family {
        Family::MiniMax => ("<minimax:tool_call>", "</minimax:tool_call>"),
        _ => ("<tool_call>", "</tool_call>"),
    };
    let msgs = vec![
        json!({"role": "user", "content": "Book it."}),
        json!({"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": name, "arguments": args}}]}),
        json!({"role": "tool", "tool_call_id": "call_0", "content": "done"}),
    ];
    let tools = vec![
        json!({"type": "function", "function": {"name": name, "parameters": booking_tool().1}}),
    ];
    let full = t.render_with(&msgs, Some(&tools), false).unwrap();
    // the last opening marker: the system prompt may show the format with an example
    let i = full.rfind(open).unwrap();
    let j = full[i..].find(close).unwrap();
    full[i..i + j + close.len()].to_string()
}

/// Sample a forced call the way a model does: token after token, each one of `pieces` that
/// the grammar allows, chosen by `rng`, until the grammar is finished.
fn sample_forced(
    g: &std::sync::Arc<crate::grammar::Grammar>,
    rng: &mut impl FnMut() -> u64,
) -> String {
    const PIECES: &[&str] = &[
        "<tool_call>",
        "</tool_call>",
        "<function=",
        "</function>",
        "<parameter=",
        "</parameter>",
        "<arg_key>",
        "</arg_key>",
        "<arg_value>",
        "</arg_value>",
        "<minimax:tool_call>",
        "</minimax:tool_call>",
        "<invoke name=\"",
        "</invoke>",
        "<parameter name=\"",
        "\">",
        ">",
        "\n",
        "book",
        "city",
        "nights",
        "price",
        "breakfast",
        "prefs",
        "kind",
        "note",
        "floor",
        "view",
        "single",
        "double",
        "true",
        "True",
        "false",
        "null",
        "{\"",
        "\": ",
        ", \"",
        "}",
        "\n</parameter>\n",
        "</parameter>\n",
        "</arg_value>\n",
        "\n</function>",
        "é",
        "日本",
        " ",
        // what a model trained on Hermes JSON would rather write
        "<tool_call>\n{\"name\": \"book\", \"arguments\": {",
    ];
    let ascii: Vec<String> = (0x20u8..0x7f).map(|b| (b as char).to_string()).collect();
    let vocab: Vec<&str> = PIECES
        .iter()
        .copied()
        .chain(ascii.iter().map(String::as_str))
        .collect();
    let mut m = crate::grammar::Matcher::new(g.clone());
    let mut out = String::new();
    for _ in 0..20_000 {
        if m.is_finished() {
            return out;
        }
        let ok: Vec<&str> = vocab
            .iter()
            .copied()
            .filter(|p| m.allows(p.as_bytes()))
            .collect();
        assert!(!ok.is_empty(), "nothing allowed after {out:?}");
        // a markup piece when one fits, half the time: values stay short (numbers end at the
        // first closing tag allowed)
        let markup: Vec<&str> = ok.iter().copied().filter(|p| p.len() > 1).collect();
        let r = rng();
        let pick = if !markup.is_empty() && r.is_multiple_of(2) {
            markup[(r / 2) as usize % markup.len()]
        } else {
            ok[(r / 2) as usize % ok.len()]
        };
        assert!(m.accept(pick.as_bytes()));
        out.push_str(pick);
    }
    panic!("no complete call after 20000 pieces: {out}");
}

/// Qwen3-Coder/Qwen3.5, GLM and MiniMax: a forced call is written in the family's own
/// key/value syntax. The grammar accepts the call as the family's real template writes it;
/// calls sampled under the grammar start with the family's marker, parse back to exactly one
/// call of the tool, with arguments the tool's schema accepts, whatever the sampling chose.
#[test]
fn forced_calls_in_the_xml_families_are_their_own_syntax_and_match_the_schema() {
    use crate::grammar::{Grammar, Matcher};
    let tool = booking_tool();
    let list = vec![
        tool.clone(),
        (
            "add".to_string(),
            json!({"type": "object", "properties": {"a": {"type": "number"}}, "required": ["a"]}),
        ),
    ];
    let schema = std::sync::Arc::new(Grammar::json_schema(&tool.1).unwrap());
    let accepts = |g: &std::sync::Arc<Grammar>, text: &str| {
        let mut m = Matcher::new(g.clone());
        m.accept(text.as_bytes()) && m.is_complete()
    };
    let args = json!({"city": "Saint-Étienne \"centre\"\n<b>old town</b>", "nights": 3, "price": 89.5,
        "breakfast": true, "prefs": {"floor": 2, "view": "park"}, "kind": "double"});
    let types = param_types(list.iter().map(|(n, p)| (n.as_str(), Some(p))));
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rng = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (template, family, marker) in [
        (
            "Qwen3-Coder",
            Family::QwenXml,
            "<tool_call>\n<function=book>",
        ),
        (
            "Qwen3.5-4B",
            Family::QwenXml,
            "<tool_call>\n<function=book>",
        ),
        ("GLM-4.6", Family::Glm, "<tool_call>book"),
        (
            "MiniMax-M2",
            Family::MiniMax,
            "<minimax:tool_call>\n<invoke name=\"book\">",
        ),
    ] {
        let src = fixture(template);
        assert_eq!(Family::detect(&src, ""), family);
        let frame = Frame::of(family, &src).unwrap();
        assert!(matches!(frame, Frame::Kv(_)), "{template}");
        let g = std::sync::Arc::new(frame.grammar(&list).unwrap());
        // the template's own rendering of the call
        let golden = rendered_call(&src, family, "book", &args);
        assert!(accepts(&g, &golden), "{template}: {golden}");
        let mut p = OutputParser::new(family, false, false, Some(types.clone()));
        let (_, _, calls) = collect(&parse(&mut p, &golden, 3));
        assert_eq!(
            serde_json::from_str::<Value>(&calls[0].2).unwrap(),
            args,
            "{template}"
        );
        // not the Hermes form, and not a call that leaves out a required parameter
        let hermes = format!(
            "<tool_call>\n{}\n</tool_call>",
            json!({"name": "book", "arguments": args})
        );
        assert!(!accepts(&g, &hermes), "{template}");
        let mut short = args.clone();
        short.as_object_mut().unwrap().remove("nights");
        let short = rendered_call(&src, family, "book", &short);
        assert!(!accepts(&g, &short), "{template}: {short}");
        let mut n_book = 0;
        for round in 0..12 {
            let out = sample_forced(&g, &mut rng);
            let mut p = OutputParser::new(family, false, false, Some(types.clone()));
            let (_, text, calls) = collect(&parse(&mut p, &out, round + 1));
            assert_eq!(text.trim(), "", "{template}: {out}");
            assert_eq!(calls.len(), 1, "{template}: {out}");
            let (_, name, a) = &calls[0];
            let a: Value =
                serde_json::from_str(a).unwrap_or_else(|e| panic!("{template}: {a}: {e}\n{out}"));
            if name == "add" {
                assert!(a["a"].is_number(), "{template}: {a}\n{out}");
                continue;
            }
            n_book += 1;
            assert!(out.starts_with(marker), "{template}: {out}");
            assert_eq!(name, "book");
            let mut m = Matcher::new(schema.clone());
            assert!(
                m.accept(a.to_string().as_bytes()) && m.is_complete(),
                "{template}: arguments {a} break the schema\n{out}"
            );
        }
        assert!(
            n_book > 0,
            "{template}: the sampling never chose the booking tool"
        );
    }
}
