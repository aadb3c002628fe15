#!/usr/bin/python3
"""Generate the golden fixtures for the C forward pass.

Run from the repository root (torch is only in the system Python):

    /usr/bin/python3 tests/numeric/gen_golden.py            # (re)write tests/data/golden/*
    /usr/bin/python3 tests/numeric/gen_golden.py --check    # regenerate into a temp dir and
                                                            # compare bytes with the committed files

For each fixture tests/data/golden/<name>/ holds a tiny random Hugging Face model
(config.json, model.safetensors, generation_config.json) and golden.safetensors:

    tokens            I32 (nsamples, seqlen)        random token ids
    logits            F32 (nsamples, seqlen, vocab)
    hidden.{i}        F32 (nsamples, seqlen, hidden) output of block i
    sumsq.{i}.{lin}   F32 (in_features,)  sum over all tokens of all samples of x_j^2 of
                                          the input of linear lin of block i
    xtx.{i}.{lin}     F32 (in, in)        sum over those tokens of x^T x
    nll               F32 (nsamples,)     mean next-token cross-entropy (seqlen-1 targets)
    ppl               F32 (1,)            exp(mean(nll))

All references are computed in float64 (tests/numeric/llama_ref.py:ref_forward)
from the exact stored weight values (F32, or BF16 upcast) and then rounded to F32.
As a self-check the float64 result is compared with an independently coded
batched float32 torch module (llama_ref.LlamaModule).

Output is deterministic: fixed seeds, single-threaded torch, sorted JSON.
"""
import argparse
import filecmp
import json
import math
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402
import stio  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
OUT = os.path.join(ROOT, "tests", "data", "golden")


def llama_config(name, hs, it, nl, nh, nkv, vocab, theta, eps, dtype, tied, rope_scaling=None,
                 max_pos=2048):
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": hs // nh,
        "hidden_act": "silu",
        "hidden_size": hs,
        "initializer_range": 0.02,
        "intermediate_size": it,
        "max_position_embeddings": max_pos,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": nh,
        "num_hidden_layers": nl,
        "num_key_value_heads": nkv,
        "pretraining_tp": 1,
        "rms_norm_eps": eps,
        "rope_scaling": rope_scaling,
        "rope_theta": theta,
        "tie_word_embeddings": tied,
        "torch_dtype": dtype,
        "transformers_version": "4.44.2",
        "use_cache": True,
        "vocab_size": vocab,
    }


def qwen2_config(hs, it, nl, nh, nkv, vocab, theta, eps, dtype, tied, max_pos=32768):
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": hs,
        "initializer_range": 0.02,
        "intermediate_size": it,
        "max_position_embeddings": max_pos,
        "max_window_layers": nl,
        "model_type": "qwen2",
        "num_attention_heads": nh,
        "num_hidden_layers": nl,
        "num_key_value_heads": nkv,
        "rms_norm_eps": eps,
        "rope_scaling": None,
        "rope_theta": theta,
        "sliding_window": max_pos,
        "tie_word_embeddings": tied,
        "torch_dtype": dtype,
        "transformers_version": "4.44.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab,
    }


FIXTURES = [
    {
        "name": "llama_gqa",
        "seed": 1001,
        "nsamples": 2,
        "seqlen": 32,
        "cfg": llama_config("llama_gqa", hs=64, it=176, nl=2, nh=4, nkv=2, vocab=256,
                            theta=10000.0, eps=1e-5, dtype="float32", tied=False),
    },
    {
        "name": "qwen2_bias",
        "seed": 2002,
        "nsamples": 3,
        "seqlen": 20,
        "cfg": qwen2_config(hs=32, it=96, nl=2, nh=4, nkv=4, vocab=256, theta=1000000.0,
                            eps=1e-6, dtype="float32", tied=True),
    },
    {
        "name": "llama3_bf16",
        "seed": 3003,
        "nsamples": 2,
        "seqlen": 24,
        # D = 16, theta = 1e4: wavelengths 6.3, 19.9, 62.8, 199, ... against
        # O/hi = 32 and O/lo = 128, so frequencies 0-1 are kept, 2 is smoothed
        # and 3-7 are divided by the factor (all three regimes, none near a border).
        # Tied like Llama-3.2-1B.
        "cfg": llama_config("llama3_bf16", hs=64, it=64, nl=2, nh=4, nkv=2, vocab=256,
                            theta=10000.0, eps=1e-5, dtype="bfloat16", tied=True,
                            max_pos=1024,
                            rope_scaling={"factor": 8.0, "high_freq_factor": 4.0,
                                          "low_freq_factor": 1.0,
                                          "original_max_position_embeddings": 128,
                                          "rope_type": "llama3"}),
    },
]


def make_weights(cfg, gen):
    """Random HF weights in float64, scaled so activations stay O(1).

    Linear weights ~ N(0, 1/in_features) (std 0.075-0.18 here) so q.k/sqrt(D) has
    unit-order spread and attention is neither uniform nor one-hot; embeddings
    std 0.2; norm weights 1 + N(0, 0.1^2); Qwen2 q/k/v biases N(0, 0.2^2).
    """
    hs, it, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], llama_ref.head_dim(cfg)
    bias = cfg["model_type"] == "qwen2"

    def randn(*shape, std):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * std

    def lin(out_f, in_f):
        return randn(out_f, in_f, std=1.0 / math.sqrt(in_f))

    def norm(n):
        return 1.0 + randn(n, std=0.1)

    w = {"model.embed_tokens.weight": randn(v, hs, std=0.2)}
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        w[p + "input_layernorm.weight"] = norm(hs)
        w[p + "self_attn.q_proj.weight"] = lin(nh * d, hs)
        w[p + "self_attn.k_proj.weight"] = lin(nkv * d, hs)
        w[p + "self_attn.v_proj.weight"] = lin(nkv * d, hs)
        if bias:
            w[p + "self_attn.q_proj.bias"] = randn(nh * d, std=0.2)
            w[p + "self_attn.k_proj.bias"] = randn(nkv * d, std=0.2)
            w[p + "self_attn.v_proj.bias"] = randn(nkv * d, std=0.2)
        w[p + "self_attn.o_proj.weight"] = lin(hs, nh * d)
        w[p + "post_attention_layernorm.weight"] = norm(hs)
        w[p + "mlp.gate_proj.weight"] = lin(it, hs)
        w[p + "mlp.up_proj.weight"] = lin(it, hs)
        w[p + "mlp.down_proj.weight"] = lin(hs, it)
    w["model.norm.weight"] = norm(hs)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = lin(v, hs)
    return w


def self_check(fx, cfg, w64, tokens, ref):
    """Compare the float64 reference with the batched float32 module."""
    mod = llama_ref.LlamaModule(cfg)
    sd = {k: t.float() for k, t in w64.items()}
    missing, unexpected = mod.load_state_dict(sd, strict=False)
    assert not unexpected and all(k == "lm_head.weight" and cfg["tie_word_embeddings"]
                                  for k in missing), (missing, unexpected)
    with torch.no_grad():
        logits32, hid32 = mod(tokens.long(), want_hidden=True)
    def rel(a, b):
        return ((a.double() - b).abs().max() / b.abs().max()).item()
    errs = {"logits": rel(logits32, ref["logits"])}
    for i, h in enumerate(hid32):
        errs["hidden.%d" % i] = rel(h, ref["hidden"][i])
    nll32 = torch.nn.functional.cross_entropy(
        logits32[:, :-1].reshape(-1, logits32.shape[-1]).double(),
        tokens[:, 1:].reshape(-1).long(), reduction="none").view(tokens.shape[0], -1).mean(1)
    errs["nll"] = rel(nll32, ref["nll"])
    worst = max(errs.values())
    print("  self-check f32 module vs f64 ref: max rel err %.2e (%s)" % (
        worst, ", ".join("%s %.1e" % kv for kv in errs.items())))
    assert worst < 1e-4, "float32 module disagrees with float64 reference: %r" % errs
    # Independent (vectorised, HF-style) Llama-3 inv_freq against llama_ref's loop.
    if cfg.get("rope_scaling"):
        rs, d = cfg["rope_scaling"], llama_ref.head_dim(cfg)
        inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        wl = 2 * math.pi / inv
        o, lo, hi, f = (rs["original_max_position_embeddings"], rs["low_freq_factor"],
                        rs["high_freq_factor"], rs["factor"])
        scaled = torch.where(wl > o / lo, inv / f, inv)
        sm = (o / wl - lo) / (hi - lo)
        mid = ~(wl < o / hi) & ~(wl > o / lo)
        scaled = torch.where(mid, (1 - sm) * scaled / f + sm * scaled, scaled)
        assert torch.allclose(scaled, llama_ref.rope_inv_freq(cfg), rtol=1e-14, atol=0)
    # The fixture must tell plausible implementation bugs apart from the real
    # semantics by far more than float32 rounding.
    variants = ["rope_interleaved"]
    if cfg["num_key_value_heads"] < cfg["num_attention_heads"]:
        variants.append("gqa_mod")
    if cfg.get("rope_scaling"):
        variants.append("no_rope_scaling")
    sens = {}
    for var in variants:
        alt = llama_ref.ref_forward(cfg, w64, tokens, variant=var)
        sens[var] = rel(alt["logits"], ref["logits"])
        assert sens[var] > 1e-2, "fixture insensitive to %s: %g" % (var, sens[var])
    print("  sensitivity (max rel logits change): " +
          ", ".join("%s %.2e" % kv for kv in sens.items()))
    for key, ss in ref["sumsq"].items():
        assert torch.allclose(ss, torch.diagonal(ref["xtx"][key]), rtol=1e-12, atol=0)
    # The reference must actually use what it claims: perturbing a rope/GQA
    # detail has to change the answer (guards against a silently unused path).
    assert ref["logits"].std() > 0.3, "logits too flat"
    assert 0.2 < ref["attn_maxp"] < 0.9, "attention degenerate: %f" % ref["attn_maxp"]


def gen_fixture(fx, outdir):
    cfg = fx["cfg"]
    gen = torch.Generator().manual_seed(fx["seed"])
    w64 = make_weights(cfg, gen)
    tokens = torch.randint(0, cfg["vocab_size"], (fx["nsamples"], fx["seqlen"]), generator=gen,
                           dtype=torch.int64).to(torch.int32)
    store_dt = torch.bfloat16 if cfg["torch_dtype"] == "bfloat16" else torch.float32
    stored = {k: t.to(store_dt) for k, t in w64.items()}
    # The reference sees exactly the stored values.
    w_ref = {k: t.double() for k, t in stored.items()}
    if cfg.get("rope_scaling"):
        reg = llama_ref.rope_regimes(cfg)
        assert {"keep", "smooth", "scale"} <= set(reg), reg
        print("  rope regimes:", " ".join(reg))
    ref = llama_ref.ref_forward(cfg, w_ref, tokens)
    self_check(fx, cfg, w_ref, tokens, ref)

    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(outdir, "generation_config.json"), "w") as f:
        json.dump({"_from_model_config": True, "bos_token_id": cfg["bos_token_id"],
                   "eos_token_id": cfg["eos_token_id"],
                   "transformers_version": cfg["transformers_version"]}, f, indent=2,
                  sort_keys=True)
        f.write("\n")
    stio.write(os.path.join(outdir, "model.safetensors"), stored, {"format": "pt"})

    g = {"tokens": tokens, "logits": ref["logits"].float()}
    for i, h in enumerate(ref["hidden"]):
        g["hidden.%d" % i] = h.float()
    for i in range(cfg["num_hidden_layers"]):
        for lin in llama_ref.LINEARS:
            g["sumsq.%d.%s" % (i, lin)] = ref["sumsq"][(i, lin)].float()
    for i in range(cfg["num_hidden_layers"]):
        for lin in llama_ref.LINEARS:
            g["xtx.%d.%s" % (i, lin)] = ref["xtx"][(i, lin)].float()
    g["nll"] = ref["nll"].float()
    g["ppl"] = ref["ppl"].reshape(1).float()
    stio.write(os.path.join(outdir, "golden.safetensors"), g,
               {"generator": "tests/numeric/gen_golden.py", "fixture": fx["name"],
                "seed": str(fx["seed"])})

    back, _ = stio.read(os.path.join(outdir, "golden.safetensors"))
    assert all(torch.equal(back[k], g[k]) for k in g)
    print("  nll %s ppl %.3f attn mean max-prob %.3f logits std %.3f" % (
        ["%.4f" % x for x in ref["nll"].tolist()], ref["ppl"].item(), ref["attn_maxp"],
        ref["logits"].std().item()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--out", default=OUT, help="output directory (default tests/data/golden)")
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temporary directory and compare with --out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = tempfile.mkdtemp(prefix="golden-") if args.check else args.out
    for fx in FIXTURES:
        print(fx["name"])
        gen_fixture(fx, os.path.join(out, fx["name"]))
    if args.check:
        bad = 0
        for fx in FIXTURES:
            for fn in ("config.json", "generation_config.json", "model.safetensors",
                       "golden.safetensors"):
                a = os.path.join(out, fx["name"], fn)
                b = os.path.join(args.out, fx["name"], fn)
                same = os.path.exists(b) and filecmp.cmp(a, b, shallow=False)
                if not same:
                    print("DIFFERS: %s/%s" % (fx["name"], fn))
                    bad += 1
        print("check: %s" % ("identical" if not bad else "%d files differ" % bad))
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
