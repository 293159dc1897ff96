"""`hearth serve smollm2` against the official `anthropic` Python client: the Messages API
(/v1/messages, /v1/messages/count_tokens).

Run by scripts/test_server.sh with the servers of test_openai.py (HEARTH_URL, and
HEARTH_URL_LIMITED with the key HEARTH_KEY) and one whose template opens <think> in the prompt
(HEARTH_URL_THINK, tests/server/think_chatml.jinja), so that the model's output starts as
reasoning.
"""
import json
import os
import sys
import urllib.error
import urllib.request

import anthropic
import openai
from runner import report, run_tests

URL = os.environ["HEARTH_URL"]
URL_LIMITED = os.environ["HEARTH_URL_LIMITED"]
URL_THINK = os.environ["HEARTH_URL_THINK"]
KEY = os.environ["HEARTH_KEY"]
MODEL = "smollm2"

client = anthropic.Anthropic(base_url=URL, api_key="unused", max_retries=0, timeout=300)
think = anthropic.Anthropic(base_url=URL_THINK, api_key="unused", max_retries=0, timeout=300)
oai = openai.OpenAI(base_url=URL + "/v1", api_key="unused", max_retries=0, timeout=300)

WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}


# this SDK's create() no longer names temperature, top_p or top_k: they go as extra fields
T0 = {"extra_body": {"temperature": 0}}


def user(text):
    return [{"role": "user", "content": text}]


def raw_events(body, url=URL, headers=None):
    """POST a streaming request; the (event, data) pairs of the SSE stream."""
    req = urllib.request.Request(url + "/v1/messages", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    out, name = [], None
    with urllib.request.urlopen(req, timeout=300) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
                name = None
    return out


def post(path, body, url=URL, headers=None):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# ---------------------------------------------------------------------------------------------

def test_messages_plain_matches_chat_completions():
    q = "What is the capital of France?"
    m = client.messages.create(model=MODEL, max_tokens=24, messages=user(q), **T0)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"], m.content
    assert "Paris" in m.content[0].text, m.content
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    # the same prompt and sampling as Chat Completions: the same answer and token counts
    c = oai.chat.completions.create(model=MODEL, messages=user(q), max_tokens=24, temperature=0)
    assert m.content[0].text == c.choices[0].message.content
    assert (m.usage.input_tokens, m.usage.output_tokens) == \
        (c.usage.prompt_tokens, c.usage.completion_tokens)
    # a system prompt (as blocks), max_tokens, stop_sequences, top_k / top_p
    m = client.messages.create(model=MODEL, max_tokens=5,
                               extra_body={"temperature": 0, "top_k": 40, "top_p": 0.9},
                               system=[{"type": "text", "text": "You are a storyteller."}],
                               messages=user("Write a long story about a dragon."))
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 5
    m = client.messages.create(model=MODEL, max_tokens=40, stop_sequences=["5"],
                               messages=user("Count from 1 to 10, separated by commas."), **T0)
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == "5", m
    assert "5" not in m.content[0].text


def test_messages_streaming_event_sequence():
    kw = dict(model=MODEL, max_tokens=30, messages=user("Name three colors."))
    whole = client.messages.create(**kw, **T0)
    with client.messages.stream(**kw, **T0) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == whole.content[0].text and final.content[0].text == text
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens
    # the exact sequence on the wire
    evs = raw_events({**kw, "temperature": 0, "stream": True})
    names = [n for n, _ in evs]
    assert all(n == d["type"] for n, d in evs), evs
    assert names[:3] == ["message_start", "ping", "content_block_start"], names
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"], names
    assert set(names[3:-3]) == {"content_block_delta"}, names
    start = evs[0][1]["message"]
    assert start["content"] == [] and start["usage"]["input_tokens"] == whole.usage.input_tokens
    deltas = "".join(d["delta"]["text"] for n, d in evs if n == "content_block_delta")
    assert deltas == text
    assert evs[-2][1]["delta"]["stop_reason"] == whole.stop_reason


def test_tool_use_round_trip_with_tool_result():
    q = user("What is the weather in Paris?")
    m = client.messages.create(model=MODEL, max_tokens=60, messages=q, tools=[WEATHER],
                               tool_choice={"type": "tool", "name": "get_weather"}, **T0)
    assert m.stop_reason == "tool_use", m
    uses = [b for b in m.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].id.startswith("toolu_")
    assert isinstance(uses[0].input["city"], str), uses[0].input
    # the tool's result goes back in a user turn; it reaches the prompt (the counts differ by
    # the longer result) and the model answers
    def turn(result):
        return q + [{"role": "assistant", "content": [b.model_dump() for b in m.content]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                                  "content": result}]}]
    short = client.messages.count_tokens(model=MODEL, messages=turn("sunny"), tools=[WEATHER])
    long = client.messages.count_tokens(
        model=MODEL, messages=turn("sunny, 21 C, light wind from the west"), tools=[WEATHER])
    assert long.input_tokens > short.input_tokens, (short, long)
    r = client.messages.create(model=MODEL, max_tokens=40, tools=[WEATHER],
                               messages=turn([{"type": "text", "text": "sunny, 21 C"}]), **T0)
    assert r.stop_reason in ("end_turn", "max_tokens", "tool_use") and r.content, r
    # streamed: a tool_use block whose input arrives as input_json_delta
    evs = raw_events({"model": MODEL, "max_tokens": 60, "temperature": 0, "messages": q,
                      "tools": [WEATHER], "tool_choice": {"type": "any"}, "stream": True})
    starts = [d["content_block"] for n, d in evs if n == "content_block_start"]
    assert starts[-1]["type"] == "tool_use" and starts[-1]["name"] == "get_weather", starts
    parts = [d["delta"]["partial_json"] for n, d in evs
             if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"]
    assert parts and isinstance(json.loads("".join(parts))["city"], str), parts
    assert [d for n, d in evs if n == "message_delta"][0]["delta"]["stop_reason"] == "tool_use"
    # and through the SDK's stream helper
    with client.messages.stream(model=MODEL, max_tokens=60, messages=q, tools=[WEATHER],
                                tool_choice={"type": "any"}, **T0) as s:
        final = s.get_final_message()
    assert final.content[-1].type == "tool_use" and "city" in final.content[-1].input


def test_thinking_blocks():
    kw = dict(model=MODEL, max_tokens=20, messages=user("What is 12 times 12?"))
    m = think.messages.create(thinking={"type": "enabled", "budget_tokens": 1024}, **kw, **T0)
    assert m.content[0].type == "thinking" and m.content[0].thinking.strip(), m.content
    assert "<think>" not in m.content[0].thinking and "</think>" not in m.content[0].thinking
    # streamed: thinking_delta events, a signature_delta before the block stops
    evs = raw_events({**kw, "temperature": 0, "stream": True,
                      "thinking": {"type": "enabled", "budget_tokens": 1024}},
                     url=URL_THINK)
    assert evs[2][1]["content_block"]["type"] == "thinking", evs[:3]
    th = "".join(d["delta"]["thinking"] for n, d in evs
                 if n == "content_block_delta" and d["delta"]["type"] == "thinking_delta")
    assert th == m.content[0].thinking
    i = [n for n, _ in evs].index("content_block_stop")
    assert evs[i - 1][1]["delta"]["type"] == "signature_delta"
    # thinking disabled: the template closes <think> at once (enable_thinking reaches it)
    m = think.messages.create(thinking={"type": "disabled"}, **kw, **T0)
    assert [b.type for b in m.content] == ["text"], m.content
    # the same split in Chat Completions' reasoning_content
    c = openai.OpenAI(base_url=URL_THINK + "/v1", api_key="x").chat.completions.create(
        model=MODEL, messages=kw["messages"], max_tokens=20, temperature=0)
    assert c.choices[0].message.model_extra["reasoning_content"] == th
    chunks = list(openai.OpenAI(base_url=URL_THINK + "/v1", api_key="x").chat.completions.create(
        model=MODEL, messages=kw["messages"], max_tokens=20, temperature=0, stream=True))
    r = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                for c in chunks if c.choices)
    assert r == th, (r, th)


def test_count_tokens():
    kw = dict(model=MODEL, messages=user("What is the capital of France?"))
    n = client.messages.count_tokens(**kw).input_tokens
    m = client.messages.create(max_tokens=1, **kw)
    assert n == m.usage.input_tokens > 0
    # with a system prompt: as many as Chat Completions counts for the same messages
    sys_ = "Answer in French, always, and never use more than ten words in any answer."
    more = client.messages.count_tokens(system=sys_, **kw).input_tokens
    c = oai.chat.completions.create(model=MODEL, max_tokens=1, messages=[
        {"role": "system", "content": sys_}] + kw["messages"])
    assert more == c.usage.prompt_tokens and more != n, (more, n, c.usage)


def test_errors_have_anthropics_shape():
    s, b = post("/v1/messages", {"model": MODEL, "messages": user("hi")})  # no max_tokens
    assert s == 400 and b["type"] == "error" and b["error"]["type"] == "invalid_request_error", b
    s, b = post("/v1/messages", {"model": "nope", "max_tokens": 5, "messages": user("hi")})
    assert s == 404 and b["error"]["type"] == "not_found_error", b
    s, b = post("/v1/messages", {"max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]})
    assert s == 400 and "role" in b["error"]["message"], b
    s, b = post("/v1/messages", {"max_tokens": 5, "messages": user("x"), "temperature": 1.5})
    assert s == 400 and b["error"]["type"] == "invalid_request_error", b
    try:
        client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}]}])
        raise AssertionError("an image block was accepted")
    except anthropic.BadRequestError as e:
        assert e.body["error"]["type"] == "invalid_request_error"
    # the key: the SDK sends x-api-key
    bad = anthropic.Anthropic(base_url=URL_LIMITED, api_key="wrong", max_retries=0)
    try:
        bad.messages.create(model=MODEL, max_tokens=5, messages=user("hi"))
        raise AssertionError("a wrong key was accepted")
    except anthropic.AuthenticationError as e:
        assert e.body["error"]["type"] == "authentication_error", e.body
    good = anthropic.Anthropic(base_url=URL_LIMITED, api_key=KEY, max_retries=0)
    assert good.messages.create(model=MODEL, max_tokens=3, messages=user("hi")).content
    s, _ = post("/v1/messages", {"max_tokens": 3, "messages": user("hi")}, url=URL_LIMITED,
                headers={"Authorization": f"Bearer {KEY}"})
    assert s == 200


def main():
    report(*run_tests(globals(), sys.argv[1:]))


if __name__ == "__main__":
    main()
