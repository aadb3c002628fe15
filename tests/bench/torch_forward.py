#!/usr/bin/python3
"""PyTorch side of the forward-pass benchmark (issue 3): the decoder blocks of a Hugging Face
Llama model in float32, run over the same tokens as tests/bench/bench_forward.c.

    /usr/bin/python3 tests/bench/torch_forward.py --model DIR --data FILE.u32
        [--nsamples 8] [--seqlen 512] [--threads 2] [--reps N]

The module is plain torch with the semantics of transformers' LlamaForCausalLM (as in
tests/numeric/llama_ref.py): RMSNorm, rotate-half RoPE, grouped-query attention with the
key/value heads repeated (HF repeat_kv), causal scaled_dot_product_attention, SwiGLU MLP with
separate gate/up/down Linear layers, residuals. Weights are read from DIR/model.safetensors
(F32, or BF16/F16 upcast to f32), tokens from FILE (u32 LE, nsamples windows of seqlen, as
common/model/data.h cuts them). Only the decoder blocks are timed; the embedding lookup is
done once at start-up and the head is not run.

At start-up one untimed pass over every block keeps each block's input, so a single block
can be timed on its own input. Two ways to run:
  --reps N   standalone: print one JSON line per timed pass over every block, then exit.
  (default)  server for bench_forward.c, which interleaves its own measurements with ours:
             one JSON line "ready" with the configuration, then per stdin line
               block I    -> {"seconds": S, "cpu": C}  block I alone on its input; C is the
                             process CPU time (all threads) during the S seconds
               run        -> {"seconds": S, "cpu": C}  one pass over every block
               dump PATH  -> {"dumped": PATH} write the last block's output as raw f32 LE
                             (nsamples * seqlen, hidden)
               quit / EOF -> exit
"""
import argparse
import ctypes
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


class SafeTensors:
    """Read-only view of one safetensors file through numpy.memmap."""

    def __init__(self, path):
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            self.header = json.loads(f.read(n).decode("utf-8"))
        self.header.pop("__metadata__", None)
        self.map = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)

    def get(self, name):
        """Tensor `name` as a new float32 torch tensor."""
        info = self.header[name]
        b, e = info["data_offsets"]
        raw = np.frombuffer(self.map[b:e], dtype=np.dtype(_NP[info["dtype"]]).newbyteorder("<"))
        if info["dtype"] == "BF16":
            arr = (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)
        else:
            arr = raw.astype(np.float32)
        return torch.from_numpy(np.array(arr, copy=True)).reshape(info["shape"])


class RMSNorm(torch.nn.Module):
    def __init__(self, w, eps):
        super().__init__()
        self.weight = torch.nn.Parameter(w, requires_grad=False)
        self.eps = eps

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def linear(w):
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight = torch.nn.Parameter(w, requires_grad=False)
    return lin


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def sdpa_causal():
    """(name, function(q, k, v) -> causal attention output)."""
    if hasattr(F, "scaled_dot_product_attention"):
        return "F.scaled_dot_product_attention", \
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if hasattr(F, "_scaled_dot_product_attention"):  # torch 1.13: private, returns a tuple
        return "F._scaled_dot_product_attention", \
            lambda q, k, v: F._scaled_dot_product_attention(q, k, v, is_causal=True)[0]

    def manual(q, k, v):
        t = q.shape[-2]
        s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        return s.masked_fill(~mask, float("-inf")).softmax(-1) @ v
    return "matmul+softmax", manual


class Block(torch.nn.Module):
    def __init__(self, st, i, cfg, attention):
        super().__init__()
        p = "model.layers.%d." % i
        self.nh = cfg["num_attention_heads"]
        self.nkv = cfg.get("num_key_value_heads", self.nh)
        self.hd = cfg.get("head_dim") or cfg["hidden_size"] // self.nh
        eps = cfg.get("rms_norm_eps", 1e-6)
        self.input_layernorm = RMSNorm(st.get(p + "input_layernorm.weight"), eps)
        self.post_attention_layernorm = RMSNorm(st.get(p + "post_attention_layernorm.weight"), eps)
        for lin in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, lin, linear(st.get(p + "self_attn." + lin + ".weight")))
        for lin in ("gate_proj", "up_proj", "down_proj"):
            setattr(self, lin, linear(st.get(p + "mlp." + lin + ".weight")))
        self.attention = attention

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(b, t, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(b, t, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(b, t, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.nh // self.nkv
        if rep > 1:  # HF repeat_kv
            k = k[:, :, None].expand(b, self.nkv, rep, t, self.hd).reshape(b, self.nh, t, self.hd)
            v = v[:, :, None].expand(b, self.nkv, rep, t, self.hd).reshape(b, self.nh, t, self.hd)
        a = self.attention(q, k, v).transpose(1, 2).reshape(b, t, self.nh * self.hd)
        x = x + self.o_proj(a)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


def rope_tables(cfg, t):
    nh = cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
    if cfg.get("rope_scaling"):
        raise SystemExit("torch_forward.py: rope_scaling is not supported by the benchmark")
    theta = float(cfg.get("rope_theta", 10000.0))
    inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.cat((ang, ang), dim=-1)
    return emb.cos().float(), emb.sin().float()


def blas_info():
    """OpenBLAS as torch's process sees it (torch links libblas.so.3 -> OpenBLAS here)."""
    info = {"torch_blas": torch.__config__.show().split("BLAS_INFO=")[-1].split(",")[0]}
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if "blas" in os.path.basename(path) and path.startswith("/"):
                libs.add(path)
    info["blas_libs"] = sorted(libs)
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            lib.openblas_get_config.restype = ctypes.c_char_p
            info["openblas_core"] = lib.openblas_get_corename().decode()
            info["openblas_config"] = lib.openblas_get_config().decode().strip()
            info["openblas_threads"] = lib.openblas_get_num_threads()
            break
        except (OSError, AttributeError):
            continue
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="u32 LE token ids")
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=0, help="standalone: time N passes and exit")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    with open(os.path.join(a.model, "config.json")) as f:
        cfg = json.load(f)
    st = SafeTensors(os.path.join(a.model, "model.safetensors"))
    ids = np.fromfile(a.data, dtype="<u4")
    if ids.size < a.nsamples * a.seqlen:
        raise SystemExit("torch_forward.py: %s: %d ids, need %d" %
                         (a.data, ids.size, a.nsamples * a.seqlen))
    ids = torch.from_numpy(ids[:a.nsamples * a.seqlen].astype(np.int64))
    ids = ids.view(a.nsamples, a.seqlen)
    x0 = F.embedding(ids, st.get("model.embed_tokens.weight"))
    attn_name, attn = sdpa_causal()
    blocks = [Block(st, i, cfg, attn) for i in range(cfg["num_hidden_layers"])]
    cos, sin = rope_tables(cfg, a.seqlen)
    del st

    xs = [x0]  # xs[i]: input of block i; xs[-1]: output of the last block
    for blk in blocks:
        xs.append(blk(xs[-1], cos, sin))

    def timed(first, last):
        c0, t0 = time.process_time(), time.perf_counter()
        x = xs[first]
        for blk in blocks[first:last]:
            x = blk(x, cos, sin)
        return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0}

    ready = {"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads(),
             "attention": attn_name, "blocks": len(blocks), "tokens": int(ids.numel()),
             "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
             "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "unset"),
             "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset"),
             "mkldnn": torch.backends.mkldnn.is_available()}
    ready.update(blas_info())
    print(json.dumps(ready), flush=True)
    if a.reps > 0:
        for _ in range(a.reps):
            r = timed(0, len(blocks))
            r["tokens_per_s"] = ids.numel() / r["seconds"]
            print(json.dumps(r), flush=True)
        return 0
    for line in sys.stdin:
        cmd = line.strip().split(" ", 1)
        if cmd[0] == "block" and len(cmd) == 2 and cmd[1].isdigit() and \
                int(cmd[1]) < len(blocks):
            print(json.dumps(timed(int(cmd[1]), int(cmd[1]) + 1)), flush=True)
        elif cmd[0] == "run":
            print(json.dumps(timed(0, len(blocks))), flush=True)
        elif cmd[0] == "dump" and len(cmd) == 2:
            xs[-1].contiguous().numpy().astype("<f4").tofile(cmd[1])
            print(json.dumps({"dumped": cmd[1]}), flush=True)
        elif cmd[0] == "quit":
            break
        else:
            print(json.dumps({"error": "unknown command %r" % line.strip()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
