"""Rewrite an F32 GGUF with its matrices in Q8_0 (quantized by the PyPI `gguf` package; norms,
biases and the MoE router stay F32, as llama.cpp keeps them): a second quant of one model for
the hub tests. Usage: gguf_requant.py IN.gguf OUT.gguf"""
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import quantize
from gguf_split import read_header


def main(src, dst):
    b = open(src, "rb").read()
    version, kvs, tensors, data, align = read_header(b)
    infos, blobs, off = [], [], 0
    for name, dims, ty, o in tensors:
        (nd,) = struct.unpack_from("<I", dims, 0)
        ne = struct.unpack_from(f"<{nd}Q", dims, 4)
        n = int(np.prod(ne))
        assert ty == 0, f"{name} is not F32"
        x = np.frombuffer(b, dtype=np.float32, count=n, offset=data + o)
        if nd >= 2 and ne[0] % 32 == 0 and not name.endswith(b"ffn_gate_inp.weight"):
            raw, ty = quantize(x.reshape(-1, ne[0]), GGMLQuantizationType.Q8_0).tobytes(), 8
        else:
            raw = x.tobytes()
        infos.append(struct.pack("<Q", len(name)) + name + dims + struct.pack("<IQ", ty, off))
        pad = (-len(raw)) % align
        blobs.append(raw + b"\0" * pad)
        off += len(raw) + pad
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs) + b"".join(infos)
    head += b"\0" * ((-len(head)) % align)
    with open(dst, "wb") as f:
        f.write(head)
        for x in blobs:
            f.write(x)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
