#!/usr/bin/python3
"""Independent safetensors reader/writer (struct + json + numpy) to cross-check the C code.

Written from the format description only (u64 LE header length, JSON header, row-major
little-endian data), sharing no code with common/model/safetensors.c. Run with /usr/bin/python3.

  st_reference.py dump FILE             validate FILE strictly and print every tensor
  st_reference.py fixture OUT           write the fixture tests/data/st/ref_py.safetensors
  st_reference.py roundtrip FILE OUT    read FILE, write it again to OUT (the C reader must
                                        read OUT), and check both hold the same tensors

The reader is deliberately strict in the same ways as the reference implementation: data
ranges must tile the data section without gaps or overlap, and the header must be a JSON
object whose entries have exactly dtype, shape and data_offsets.
"""
import json
import struct
import sys

import numpy as np

DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # numpy has no bfloat16: raw bits, see bf16_to_f32
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}


def bf16_to_f32(bits):
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x):
    """float32 -> uint16 bfloat16 bits, round to nearest even; NaN stays (quiet) NaN."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    r = np.where(nan, (u >> 16) | 0x40, r)
    return r.astype(np.uint16)


def read(path):
    """Return (metadata dict or None, {name: (dtype, shape, numpy array)}) in offset order."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise ValueError(f"{path}: header length {n} past end of file")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header is not an object")
    data = blob[8 + n:]
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict)
                                 and all(isinstance(v, str) for v in meta.values())):
        raise ValueError(f"{path}: __metadata__ is not an object of strings")
    entries = []
    for name, e in header.items():
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{path}: tensor {name!r}: bad entry {e!r}")
        dt = DTYPES[e["dtype"]]
        shape = e["shape"]
        begin, end = e["data_offsets"]
        for v in list(shape) + [begin, end]:
            if type(v) is not int or v < 0:
                raise ValueError(f"{path}: tensor {name!r}: bad integer {v!r}")
        numel = 1
        for d in shape:
            numel *= d
        if numel * dt.itemsize != end - begin:
            raise ValueError(f"{path}: tensor {name!r}: size mismatch")
        entries.append((begin, end, name, e["dtype"], shape, dt))
    entries.sort(key=lambda x: (x[0], x[1]))
    pos = 0
    out = {}
    for begin, end, name, dtname, shape, dt in entries:
        if begin != pos:
            raise ValueError(f"{path}: tensor {name!r}: gap or overlap at {begin}")
        pos = end
        arr = np.frombuffer(data[begin:end], dtype=dt).reshape(shape)
        out[name] = (dtname, list(shape), arr)
    if pos != len(data):
        raise ValueError(f"{path}: {len(data) - pos} trailing data bytes")
    return meta, out


def write(path, tensors, metadata=None):
    """tensors: list of (name, dtype name, numpy array of matching dtype) in file order."""
    header = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    off = 0
    blobs = []
    for name, dtname, arr in tensors:
        arr = np.asarray(arr, dtype=DTYPES[dtname])  # ascontiguousarray would make 0-d 1-d
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")
        raw = arr.tobytes()
        header[name] = {"dtype": dtname, "shape": list(arr.shape),
                        "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blobs.append(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def fixture(out):
    """Known values; test_safetensors.c asserts exactly these."""
    f32 = np.array([[0.0, -1.5, 3.25], [1e-3, -0.0, 65504.0]], dtype=np.float32)
    f16 = np.array([1.0, -2.0, 0.5, 65504.0, 2.0 ** -24, 0.0], dtype=np.float16)
    bf16 = f32_to_bf16(np.array([1.0, -3.0, 0.1, 1e30], dtype=np.float32)).reshape(2, 2)
    scalar = np.array(7.0, dtype=np.float32)
    write(out, [("a.f32", "F32", f32), ("b.f16", "F16", f16), ("c.bf16", "BF16", bf16),
                ("d.scalar", "F32", scalar), ("e.empty", "F32", np.zeros((0, 3), np.float32))],
          metadata={"format": "pt", "writer": "st_reference.py"})


def as_f32(dtname, arr):
    if dtname == "BF16":
        return bf16_to_f32(arr)
    return arr.astype(np.float32)


def dump(path):
    meta, ts = read(path)
    print(f"{path}: metadata={meta}")
    for name, (dtname, shape, arr) in ts.items():
        vals = as_f32(dtname, arr).ravel()[:8] if dtname in ("F32", "F16", "BF16") else arr.ravel()[:8]
        print(f"  {name} {dtname} {shape} first={vals.tolist()}")


def roundtrip(src, out):
    meta, ts = read(src)
    write(out, [(n, d, a) for n, (d, _, a) in ts.items()], meta)
    meta2, ts2 = read(out)
    assert meta == meta2, (meta, meta2)
    assert list(ts) == list(ts2)
    for n in ts:
        assert ts[n][0] == ts2[n][0] and ts[n][1] == ts2[n][1], n
        assert ts[n][2].tobytes() == ts2[n][2].tobytes(), n
    print(f"{src} -> {out}: {len(ts)} tensors identical")


def main(argv):
    if len(argv) == 3 and argv[1] == "dump":
        dump(argv[2])
    elif len(argv) == 3 and argv[1] == "fixture":
        fixture(argv[2])
    elif len(argv) == 4 and argv[1] == "roundtrip":
        roundtrip(argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
