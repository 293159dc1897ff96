#!/usr/bin/env python3
"""Compare two importance matrices in llama.cpp's GGUF format (hearth's and llama-imatrix's).

Per entry: the relative difference of the mean squared activations (in_sum2 / counts),
max|a - b| / max|b| over the entry, and whether the counts agree. Prints the worst and the
median over entries, and the entries only one side has.
Needs the `gguf` package (pip install gguf). Usage: compare_imatrix.py A.gguf B.gguf
"""
import sys
import numpy as np
from gguf import GGUFReader


def load(path):
    r = GGUFReader(path)
    t = {x.name: np.array(x.data, dtype=np.float64).reshape(-1) for x in r.tensors}
    out = {}
    for name, v in t.items():
        if name.endswith(".in_sum2"):
            base = name[: -len(".in_sum2")]
            c = t[base + ".counts"]
            out[base] = (v.reshape(len(c), -1), c)
    return out


a, b = load(sys.argv[1]), load(sys.argv[2])
only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
rows = []
for name in sorted(set(a) & set(b)):
    (sa, ca), (sb, cb) = a[name], b[name]
    if sa.shape != sb.shape:
        rows.append((float("inf"), name, "shape %s vs %s" % (sa.shape, sb.shape)))
        continue
    ma = sa / np.maximum(ca, 1)[:, None]
    mb = sb / np.maximum(cb, 1)[:, None]
    rel = np.abs(ma - mb).max() / max(np.abs(mb).max(), 1e-30)
    rows.append((rel, name, "counts %s vs %s" % (ca.tolist()[:3], cb.tolist()[:3]) if not np.array_equal(ca, cb) else ""))
rels = np.array([r[0] for r in rows])
print(f"{len(rows)} common entries, {len(only_a)} only in {sys.argv[1]}, {len(only_b)} only in {sys.argv[2]}")
for n in only_a[:5]:
    print("  only in A:", n)
for n in only_b[:5]:
    print("  only in B:", n)
print(f"relative difference of the means (max|a-b| / max|b| per entry): median {np.median(rels):.3e}, worst {rels.max():.3e}")
for rel, name, note in sorted(rows, reverse=True)[:5]:
    print(f"  {name:40s} {rel:.3e} {note}")
bad = [r for r in rows if r[2]]
print(f"entries whose counts differ: {len(bad)}")
