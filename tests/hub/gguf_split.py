"""Split a GGUF file into N parts the way llama.cpp's gguf-split does: part 1 keeps all the
metadata, every part gets split.no (u16), split.count (u16) and split.tensors.count (i32), and
the tensors are spread over the parts in file order, each part a valid GGUF with its own data
section. Usage: gguf_split.py IN.gguf OUT_PREFIX N  (writes OUT_PREFIX-0000K-of-0000N.gguf)."""
import struct
import sys

SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def read_header(b):
    pos = 4
    version, n_t, n_kv = struct.unpack_from("<IQQ", b, pos)
    pos += 20

    def string(pos):
        (n,) = struct.unpack_from("<Q", b, pos)
        return b[pos + 8 : pos + 8 + n], pos + 8 + n

    def value(ty, pos):
        if ty in SIZES:
            return pos + SIZES[ty]
        if ty == 8:
            return string(pos)[1]
        if ty == 9:
            ety, n = struct.unpack_from("<IQ", b, pos)
            pos += 12
            for _ in range(n):
                pos = value(ety, pos)
            return pos
        raise ValueError(f"value type {ty}")

    kvs, alignment = [], 32
    for _ in range(n_kv):
        start = pos
        key, pos = string(pos)
        (ty,) = struct.unpack_from("<I", b, pos)
        pos = value(ty, pos + 4)
        if key == b"general.alignment":
            (alignment,) = struct.unpack_from("<I", b, pos - 4)
        kvs.append(b[start:pos])
    tensors = []
    for _ in range(n_t):
        name, pos = string(pos)
        (nd,) = struct.unpack_from("<I", b, pos)
        dims = b[pos : pos + 4 + 8 * nd]
        pos += 4 + 8 * nd
        ty, off = struct.unpack_from("<IQ", b, pos)
        pos += 12
        tensors.append([name, dims, ty, off])
    data = (pos + alignment - 1) // alignment * alignment
    return version, kvs, tensors, data, alignment


def kv(key, fmt, ty, v):
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", ty) + struct.pack(fmt, v)


def main(src, prefix, n):
    b = open(src, "rb").read()
    version, kvs, tensors, data, align = read_header(b)
    order = sorted(range(len(tensors)), key=lambda i: tensors[i][3])
    ends = {}
    for j, i in enumerate(order):
        nxt = tensors[order[j + 1]][3] if j + 1 < len(order) else len(b) - data
        ends[i] = nxt
    per = (len(tensors) + n - 1) // n
    for k in range(n):
        part = list(range(k * per, min(len(tensors), (k + 1) * per)))
        meta = (kvs if k == 0 else []) + [
            kv("split.no", "<H", 2, k),
            kv("split.count", "<H", 2, n),
            kv("split.tensors.count", "<i", 5, len(tensors)),
        ]
        infos, blobs, off = [], [], 0
        for i in part:
            name, dims, ty, o = tensors[i]
            chunk = b[data + o : data + ends[i]]
            infos.append(struct.pack("<Q", len(name)) + name + dims + struct.pack("<IQ", ty, off))
            pad = (-len(chunk)) % align
            blobs.append(chunk + b"\0" * pad)
            off += len(chunk) + pad
        head = b"GGUF" + struct.pack("<IQQ", version, len(part), len(meta)) + b"".join(meta) + b"".join(infos)
        head += b"\0" * ((-len(head)) % align)
        with open(f"{prefix}-{k + 1:05d}-of-{n:05d}.gguf", "wb") as f:
            f.write(head)
            for x in blobs:
                f.write(x)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
