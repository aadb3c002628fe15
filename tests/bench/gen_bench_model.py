#!/usr/bin/python3
"""Write a random Llama model of realistic shape for the model-core benchmarks (issue 3).

    /usr/bin/python3 tests/bench/gen_bench_model.py --out DIR [--blocks 4] [--dtype F32]
        [--hidden 2048] [--intermediate 5632] [--heads 32] [--kv-heads 4] [--vocab 32000]
        [--tied] [--seed 1] [--tokens FILE --nsamples 8 --seqlen 512]

DIR receives config.json (LlamaForCausalLM) and model.safetensors; with --tokens, FILE
receives nsamples * seqlen random token ids as little-endian u32 (the ".u32" format of
common/model/data.h, read back as nsamples windows of seqlen). Models are for benchmarks
only: write them to a temporary directory, never commit them.

The safetensors file is streamed: the header (u64 LE length, JSON padded with spaces to a
multiple of 8) is computed from the shapes first, then each tensor is generated, written and
dropped, so memory stays at one tensor whatever the model size. Weights are N(0, 0.02)
(the HF initializer range), norm weights 1, so activations stay finite through the blocks.
BF16 is float32 rounded to nearest even. Only numpy is needed.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tensor_list(a):
    """[(name, shape)] of every tensor of the model, in file order."""
    hd = a.hidden // a.heads
    kvd = a.kv_heads * hd
    shapes = {
        "q_proj": (a.heads * hd, a.hidden),
        "k_proj": (kvd, a.hidden),
        "v_proj": (kvd, a.hidden),
        "o_proj": (a.hidden, a.heads * hd),
        "gate_proj": (a.intermediate, a.hidden),
        "up_proj": (a.intermediate, a.hidden),
        "down_proj": (a.hidden, a.intermediate),
    }
    out = [("model.embed_tokens.weight", (a.vocab, a.hidden))]
    for i in range(a.blocks):
        p = "model.layers.%d." % i
        out.append((p + "input_layernorm.weight", (a.hidden,)))
        for lin in LINEARS[:4]:
            out.append((p + "self_attn." + lin + ".weight", shapes[lin]))
        out.append((p + "post_attention_layernorm.weight", (a.hidden,)))
        for lin in LINEARS[4:]:
            out.append((p + "mlp." + lin + ".weight", shapes[lin]))
    out.append(("model.norm.weight", (a.hidden,)))
    if not a.tied:
        out.append(("lm_head.weight", (a.vocab, a.hidden)))
    return out


def config(a):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": a.hidden,
        "intermediate_size": a.intermediate,
        "num_hidden_layers": a.blocks,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "head_dim": a.hidden // a.heads,
        "vocab_size": a.vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "attention_bias": False,
        "tie_word_embeddings": bool(a.tied),
        "torch_dtype": "float32" if a.dtype == "F32" else "bfloat16",
    }


def to_bf16(x):
    """float32 array -> uint16 bfloat16 bits, round to nearest even (inputs are finite)."""
    u = x.view(np.uint32)
    u = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (u >> np.uint32(16)).astype("<u2")


def write_model(a):
    esize = 4 if a.dtype == "F32" else 2
    tensors = tensor_list(a)
    header = {"__metadata__": {"format": "pt", "generator": "tests/bench/gen_bench_model.py"}}
    off = 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * esize
        header[name] = {"dtype": a.dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((-len(hbytes)) % 8)
    rng = np.random.default_rng(a.seed)
    path = os.path.join(a.out, "model.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for name, shape in tensors:
            if len(shape) == 1:
                x = np.ones(shape, dtype=np.float32)
            else:
                x = rng.standard_normal(shape, dtype=np.float32)
                x *= np.float32(0.02)
            if a.dtype == "F32":
                f.write(x.astype("<f4", copy=False).tobytes())
            else:
                f.write(to_bf16(x).tobytes())
            del x
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config(a), f, indent=2, sort_keys=True)
        f.write("\n")
    return 8 + len(hbytes) + off


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="model directory (created if missing)")
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dtype", choices=("F32", "BF16"), default="F32")
    ap.add_argument("--tied", action="store_true", help="tie lm_head to embed_tokens")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tokens", help="also write random token ids (u32 LE) to this file")
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=512)
    a = ap.parse_args()
    if a.hidden % a.heads or a.heads % a.kv_heads or (a.hidden // a.heads) % 2:
        ap.error("hidden must split into heads of even size, heads into kv-heads")
    if min(a.blocks, a.hidden, a.intermediate, a.vocab, a.nsamples, a.seqlen) < 1:
        ap.error("sizes must be positive")
    os.makedirs(a.out, exist_ok=True)
    size = write_model(a)
    print("wrote %s: %d blocks %s, %.3f GB (%d bytes)" %
          (os.path.join(a.out, "model.safetensors"), a.blocks, a.dtype, size / 1e9, size))
    if a.tokens:
        rng = np.random.default_rng(a.seed + 1000)
        ids = rng.integers(0, a.vocab, size=a.nsamples * a.seqlen, dtype=np.uint32)
        with open(a.tokens, "wb") as f:
            f.write(ids.astype("<u4").tobytes())
        print("wrote %s: %d x %d token ids" % (a.tokens, a.nsamples, a.seqlen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
