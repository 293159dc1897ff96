"""`hearth serve smollm2` against the official `openai` Python client.

Run by scripts/test_server.sh, which starts two servers: a plain one (HEARTH_URL) and a small
one with an API key, one slot and a queue of one (HEARTH_URL_LIMITED, key HEARTH_KEY). Prints
one `test result:` line in cargo's format so that scripts/test.sh counts these tests too.
"""
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import jsonschema
import openai
from runner import report, run_tests

URL = os.environ["HEARTH_URL"]
URL_LIMITED = os.environ["HEARTH_URL_LIMITED"]
URL_SMALL_POOL = os.environ["HEARTH_URL_SMALL_POOL"]
KEY = os.environ["HEARTH_KEY"]
HEARTH = os.environ["HEARTH_BIN"]
MODEL = "smollm2"

client = openai.OpenAI(base_url=URL + "/v1", api_key="unused", max_retries=0, timeout=300)

# SmolLM2's own chat template, written out: the prompt the server must have built
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(user):
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


def post(path, body, url=URL, headers=None, raw=None):
    """POST JSON (or raw bytes); returns (status, parsed JSON or text)."""
    data = raw if raw is not None else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url + path, data=data, headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def get(path, url=URL):
    with urllib.request.urlopen(url + path, timeout=60) as r:
        return r.read().decode()


def ask(content, **kw):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **kw)


def metric(name):
    for line in get("/metrics").splitlines():
        if line.startswith(f"hearth_{name} "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} missing")


# ---------------------------------------------------------------------------------------------

def test_plain_chat_and_usage():
    r = ask("What is the capital of France?", max_tokens=24, temperature=0)
    c = r.choices[0]
    assert "Paris" in c.message.content, c.message.content
    assert c.finish_reason == "stop" and c.message.role == "assistant"
    # prompt tokens: the template's text, tokenized by the server's own tokenizer endpoint
    _, tok = post("/tokenize", {"content": chatml("What is the capital of France?"),
                                "add_special": True})
    assert r.usage.prompt_tokens == len(tok["tokens"]), (r.usage, len(tok["tokens"]))
    # completion tokens: the text re-tokenized (plus the end token that stopped it is not
    # counted), and a cut-off answer counts exactly max_tokens
    _, t2 = post("/tokenize", {"content": c.message.content})
    assert r.usage.completion_tokens == len(t2["tokens"]), (r.usage, t2)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    r = ask("Write a long story about a dragon.", max_tokens=7, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 7


def test_streaming_chat_matches_plain():
    kw = dict(max_tokens=40, temperature=0)
    whole = ask("Name three colors.", **kw).choices[0].message.content
    chunks = list(ask("Name three colors.", stream=True,
                      stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole, (text, whole)
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["stop"], ["length"]), finals
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_seed_reproducibility():
    kw = dict(max_tokens=24, temperature=1.0, top_p=1.0)
    a = ask("Tell me a joke.", seed=1234, **kw).choices[0].message.content
    b = ask("Tell me a joke.", seed=1234, **kw).choices[0].message.content
    assert a == b, (a, b)
    others = {ask("Tell me a joke.", seed=s, **kw).choices[0].message.content for s in (1, 2, 3)}
    assert len(others | {a}) > 1, "different seeds never changed the sample"


def test_concurrent_equals_alone():
    prompts = [f"Write one sentence about the number {i}." for i in range(16)]
    kw = dict(max_tokens=32, temperature=0)
    alone = [ask(p, **kw).choices[0].message.content for p in prompts]
    with cf.ThreadPoolExecutor(16) as ex:
        together = list(ex.map(lambda p: ask(p, **kw).choices[0].message.content, prompts))
    for i, (a, b) in enumerate(zip(alone, together)):
        assert a == b, (i, a, b)


def hearth_logits(tokens, top):
    # HEARTH_LOGITS_ARGS: the servers' cache types and device, so that both compute alike
    extra = os.environ.get("HEARTH_LOGITS_ARGS", "").split()
    out = subprocess.run([HEARTH, "logits", "smollm2", "--tokens", ",".join(map(str, tokens)),
                          "--top", str(top)] + extra,
                         check=True, capture_output=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines()]


def test_logprobs_agree_with_hearth_logits():
    _, tok = post("/tokenize", {"content": "The quick brown fox", "add_special": True})
    prompt = tok["tokens"]
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0,
                                  logprobs=5, echo=True)
    lp = r.choices[0].logprobs
    ids = lp.model_extra["token_ids"]
    assert ids[:len(prompt)] == prompt
    assert lp.token_logprobs[0] is None
    rows = hearth_logits(ids[:-1], 5)
    for pos in range(1, len(ids)):
        row = rows[pos - 1]
        want = {t: l - row["logsumexp"] for t, l in row["top"]}
        got_top = sorted(lp.top_logprobs[pos].values(), reverse=True)
        assert all(abs(a - b) < 2e-3 for a, b in zip(got_top, sorted(want.values(), reverse=True))), (
            pos, got_top, want)
        if pos >= len(prompt):
            # greedy: the chosen token is hearth logits' top one, with its log-probability
            assert ids[pos] == row["top"][0][0], (pos, ids[pos], row["top"][0])
            assert abs(lp.token_logprobs[pos] - want[ids[pos]]) < 2e-3
    # chat logprobs: the chosen token's entry leads its own top list
    r = ask("Hi!", max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for c in content:
        assert len(c.top_logprobs) == 3 and c.top_logprobs[0].token == c.token
        assert abs(c.top_logprobs[0].logprob - c.logprob) < 1e-6 and c.logprob <= 0


def test_json_schema_constrained():
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3},
            "married": {"type": "boolean"},
        },
        "required": ["name", "age", "pets", "married"],
        "additionalProperties": False,
    }
    for seed in (1, 2, 3):
        r = ask("Describe a person.", max_tokens=120, temperature=0.8, seed=seed,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "person", "schema": schema}})
        c = r.choices[0]
        assert c.finish_reason == "stop", (c.finish_reason, c.message.content)
        doc = json.loads(c.message.content)
        jsonschema.validate(doc, schema)
    r = ask("List two fruits.", max_tokens=80, temperature=0,
            response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_tool_call_round_trip():
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, tools=tools,
                                       tool_choice="required", max_tokens=60, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    call = c.message.tool_calls[0]
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str)
    msgs += [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
             {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, tools=tools,
                                       max_tokens=40, temperature=0)
    c = r.choices[0]
    assert c.finish_reason in ("stop", "length", "tool_calls") and (c.message.content or c.message.tool_calls)
    # a named function, streamed
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=msgs[:1], tools=tools, max_tokens=60, temperature=0, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function.name == "get_weather" and calls[0].id
    # the arguments stream: several deltas of call 0, joined by the client
    assert all(c.index == 0 for c in calls) and len(calls) > 2, calls
    args = json.loads("".join(c.function.arguments or "" for c in calls))
    assert isinstance(args["city"], str), args
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"


def test_cancel_mid_stream_then_healthy():
    stream = ask("Write a very long essay about the sea.", max_tokens=1000, temperature=0,
                 stream=True)
    n = 0
    for _ in stream:
        n += 1
        if n == 4:
            break
    stream.close()
    deadline = time.time() + 10
    while metric("running_sequences") > 0 and time.time() < deadline:
        time.sleep(0.1)
    assert metric("running_sequences") == 0, "the cancelled sequence is still running"
    assert json.loads(get("/health"))["status"] == "ok"
    assert ask("Hi", max_tokens=3, temperature=0).choices[0].message.content


def test_error_classes():
    # malformed JSON
    s, b = post("/v1/chat/completions", None, raw=b'{"messages": [')
    assert s == 400 and b["error"]["type"] == "invalid_request_error", (s, b)
    # a known field with the wrong type, out-of-range values
    for bad in ({"temperature": "hot"}, {"temperature": 5}, {"top_p": 0}, {"max_tokens": 0},
                {"presence_penalty": 3}, {"n": 2}, {"top_logprobs": 3},
                {"messages": []}, {"messages": [{"role": "wizard", "content": "x"}]},
                {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "frob"}}}},
                {"tool_choice": "required"}, {"frobnicate": 1}, {"logit_bias": {"x": 1}},
                {"logit_bias": {"5": 500}}, {"stop": ["a", "b", "c", "d", "e"]}):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **bad}
        s, b = post("/v1/chat/completions", body)
        assert s == 400 and "message" in b["error"], (bad, s, b)
    with_sdk = [
        lambda: ask("hi", temperature=-1),
        lambda: client.completions.create(model=MODEL, prompt=[10 ** 7]),
    ]
    for f in with_sdk:
        try:
            f()
            raise AssertionError("expected a 400")
        except openai.BadRequestError:
            pass
    # a prompt longer than the context: 400 with the numbers
    s, b = post("/v1/completions", {"model": MODEL, "prompt": [28] * 5000})
    assert s == 400 and "5000" in b["error"]["message"] and "4096" in b["error"]["message"], b
    # unknown model: 404
    try:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("expected a 404")
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found"
    # unknown endpoint: 404, body too large: 413
    s, b = post("/v1/nothing", {})
    assert s == 404 and "error" in b
    s, b = post("/v1/chat/completions", None, raw=b'{"x": "' + b"a" * (5 << 20) + b'"}')
    assert s == 413, s
    assert json.loads(get("/health"))["status"] == "ok"


def test_api_key_and_queue_limit():
    # no key or a wrong key: 401
    c = openai.OpenAI(base_url=URL_LIMITED + "/v1", api_key="wrong", max_retries=0)
    try:
        c.models.list()
        raise AssertionError("expected a 401")
    except openai.AuthenticationError:
        pass
    s, b = post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]},
                url=URL_LIMITED)
    assert s == 401 and b["error"]["type"] == "authentication_error", (s, b)
    assert json.loads(get("/health", url=URL_LIMITED))["status"] == "ok"
    good = openai.OpenAI(base_url=URL_LIMITED + "/v1", api_key=KEY, max_retries=0, timeout=300)
    assert [m.id for m in good.models.list()] == [MODEL]
    # one slot and a queue of one: of several long requests at once, some get 429
    results = []

    def one(i):
        try:
            good.chat.completions.create(model=MODEL, max_tokens=200, temperature=0,
                                         messages=[{"role": "user", "content": f"Count to {i}00"}])
            results.append("ok")
        except openai.RateLimitError:
            results.append("429")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert "429" in results and "ok" in results, results


def test_preemption_when_the_pool_runs_out():
    # 4 slots share a pool of 17 pages of 16 positions; 4 answers of ~150 tokens each need
    # ~40 pages, so sequences are preempted and resumed, and must still answer as alone
    c = openai.OpenAI(base_url=URL_SMALL_POOL + "/v1", api_key="unused", max_retries=0, timeout=600)

    def one(i):
        r = c.chat.completions.create(model=MODEL, max_tokens=110, temperature=0, messages=[
            {"role": "user", "content": f"Write a long story about a dragon named {i}."}])
        return r.choices[0].message.content, r.usage.completion_tokens

    alone = [one(i) for i in range(4)]
    with cf.ThreadPoolExecutor(4) as ex:
        together = list(ex.map(one, range(4)))
    assert together == alone, (together, alone)
    text = get("/metrics", url=URL_SMALL_POOL)
    pre = [float(l.split()[1]) for l in text.splitlines() if l.startswith("hearth_preemptions_total ")]
    assert pre and pre[0] > 0, "the pool never ran out; the test does not test preemption"
    assert json.loads(get("/health", url=URL_SMALL_POOL))["status"] == "ok"


def test_prefix_reuse_and_metrics():
    long_sys = "You are a careful assistant. " * 30
    msgs = [{"role": "system", "content": long_sys}, {"role": "user", "content": "Say A."}]
    client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2, temperature=0)
    msgs[1]["content"] = "Say B."
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2, temperature=0)
    cached = r.usage.prompt_tokens_details.cached_tokens
    assert cached >= 160 and cached < r.usage.prompt_tokens, r.usage
    text = get("/metrics")
    for name in ("requests_total", "prompt_tokens_total", "generated_tokens_total",
                 "time_to_first_token_seconds_sum", "generation_tokens_per_second",
                 "queue_length", "kv_cache_usage_ratio"):
        assert f"hearth_{name} " in text, name
    assert metric("prompt_tokens_cached_total") >= cached


def test_completions_and_tokenize_endpoints():
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8,
                                  temperature=0, stop=["\n"])
    assert r.object == "text_completion" and r.choices[0].text and "\n" not in r.choices[0].text
    s, t = post("/tokenize", {"content": "Hello world"})
    s2, d = post("/detokenize", {"tokens": t["tokens"]})
    assert s == 200 and s2 == 200 and d["content"] == "Hello world"
    s, _ = post("/detokenize", {"tokens": [10 ** 8]})
    assert s == 400
    # logit_bias: a +100 bias makes a token the greedy choice
    _, t = post("/tokenize", {"content": " banana"})
    r = ask("Hi", max_tokens=1, temperature=0, logit_bias={str(t["tokens"][0]): 100})
    assert r.choices[0].message.content == " banana", r.choices[0].message.content
    # stop strings end the text before them
    r = ask("Count from 1 to 10, separated by commas.", max_tokens=40, temperature=0, stop=["5"])
    assert "5" not in r.choices[0].message.content and r.choices[0].finish_reason == "stop"


def main():
    report(*run_tests(globals(), sys.argv[1:]))


if __name__ == "__main__":
    main()
