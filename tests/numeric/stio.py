"""Minimal safetensors reader/writer (no third-party package needed).

File layout: u64 little-endian header length N, then N bytes of JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}
padded with spaces to a multiple of 8, then the raw little-endian tensor data
(row-major); offsets are relative to the start of the data section.

Shared by tests/numeric/gen_golden.py and deploy/demo/train_demo.py.
"""
import json
import struct

import numpy as np
import torch

# safetensors dtype string <-> (torch dtype, numpy dtype used for the raw bytes)
_DTYPES = {
    "F64": (torch.float64, np.float64),
    "F32": (torch.float32, np.float32),
    "F16": (torch.float16, np.float16),
    "BF16": (torch.bfloat16, np.int16),
    "I64": (torch.int64, np.int64),
    "I32": (torch.int32, np.int32),
    "I16": (torch.int16, np.int16),
    "I8": (torch.int8, np.int8),
    "U8": (torch.uint8, np.uint8),
}
_FROM_TORCH = {v[0]: k for k, v in _DTYPES.items()}


def _raw(t):
    """Return (dtype string, shape, little-endian bytes) of a torch tensor."""
    t = t.detach().cpu().contiguous()
    if t.dtype not in _FROM_TORCH:
        raise ValueError("unsupported dtype %s" % t.dtype)
    name = _FROM_TORCH[t.dtype]
    if t.dtype == torch.bfloat16:
        arr = t.view(torch.int16).numpy()
    else:
        arr = t.numpy()
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return name, list(t.shape), arr.tobytes(order="C")


def write(path, tensors, metadata=None):
    """Write a dict {name: torch.Tensor} to path.

    Like the reference library, tensors are laid out by decreasing element size
    (stable, so insertion order is kept within a size) so every tensor's data is
    naturally aligned (the data section starts at a multiple of 8).

    metadata: optional dict of str -> str stored as "__metadata__".
    """
    header = {}
    chunks = []
    off = 0
    items = sorted(tensors.items(), key=lambda kv: -kv[1].element_size())
    for name, t in items:
        dt, shape, data = _raw(t)
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        chunks.append(data)
        off += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((-len(hbytes)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for c in chunks:
            f.write(c)


def read(path):
    """Read a safetensors file. Returns (dict {name: torch.Tensor}, metadata dict).

    Tensors keep their stored dtype (BF16 -> torch.bfloat16).
    """
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8:
        raise ValueError("%s: too short" % path)
    (n,) = struct.unpack("<Q", buf[:8])
    if 8 + n > len(buf):
        raise ValueError("%s: header length %d exceeds file" % (path, n))
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    data = memoryview(buf)[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, info in header.items():
        tdt, ndt = _DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        shape = [int(s) for s in info["shape"]]
        count = int(np.prod(shape)) if shape else 1
        if not (0 <= b <= e <= len(data)) or e - b != count * np.dtype(ndt).itemsize:
            raise ValueError("%s: tensor '%s': bad data_offsets" % (path, name))
        arr = np.frombuffer(data[b:e], dtype=np.dtype(ndt).newbyteorder("<")).astype(ndt)
        t = torch.from_numpy(arr.copy()).reshape(shape)
        if tdt == torch.bfloat16:
            t = t.view(torch.bfloat16)
        out[name] = t
    return out, meta
