#!/usr/bin/env python3
"""Compare two GGUF files: tensor types and bytes by name, and metadata.
    python3 scripts/gguf_diff.py a.gguf b.gguf
"""
import sys, numpy as np
from gguf import GGUFReader
a=GGUFReader(sys.argv[1]); b=GGUFReader(sys.argv[2])
tb={t.name:t for t in b.tensors}
ndiff=0; types={}
for t in a.tensors:
    u=tb[t.name]
    if t.tensor_type!=u.tensor_type: print("type", t.name, t.tensor_type.name, u.tensor_type.name); ndiff+=1; continue
    x=np.asarray(t.data).view(np.uint8); y=np.asarray(u.data).view(np.uint8)
    if not np.array_equal(x,y):
        ndiff+=1
        if ndiff<6: print("data", t.name, t.tensor_type.name, (x!=y).sum(), "of", x.size)
    types[t.tensor_type.name]=types.get(t.tensor_type.name,0)+1
print("tensors", len(a.tensors), len(b.tensors), "differ", ndiff, types)
ka={k for k in a.fields}; kb={k for k in b.fields}
print("keys only hearth", ka-kb, "only llama", kb-ka)
for k in ka&kb:
    fa,fb=a.fields[k],b.fields[k]
    va=[bytes(fa.parts[i]) for i in fa.data]; vb=[bytes(fb.parts[i]) for i in fb.data]
    if va!=vb or fa.types!=fb.types: print("kv differs", k, fa.types, fb.types, va[:3], vb[:3])
