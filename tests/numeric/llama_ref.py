"""Reference implementations of the Hugging Face Llama-family forward pass.

Two deliberately different codings of the same semantics (LlamaForCausalLM and
Qwen2ForCausalLM as in Hugging Face transformers):

* ref_forward(): float64, one sample at a time, explicit per-head loop, RoPE via
  rotate_half, GQA by index arithmetic; also records the per-linear input
  statistics (sum of squares, X^T X) that the pruners need.  Used to produce the
  golden fixtures (tests/numeric/gen_golden.py).
* LlamaModule: batched torch.nn.Module (any dtype), RoPE via split halves,
  GQA via repeat_interleave, autograd friendly.  Used as the float32 cross-check
  of ref_forward() and to train the demo model (deploy/demo/train_demo.py).

Semantics (Hugging Face):
  RMSNorm  y = x / sqrt(mean(x^2) + eps) * w
  RoPE     inv_freq[j] = theta^(-2j/D), j < D/2 (optionally llama3-scaled);
           angle = pos * inv_freq, pos = 0..T-1 per sample;
           q' = q*cos + rotate_half(q)*sin, cos/sin = cat(c, c) / cat(s, s)
  GQA      query head h reads kv head h // (heads / kv_heads)
  attn     causal softmax(q k^T / sqrt(D)) v
  MLP      down(silu(gate(x)) * up(x))
  block    h = x + o_proj(attn(input_layernorm(x))); out = h + mlp(post_attention_layernorm(h))
  head     logits = lm_head(norm(x)); lm_head tied to embed_tokens when tie_word_embeddings
  Qwen2    q/k/v projections carry a bias (o_proj does not)
"""
import math

import torch
import torch.nn.functional as F

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def head_dim(cfg):
    """Head dimension D (config "head_dim" if present, else hidden / heads)."""
    d = cfg.get("head_dim")
    return int(d) if d else cfg["hidden_size"] // cfg["num_attention_heads"]


def rope_inv_freq(cfg, dtype=torch.float64):
    """inv_freq (D/2,) including Llama-3 rope_scaling when configured."""
    d = head_dim(cfg)
    theta = float(cfg.get("rope_theta", 10000.0))
    j = torch.arange(0, d // 2, dtype=torch.float64)
    inv = theta ** (-2.0 * j / d)
    rs = cfg.get("rope_scaling")
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind != "llama3":
            raise ValueError("unsupported rope_scaling %r" % kind)
        f = float(rs["factor"])
        lo = float(rs["low_freq_factor"])
        hi = float(rs["high_freq_factor"])
        o = float(rs["original_max_position_embeddings"])
        out = []
        for v in inv.tolist():
            wavelen = 2.0 * math.pi / v
            if wavelen < o / hi:
                out.append(v)
            elif wavelen > o / lo:
                out.append(v / f)
            else:
                smooth = (o / wavelen - lo) / (hi - lo)
                out.append((1.0 - smooth) * v / f + smooth * v)
        inv = torch.tensor(out, dtype=torch.float64)
    return inv.to(dtype)


def rope_regimes(cfg):
    """For llama3 scaling: list of 'keep' / 'smooth' / 'scale' per frequency."""
    d = head_dim(cfg)
    theta = float(cfg.get("rope_theta", 10000.0))
    rs = cfg["rope_scaling"]
    o = float(rs["original_max_position_embeddings"])
    res = []
    for j in range(d // 2):
        wavelen = 2.0 * math.pi * theta ** (2.0 * j / d)
        if wavelen < o / float(rs["high_freq_factor"]):
            res.append("keep")
        elif wavelen > o / float(rs["low_freq_factor"]):
            res.append("scale")
        else:
            res.append("smooth")
    return res


def _rmsnorm64(x, w, eps):
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * w


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _rotate_pairs(x):
    # GPT-J convention (NOT Hugging Face Llama): (x0, x1) -> (-x1, x0) per pair.
    y = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1)
    return y.flatten(-2)


def lm_head_weight(cfg, w):
    """The output projection: lm_head.weight, or embed_tokens.weight when tied."""
    if cfg.get("tie_word_embeddings", False):
        return w["model.embed_tokens.weight"]
    return w["lm_head.weight"]


def ref_forward(cfg, w, tokens, variant=None):
    """Float64 reference forward.

    variant: None for the real semantics.  Only for the sensitivity self-check of
    gen_golden.py, a plausible implementation bug can be injected: "gqa_mod"
    (query head h reads kv head h % kv_heads), "rope_interleaved" (GPT-J pairs
    (2j, 2j+1) instead of rotate_half), "no_rope_scaling" (ignore rope_scaling).

    cfg: HF config dict; w: {HF tensor name: float64 tensor}; tokens: (N, T) int.
    Returns dict with "logits" (N, T, V), "hidden" list of (N, T, hidden) (output
    of each block), "sumsq" {(layer, lin): (in,)}, "xtx" {(layer, lin): (in, in)},
    "nll" (N,) mean next-token cross-entropy per sample, "ppl" scalar tensor,
    "attn_maxp" mean over query rows t >= 1 of the largest attention weight.
    """
    n_layers = cfg["num_hidden_layers"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    d = head_dim(cfg)
    group = nh // nkv
    eps = float(cfg["rms_norm_eps"])
    if variant == "no_rope_scaling":
        cfg = dict(cfg, rope_scaling=None)
    inv = rope_inv_freq(cfg)
    lm = lm_head_weight(cfg, w)
    sumsq, xtx = {}, {}
    hidden = [[] for _ in range(n_layers)]
    logits_all, nll = [], []
    maxp_sum, maxp_cnt = 0.0, 0

    def record(i, lin, x):
        sumsq[(i, lin)] = sumsq.get((i, lin), 0) + (x * x).sum(dim=0)
        xtx[(i, lin)] = xtx.get((i, lin), 0) + x.t() @ x

    def linear(x, name):
        y = x @ w[name + ".weight"].t()
        b = w.get(name + ".bias")
        return y + b if b is not None else y

    for s in range(tokens.shape[0]):
        ids = tokens[s].long()
        t_len = ids.shape[0]
        x = w["model.embed_tokens.weight"][ids]  # (T, hidden)
        pos = torch.arange(t_len, dtype=torch.float64)
        freqs = pos[:, None] * inv[None, :]  # (T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, D)
        if variant == "rope_interleaved":
            emb = freqs.repeat_interleave(2, dim=-1)
        cos, sin = torch.cos(emb), torch.sin(emb)
        mask = torch.triu(torch.ones(t_len, t_len, dtype=torch.bool), diagonal=1)
        for i in range(n_layers):
            p = "model.layers.%d." % i
            xn = _rmsnorm64(x, w[p + "input_layernorm.weight"], eps)
            for lin in ("q_proj", "k_proj", "v_proj"):
                record(i, lin, xn)
            q = linear(xn, p + "self_attn.q_proj").reshape(t_len, nh, d)
            k = linear(xn, p + "self_attn.k_proj").reshape(t_len, nkv, d)
            v = linear(xn, p + "self_attn.v_proj").reshape(t_len, nkv, d)
            rot = _rotate_pairs if variant == "rope_interleaved" else _rotate_half
            q = q * cos[:, None, :] + rot(q) * sin[:, None, :]
            k = k * cos[:, None, :] + rot(k) * sin[:, None, :]
            heads = []
            for h in range(nh):
                kvh = h % nkv if variant == "gqa_mod" else h // group
                sc = (q[:, h, :] @ k[:, kvh, :].t()) / math.sqrt(d)  # (T, T)
                sc = sc.masked_fill(mask, float("-inf"))
                pr = torch.softmax(sc, dim=-1)
                if t_len > 1:
                    maxp_sum += pr[1:].max(dim=-1).values.sum().item()
                    maxp_cnt += t_len - 1
                heads.append(pr @ v[:, kvh, :])  # (T, D)
            a = torch.cat(heads, dim=-1)  # (T, nh*D)
            record(i, "o_proj", a)
            hres = x + linear(a, p + "self_attn.o_proj")
            hn = _rmsnorm64(hres, w[p + "post_attention_layernorm.weight"], eps)
            record(i, "gate_proj", hn)
            record(i, "up_proj", hn)
            g = linear(hn, p + "mlp.gate_proj")
            u = linear(hn, p + "mlp.up_proj")
            m = g * torch.sigmoid(g) * u
            record(i, "down_proj", m)
            x = hres + linear(m, p + "mlp.down_proj")
            hidden[i].append(x)
        xf = _rmsnorm64(x, w["model.norm.weight"], eps)
        logits = xf @ lm.t()  # (T, V)
        logits_all.append(logits)
        lp = torch.log_softmax(logits[:-1], dim=-1)
        nll.append(-lp.gather(1, ids[1:, None]).mean())
    nll = torch.stack(nll)
    return {
        "logits": torch.stack(logits_all),
        "hidden": [torch.stack(h) for h in hidden],
        "sumsq": sumsq,
        "xtx": xtx,
        "nll": nll,
        "ppl": torch.exp(nll.mean()),
        "attn_maxp": maxp_sum / max(maxp_cnt, 1),
    }


class _RMSNorm(torch.nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _Block(torch.nn.Module):
    def __init__(self, cfg, bias):
        super().__init__()
        hs, it = cfg["hidden_size"], cfg["intermediate_size"]
        self.nh, self.nkv, self.d = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim(cfg)
        eps = float(cfg["rms_norm_eps"])
        self.input_layernorm = _RMSNorm(hs, eps)
        self.post_attention_layernorm = _RMSNorm(hs, eps)
        lin = torch.nn.Linear
        self.self_attn = torch.nn.Module()
        self.self_attn.q_proj = lin(hs, self.nh * self.d, bias=bias)
        self.self_attn.k_proj = lin(hs, self.nkv * self.d, bias=bias)
        self.self_attn.v_proj = lin(hs, self.nkv * self.d, bias=bias)
        self.self_attn.o_proj = lin(self.nh * self.d, hs, bias=False)
        self.mlp = torch.nn.Module()
        self.mlp.gate_proj = lin(hs, it, bias=False)
        self.mlp.up_proj = lin(hs, it, bias=False)
        self.mlp.down_proj = lin(it, hs, bias=False)

    @staticmethod
    def _rope(x, cos, sin):
        # x (B, H, T, D); pairs (x[j], x[j + D/2]) rotate by angle j.
        h = x.shape[-1] // 2
        a, b = x[..., :h], x[..., h:]
        return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)

    def forward(self, x, cos, sin, mask):
        bsz, t_len, _ = x.shape
        at = self.self_attn
        xn = self.input_layernorm(x)
        q = at.q_proj(xn).view(bsz, t_len, self.nh, self.d).transpose(1, 2)
        k = at.k_proj(xn).view(bsz, t_len, self.nkv, self.d).transpose(1, 2)
        v = at.v_proj(xn).view(bsz, t_len, self.nkv, self.d).transpose(1, 2)
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        rep = self.nh // self.nkv
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        sc = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.d))
        sc = sc.masked_fill(mask, float("-inf"))
        a = torch.matmul(torch.softmax(sc, dim=-1), v)  # (B, H, T, D)
        a = a.transpose(1, 2).reshape(bsz, t_len, self.nh * self.d)
        h = x + at.o_proj(a)
        hn = self.post_attention_layernorm(h)
        return h + self.mlp.down_proj(F.silu(self.mlp.gate_proj(hn)) * self.mlp.up_proj(hn))


class LlamaModule(torch.nn.Module):
    """Batched Llama/Qwen2 causal LM whose state_dict() uses the HF tensor names.

    forward(tokens (B, T) long) -> (logits (B, T, V), [block outputs (B, T, hidden)]).
    """

    def __init__(self, cfg, bias=None):
        super().__init__()
        self.cfg = cfg
        if bias is None:
            bias = cfg.get("model_type") == "qwen2"
        self.model = torch.nn.Module()
        self.model.embed_tokens = torch.nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.model.layers = torch.nn.ModuleList(
            [_Block(cfg, bias) for _ in range(cfg["num_hidden_layers"])])
        self.model.norm = _RMSNorm(cfg["hidden_size"], float(cfg["rms_norm_eps"]))
        self.tied = bool(cfg.get("tie_word_embeddings", False))
        if not self.tied:
            self.lm_head = torch.nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg, torch.float32), persistent=False)

    def forward(self, tokens, want_hidden=False):
        bsz, t_len = tokens.shape
        x = self.model.embed_tokens(tokens)
        dt = x.dtype
        ang = torch.arange(t_len, dtype=torch.float64)[:, None] * self.inv_freq.double()[None, :]
        cos, sin = torch.cos(ang).to(dt), torch.sin(ang).to(dt)  # (T, D/2)
        mask = torch.ones(t_len, t_len, dtype=torch.bool, device=tokens.device).triu(1)
        hidden = []
        for blk in self.model.layers:
            x = blk(x, cos, sin, mask)
            if want_hidden:
                hidden.append(x)
        x = self.model.norm(x)
        wout = self.model.embed_tokens.weight if self.tied else self.lm_head.weight
        return F.linear(x, wout), hidden

    def hf_state_dict(self):
        """state_dict restricted to the HF tensor names (no lm_head when tied)."""
        return {k: v for k, v in self.state_dict().items() if k != "inv_freq"}
