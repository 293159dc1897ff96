#!/usr/bin/env python3
"""Load benchmark: `hearth serve` against llama.cpp's `llama-server -np 16` on the same model.

Both servers run on the same machine with the same thread count and the same context per
sequence; they are measured one after the other, level by level, in the same run. At each
level C (default 1, 4, 16) C clients each send R streaming chat requests back to back (every
request has its own prompt, temperature 0, max_tokens M), and the script reports:
- aggregate generated tokens/s: all completion tokens (from the usage block) / wall time,
- time to first token: median and 90th percentile over all requests (to the first content),
- the ratio hearth / llama-server of the aggregate throughput.

Usage: python3 scripts/bench_server.py [--model PATH] [--clients 1,4,16] [--requests 3]
       [--max-tokens 64] [--threads 2] [--rounds 1]
llama-server comes from scripts/build_llamacpp.sh (built from the llama-cpp-python sdist).
Standard library only.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOPICS = ["the sea", "a lighthouse", "mountains", "a robot", "the moon", "a library",
          "rain", "a train journey", "coffee", "a lost key", "winter", "a garden",
          "the desert", "a violin", "a city at night", "an old map", "a river", "bees",
          "a clock", "the forest"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_ready(url, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200 and b"ok" in r.read():
                    return
        except Exception:
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not become ready")


def one_request(url, prompt, max_tokens):
    """Stream one chat request; returns (ttft seconds, completion tokens)."""
    body = json.dumps({
        "model": "smollm2", "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    }).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    t0 = time.time()
    ttft = None
    n = None
    pieces = 0
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            ev = json.loads(data)
            if ev.get("usage"):
                n = ev["usage"]["completion_tokens"]
            for c in ev.get("choices") or []:
                if (c.get("delta") or {}).get("content"):
                    pieces += 1
                    if ttft is None:
                        ttft = time.time() - t0
    return (ttft if ttft is not None else time.time() - t0), (n if n is not None else pieces)


def level(url, clients, requests, max_tokens, seed):
    ttfts, tokens = [], []
    lock = threading.Lock()

    def client(ci):
        for ri in range(requests):
            k = seed + ci * requests + ri
            prompt = f"Write a long, detailed story about {TOPICS[k % len(TOPICS)]} (#{k})."
            t, n = one_request(url, prompt, max_tokens)
            with lock:
                ttfts.append(t)
                tokens.append(n)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    ttfts.sort()
    return {
        "tps": sum(tokens) / wall,
        "ttft_med": statistics.median(ttfts),
        "ttft_p90": ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))],
        "tokens": sum(tokens),
        "wall": wall,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="GGUF file (default: hearth pull smollm2)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=3, help="requests per client per level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=1024, help="context per sequence")
    ap.add_argument("--rounds", type=int, default=1, help="repeat each level, report the median")
    ap.add_argument("--hearth", help="hearth binary (default: target/release/hearth, built if missing)")
    a = ap.parse_args()
    hearth = a.hearth or os.path.join(ROOT, "target/release/hearth")
    if not a.hearth and not os.path.exists(hearth):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    model = a.model or subprocess.run([hearth, "pull", "smollm2"], check=True, capture_output=True,
                                      text=True).stdout.strip()
    bindir = subprocess.run(["bash", os.path.join(ROOT, "scripts/build_llamacpp.sh")], check=True,
                            capture_output=True, text=True).stdout.strip()
    clients = [int(c) for c in a.clients.split(",")]
    par = max(clients)
    servers = {}
    ph, pl = free_port(), free_port()
    servers["hearth"] = (f"http://127.0.0.1:{ph}", [
        hearth, "serve", model, "--port", str(ph), "-t", str(a.threads), "--parallel", str(par),
        "--ctx", str(a.ctx), "--alias", "smollm2"])
    servers["llama-server"] = (f"http://127.0.0.1:{pl}", [
        os.path.join(bindir, "llama-server"), "-m", model, "--port", str(pl), "-t", str(a.threads),
        "-np", str(par), "-c", str(a.ctx * par), "--no-webui", "-a", "smollm2"])
    procs = {}
    try:
        for name, (url, cmd) in servers.items():
            procs[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, (url, _) in servers.items():
            wait_ready(url, procs[name])
        # warm up both (page in the weights)
        for name, (url, _) in servers.items():
            one_request(url, "Hello", 8)
        res = {}
        for c in clients:
            for name in servers:
                runs = [level(servers[name][0], c, a.requests, a.max_tokens, seed=1000 * r)
                        for r in range(a.rounds)]
                runs.sort(key=lambda x: x["tps"])
                res[(name, c)] = runs[len(runs) // 2]
                r = res[(name, c)]
                print(f"# {name:12s} clients={c:2d}: {r['tps']:7.1f} tok/s aggregate, "
                      f"TTFT median {r['ttft_med'] * 1000:.0f} ms, p90 {r['ttft_p90'] * 1000:.0f} ms "
                      f"({r['tokens']} tokens in {r['wall']:.1f} s)", file=sys.stderr, flush=True)
        print(f"\nmodel {os.path.basename(model)}, {a.threads} threads, {a.requests} requests per client, "
              f"max_tokens {a.max_tokens}, context {a.ctx} per sequence\n")
        print("| clients | llama-server tok/s | hearth tok/s | ratio | llama-server TTFT med / p90 (ms) | hearth TTFT med / p90 (ms) |")
        print("|---|---|---|---|---|---|")
        for c in clients:
            l, h = res[("llama-server", c)], res[("hearth", c)]
            print(f"| {c} | {l['tps']:.1f} | {h['tps']:.1f} | {h['tps'] / l['tps']:.2f}x | "
                  f"{l['ttft_med'] * 1000:.0f} / {l['ttft_p90'] * 1000:.0f} | "
                  f"{h['ttft_med'] * 1000:.0f} / {h['ttft_p90'] * 1000:.0f} |")
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
