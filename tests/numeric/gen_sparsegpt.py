#!/usr/bin/python3
"""Golden fixtures for the SparseGPT solver (common/model/sparsegpt.c).

A float64 torch implementation of the reference `SparseGPT.fasterprune` as specified in
docs (fedprllm.md §5), with the project's selection rule instead of the reference's
`<= thresh`: exactly k = int(numel * s) entries per block, ties broken by the lower flat index
(stable sort); N:M takes the N lowest per row and group, lower column first on ties.

Each case is written to tests/data/sparsegpt/NAME.safetensors (stio.py) with tensors
  W      F32 (rows, cols)    the input weights
  X      I8  (tokens, cols)  calibration inputs; small integers, so xtx = XᵀX is exact in f32
  W_out  F32 (rows, cols)    expected pruned and updated weights (rounded from float64)
  mask   U8  (rows, cols)    1 = pruned
and metadata nseq, sparsity, prune_n, prune_m, blocksize, percdamp, loss (Σ err²/2), damp,
dead (count), min_gap (smallest relative gap between the last pruned and first kept score
over the blocks/groups: how close the case is to a tie in float32).

Run: /usr/bin/python3 tests/numeric/gen_sparsegpt.py [OUTDIR]
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stio  # noqa: E402

CASES = [
    # name, rows, cols, tokens, nseq, sparsity, n, m, blocksize, dead columns, seed
    ("u16x48_bs16", 16, 48, 96, 4, 0.5, 0, 0, 16, [], 1),
    ("u12x256_bs128", 12, 256, 200, 8, 0.6, 0, 0, 128, [], 2),
    ("nm2of4_16x64_bs32", 16, 64, 96, 3, 0.0, 2, 4, 32, [], 3),
    ("nm4of8_12x128_bs64", 12, 128, 160, 5, 0.0, 4, 8, 64, [], 4),
    ("dead_8x40_bs16", 8, 40, 64, 2, 0.3, 0, 0, 16, [3, 17, 18, 39], 5),
]
PERCDAMP = 0.01


def make_inputs(rows, cols, tokens, dead, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64).to(torch.float32)
    # correlated inputs: a few shared factors plus noise, uneven column scales
    z = torch.randn(tokens, cols // 4 + 2, generator=g, dtype=torch.float64)
    mix = torch.randn(cols // 4 + 2, cols, generator=g, dtype=torch.float64)
    x = z @ mix + 0.5 * torch.randn(tokens, cols, generator=g, dtype=torch.float64)
    x = x * torch.linspace(0.3, 1.5, cols, dtype=torch.float64)
    x = torch.clamp(torch.round(x * (40.0 / x.abs().max())), -127, 127)
    for d in dead:
        x[:, d] = 0
    return w, x.to(torch.int8)


def fasterprune64(w, h, sparsity, prune_n, prune_m, blocksize, percdamp):
    """float64 fasterprune with exact-k selection. w, h float64; returns (w, mask, info)."""
    w = w.clone()
    h = h.clone()
    rows, cols = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(h))
    idx = torch.arange(cols)
    h[idx, idx] += damp
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    hinv = torch.linalg.cholesky(hinv, upper=True)

    mask = torch.zeros(rows, cols, dtype=torch.bool)
    loss = 0.0
    min_gap = float("inf")
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d1 = torch.diag(hinv1)
        mask1 = torch.zeros(rows, count, dtype=torch.bool)
        if prune_n == 0:
            tmp = (w1 ** 2 / d1.reshape(1, -1) ** 2).flatten()
            k = int(tmp.numel() * sparsity)
            vals, order = torch.sort(tmp, stable=True)
            mask1.view(-1)[order[:k]] = True
            if 0 < k < tmp.numel():
                hi = float(vals[k])
                min_gap = min(min_gap, (hi - float(vals[k - 1])) / max(hi, 1e-300))
        for i in range(count):
            if prune_n != 0 and i % prune_m == 0:
                tmp = w1[:, i:i + prune_m] ** 2 / d1[i:i + prune_m].reshape(1, -1) ** 2
                vals, order = torch.sort(tmp, dim=1, stable=True)
                for r in range(rows):
                    mask1[r, i + order[r, :prune_n]] = True
                    if prune_n < prune_m:
                        hi = float(vals[r, prune_n])
                        gap = (hi - float(vals[r, prune_n - 1])) / max(hi, 1e-300)
                        min_gap = min(min_gap, gap)
            col = w1[:, i]
            d = hinv1[i, i]
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            loss += float(((col - q) ** 2 / d ** 2).sum()) / 2
            e = (col - q) / d
            w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
        mask[:, i1:i2] = mask1
    info = {"loss": loss, "damp": float(damp), "dead": int(dead.sum()), "min_gap": min_gap}
    return w, mask, info


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "data", "sparsegpt")
    os.makedirs(out, exist_ok=True)
    for name, rows, cols, tokens, nseq, s, pn, pm, bs, dead, seed in CASES:
        w, x = make_inputs(rows, cols, tokens, dead, seed)
        x64 = x.to(torch.float64)
        h = (2.0 / nseq) * (x64.T @ x64)
        w_out, mask, info = fasterprune64(w.to(torch.float64), h, s, pn, pm, bs, PERCDAMP)
        meta = {
            "nseq": nseq, "sparsity": repr(s), "prune_n": pn, "prune_m": pm, "blocksize": bs,
            "percdamp": repr(PERCDAMP), "loss": repr(info["loss"]), "damp": repr(info["damp"]),
            "dead": info["dead"], "min_gap": repr(info["min_gap"]),
        }
        path = os.path.join(out, name + ".safetensors")
        stio.write(path, {"W": w, "X": x, "W_out": w_out.to(torch.float32),
                          "mask": mask.to(torch.uint8)}, meta)
        print("%s: pruned %d/%d loss %.6g dead %d min_gap %.3g -> %s" % (
            name, int(mask.sum()), mask.numel(), info["loss"], info["dead"], info["min_gap"],
            path))


if __name__ == "__main__":
    main()
