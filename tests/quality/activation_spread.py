#!/usr/bin/python3
"""Spread of the per-input-column activation norms of a model's linear layers.

    /usr/bin/python3 tests/quality/activation_spread.py MODEL_DIR CALIB.txt [NSAMPLES] [SEQLEN]

Wanda's metric is |W_ij| * ||X_j|| (fedprllm.md §3.2): it differs from magnitude pruning
only as far as the column norms ||X_j|| of a linear's input differ from each other. Large
language models have a few "outlier" input features whose norms are orders of magnitude
above the median, and that is where Wanda gains over magnitude. This script measures that
spread on a byte-level model (vocab 256, .txt calibration data): NSAMPLES (default 128)
windows of SEQLEN (default 256) bytes drawn with Python's random.seed(0), the dense model's
forward (tests/numeric/llama_ref.LlamaModule, float32), and for each block and distinct input
(q/k/v, o, gate/up, down) prints max / median, 99th percentile / median, min / median and the
coefficient of variation of ||X_j||.
"""
import json
import os
import random
import sys

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "numeric"))
import llama_ref  # noqa: E402
import stio  # noqa: E402


def main():
    if len(sys.argv) < 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    model, calib = sys.argv[1], sys.argv[2]
    nsamples = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    seqlen = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    torch.set_num_threads(2)
    with open(os.path.join(model, "config.json")) as f:
        cfg = json.load(f)
    if cfg["vocab_size"] != 256:
        print("needs a byte-level model (vocab_size 256)", file=sys.stderr)
        return 1
    w, _ = stio.read(os.path.join(model, "model.safetensors"))
    mod = llama_ref.LlamaModule(cfg)
    mod.load_state_dict({k: v.float() for k, v in w.items()}, strict=False)
    with open(calib, "rb") as f:
        data = f.read()
    n = len(data) // seqlen
    random.seed(0)
    idx = random.sample(range(n), min(nsamples, n))
    toks = torch.tensor([list(data[i * seqlen:(i + 1) * seqlen]) for i in idx])

    sums = {}

    def hook(name):
        def record(module, inp, out):
            x = inp[0].reshape(-1, inp[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
        return record

    for i, blk in enumerate(mod.model.layers):
        for tag, lin in (("q/k/v", blk.self_attn.q_proj), ("o", blk.self_attn.o_proj),
                         ("gate/up", blk.mlp.gate_proj), ("down", blk.mlp.down_proj)):
            lin.register_forward_hook(hook("%d %s" % (i, tag)))
    with torch.no_grad():
        for b in range(0, toks.shape[0], 16):
            mod(toks[b:b + 16].long())
    print("| block input | max / median | p99 / median | min / median | CV |")
    print("|---|---|---|---|---|")
    for name, ss in sums.items():
        s = ss.sqrt()
        med = s.median()
        print("| %s | %.1f | %.2f | %.2f | %.2f |" % (
            name, (s.max() / med).item(), (s.quantile(0.99) / med).item(),
            (s.min() / med).item(), (s.std() / s.mean()).item()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
