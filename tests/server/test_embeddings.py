"""`hearth serve smollm2` against the official `openai` Python client's embeddings API
(/v1/embeddings). Run by scripts/test_server.sh with the servers of test_openai.py (HEARTH_URL;
HEARTH_URL_LIMITED with one slot, a queue of one and the API key HEARTH_KEY).
"""
import base64
import json
import math
import os
import struct
import threading
import urllib.request

import openai
from runner import report, run_tests

URL = os.environ["HEARTH_URL"]
URL_LIMITED = os.environ["HEARTH_URL_LIMITED"]
KEY = os.environ["HEARTH_KEY"]
MODEL = "smollm2"
N_EMBD = 576

client = openai.OpenAI(base_url=URL + "/v1", api_key="unused", max_retries=0, timeout=300)
limited = openai.OpenAI(base_url=URL_LIMITED + "/v1", api_key=KEY, max_retries=0, timeout=300)

QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital and largest city of France.",
        "A recipe for bread: flour, water, salt and yeast.",
        "The mitochondria is the powerhouse of the cell."]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def tokenize(text):
    req = urllib.request.Request(URL + "/tokenize", data=json.dumps(
        {"content": text, "add_special": True}).encode(), headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["tokens"]


def post(body):
    """The raw response to a POST /v1/embeddings: (status, JSON body)."""
    req = urllib.request.Request(URL + "/v1/embeddings", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        r = urllib.request.urlopen(req)
        return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_embeddings_one_text_normalised_with_usage():
    r = client.embeddings.create(model=MODEL, input=QUERY)
    assert r.object == "list" and r.model == MODEL and len(r.data) == 1
    e = r.data[0]
    assert e.object == "embedding" and e.index == 0 and len(e.embedding) == N_EMBD
    assert abs(math.sqrt(sum(x * x for x in e.embedding)) - 1) < 1e-5
    assert r.usage.prompt_tokens == r.usage.total_tokens == len(tokenize(QUERY))


def test_embeddings_float_and_base64_are_the_same_vector():
    # the SDK asks for base64 unless told otherwise, and decodes it; the floats are the
    # shortest decimals that read back as the same float32 values
    b = client.embeddings.create(model=MODEL, input=QUERY).data[0].embedding
    f = client.embeddings.create(model=MODEL, input=QUERY, encoding_format="float").data[0].embedding
    f32 = list(struct.unpack(f"<{N_EMBD}f", struct.pack(f"<{N_EMBD}f", *f)))
    assert [float(x) for x in b] == f32
    status, raw = post({"model": MODEL, "input": QUERY, "encoding_format": "base64"})
    assert status == 200
    v = struct.unpack(f"<{N_EMBD}f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(v) == f32


def test_embeddings_batch_in_order_equals_one_by_one_and_token_ids():
    texts = [QUERY] + DOCS + ["x" * 300]
    r = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert [e.index for e in r.data] == list(range(len(texts)))
    assert r.usage.prompt_tokens == sum(len(tokenize(t)) for t in texts)
    for t, e in zip(texts, r.data):
        one = client.embeddings.create(model=MODEL, input=t, encoding_format="float").data[0]
        assert max(abs(x - y) for x, y in zip(one.embedding, e.embedding)) < 1e-5, t
    # token ids, one list or several
    ids = [tokenize(t) for t in texts[:2]]
    by_ids = client.embeddings.create(model=MODEL, input=ids[0], encoding_format="float").data
    assert max(abs(x - y) for x, y in zip(by_ids[0].embedding, r.data[0].embedding)) < 1e-5
    by_ids = client.embeddings.create(model=MODEL, input=ids, encoding_format="float").data
    assert len(by_ids) == 2
    assert max(abs(x - y) for x, y in zip(by_ids[1].embedding, r.data[1].embedding)) < 1e-5


def test_embeddings_rank_the_relevant_document_first():
    r = client.embeddings.create(model=MODEL, input=[QUERY] + DOCS, encoding_format="float")
    q = r.data[0].embedding
    sims = [cosine(q, d.embedding) for d in r.data[1:]]
    assert max(range(len(sims)), key=sims.__getitem__) == 0, sims


def test_embeddings_bad_requests_are_clear_400s():
    def bad(body, says, code=400):
        status, r = post(body)
        assert status == code, (body, status, r)
        assert says in r["error"]["message"], (says, r)
        return r
    bad({"input": QUERY, "dimensions": 10}, "dimensions is not supported")
    bad({"input": []}, "must not be empty")
    bad({"input": [""]}, "is empty")
    bad({"input": {"text": "hi"}}, "input must be a string")
    bad({"input": [1, 99999999]}, "outside the vocabulary")
    bad({"input": QUERY, "encoding_format": "int8"}, "float or base64")
    bad({"input": QUERY, "model": "other"}, "does not exist", 404)
    bad({"input": QUERY, "stream": True}, "unknown field")
    r = bad({"input": ["ok", "word " * 9000]}, "maximum context length")
    assert r["error"]["code"] == "context_length_exceeded"
    # and through the SDK
    try:
        client.embeddings.create(model=MODEL, input=QUERY, dimensions=64)
        raise AssertionError("dimensions=64 was accepted")
    except openai.BadRequestError as e:
        assert "dimensions" in str(e)


def test_embeddings_many_inputs_on_one_slot_alongside_a_chat():
    # one slot and a queue of one: a request of 40 inputs still goes through (its inputs take
    # turns), while a chat request on the same server is answered too
    texts = [f"Document number {i} is about topic {i % 7}." for i in range(40)]
    out = {}

    def chat():
        out["chat"] = limited.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8)

    t = threading.Thread(target=chat)
    t.start()
    r = None
    for _ in range(20):  # the chat may hold the only queue place for a moment: 429, retry
        try:
            r = limited.embeddings.create(model=MODEL, input=texts, encoding_format="float")
            break
        except openai.RateLimitError:
            import time
            time.sleep(0.5)
    t.join()
    assert r is not None and len(r.data) == 40
    assert [e.index for e in r.data] == list(range(40))
    assert out["chat"].choices[0].message.content is not None


if __name__ == "__main__":
    import sys
    report(*run_tests(globals(), sys.argv[1:]))
