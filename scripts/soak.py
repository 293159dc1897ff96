#!/usr/bin/env python3
"""Bounded-time soak test of `hearth serve`, mixed with hostile requests.

    python3 scripts/soak.py [--bin target/release/hearth] [--model smollm2] [--duration 60]
        [--clients 16] [--url URL] [--extra-args "--kv-mib 64"] [--no-hostile] [--seed 0]
        [--timeout 120] [--json FILE]

Without --url it starts `BIN serve MODEL --port FREE --parallel 4 --queue 64 EXTRA` on
127.0.0.1, waits for /health and always stops it at the end (also on Ctrl-C or errors; the
server also dies with this script). Loopback only, Python 3.11 standard library only.

--clients threads loop until --duration ends, each drawing request kinds at random (--seed):
normal ones (chat at temperature 0 or 0.7, an SSE stream, /v1/completions, a json_schema chat
whose answer must parse, a stream closed after 3 chunks) and, unless --no-hostile, hostile
ones, about a quarter of the mix (a self-referencing $ref, an enum of 100,000 strings, an
anyOf of 10,000 consts, a 3.5 MB prompt, malformed JSON, an unknown field, max_tokens 10^12,
out-of-range sampling parameters, a slowloris connection that sends half a request head and
leaves). Every request has a timeout, so the script ends by itself within duration + timeout
+ ~20 s; if the server it started dies, the clients stop at once.

A request is answered (2xx with a complete body, or an SSE stream ending in `data: [DONE]` or
an error event; or a 4xx with a JSON error body), rejected (429), lost (refused, reset,
timeout, 5xx, truncated body or stream, 4xx without a JSON error) or invalid (a finished
json_schema answer that does not parse). Hostile requests also count whether the status had
the expected class (slowloris needs no answer). Reported: counts per kind and cause of loss;
the latency from send to complete answer of the normal requests (p50/p99/max) and the longest
gap between two of them (a stalled scheduler shows here); the worst latency of GET /health,
polled every second (a blocked HTTP thread shows here); for a server it started, a VmRSS
timeline.
Exits 1 if anything was lost or invalid or the server died, 2 if it did not start (or --url is
not a loopback address), else 0.
"""
import argparse, ctypes, http.client, json, os, random, shlex, signal, socket
import subprocess, sys, tempfile, threading, time
from urllib.parse import urlsplit

NORMAL = {"chat": 30, "stream": 20, "completion": 15, "json": 10, "cancel": 5}
EXPECTED = {"selfref": "4xx", "malformed": "4xx", "unknown_field": "4xx", "bad_params": "4xx",
            "enum100k": "200/4xx", "anyof10k": "200/4xx", "bigprompt": "200/4xx",
            "huge_max_tokens": "200/4xx"}
HOSTILE = {**{k: 3 for k in EXPECTED}, "slowloris": 3}
PROMPTS = ["What is the capital of France?", "Name three colors.", "Tell me a joke.",
           "Write one sentence about the sea.", "Count from 1 to 10.", "What is 2 + 2?"]
SMALL_SCHEMA = {"type": "object", "properties": {
    "color": {"enum": ["red", "green", "blue"]}, "count": {"type": "integer"},
    "ok": {"type": "boolean"}}, "required": ["color", "count", "ok"],
    "additionalProperties": False}
BAD_PARAMS = [b'"temperature": -1', b'"top_k": -5', b'"top_p": -0.5', b'"min_p": 2',
              b'"repeat_penalty": -1', b'"temperature": NaN', b'"presence_penalty": 1e999',
              b'"max_tokens": -3']
CHAT = "/v1/chat/completions"


class Lost(Exception):
    """The request got no complete answer: (cause, detail)."""


class Stats:
    """Counters per request kind, shared by the client threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.kinds, self.failures, self.causes = {}, [], {}
        self.inflight, self.gap = 0, 0.0
        self.last_normal = self.end = time.monotonic()

    def kind(self, k):
        return self.kinds.setdefault(k, {"sent": 0, "answered": 0, "rejected": 0, "lost": 0,
                                         "invalid": 0, "expected": 0, "statuses": {},
                                         "latencies": []})

    def record(self, kind, outcome, status, latency=None, expected=False, cause=None, why=""):
        with self.lock:
            s = self.kind(kind)
            s[outcome] += 1
            s["statuses"][str(status)] = s["statuses"].get(str(status), 0) + 1
            s["expected"] += expected
            if latency is not None:  # a normal answer: also the gap since the last one
                s["latencies"].append(latency)
                now = time.monotonic()
                self.gap, self.last_normal = max(self.gap, now - self.last_normal), now
            if cause:
                self.causes[cause] = self.causes.get(cause, 0) + 1
                if len(self.failures) < 8:
                    self.failures.append(f"{kind}: {cause}{why}")


def fmt(schema):
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def chat(model, content, **kw):
    return {"model": model, "messages": [{"role": "user", "content": content}], **kw}


def hostile_bodies(model):
    """The large hostile bodies, built once."""
    words = "the quick brown fox jumps over the lazy dog and keeps running far away "
    return {k: json.dumps(b).encode() for k, b in {
        "enum100k": chat(model, "Pick one.", max_tokens=4, response_format=fmt(
            {"enum": [f"value-{i:06d}" for i in range(100_000)]})),
        "anyof10k": chat(model, "Pick one.", max_tokens=4, response_format=fmt(
            {"anyOf": [{"const": f"c{i}"} for i in range(10_000)]})),
        "bigprompt": chat(model, words * (3_500_000 // len(words)), max_tokens=4)}.items()}


def request_of(kind, rng, model, big):
    """(path, body bytes, streamed?) of a request of `kind`."""
    p, n = rng.choice(PROMPTS), rng.randint(8, 32)
    if kind in big:
        return CHAT, big[kind], False
    if kind == "completion":
        b = {"model": model, "prompt": "Once upon a time", "max_tokens": n, "temperature": 0.7}
        return "/v1/completions", json.dumps(b).encode(), False
    if kind == "malformed":
        return CHAT, rng.choice([b'{"messages": [', b'{"model": 1}}', b"\xff\xfe not json",
                                 b'{"messages": [{"role": "user", "content": "hi"]}']), False
    if kind == "bad_params":
        return CHAT, (b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], %s}'
                      % (model.encode(), rng.choice(BAD_PARAMS))), False
    b = {"chat": lambda: chat(model, p, max_tokens=n, temperature=rng.choice([0, 0.7]),
                              seed=rng.randint(0, 999)),
         "stream": lambda: chat(model, p, max_tokens=n, temperature=0, stream=True),
         "cancel": lambda: chat(model, p, max_tokens=200, temperature=0, stream=True),
         "json": lambda: chat(model, "Describe a thing as JSON.", max_tokens=64, temperature=0.7,
                              seed=rng.randint(0, 999), response_format=fmt(SMALL_SCHEMA)),
         "selfref": lambda: chat(model, "x", max_tokens=8, response_format=fmt(
             {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}})),
         "unknown_field": lambda: chat(model, p, max_tokens=8, frobnicate={"deep": [1, 2]}),
         "huge_max_tokens": lambda: chat(model, "Say yes.", max_tokens=10 ** 12, temperature=0),
         }[kind]()
    return CHAT, json.dumps(b).encode(), bool(b.get("stream"))


def slowloris(host, port, rng, stats):
    """Half a request head, a few seconds of silence, then close: needs no answer."""
    with stats.lock:
        stats.kind("slowloris")["sent"] += 1
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
            time.sleep(rng.uniform(2, 5))
    except OSError:
        pass


def one_request(host, port, kind, rng, args, big, stats):
    """Send one request of `kind` and record how it ended."""
    path, body, stream = request_of(kind, rng, args.model, big)
    with stats.lock:
        stats.kind(kind)["sent"] += 1
        stats.inflight += 1
    t0, status = time.monotonic(), None
    conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json",
                                                       "Connection": "close"})
        resp = conn.getresponse()
        status = resp.status
        if status == 200 and stream:
            read_sse(resp, conn, kind, t0 + args.timeout)
            outcome, cause = "answered", None
        else:
            outcome, cause = classify(status, resp.read(), kind)
        dt = time.monotonic() - t0
        normal = kind in NORMAL and kind != "cancel" and outcome == "answered" and status == 200
        expected = kind in EXPECTED and (400 <= status < 500 or (
            EXPECTED[kind] == "200/4xx" and status == 200))
        stats.record(kind, outcome, status, dt if normal else None, expected, cause,
                     f" (status {status}, {dt:.1f} s)")
    except (OSError, http.client.HTTPException, Lost) as e:
        cause, detail = e.args if isinstance(e, Lost) else (type(e).__name__, str(e)[:100])
        stats.record(kind, "lost", status or "none", cause=cause,
                     why=f" ({detail}, after {time.monotonic() - t0:.1f} s)")
        if isinstance(e, ConnectionRefusedError):
            time.sleep(1)  # no server: do not spin
    finally:
        conn.close()
        with stats.lock:
            stats.inflight -= 1


def classify(status, raw, kind):
    """(outcome, cause or None) of a response with a plain body."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if 400 <= status < 500:
        if isinstance(doc, dict) and "error" in doc:
            return ("rejected" if status == 429 else "answered"), None
        return "lost", f"{status} without a JSON error body"
    if not 200 <= status < 300:
        return "lost", f"status {status}"
    if not isinstance(doc, dict) or "choices" not in doc:
        return "lost", "incomplete 2xx body"
    choice = doc["choices"][0]
    if kind == "json" and choice.get("finish_reason") == "stop":  # not cut by max_tokens
        try:
            json.loads(choice["message"].get("content") or "")
        except ValueError:
            return "invalid", "json_schema answer does not parse"
    return "answered", None


def read_sse(resp, conn, kind, deadline):
    """Read an SSE stream to `data: [DONE]` or an error event (a cancel: to 3 chunks); raise
    Lost if it ends before, or runs past the deadline."""
    chunks = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Lost("stream timed out", f"{chunks} chunks")
        if conn.sock:
            conn.sock.settimeout(left)
        line = resp.readline()
        if not line:
            raise Lost("stream ended without [DONE]", f"{chunks} chunks")
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            raise Lost("bad SSE data", data[:80])
        if "error" in event:
            return  # the server reported its failure: that is an answer
        chunks += 1
        if kind == "cancel" and chunks >= 3:
            return  # the caller closes the connection mid-stream


def client_loop(i, args, host, port, weights, big, stats, stop_at, stop):
    rng = random.Random(args.seed * 1000 + i)
    kinds, w = list(weights), list(weights.values())
    while time.monotonic() < stop_at and not stop.is_set():
        kind = rng.choices(kinds, w)[0]
        if kind == "slowloris":
            slowloris(host, port, rng, stats)
        else:
            one_request(host, port, kind, rng, args, big, stats)


def health_ok(host, port, timeout):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", "/health")
        return c.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        c.close()


def health_loop(host, port, timeout, stop, out):
    """GET /health once a second: out['worst'] the slowest, out['fail'] the failed polls."""
    while not stop.is_set():
        t0 = out["since"] = time.monotonic()
        ok = health_ok(host, port, timeout)
        dt, out["since"] = time.monotonic() - t0, None
        out["worst"], out["fail"] = max(out["worst"], dt), out["fail"] + (not ok)
        stop.wait(max(0.0, 1.0 - dt))


def rss_loop(pid, stop, samples):
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                samples += [int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:")]
        except OSError:
            return
        stop.wait(1.0)


def die_with_parent():
    """(In the server's process, Linux.) SIGKILL it when this script dies."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start_server(args):
    """(process, port, log path) of a fresh server that answers /health."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.NamedTemporaryFile(prefix="hearth-soak-", suffix=".log", delete=False)
    cmd = [args.bin, "serve", args.model, "--host", "127.0.0.1", "--port", str(port),
           "--parallel", "4", "--queue", "64", *shlex.split(args.extra_args)]
    print("soak: starting", " ".join(cmd), flush=True)
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    except OSError as e:
        os.unlink(log.name)
        raise RuntimeError(f"cannot start {args.bin}: {e}")
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode} while starting:"
                                   f"\n{log_tail(log.name)}")
            if health_ok("127.0.0.1", port, 5):
                return proc, port, log.name
            time.sleep(0.2)
        raise RuntimeError("the server did not answer /health within 180 s")
    except BaseException:
        stop_server(proc)
        os.unlink(log.name)
        raise


def stop_server(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # its graceful shutdown
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_tail(path, n=15):
    with open(path, "rb") as f:
        return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])


def pct(xs, q):
    """The q-th percentile (nearest rank) of xs."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, -(-q * len(xs) // 100) - 1))] if xs else None


def report(args, stats, health, rss, died, wall):
    """Print the table and the summary; write --json; True when nothing failed."""
    k, now = stats.kinds, time.monotonic()
    tot = {n: sum(s[n] for s in k.values()) for n in ("sent", "answered", "rejected", "lost",
                                                         "invalid")}
    slow = k.get("slowloris", {}).get("sent", 0)
    tot["sent"] -= slow
    tot["lost"] += stats.inflight  # still unanswered when the script gave up waiting
    lat = [x for s in k.values() for x in s["latencies"]]
    hostile = [s for name, s in k.items() if name in EXPECTED]
    ok = tot["lost"] == 0 and tot["invalid"] == 0 and not died
    sums = {"duration_s": args.duration, "wall_s": wall, "clients": args.clients, **tot,
            "slowloris": slow, "hostile_sent": sum(s["sent"] for s in hostile),
            "hostile_expected": sum(s["expected"] for s in hostile),
            "latency_normal_s": {q: pct(lat, n) for q, n in (("p50", 50), ("p99", 99),
                                                               ("max", 100))},
            # the time since the last normal answer counts too, as does a pending /health poll
            "normal_answer_gap_s": max(stats.gap, stats.end - stats.last_normal),
            "health_worst_s": max(health["worst"], now - (health["since"] or now)),
            "health_failed_polls": health["fail"], "rss_mib": rss, "server_died": died,
            "ok": ok, "failure_causes": stats.causes, "failures": stats.failures, "kinds": k}
    print(f"\n{'kind':<16}{'sent':>6}{'ans':>6}{'429':>5}{'lost':>5}{'inv':>5}{'exp':>5}"
          f"{'p50 s':>8}{'p99 s':>8}{'max s':>8}  statuses")
    for name, s in sorted(k.items()):
        q = [pct(s["latencies"], n) for n in (50, 99, 100)]
        print(f"{name:<16}{s['sent']:>6}{s['answered']:>6}{s['rejected']:>5}{s['lost']:>5}"
              f"{s['invalid']:>5}{s['expected'] if name in EXPECTED else '-':>5}"
              + "".join(f"{x:>8.2f}" if x is not None else f"{'-':>8}" for x in q)
              + f"  {json.dumps(s['statuses'], sort_keys=True)}")
    if stats.failures:
        print(f"\nfailures by cause: {json.dumps(stats.causes)}\nfirst failures:\n  "
              + "\n  ".join(stats.failures))
    print(f"\nsoak: {args.duration:.0f} s, {args.clients} clients: sent {tot['sent']}, answered "
          f"{tot['answered']}, rejected {tot['rejected']}, lost {tot['lost']}"
          + (f", invalid {tot['invalid']}" if tot["invalid"] else "") + f" (wall {wall:.0f} s)")
    if args.hostile:
        print(f"hostile: sent {sums['hostile_sent'] + slow} (slowloris {slow}), expected "
              f"status {sums['hostile_expected']} of {sums['hostile_sent']}")
    print(("latency (normal): p50 {p50:.2f} s, p99 {p99:.2f} s, max {max:.2f} s".format(
        **sums["latency_normal_s"]) if lat else "latency (normal): no answers")
          + f"; longest gap between normal answers {sums['normal_answer_gap_s']:.1f} s")
    print(f"/health worst {sums['health_worst_s']:.2f} s, {health['fail']} failed polls")
    if rss:
        step = -(-len(rss) // 10)
        line = rss[::step] + ([rss[-1]] if (len(rss) - 1) % step else [])
        print("rss MiB timeline: " + " ".join(f"{x:.0f}" for x in line))
        print(f"rss MiB: start {rss[0]:.0f}, max {max(rss):.0f}, end {rss[-1]:.0f}")
    if died:
        print(f"SERVER DIED: {died}")
    print("soak: " + ("ok" if ok else "FAILED"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(sums, f, indent=1)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/release/hearth")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--duration", type=float, default=60, help="seconds of load")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--url", help="an already running server (not started or stopped here)")
    ap.add_argument("--extra-args", default="", help="more `serve` flags, e.g. '--kv-mib 64'")
    ap.add_argument("--hostile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=120, help="seconds per request")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the finally below
    weights = {**NORMAL, **(HOSTILE if args.hostile else {})}
    big = hostile_bodies(args.model) if args.hostile else {}
    proc = log = died = None
    stop, stats, rss = threading.Event(), Stats(), []
    health = {"worst": 0.0, "fail": 0, "since": None}
    interrupted, t0 = False, time.monotonic()
    try:
        if args.url:
            u = urlsplit(args.url)
            host, port = u.hostname, u.port or 80
            if host not in ("localhost", "::1") and not host.startswith("127."):
                raise RuntimeError(f"{host} is not a loopback address: this test stays local")
        else:
            proc, port, log = start_server(args)
            host = "127.0.0.1"
            threading.Thread(target=rss_loop, args=(proc.pid, stop, rss), daemon=True).start()
        threading.Thread(target=health_loop, daemon=True,
                         args=(host, port, min(args.timeout, 60), stop, health)).start()
        print(f"soak: {args.clients} clients for {args.duration:.0f} s against "
              f"http://{host}:{port}, hostile {'on' if args.hostile else 'off'}", flush=True)
        t0 = stats.last_normal = time.monotonic()
        stop_at = t0 + args.duration
        threads = [threading.Thread(target=client_loop, daemon=True, args=(
            i, args, host, port, weights, big, stats, stop_at, stop)) for i in range(args.clients)]
        for t in threads:
            t.start()
        give_up = stop_at + args.timeout + 15  # a safety net: every request has a timeout
        while any(t.is_alive() for t in threads) and time.monotonic() < give_up:
            if proc and proc.poll() is not None:
                died = f"exit status {proc.returncode} after {time.monotonic() - t0:.0f} s"
                print(f"soak: the server died ({died}); stopping the clients", flush=True)
                break
            time.sleep(0.2)
        stop.set()
        for t in threads:  # a dead server refuses at once: the clients end quickly
            t.join(max(0.0, give_up - time.monotonic()))
    except RuntimeError as e:  # the server did not start, or --url is not local
        print(f"soak: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        interrupted = True
    finally:
        stats.end = time.monotonic()
        wall = stats.end - t0
        stop.set()
        if proc:
            if died is None and proc.poll() is not None:
                died = f"exit status {proc.returncode}"
            stop_server(proc)
            if died:
                print("--- server log (tail)\n" + log_tail(log))
            os.unlink(log)
    ok = report(args, stats, health, rss, died, wall)
    return 130 if interrupted else 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
