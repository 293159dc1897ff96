#!/usr/bin/env python3
"""A synthetic importance matrix for a GGUF model, in llama-imatrix's GGUF format and the legacy
.dat format, with the same values; for checking `hearth quantize --imatrix` against
`llama-quantize --imatrix` when llama-imatrix is not built:
    python3 scripts/synthetic_imatrix.py f16.gguf im.gguf im.dat
"""
import sys, struct, numpy as np
from gguf import GGUFReader, GGUFWriter
r = GGUFReader(sys.argv[1])
rng = np.random.default_rng(5)
w = GGUFWriter(sys.argv[2], arch="", )
w.add_type("imatrix")
w.add_array("imatrix.datasets", ["synthetic"])
w.add_uint32("imatrix.chunk_count", 10)
w.add_uint32("imatrix.chunk_size", 512)
ent = []
for t in r.tensors:
    if len(t.shape) < 2 or t.name == "token_embd.weight": continue
    n = int(t.shape[0])
    cnt = 5120.0
    s = (rng.gamma(0.5, 2.0, n) * cnt).astype(np.float32)
    w.add_tensor(t.name + ".in_sum2", s)
    w.add_tensor(t.name + ".counts", np.array([cnt], dtype=np.float32))
    ent.append((t.name, s / cnt))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
with open(sys.argv[3], "wb") as f:
    f.write(struct.pack("<i", len(ent)))
    for name, v in ent:
        b = name.encode(); f.write(struct.pack("<i", len(b))); f.write(b)
        f.write(struct.pack("<ii", 1, len(v))); f.write(v.astype(np.float32).tobytes())
    f.write(struct.pack("<i", 10)); f.write(struct.pack("<i", 9)); f.write(b"synthetic")
print(len(ent), "entries")
