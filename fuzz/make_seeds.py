#!/usr/bin/env python3
"""Write the committed seed corpus under fuzz/corpus/<target>/ (Python stdlib only).

Run from anywhere: `python3 fuzz/make_seeds.py`. It rewrites only the seeds it names
(files called `seed_*`), so inputs added to the corpus by other means are kept.
Every seed is small (< 20 KB) and meaningful: a valid file or request of each kind the
target reads, plus a few near-misses that take the error paths.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    assert len(data) < 20_000, (target, name, len(data))
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed_" + name), "wb") as f:
        f.write(data)


def js(v):
    return json.dumps(v, ensure_ascii=False).encode()


# ---------------------------------------------------------------- GGUF

GGUF_U8, GGUF_I8, GGUF_U16, GGUF_I16, GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL = range(8)
GGUF_STR, GGUF_ARR, GGUF_U64, GGUF_I64, GGUF_F64 = 8, 9, 10, 11, 12
SCALAR = {
    GGUF_U8: "B", GGUF_I8: "b", GGUF_U16: "H", GGUF_I16: "h", GGUF_U32: "I",
    GGUF_I32: "i", GGUF_F32: "f", GGUF_BOOL: "?", GGUF_U64: "Q", GGUF_I64: "q",
    GGUF_F64: "d",
}
# ggml type ids and (block size, bytes per block)
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q8_0, GGML_BF16 = 0, 1, 2, 8, 30
GGML_BLOCK = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_Q4_0: (32, 18), GGML_Q8_0: (32, 34),
              GGML_BF16: (1, 2)}


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gval(ty, v):
    if ty == GGUF_STR:
        return gstr(v)
    if ty == GGUF_ARR:
        ety, items = v
        return struct.pack("<IQ", ety, len(items)) + b"".join(gval(ety, x) for x in items)
    return struct.pack("<" + SCALAR[ty], v)


def gguf(kv, tensors=(), version=3, align=32):
    """kv: [(key, type, value)]; tensors: [(name, shape outermost-first, ggml type, bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kv))
    for k, ty, v in kv:
        out += gstr(k) + struct.pack("<I", ty) + gval(ty, v)
    offsets, off = [], 0
    for _, _, _, data in tensors:
        offsets.append(off)
        off += (len(data) + align - 1) // align * align
    for (name, shape, ty, data), o in zip(tensors, offsets):
        ne = list(reversed(shape))
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", ty, o)
    if tensors:
        out += b"\0" * ((-len(out)) % align)  # the data section starts aligned
        for _, _, _, data in tensors:
            out += data + b"\0" * ((-len(data)) % align)
    return out


def f32s(vals):
    return b"".join(struct.pack("<f", x) for x in vals)


def f16s(vals):
    return b"".join(struct.pack("<e", x) for x in vals)


def seeds_gguf():
    write("gguf", "empty_v3.gguf", gguf([]))
    write("gguf", "empty_v2.gguf", gguf([], version=2))
    write("gguf", "metadata_all_types.gguf", gguf([
        ("general.architecture", GGUF_STR, "llama"),
        ("general.name", GGUF_STR, "fuzz seed"),
        ("general.alignment", GGUF_U32, 32),
        ("u8", GGUF_U8, 200), ("i8", GGUF_I8, -5), ("u16", GGUF_U16, 65000),
        ("i16", GGUF_I16, -300), ("u32", GGUF_U32, 1 << 31), ("i32", GGUF_I32, -1),
        ("f32", GGUF_F32, 1.5), ("bool", GGUF_BOOL, True), ("u64", GGUF_U64, 1 << 40),
        ("i64", GGUF_I64, -(1 << 40)), ("f64", GGUF_F64, -2.25),
        ("llama.context_length", GGUF_U32, 2048),
        ("llama.rope.freq_base", GGUF_F32, 10000.0),
        ("arr.i32", GGUF_ARR, (GGUF_I32, [1, -2, 3])),
        ("arr.str", GGUF_ARR, (GGUF_STR, ["a", "bc", "\u2581d"])),
        ("arr.nested", GGUF_ARR, (GGUF_ARR, [(GGUF_U8, [1, 2]), (GGUF_F64, [0.5])])),
        ("arr.empty", GGUF_ARR, (GGUF_BOOL, [])),
    ]))
    tensors = [
        ("token_embd.weight", [4, 8], GGML_F32, f32s([i / 8 for i in range(32)])),
        ("blk.0.attn_norm.weight", [8], GGML_F16, f16s([1.0] * 8)),
        ("blk.0.attn_q.weight", [2, 32], GGML_Q4_0, bytes(range(36))),
        ("blk.0.ffn_down.weight", [1, 32], GGML_Q8_0, bytes(34)),
        ("output_norm.weight", [3, 1, 2], GGML_BF16, bytes(12)),
    ]
    write("gguf", "tensors.gguf", gguf([
        ("general.architecture", GGUF_STR, "llama"),
        ("llama.block_count", GGUF_U32, 1),
    ], tensors))
    write("gguf", "tensors_align64.gguf", gguf([
        ("general.alignment", GGUF_U32, 64),
    ], tensors[:2], align=64))
    # a tensor whose data runs past the end of the file
    write("gguf", "truncated_tensor.gguf", gguf([], tensors[:1])[:-40])

    # A tiny SentencePiece vocabulary: control tokens, byte fallback, pieces whose merges are
    # recovered from the scores.
    pieces = ["\u2581", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "\u2581he", "llo",
              "\u2581hello", "\u2581w", "or", "\u2581wor", "ld", "\u2581world"]
    toks = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    write("gguf", "vocab_spm.gguf", gguf([
        ("general.architecture", GGUF_STR, "llama"),
        ("tokenizer.ggml.model", GGUF_STR, "llama"),
        ("tokenizer.ggml.tokens", GGUF_ARR, (GGUF_STR, toks)),
        ("tokenizer.ggml.scores", GGUF_ARR, (GGUF_F32, scores)),
        ("tokenizer.ggml.token_type", GGUF_ARR, (GGUF_I32, types)),
        ("tokenizer.ggml.bos_token_id", GGUF_U32, 1),
        ("tokenizer.ggml.eos_token_id", GGUF_U32, 2),
        ("tokenizer.ggml.unknown_token_id", GGUF_U32, 0),
        ("tokenizer.ggml.add_bos_token", GGUF_BOOL, True),
        ("tokenizer.ggml.add_space_prefix", GGUF_BOOL, True),
        ("tokenizer.chat_template", GGUF_STR,
         "{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}"),
    ]))

    # A tiny byte-level BPE (gpt2) vocabulary: the GPT-2 byte alphabet, a few merges, specials.
    def b2u():
        bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        return dict(zip(bs, map(chr, cs)))
    t = b2u()
    alphabet = [t[b] for b in range(256)]
    merges = ["\u0120 t", "h e", "\u0120t he", "l l", "o r", "\u0120 w", "\u0120w or", "l d"]
    merged = [m.replace(" ", "") for m in merges]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    toks = specials + alphabet + merged
    for pre in ["qwen2", "llama-bpe"]:
        write("gguf", "vocab_gpt2_%s.gguf" % pre, gguf([
            ("general.architecture", GGUF_STR, "qwen2"),
            ("tokenizer.ggml.model", GGUF_STR, "gpt2"),
            ("tokenizer.ggml.pre", GGUF_STR, pre),
            ("tokenizer.ggml.tokens", GGUF_ARR, (GGUF_STR, toks)),
            ("tokenizer.ggml.token_type", GGUF_ARR, (GGUF_I32, [3, 3, 3] + [1] * (len(toks) - 3))),
            ("tokenizer.ggml.merges", GGUF_ARR, (GGUF_STR, merges)),
            ("tokenizer.ggml.bos_token_id", GGUF_U32, 0),
            ("tokenizer.ggml.eos_token_id", GGUF_U32, 2),
            ("tokenizer.ggml.eot_token_id", GGUF_U32, 2),
            ("tokenizer.ggml.add_bos_token", GGUF_BOOL, False),
        ]))


# ---------------------------------------------------------------- safetensors

def safetensors(tensors, metadata=None, pad=True):
    """tensors: [(name, dtype, shape, bytes)]"""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + data


def seeds_safetensors():
    write("safetensors", "small.safetensors", safetensors([
        ("model.embed_tokens.weight", "F32", [2, 2], f32s([1, 2, 3, 4])),
        ("model.norm.weight", "F16", [3], f16s([1, 1, 1])),
    ], {"format": "pt"}))
    write("safetensors", "dtypes.safetensors", safetensors([
        ("model.layers.0.self_attn.q_proj.weight", "BF16", [2, 4], bytes(16)),
        ("model.layers.0.mlp.gate_proj.weight", "F64", [1, 2], bytes(16)),
        ("a.i8", "I8", [5], bytes(5)),
        ("a.i16", "I16", [2], bytes(4)),
        ("a.i32", "I32", [1, 1], bytes(4)),
        ("a.i64", "I64", [1], bytes(8)),
        ("lm_head.weight", "F32", [0, 4], b""),
        ("scalar", "F32", [], f32s([7])),
    ]))
    # a dtype hearth does not load
    write("safetensors", "u8_unsupported.safetensors", safetensors([("x", "U8", [4], bytes(4))]))
    write("safetensors", "empty.safetensors", safetensors([], {}))
    # offsets that leave a hole / overlap: the format rejects them
    bad = safetensors([("x", "F32", [2], f32s([1, 2]))])
    write("safetensors", "truncated.safetensors", bad[:-3])


# ---------------------------------------------------------------- chat templates

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")

LLAMA3 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

QWEN_TOOLS = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

MISTRAL = r"""{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

# Jinja features templates use: namespace, macros, filters, python string methods, slicing.
FEATURES = r"""{%- set ns = namespace(found=false, n=0) -%}
{%- macro render(m) -%}
<{{ m.role | upper }}>{{ m.content.strip().replace('\n', ' ') [:40] }}</{{ m.role }}>
{%- endmacro -%}
{%- for m in messages | reverse %}
  {%- if m.role == 'user' and not ns.found %}{% set ns.found = true %}{% set ns.n = loop.index %}{% endif %}
{%- endfor -%}
{%- for m in messages %}{{ render(m) }}{% if not loop.last %}|{% endif %}{% endfor -%}
{{ ns.n }} {{ messages | length }} {{ (messages | map(attribute='role') | join(',')) }}
{%- if tools %}{% for t in tools %}{{ t.function.name | default('?') }}{{ t | tojson }}{% endfor %}{% endif %}
{{ 'abc'[1:] ~ 'x'.startswith('x') | string }} {{ range(3) | list }} {{ {'a': 1} | items | list }}
{%- if add_generation_prompt %}>{% endif %}"""

MSGS = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "What's the weather in Paris?"},
]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
TOOL_MSGS = MSGS[:2] + [
    {"role": "assistant", "content": "", "tool_calls": [{
        "id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
    {"role": "tool", "tool_call_id": "call_2", "content": "sunny"},
]


def seeds_chat_template():
    z = b"\0"
    write("chat_template", "chatml", CHATML.encode() + z + js(MSGS))
    write("chat_template", "chatml_bad_json", CHATML.encode() + z + b"plain text, not JSON \xe2\x82")
    write("chat_template", "llama3_tools", LLAMA3.encode() + z + js({"messages": MSGS, "tools": TOOLS}))
    write("chat_template", "llama3_toolcall", LLAMA3.encode() + z + js({"messages": TOOL_MSGS[:4]}))
    write("chat_template", "qwen_tools", QWEN_TOOLS.encode() + z + js({"messages": TOOL_MSGS, "tools": TOOLS}))
    write("chat_template", "qwen_plain", QWEN_TOOLS.encode() + z + js(MSGS))
    write("chat_template", "mistral", MISTRAL.encode() + z + js(MSGS))
    write("chat_template", "mistral_raise", MISTRAL.encode() + z + js(MSGS[1:2] * 2))
    write("chat_template", "features", FEATURES.encode() + z + js({"messages": MSGS, "tools": TOOLS}))
    write("chat_template", "no_messages", b"{{ bos_token }}{{ messages }}{{ eos_token }}")
    write("chat_template", "syntax_error", b"{% for m in messages %}{{ m.content }" + z + js(MSGS))


# ---------------------------------------------------------------- JSON schemas

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
        "ok": {"type": ["boolean", "null"]},
    },
    "required": ["name", "age"],
}
TREE = {
    "$defs": {"node": {"type": "object", "properties": {
        "v": {"type": "integer"},
        "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}},
    }, "required": ["v"]}},
    "$ref": "#/$defs/node",
}
SCHEMAS = [
    ("object", PERSON, '{"name": "Bo \\"x\\" \\u00e9", "age": -12, "tags": ["a"], "ok": null}'),
    ("object_pretty", PERSON, '{\n  "name": "a",\n  "age": 3,\n  "ok": true\n}'),
    ("array_bounds", {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
     "[1.5e-3, -0, 2]"),
    ("enum", {"enum": ["red", "green", 3, None, {"k": [1]}]}, '"green"'),
    ("const", {"const": {"a": [True, False]}}, '{"a":[true,false]}'),
    ("ref_tree", TREE, '{"v": 1, "kids": [{"v": 2, "kids": []}, {"v": 3}]}'),
    ("definitions_ref", {"definitions": {"s": {"type": "string"}},
                         "type": "object", "properties": {"x": {"$ref": "#/definitions/s"}}},
     '{"x": "y"}'),
    ("anyof", {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}, "42"),
    ("oneof_allof", {"oneOf": [{"allOf": [{"type": "boolean"}]}, {"type": "array"}]},
     '[1, "two", {"three": 3}, [], null]'),
    ("additional_props", {"type": "object", "additionalProperties": {"type": "integer"}},
     '{"a": 1, "b": 2}'),
    ("closed_object", {"type": "object", "additionalProperties": False}, "{}"),
    ("any", True, '{"deep": [[[{"x": null}]]], "s": "\\n\\t"}'),
    ("untyped_props", {"properties": {"q": {"type": "string"}}}, '{"q": ""}'),
    ("bad_required", {"type": "object", "properties": {"a": {}}, "required": ["b"]}, "{}"),
    ("bad_ref", {"$ref": "http://example.com/s.json"}, "1"),
    # a $ref cycle that consumes no input: refused at compile time
    ("ref_cycle", {"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "integer"}]}},
                   "$ref": "#/$defs/a"}, "1"),
]


def seeds_json_schema():
    for name, schema, out in SCHEMAS:
        write("json_schema", name, js(schema) + b"\0" + out.encode())
    # a tool call wrapper output for the tool_call grammar
    write("json_schema", "tool_call", js(PERSON) + b"\0" +
          b'<tool_call>\n{"name": "f", "arguments": {"name": "x", "age": 1}}\n</tool_call>')


# ---------------------------------------------------------------- tokenizer

def seeds_tokenizer():
    ids = lambda v: b"".join(struct.pack("<I", i) for i in v)  # noqa: E731
    # control byte: bits 0-1 pick the tokenizer (0 SPM gguf, 1 BPE gguf, 2 tokenizer.json),
    # bit 2 adds special tokens
    hello_spm = [1, 335, 396, 336, 345, 345, 338, 280, 263, 345, 349]  # spm goldens
    write("tokenizer", "spm_ids", bytes([0]) + ids(hello_spm))
    write("tokenizer", "spm_text", bytes([4]) + "Hello world, café 🙂 <s> </s>".encode())
    write("tokenizer", "spm_bytes_ids", bytes([0]) + ids([3 + b for b in "é🙂".encode()]))
    write("tokenizer", "bpe_gguf_text", bytes([1]) +
          "<|im_start|>user\nHi there!  1234\t\n<|im_end|>".encode())
    write("tokenizer", "bpe_json_text", bytes([6]) + "The quick brown fox's 99 jumps\r\n".encode())
    write("tokenizer", "bpe_json_ids", bytes([2]) + ids([0, 1, 2, 50, 100, 383, 384, 0x8000_0001]))
    write("tokenizer", "utf8_split", bytes([5]) + b"\xe4\xbd\xa0\xe5\xa5\xbd\xf0\x9f\x99\x82\xe4\xbd")
    write("tokenizer", "invalid_utf8", bytes([0]) + b"\xff\xfe\xc0\x80\xed\xa0\x80a\xf4\x90\x80\x80")


# ---------------------------------------------------------------- HTTP request bodies

CHAT, COMPLETIONS, TOKENIZE, DETOKENIZE = 0, 1, 2, 3


def req(path, body, output=b""):
    b = body if isinstance(body, bytes) else js(body)
    return bytes([path]) + b + (b"\0" + output if output else b"")


def seeds_http_request():
    w = lambda n, *a: write("http_request", n, req(*a))  # noqa: E731
    w("chat_simple", CHAT, {"model": "hearth", "messages": MSGS, "max_tokens": 16})
    w("chat_sampling", CHAT, {
        "messages": MSGS[1:2], "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
        "repeat_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": 0.25, "seed": 42,
        "stop": ["\n\n", "</s>"], "logit_bias": {"15": -100, "42": 5.5},
        "logprobs": True, "top_logprobs": 5, "max_completion_tokens": 32,
        "stream": True, "stream_options": {"include_usage": True}, "n": 1, "user": "u"})
    w("chat_tools_required", CHAT, {
        "messages": MSGS[1:2], "tools": TOOLS, "tool_choice": "required",
        "parallel_tool_calls": False},
        b'<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    w("chat_tools_named", CHAT, {
        "messages": TOOL_MSGS, "tools": TOOLS + [{"type": "function", "function": {
            "name": "noop"}}],
        "tool_choice": {"type": "function", "function": {"name": "noop"}}},
        b'<tool_call>\n{"name": "noop", "arguments": {}}\n</tool_call>')
    w("chat_tools_auto", CHAT, {"messages": MSGS, "tools": TOOLS, "tool_choice": "auto"})
    w("chat_json_schema", CHAT, {
        "messages": MSGS[1:2], "stop": "END",
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "person", "strict": True, "schema": PERSON}}},
        b'{"name": "Ann", "age": 30, "tags": ["b"]}')
    w("chat_json_object", CHAT, {
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]}],
        "response_format": {"type": "json_object"}},
        b'{"a": [1, 2.5, "x", null, true]}')
    w("chat_bad_field", CHAT, {"messages": MSGS, "functions": []})
    w("chat_bad_n", CHAT, {"messages": MSGS, "n": 2, "top_logprobs": 30})
    w("completion", COMPLETIONS, {
        "model": "hearth", "prompt": "Once upon a time", "max_tokens": 8, "echo": True,
        "logprobs": 3, "suffix": "", "stop": ["."], "temperature": 0,
        "logit_bias": {"0": -1e9, "49151": 2}, "best_of": 1})
    w("completion_ids", COMPLETIONS, {"prompt": [1, 2, 3, 49151], "seed": 7})
    w("completion_batch", COMPLETIONS, {"prompt": [[1, 2], [3]], "stop": "x"})
    w("completion_texts", COMPLETIONS, {"prompt": ["a", "b"], "logit_bias": {"x": 1}})
    w("tokenize", TOKENIZE, {"content": "Hello <|im_start|> world", "add_special": True,
                             "with_pieces": True})
    w("detokenize", DETOKENIZE, {"tokens": [1, 2, 3, 4294967295]})
    w("not_json", CHAT, b"{\"messages\": [")


def main():
    seeds_gguf()
    seeds_safetensors()
    seeds_chat_template()
    seeds_json_schema()
    seeds_tokenizer()
    seeds_http_request()


if __name__ == "__main__":
    main()
