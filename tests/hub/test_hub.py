"""hearth and the Hugging Face hub, against tests/hub/fake_hub.py (checked first with the
official huggingface_hub client): pull into the shared cache, resume, sha256 checks, gated
repos, offline use, split GGUFs, safetensors repos, list/rm, and fit from headers alone.

Needs a release build and huggingface_hub and gguf installed (scripts/test_hub.sh installs
them); SmolLM2 is pulled on first use. Run: python tests/hub/test_hub.py [test names]."""
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "server"))
from fake_hub import TOKEN, Hub  # noqa: E402
from gguf_requant import main as requant_q8_0  # noqa: E402
from gguf_split import main as split_gguf  # noqa: E402
from runner import report, run_tests  # noqa: E402

BIN = os.environ.get("HEARTH_BIN", os.path.join(ROOT, "target", "release", "hearth"))
# the real model, where `hearth pull smollm2` keeps it (fetched on first use)
SMOL = subprocess.run([BIN, "pull", "smollm2"], capture_output=True, text=True, check=True).stdout.strip()
TINY = os.path.join(ROOT, "tests", "fixtures", "tiny")
WORK = tempfile.mkdtemp(prefix="hearth-hub-test-")

SMOL_REPO = "hearth-test/SmolLM2-135M-Instruct-GGUF"
SMOL_FILE = "SmolLM2-135M-Instruct-Q4_1.gguf"
SPLIT_REPO = "hearth-test/SmolLM2-135M-Instruct-split-GGUF"
ST_REPO = "hearth-test/tiny-llama-sharded"
MOE_REPO = "hearth-test/tiny-qwen3-moe-GGUF"


def read(p):
    with open(p, "rb") as f:
        return f.read()


def build_repos():
    smol = read(SMOL)
    split_dir = os.path.join(WORK, "split")
    os.makedirs(split_dir)
    split_gguf(SMOL, os.path.join(split_dir, "SmolLM2-135M-Instruct-Q4_1"), 3)
    split = {
        f"Q4_1/{n}": read(os.path.join(split_dir, n)) for n in sorted(os.listdir(split_dir))
    }
    sharded = os.path.join(TINY, "llama-bf16-sharded")
    st = {
        n: read(os.path.join(sharded, n))
        for n in os.listdir(sharded)
        if n not in ("expected.json", "logits.f32")
    }
    st["README.md"] = b"# tiny llama, two bf16 shards\n"
    moe = os.path.join(TINY, "qwen3_moe", "model.gguf")
    requant_q8_0(moe, os.path.join(WORK, "moe-q8_0.gguf"))
    return {
        SMOL_REPO: {"files": {SMOL_FILE: smol, "README.md": b"# SmolLM2 Q4_1\n"}},
        SPLIT_REPO: {"files": split},
        ST_REPO: {"files": st},
        MOE_REPO: {
            "files": {
                "tiny-qwen3-moe-F32.gguf": read(moe),
                "tiny-qwen3-moe-Q8_0.gguf": read(os.path.join(WORK, "moe-q8_0.gguf")),
            }
        },
        "hearth-test/gated-GGUF": {"files": {SMOL_FILE: smol}, "gated": True},
        "hearth-test/bad-sha-GGUF": {"files": {SMOL_FILE: smol}, "bad_sha": [SMOL_FILE]},
        "hearth-test/drop-GGUF": {"files": {SMOL_FILE: smol}, "drop": [SMOL_FILE]},
        "hearth-test/drop-auto-GGUF": {"files": {SMOL_FILE: smol}, "drop": [SMOL_FILE]},
        "hearth-test/bad-git-blob": {"files": dict(st), "bad_sha": ["config.json"]},
        "hearth-test/parts-GGUF": {"files": {SMOL_FILE: smol}, "drop": [SMOL_FILE]},
        "hearth-test/short-GGUF": {"files": {SMOL_FILE: smol}, "short_size": [SMOL_FILE]},
        "hearth-test/concurrent-GGUF": {"files": {SMOL_FILE: smol}},
        "hearth-test/evil-GGUF": {"files": {"../../evil-Q4_0.gguf": b"GGUF"}},
    }


HUB = Hub(build_repos()).start()
HF_HOME = os.path.join(WORK, "hf")


def env(**extra):
    e = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    e.update(HF_HOME=HF_HOME, HF_ENDPOINT=HUB.url, HEARTH_HUB_RETRIES="3")
    e.update(extra)
    return e


def hearth(*args, check=True, **extra):
    r = subprocess.run([BIN, *args], capture_output=True, text=True, env=env(**extra), timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"hearth {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r


def resolves(log):
    return [(m, p, r) for m, p, r in log if "/resolve/" in p and m == "GET"]


def logits(model, **extra):
    return hearth("logits", model, "--tokens", "1,2,3,4,5", "--top", "5", **extra).stdout


def repo_dir(repo, home=None):
    return os.path.join(home or HF_HOME, "hub", "models--" + repo.replace("/", "--"))


def test_01_fake_hub_serves_huggingface_hub():
    """The fake speaks the protocol hf_hub_download uses (HEAD + GET of resolve URLs)."""
    code = f"""
import os, huggingface_hub as hh
from huggingface_hub.utils import HfHubHTTPError
p = hh.hf_hub_download({SMOL_REPO!r}, {SMOL_FILE!r})
assert open(p, 'rb').read() == open({SMOL!r}, 'rb').read()
p = hh.hf_hub_download({ST_REPO!r}, 'model-00002-of-00002.safetensors')
assert open(p, 'rb').read() == open({os.path.join(TINY, 'llama-bf16-sharded', 'model-00002-of-00002.safetensors')!r}, 'rb').read()
p = hh.hf_hub_download({SPLIT_REPO!r}, 'Q4_1/SmolLM2-135M-Instruct-Q4_1-00002-of-00003.gguf')
try:
    hh.hf_hub_download('hearth-test/gated-GGUF', {SMOL_FILE!r})
    raise SystemExit('gated without a token')
except HfHubHTTPError as e:
    assert e.response.status_code == 401, e
hh.hf_hub_download('hearth-test/gated-GGUF', {SMOL_FILE!r}, token={TOKEN!r})
print('ok')
"""
    home = os.path.join(WORK, "hf-official")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(HF_HOME=home))
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_02_pull_shares_the_cache_with_huggingface_hub():
    HUB.take_log()
    r = hearth("pull", f"{SMOL_REPO}:Q4_1")
    path = r.stdout.strip()
    assert read(path) == read(SMOL)
    d = repo_dir(SMOL_REPO)
    commit = read(os.path.join(d, "refs", "main")).decode()
    assert path == os.path.join(d, "snapshots", commit, SMOL_FILE), path
    sha = hashlib.sha256(read(SMOL)).hexdigest()
    assert os.readlink(path) == f"../../blobs/{sha}", os.readlink(path)
    # the official client, offline, finds the same file in the same cache
    code = f"import huggingface_hub as hh; print(hh.hf_hub_download({SMOL_REPO!r}, {SMOL_FILE!r}))"
    o = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(HF_HUB_OFFLINE="1"))
    assert o.returncode == 0, o.stderr
    assert os.path.realpath(o.stdout.strip()) == os.path.realpath(path)
    # and the model runs under its hub name, as the file does
    assert logits(f"{SMOL_REPO}:Q4_1") == logits(SMOL)


def test_03_second_pull_downloads_nothing():
    HUB.take_log()
    r = hearth("pull", SMOL_REPO)
    assert "nothing downloaded" in r.stderr, r.stderr
    log = HUB.take_log()
    assert resolves(log) == [], log
    assert any("/api/models/" in p for _, p, _ in log)


def test_04_split_gguf_downloads_whole_and_loads_as_one():
    r = hearth("pull", f"{SPLIT_REPO}:Q4_1")
    path = r.stdout.strip()
    assert path.endswith("Q4_1/SmolLM2-135M-Instruct-Q4_1-00001-of-00003.gguf"), path
    parts = sorted(os.listdir(os.path.dirname(path)))
    assert len(parts) == 3, parts
    assert logits(SPLIT_REPO) == logits(SMOL)
    # a later part alone is refused with the name of the first
    r = hearth("logits", os.path.join(os.path.dirname(path), parts[1]), "--tokens", "1", check=False)
    assert r.returncode != 0 and "00001-of-00003" in r.stderr, r.stderr


def test_05_safetensors_repo():
    r = hearth("pull", ST_REPO)
    snap = r.stdout.strip()
    got = sorted(os.listdir(snap))
    assert got == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ], got
    assert logits(ST_REPO) == logits(os.path.join(TINY, "llama-bf16-sharded"))


def test_06_resume_after_a_dropped_connection():
    repo = "hearth-test/drop-GGUF"
    HUB.take_log()
    r = hearth("pull", repo, check=False, HEARTH_HUB_RETRIES="0")
    assert r.returncode != 0 and "stopped at" in r.stderr, r.stderr
    sha = hashlib.sha256(read(SMOL)).hexdigest()
    part = os.path.join(repo_dir(repo), "blobs", sha + ".incomplete")
    have = os.path.getsize(part)
    assert 0 < have < os.path.getsize(SMOL), have
    HUB.take_log()
    r = hearth("pull", repo)
    log = resolves(HUB.take_log())
    assert [x[2] for x in log] == [f"bytes={have}-{os.path.getsize(SMOL) - 1}"], log
    assert hashlib.sha256(read(r.stdout.strip())).hexdigest() == sha
    assert not os.path.exists(part)
    # with retries (the default), one pull resumes by itself
    HUB.take_log()
    r = hearth("pull", "hearth-test/drop-auto-GGUF")
    log = resolves(HUB.take_log())
    assert len(log) == 2 and log[0][2] is None and log[1][2].startswith("bytes="), log
    assert "resuming" in r.stderr
    assert read(r.stdout.strip()) == read(SMOL)


def test_06b_concurrent_pulls_download_once():
    """Two pulls of one model at once: the blob's lock (huggingface_hub's) makes one wait."""
    HUB.take_log()
    cmd = [BIN, "pull", "hearth-test/concurrent-GGUF"]
    ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env()) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in ps]
    assert all(p.returncode == 0 for p in ps), outs
    assert len(resolves(HUB.take_log())) == 1
    assert read(outs[0][0].decode().strip()) == read(SMOL)


def test_06c_a_large_file_in_parts_at_once():
    """Parts of 16 MiB at least: SmolLM2 (94 MiB) comes in 4 ranges at once; the first request
    drops halfway; without retries the pull stops, and the next one resumes each part where it
    stopped and joins them."""
    repo, size = "hearth-test/parts-GGUF", os.path.getsize(SMOL)
    HUB.take_log()
    r = hearth("pull", repo, check=False, HEARTH_HUB_PART_MIB="16", HEARTH_HUB_RETRIES="0")
    assert r.returncode != 0 and "stopped at" in r.stderr, r.stderr
    first = resolves(HUB.take_log())
    assert first and all(x[2] for x in first), first
    parts = sorted(n for n in os.listdir(os.path.join(repo_dir(repo), "blobs")) if ".part" in n)
    assert parts and all(n.endswith("of4") for n in parts), parts
    r = hearth("pull", repo, HEARTH_HUB_PART_MIB="16")
    second = resolves(HUB.take_log())
    spans = []
    for _, _, rng in first + second:
        a, _, b = rng[6:].partition("-")
        spans.append((int(a), int(b)))
    starts = {a for a, _ in spans}
    for k in range(4):
        assert k * size // 4 in starts, (k, spans)
    # the second pull asked only for what the first did not get
    served = sum(b - a + 1 for a, b in spans[len(first):])
    assert 0 < served < size, (served, size)
    assert hashlib.sha256(read(r.stdout.strip())).hexdigest() == hashlib.sha256(read(SMOL)).hexdigest()
    assert [n for n in os.listdir(os.path.join(repo_dir(repo), "blobs")) if "." in n] == []


def test_07_checksum_mismatch_keeps_nothing():
    repo = "hearth-test/bad-sha-GGUF"
    r = hearth("pull", repo, check=False)
    assert r.returncode != 0 and "does not match the sha256" in r.stderr, r.stderr
    assert os.listdir(os.path.join(repo_dir(repo), "blobs")) == []
    assert not os.path.exists(os.path.join(repo_dir(repo), "snapshots"))
    # a git (non-LFS) file is checked against its blob id; the other files may stay as blobs,
    # but no snapshot is made
    repo = "hearth-test/bad-git-blob"
    r = hearth("pull", repo, check=False)
    assert r.returncode != 0 and "config.json does not match the git blob id" in r.stderr, r.stderr
    assert not any(n.endswith(".incomplete") for n in os.listdir(os.path.join(repo_dir(repo), "blobs")))
    assert not os.path.exists(os.path.join(repo_dir(repo), "snapshots"))


def test_07b_more_bytes_than_listed_is_refused():
    repo = "hearth-test/short-GGUF"
    r = hearth("pull", repo, check=False)
    assert r.returncode != 0 and "sent more than" in r.stderr, r.stderr
    assert os.listdir(os.path.join(repo_dir(repo), "blobs")) == []


def test_08_gated_repo():
    repo = "hearth-test/gated-GGUF"
    r = hearth("pull", repo, check=False)
    assert r.returncode != 0 and "gated" in r.stderr and "HF_TOKEN" in r.stderr, r.stderr
    r = hearth("pull", repo, check=False, HF_TOKEN="hf_wrong")
    assert r.returncode != 0 and "403" in r.stderr and "token" in r.stderr, r.stderr
    r = hearth("pull", repo, HF_TOKEN=TOKEN)
    assert read(r.stdout.strip()) == read(SMOL)


def test_09_offline_uses_the_cache():
    HUB.take_log()
    r = hearth("pull", SMOL_REPO, HF_HUB_OFFLINE="1")
    assert HUB.take_log() == []
    assert read(r.stdout.strip()) == read(SMOL)
    r = hearth("pull", MOE_REPO, check=False, HF_HUB_OFFLINE="1")
    assert r.returncode != 0 and "HF_HUB_OFFLINE" in r.stderr and "not in the cache" in r.stderr, r.stderr
    # a revision named by its commit: what the cache holds, offline too; an unknown one is
    # the hub's "not found"
    commit = read(os.path.join(repo_dir(SMOL_REPO), "refs", "main")).decode()
    r = hearth("pull", f"{SMOL_REPO}@{commit}:Q4_1", HF_HUB_OFFLINE="1")
    assert read(r.stdout.strip()) == read(SMOL)
    r = hearth("pull", f"{SMOL_REPO}@{commit}:Q4_1")
    assert read(r.stdout.strip()) == read(SMOL)
    r = hearth("pull", f"{SMOL_REPO}@no-such-branch", check=False)
    assert r.returncode != 0 and "revision no-such-branch not found" in r.stderr, r.stderr
    # no network at all: the cached model still runs, with a note, and fit plans it
    out = logits(SMOL_REPO, HF_ENDPOINT="http://127.0.0.1:9")
    assert out == logits(SMOL)
    HUB.take_log()
    r = hearth("fit", SMOL_REPO, "--ctx", "2048", HF_HUB_OFFLINE="1")
    assert HUB.take_log() == [] and "in the cache" in r.stdout, r.stdout
    # the plan of loading the same file (weights with the CPU's packed copies, KV per token)
    loaded = inspect_numbers(hearth("inspect", SMOL, "--ctx", "2048", "--device", "cpu").stdout)
    assert fit_numbers(r.stdout) == loaded and loaded[1] == 46080, (r.stdout, loaded)


def test_09b_serve_a_hub_model():
    import socket
    import time
    import urllib.request

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    HUB.take_log()
    p = subprocess.Popen(
        [BIN, "serve", f"{SMOL_REPO}:Q4_1", "--port", str(port), "--parallel", "1", "--kv-mib", "64"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env(),
    )
    try:
        for _ in range(300):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
                break
            except OSError:
                assert p.poll() is None, p.stderr.read()
                time.sleep(0.1)
        ids = [m["id"] for m in json.loads(body)["data"]]
        assert ids == [f"{SMOL_REPO}:Q4_1"], ids
    finally:
        p.terminate()
        p.wait(timeout=30)
    # one question to the hub (the model was in the cache already)
    log = HUB.take_log()
    assert [x[1] for x in log] == [f"/api/models/{SMOL_REPO}/revision/main"], log


def test_10_unknown_repo_and_quant():
    r = hearth("pull", "hearth-test/no-such-repo", check=False)
    assert r.returncode != 0 and "no such repository" in r.stderr, r.stderr
    r = hearth("pull", f"{SMOL_REPO}:Q8_0", check=False)
    assert r.returncode != 0 and "no GGUF of quant Q8_0; it has Q4_1" in r.stderr, r.stderr


def test_10_unsafe_paths_are_refused():
    r = hearth("pull", "hearth-test/evil-GGUF", check=False)
    assert r.returncode != 0 and "unsafe path" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(HF_HOME, "evil-Q4_0.gguf"))
    assert not os.path.exists(os.path.join(HF_HOME, "hub", "evil-Q4_0.gguf"))


def fit_numbers(text):
    m = re.search(r"memory: +([\d.]+) MiB of weights \+ (\d+) B/token", text)
    assert m, text
    return float(m.group(1)), int(m.group(2))


def inspect_numbers(text):
    w = sum(float(x) for x in re.findall(r"weights +([\d.]+) MiB", text))
    kv = sum(int(x) for x in re.findall(r"\((\d+) B/token\)", text))
    return w, kv


def max_rss_mib(args, **extra):
    """The peak resident memory of a hearth run, in MiB (measured by a fresh Python process,
    whose only child it is)."""
    code = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True); "
        "assert r.returncode == 0, r.stderr; print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    r = subprocess.run([sys.executable, "-c", code, BIN, *args], capture_output=True, text=True, env=env(**extra))
    assert r.returncode == 0, r.stderr
    return int(r.stdout) / 1024


def test_11_fit_reads_only_headers_and_agrees_with_loading():
    home = os.path.join(WORK, "hf-fit")
    cases = [
        (f"{SMOL_REPO}:Q4_1", SMOL),
        (f"{MOE_REPO}:f32", os.path.join(TINY, "qwen3_moe", "model.gguf")),
        (MOE_REPO, os.path.join(WORK, "moe-q8_0.gguf")),
        (ST_REPO, os.path.join(TINY, "llama-bf16-sharded")),
        (SPLIT_REPO, SMOL),
    ]
    for spec, local in cases:
        HUB.take_log()
        r = hearth("fit", spec, "--ctx", "2048", HF_HOME=home)
        log = HUB.take_log()
        ranges = [x for x in resolves(log) if x[2]]
        assert len(ranges) == len(resolves(log)), f"{spec}: a whole-file GET: {log}"
        assert "verdict:" in r.stdout and "decode speed:" in r.stdout, r.stdout
        w, kv = fit_numbers(r.stdout)
        i = hearth("inspect", local, "--ctx", "2048", "--device", "cpu")
        lw, lkv = inspect_numbers(i.stdout)
        assert kv == lkv and abs(w - lw) <= 0.05 * lw, (spec, w, kv, lw, lkv)
        print(f"  {spec}: fit {w:.1f} MiB + {kv} B/token; loaded {lw:.1f} MiB + {lkv} B/token")
    assert not os.path.exists(os.path.join(home, "hub")) or not any(
        f for _, _, fs in os.walk(os.path.join(home, "hub")) for f in fs
    ), "fit downloaded files"
    # nothing of the weights was read: the SmolLM2 file is ~100 MiB, its header ~1 MiB
    HUB.take_log()
    hearth("fit", f"{SMOL_REPO}:Q4_1", HF_HOME=home)
    served = 0
    for _, _, rng in resolves(HUB.take_log()):
        a, _, b = rng[6:].partition("-")
        served += min(int(b), os.path.getsize(SMOL) - 1) - int(a) + 1
    assert served < os.path.getsize(SMOL) // 10, served
    # the prediction against the memory a real run of SmolLM2 holds at its peak, with the
    # context full (a prompt of about 1,900 tokens of the GPL, then 64 generated), with the
    # CPU's packed weight copies (the default) and without them
    text = open("/usr/share/common-licenses/GPL-3").read()
    words = text.split(" ")
    lo, hi = 0, len(words)
    while lo < hi:  # the longest run of the text's words that tokenizes to at most 1,900 tokens
        mid = (lo + hi + 1) // 2
        if len(json.loads(hearth("tokenize", SMOL, " ".join(words[:mid])).stdout)) <= 1900:
            lo = mid
        else:
            hi = mid - 1
    prompt = " ".join(words[:lo])
    for repack in ("1", "0"):
        r = hearth("fit", f"{SMOL_REPO}:Q4_1", "--ctx", "2048", HF_HOME=home, HEARTH_REPACK=repack)
        predicted = float(re.search(r"= ([\d.]+) MiB", r.stdout).group(1))
        run = ["run", SMOL, "--ctx", "2048", "-n", "64", "--temp", "0", "--raw", prompt]
        rss = max_rss_mib(run, HEARTH_REPACK=repack)
        print(f"  SmolLM2 at --ctx 2048, HEARTH_REPACK={repack}: predicted {predicted:.1f} MiB; peak RSS of a run {rss:.1f} MiB")
        assert abs(rss - predicted) <= 0.05 * predicted, (repack, predicted, rss)


def test_11c_fit_plans_a_gpu_with_the_placement_flags():
    """On a Vulkan device (lavapipe in scripts/test.sh), with the layers or experts split
    between it and the CPU: fit's plan is inspect's, device by device, and nothing uploads."""
    if "vulkan:0" not in hearth("devices").stdout:
        assert os.environ.get("HEARTH_REQUIRE_VULKAN") != "1", "no Vulkan device"
        print("  (no Vulkan device: skipped)")
        return
    home = os.path.join(WORK, "hf-fit")
    cases = [
        (f"{SMOL_REPO}:Q4_1", SMOL, ["--gpu-layers", "10"]),
        (f"{MOE_REPO}:F32", os.path.join(TINY, "qwen3_moe", "model.gguf"), ["--cpu-moe"]),
    ]
    for spec, local, flags in cases:
        args = ["--ctx", "2048", "--device", "vulkan:0", *flags]
        fit = hearth("fit", spec, *args, HF_HOME=home).stdout
        ins = hearth("inspect", local, *args).stdout
        # device, weights and state of each row (the memory available changes between runs)
        rows = lambda t: [
            re.sub(r"\(\d+ threads\)", "", x.split(":")[0] if x.startswith("  cpu") else x.rsplit(":", 1)[0])
            for x in t.splitlines()
            if x.startswith("  ") and "weights" in x and "B/token" in x
        ]
        assert len(rows(fit)) == 2 and rows(fit) == rows(ins), (fit, ins)


def test_11b_default_quant_and_the_quants_that_fit():
    r = hearth("fit", MOE_REPO, "--ctx", "1024", HF_HOME=os.path.join(WORK, "hf-fit"))
    assert "no :QUANT given; using Q8_0" in r.stderr and "F32, Q8_0" in r.stderr, r.stderr
    lines = [x.split() for x in r.stdout.splitlines() if re.match(r"  \S+ +[\d.]+ [MG]iB", x)]
    assert [(x[0], x[3]) for x in lines] == [("F32", "fits"), ("Q8_0", "fits")], r.stdout
    assert "planned above" in [x for x in r.stdout.splitlines() if "Q8_0" in x][0]
    # --ctx too large for this machine: the verdict says so
    r = hearth("fit", f"{MOE_REPO}:F32", "--ctx", str(10**12), HF_HOME=os.path.join(WORK, "hf-fit"))
    assert "DOES NOT FIT" in r.stdout and "the weights fit" in r.stdout, r.stdout
    r = hearth("pull", MOE_REPO)
    assert r.stdout.strip().endswith("tiny-qwen3-moe-Q8_0.gguf") and "using Q8_0" in r.stderr
    assert logits(MOE_REPO) == logits(os.path.join(WORK, "moe-q8_0.gguf"))


def test_12_list_and_rm():
    out = hearth("list").stdout
    for name in (f"{SMOL_REPO}:Q4_1", f"{SPLIT_REPO}:Q4_1", ST_REPO):
        assert name in out, out
    assert re.search(r"SmolLM2-135M-Instruct-GGUF:Q4_1 .* llama ", out), out
    sha = hashlib.sha256(read(SMOL)).hexdigest()
    # another user of the cache fetched the README of the same repository
    code = f"import huggingface_hub as hh; print(hh.hf_hub_download({SMOL_REPO!r}, 'README.md'))"
    o = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env())
    assert o.returncode == 0, o.stderr
    readme = o.stdout.strip()
    r = hearth("rm", f"{SMOL_REPO}:Q4_1")
    assert "1 blob(s)" in r.stdout, r.stdout
    assert not os.path.exists(os.path.join(repo_dir(SMOL_REPO), "blobs", sha))
    # README.md is still linked, so its blob stays, and the repository too
    assert read(readme) == b"# SmolLM2 Q4_1\n"
    assert f"{SMOL_REPO}:Q4_1" not in hearth("list").stdout
    # the same bytes in another repository are that repository's blob: untouched
    assert os.path.exists(os.path.join(repo_dir("hearth-test/drop-GGUF"), "blobs", sha))
    r = hearth("rm", f"{SMOL_REPO}:Q4_1", check=False)
    assert r.returncode != 0 and "not in the cache" in r.stderr, r.stderr
    hearth("rm", ST_REPO)
    assert not os.path.exists(repo_dir(ST_REPO))


if __name__ == "__main__":
    try:
        passed, failed = run_tests(dict(globals()), only=set(sys.argv[1:]) or None)
    finally:
        HUB.stop()
        subprocess.run(["rm", "-rf", WORK])
    report(passed, failed)
