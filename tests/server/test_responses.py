"""`hearth serve smollm2` against the official `openai` Python client's Responses API
(/v1/responses, stateless). Run by scripts/test_server.sh with the servers of
test_anthropic.py (HEARTH_URL, and HEARTH_URL_THINK whose template opens <think>).
"""
import json
import os
import sys

import openai
from runner import report, run_tests

URL = os.environ["HEARTH_URL"]
URL_THINK = os.environ["HEARTH_URL_THINK"]
MODEL = "smollm2"

client = openai.OpenAI(base_url=URL + "/v1", api_key="unused", max_retries=0, timeout=300)
think = openai.OpenAI(base_url=URL_THINK + "/v1", api_key="unused", max_retries=0, timeout=300)

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


def test_responses_plain_matches_chat_completions():
    q = "What is the capital of France?"
    r = client.responses.create(model=MODEL, input=q, max_output_tokens=24, temperature=0)
    assert r.object == "response" and r.status == "completed" and r.id.startswith("resp_")
    assert [o.type for o in r.output] == ["message"], r.output
    assert "Paris" in r.output_text, r.output_text
    c = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}],
                                       max_tokens=24, temperature=0)
    assert r.output_text == c.choices[0].message.content
    assert (r.usage.input_tokens, r.usage.output_tokens) == \
        (c.usage.prompt_tokens, c.usage.completion_tokens)
    # instructions are the system prompt; input items; a cut-off answer is incomplete
    r = client.responses.create(model=MODEL, instructions="You are a storyteller.",
                                input=[{"role": "user", "content": [
                                    {"type": "input_text", "text": "Write a long story."}]}],
                                max_output_tokens=5, temperature=0)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 5


def test_responses_streaming_events():
    kw = dict(model=MODEL, input="Name three colors.", max_output_tokens=30, temperature=0)
    whole = client.responses.create(**kw)
    with client.responses.stream(**kw) as s:
        events = list(s)
        final = s.get_final_response()
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"], types
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"], types
    assert set(types[4:-4]) == {"response.output_text.delta"}, types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text == final.output_text
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_responses_function_tool_round_trip():
    q = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.responses.create(model=MODEL, input=q, tools=[WEATHER], tool_choice="required",
                                max_output_tokens=60, temperature=0)
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather", r.output
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    # the call and its output go back as input items
    r2 = client.responses.create(
        model=MODEL, tools=[WEATHER], max_output_tokens=30, temperature=0,
        input=q + [calls[0].model_dump(exclude_none=True),
                   {"type": "function_call_output", "call_id": calls[0].call_id,
                    "output": "sunny, 21 C"}])
    assert r2.status in ("completed", "incomplete") and r2.output
    # streamed: the arguments arrive as deltas
    with client.responses.stream(model=MODEL, input=q, tools=[WEATHER], max_output_tokens=60,
                                 temperature=0,
                                 tool_choice={"type": "function", "name": "get_weather"}) as s:
        events = list(s)
        final = s.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and done[0].arguments == deltas and json.loads(deltas)["city"]
    assert final.output[-1].type == "function_call" and final.output[-1].arguments == deltas


def test_responses_reasoning_items():
    kw = dict(model=MODEL, input="What is 12 times 12?", max_output_tokens=20, temperature=0)
    r = think.responses.create(**kw)
    assert r.output[0].type == "reasoning", r.output
    text = "".join(c.text for c in r.output[0].content)
    assert text.strip() and "<think>" not in text
    with think.responses.stream(**kw) as s:
        events = list(s)
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert deltas == text
    # effort "none" turns thinking off in the template (enable_thinking)
    r = think.responses.create(reasoning={"effort": "none"}, **kw)
    assert [o.type for o in r.output] == ["message"], r.output


def test_responses_errors():
    for kw, param in [(dict(previous_response_id="resp_x"), "previous_response_id"),
                      (dict(tools=[{"type": "web_search"}]), "tools"),
                      (dict(input=[{"type": "image_generation_call"}]), "input")]:
        try:
            client.responses.create(model=MODEL, **{"input": "hi", **kw})
            raise AssertionError(f"{kw} was accepted")
        except openai.BadRequestError as e:
            assert e.body["param"] == param, e.body
    try:
        client.responses.create(model="nope", input="hi")
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError:
        pass


def main():
    report(*run_tests(globals(), sys.argv[1:]))


if __name__ == "__main__":
    main()
