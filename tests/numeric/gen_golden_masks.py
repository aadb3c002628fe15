#!/usr/bin/python3
"""Reference pruning masks for the golden tiny models (tests/unit/test_golden_masks.c).

Run from the repository root (torch is only in the system Python):

    /usr/bin/python3 tests/numeric/gen_golden_masks.py           # write masks.safetensors
    /usr/bin/python3 tests/numeric/gen_golden_masks.py --check   # regenerate and compare

For each model in MODELS, tests/data/golden/<name>/masks.safetensors holds the masks of four
pruning runs over the seven linears of every decoder block, computed in float64 following
research/fedprllm.md (§3 Wanda, §4 magnitude, §5 SparseGPT, §3.6 sequential processing) with
the project's documented selection rule (docs/pruning.md): exactly k = int(group size * s)
weights per group, equal metrics pruned lower index first (a stable ascending sort):

    wanda_row     Wanda, 50 %, per output row, sequential
    wanda_2of4    Wanda, 2:4 along the input dimension, sequential
    magnitude     magnitude, 50 %, per matrix (no data)
    sparsegpt     SparseGPT, 50 %, blocks of 128 columns, 1 % damping, sequential (the pruned
                  AND updated block produces the next block's input)

Calibration data: the "tokens" tensor of the model's golden.safetensors (every sample).

Tensors, for each run R (matrices concatenated in block order, linears q, k, v, o, gate, up,
down, each row-major; position p of the concatenation is bit p % 8 of byte p // 8):

    R.mask        U8  (ceil(P / 8),)  1 = pruned, P = all prunable weights
    R.near        I32 (n,)            positions whose metric lies within a relative NEAR_TOL
                                      of its group's boundary (the mid-point between the k-th
                                      and (k+1)-th smallest metric of the group): the float
                                      near-ties, where an f32 implementation may decide the
                                      other way; ascending
    R.near_dist   F32 (n,)            that relative distance for each of them

Metrics are those of the reference: Wanda's |W| * sqrt(scaler_row) is formed in float32 from
a float32 scaler_row (sum over all tokens of x_j^2 / number of samples, accumulated in
float64 here), exactly as the C code and PyTorch do; magnitude's |W| is exact; SparseGPT's
W^2 / diag(Hinv)^2 comes from the float64 solver with H = (2 / nseq) X^T X.

The forward pass is a block-by-block float64 coding of tests/numeric/llama_ref.py's
ref_forward (its dense outputs are checked against golden.safetensors' hidden.{i}).
"""
import argparse
import math
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402
import stio  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
GOLDEN = os.path.join(ROOT, "tests", "data", "golden")
# llama_gqa (the largest) is left out to keep tests/data under 2 MiB; test_prune.c covers it.
MODELS = ["qwen2_bias", "llama3_bf16"]
LINEARS = llama_ref.LINEARS
INPUT_OF = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "o_proj": "o",
            "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "down"}
MODULE = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
          "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
SPARSITY = 0.5
BLOCKSIZE = 128
PERCDAMP = 0.01
NEAR_TOL = 1e-3


def wname(i, lin):
    return "model.layers.%d.%s.%s.weight" % (i, MODULE[lin], lin)


def load_model(name):
    d = os.path.join(GOLDEN, name)
    import json
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    w, _ = stio.read(os.path.join(d, "model.safetensors"))
    g, _ = stio.read(os.path.join(d, "golden.safetensors"))
    # the stored values exactly (BF16 upcast), as float64
    w = {k: v.to(torch.float64) for k, v in w.items()}
    return cfg, w, g


def block_forward(cfg, w, i, xs, record=None):
    """Block i over every sample; xs: list of (T, hidden) float64. record(input, x) sees the
    input of each distinct linear input ("attn", "o", "mlp", "down") of each sample."""
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = llama_ref.head_dim(cfg)
    group = nh // nkv
    eps = float(cfg["rms_norm_eps"])
    inv = llama_ref.rope_inv_freq(cfg)
    p = "model.layers.%d." % i

    def linear(x, name):
        y = x @ w[name + ".weight"].t()
        b = w.get(name + ".bias")
        return y + b if b is not None else y

    outs = []
    for x in xs:
        t_len = x.shape[0]
        freqs = torch.arange(t_len, dtype=torch.float64)[:, None] * inv[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = torch.cos(emb), torch.sin(emb)
        mask = torch.triu(torch.ones(t_len, t_len, dtype=torch.bool), diagonal=1)
        xn = llama_ref._rmsnorm64(x, w[p + "input_layernorm.weight"], eps)
        if record:
            record("attn", xn)
        q = linear(xn, p + "self_attn.q_proj").reshape(t_len, nh, d)
        k = linear(xn, p + "self_attn.k_proj").reshape(t_len, nkv, d)
        v = linear(xn, p + "self_attn.v_proj").reshape(t_len, nkv, d)
        q = q * cos[:, None, :] + llama_ref._rotate_half(q) * sin[:, None, :]
        k = k * cos[:, None, :] + llama_ref._rotate_half(k) * sin[:, None, :]
        heads = []
        for h in range(nh):
            sc = (q[:, h, :] @ k[:, h // group, :].t()) / math.sqrt(d)
            sc = sc.masked_fill(mask, float("-inf"))
            heads.append(torch.softmax(sc, dim=-1) @ v[:, h // group, :])
        a = torch.cat(heads, dim=-1)
        if record:
            record("o", a)
        hres = x + linear(a, p + "self_attn.o_proj")
        hn = llama_ref._rmsnorm64(hres, w[p + "post_attention_layernorm.weight"], eps)
        if record:
            record("mlp", hn)
        g = linear(hn, p + "mlp.gate_proj")
        u = linear(hn, p + "mlp.up_proj")
        m = g * torch.sigmoid(g) * u
        if record:
            record("down", m)
        outs.append(hres + linear(m, p + "mlp.down_proj"))
    return outs


def select_rows(metric, k, group_cols=None):
    """Exact-k stable selection in every row (or every group of group_cols columns of a row).
    Returns (mask bool, near dict {flat index: reldist})."""
    rows, cols = metric.shape
    gc = group_cols or cols
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    near = {}
    for r in range(rows):
        for c0 in range(0, cols, gc):
            grp = metric[r, c0:c0 + gc].double()
            order = torch.sort(grp, stable=True).indices
            mask[r, c0 + order[:k]] = True
            near.update(near_ties(grp, order, k, r * cols + c0, 1))
    return mask, near


def near_ties(vals, order, k, base, stride):
    """{base + stride * j: reldist} for the entries j of the group vals (1-D float64) within
    NEAR_TOL of the boundary between the k-th and (k+1)-th smallest."""
    n = vals.numel()
    if k == 0 or k == n:
        return {}
    srt = vals[order]
    bound = 0.5 * (float(srt[k - 1]) + float(srt[k]))
    if bound <= 0:
        return {}
    dist = (vals - bound).abs() / bound
    idx = torch.nonzero(dist < NEAR_TOL).flatten().tolist()
    return {base + stride * j: float(dist[j]) for j in idx}


def wanda_masks(w32, scaler32, nm):
    """Wanda on one matrix: w32 (rows, cols) float32, scaler32 (cols,) float32."""
    metric = w32.abs() * torch.sqrt(scaler32).reshape(1, -1)  # float32, as the reference
    rows, cols = w32.shape
    if nm:
        return select_rows(metric, nm[0], nm[1])
    return select_rows(metric, int(cols * SPARSITY))


def magnitude_mask(w32):
    metric = w32.abs().flatten().double()
    k = int(metric.numel() * SPARSITY)
    order = torch.sort(metric, stable=True).indices
    mask = torch.zeros(metric.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask.reshape(w32.shape), near_ties(metric, order, k, 0, 1)


def sparsegpt(w, h):
    """float64 SparseGPT on one matrix (fedprllm.md §5) with exact-k stable selection per
    block of BLOCKSIZE columns. Returns (updated w, mask, near)."""
    w = w.clone()
    h = h.clone()
    rows, cols = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    idx = torch.arange(cols)
    h[idx, idx] += PERCDAMP * torch.mean(torch.diag(h))
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    near = {}
    for i1 in range(0, cols, BLOCKSIZE):
        i2 = min(i1 + BLOCKSIZE, cols)
        cnt = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        score = (w1 ** 2 / torch.diag(hinv1).reshape(1, -1) ** 2).flatten()
        k = int(score.numel() * SPARSITY)
        order = torch.sort(score, stable=True).indices
        m1 = torch.zeros(rows * cnt, dtype=torch.bool)
        m1[order[:k]] = True
        m1 = m1.reshape(rows, cnt)
        for j, dist in near_ties(score, order, k, 0, 1).items():
            near[(j // cnt) * cols + i1 + j % cnt] = dist
        for i in range(cnt):
            col = w1[:, i]
            q = col.clone()
            q[m1[:, i]] = 0
            q1[:, i] = q
            e = (col - q) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
        mask[:, i1:i2] = m1
    return w, mask, near


def run(cfg, w0, tokens, method):
    """One pruning run over the whole model; returns (list of masks, near dict over the
    concatenation)."""
    w = dict(w0)
    nl = cfg["num_hidden_layers"]
    nseq = tokens.shape[0]
    emb = w["model.embed_tokens.weight"]
    xs = [emb[tokens[s].long()] for s in range(nseq)]
    masks, near, off = [], {}, 0
    for i in range(nl):
        stats = {}
        if method != "magnitude":
            def record(inp, x):
                st = stats.setdefault(inp, {"sumsq": 0, "xtx": 0})
                st["sumsq"] = st["sumsq"] + (x * x).sum(dim=0)
                st["xtx"] = st["xtx"] + x.t() @ x
            dense_out = block_forward(cfg, w, i, xs, record)
        for lin in LINEARS:
            name = wname(i, lin)
            wt = w[name]
            if method == "magnitude":
                mask, nr = magnitude_mask(wt.float())
            elif method.startswith("wanda"):
                st = stats[INPUT_OF[lin]]
                scaler = (st["sumsq"] / nseq).float()
                nm = (2, 4) if method == "wanda_2of4" else None
                mask, nr = wanda_masks(wt.float(), scaler, nm)
            else:
                h = (2.0 / nseq) * stats[INPUT_OF[lin]]["xtx"]
                wt, mask, nr = sparsegpt(wt, h)
            w[name] = wt.masked_fill(mask, 0.0)
            masks.append(mask)
            near.update({off + p: dist for p, dist in nr.items()})
            off += mask.numel()
        if method != "magnitude":
            xs = block_forward(cfg, w, i, xs)  # the pruned block feeds the next one
            del dense_out
    return masks, near


def check_forward(cfg, w, g, tokens):
    """The block-by-block forward reproduces golden.safetensors' dense hidden states."""
    xs = [w["model.embed_tokens.weight"][tokens[s].long()] for s in range(tokens.shape[0])]
    for i in range(cfg["num_hidden_layers"]):
        xs = block_forward(cfg, w, i, xs)
        ref = g["hidden.%d" % i].double()
        got = torch.stack(xs)
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        assert err < 1e-6, "block %d: forward differs from golden by %g" % (i, err)


def pack(masks):
    bits = torch.cat([m.flatten() for m in masks]).numpy().astype(np.uint8)
    return torch.from_numpy(np.packbits(bits, bitorder="little").copy())


def gen(name, outdir):
    cfg, w, g = load_model(name)
    tokens = g["tokens"]
    check_forward(cfg, w, g, tokens)
    out = {}
    for method in ("wanda_row", "wanda_2of4", "magnitude", "sparsegpt"):
        masks, near = run(cfg, w, tokens, method)
        pos = sorted(near)
        out[method + ".mask"] = pack(masks)
        out[method + ".near"] = torch.tensor(pos, dtype=torch.int32)
        out[method + ".near_dist"] = torch.tensor([near[p] for p in pos], dtype=torch.float32)
        total = sum(m.numel() for m in masks)
        print("  %-10s pruned %d of %d, %d near-ties (rel. distance < %g)" % (
            method, sum(int(m.sum()) for m in masks), total, len(pos), NEAR_TOL))
    meta = {"generator": "tests/numeric/gen_golden_masks.py", "model": name,
            "runs": "wanda_row wanda_2of4 magnitude sparsegpt",
            "order": "blocks ascending; q_proj k_proj v_proj o_proj gate_proj up_proj "
                     "down_proj; row-major; bit p%8 of byte p//8",
            "sparsity": repr(SPARSITY), "blocksize": str(BLOCKSIZE),
            "percdamp": repr(PERCDAMP), "near_tol": repr(NEAR_TOL),
            "nsamples": str(tokens.shape[0])}
    os.makedirs(outdir, exist_ok=True)
    stio.write(os.path.join(outdir, "masks.safetensors"), out, meta)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temporary directory and compare bytes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    bad = 0
    for name in MODELS:
        print(name)
        outdir = tempfile.mkdtemp(prefix="masks-") if args.check else os.path.join(GOLDEN, name)
        gen(name, outdir)
        if args.check:
            with open(os.path.join(outdir, "masks.safetensors"), "rb") as a, \
                    open(os.path.join(GOLDEN, name, "masks.safetensors"), "rb") as b:
                same = a.read() == b.read()
            print("  check: %s" % ("identical" if same else "DIFFERS"))
            bad += not same
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
