#!/usr/bin/env python3
"""Every tiny fixture (tests/fixtures/tiny/*, HF directory and GGUF) through `hearth logits`
on a device, against transformers' logits (logits.f32): the top logits hearth prints must lie
within the CPU tests' tolerance (2e-5 of the largest logit) of transformers' values at the
same ids. Pure Python, for the device machine.

Usage: scripts/check_fixtures.py HEARTH_BIN [hearth args, e.g. --device vulkan]
"""
import json, os, struct, subprocess, sys

hearth, extra = sys.argv[1], sys.argv[2:]
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tiny")
failed = 0
for name in sorted(os.listdir(root)):
    d = os.path.join(root, name)
    if not os.path.exists(os.path.join(d, "logits.f32")):
        continue
    exp = json.load(open(os.path.join(d, "expected.json")))
    tokens = exp["tokens"]
    raw = open(os.path.join(d, "logits.f32"), "rb").read()
    want = struct.unpack(f"<{len(raw) // 4}f", raw)
    nv = len(want) // len(tokens)
    scale = max(abs(v) for v in want)
    # float8 checkpoints (the *-fp8 fixtures) load only through `hearth quantize`: their GGUF
    # is checked, their HF directory not
    cfg = json.load(open(os.path.join(d, "config.json"))) if os.path.exists(os.path.join(d, "config.json")) else {}
    fp8 = (cfg.get("quantization_config") or {}).get("quant_method") == "fp8"
    for src in [d, os.path.join(d, "model.gguf")]:
        if not os.path.exists(src) or (src == d and (fp8 or not os.path.exists(os.path.join(d, "config.json")))):
            continue
        r = subprocess.run([hearth, "logits", src, "--tokens", ",".join(map(str, tokens)),
                            "--top", "20", *extra], capture_output=True, text=True)
        label = f"{name} ({'GGUF' if src.endswith('.gguf') else 'HF'})"
        if r.returncode != 0:
            print(f"FAILED {label}: {r.stderr.strip()}")
            failed += 1
            continue
        worst = 0.0
        for line in r.stdout.splitlines():
            row = json.loads(line)
            for tok, v in row["top"]:
                worst = max(worst, abs(v - want[row["pos"] * nv + tok]))
        ok = worst <= 2e-5 * max(scale, 1.0)
        failed += not ok
        print(f"{'ok    ' if ok else 'FAILED'} {label:<32} max |diff| {worst:.2e} (largest logit {scale:.2f})")
print(f"fixtures: {failed} failed")
sys.exit(1 if failed else 0)
