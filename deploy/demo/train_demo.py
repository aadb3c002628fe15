#!/usr/bin/python3
"""Build the demo data and train the bundled byte-level Llama demo model.

Run from the repository root (torch is only in the system Python), CPU only:

    /usr/bin/python3 deploy/demo/train_demo.py              # data + training + export (~13 min)
    /usr/bin/python3 deploy/demo/train_demo.py --data-only  # only rebuild deploy/demo/data/
    /usr/bin/python3 deploy/demo/train_demo.py --steps 20 --out /tmp/m   # quick smoke run

What it does (all deterministic given --seed, on the same machine / package set):

1. Collects license-clean English text that Debian packages install on this machine
   (only files owned by packages from the Debian archive, per dpkg and `apt list`):
     legal: /usr/share/common-licenses/*, /usr/share/doc/*/copyright
     man:   /usr/share/man/man[1-8]/*.gz (man(7) roff converted to plain text)
     docs:  /usr/share/doc/*/{README,NEWS,changelog}* (gzip decompressed)
   Each file is normalised, capped at 8 KiB and de-duplicated (whole text and
   first 1 KiB), then assigned as a whole to exactly one split: the held-out
   set (all three sources), one client shard (client1 = legal, client2 = man,
   client3 = docs: deliberately non-IID) or the pre-training pool.  The pool is
   disjoint (by file) from the shards and the held-out set.
2. Writes deploy/demo/data/{client1,client2,client3,heldout}.txt, MANIFEST.tsv
   (every file used, its split and byte count) and deploy/demo/SOURCES.md.
3. Pre-trains a small Llama (tests/numeric/llama_ref.LlamaModule, the same
   semantics as the float64 golden reference) on the pool only, CPU, 2 threads.
4. Checks the trained model against the float64 reference forward, evaluates
   perplexity (non-overlapping 256-byte windows, exp(mean over windows of the mean
   next-token cross-entropy), as in research/fedprllm.md section 7) and writes
   deploy/demo/model/{config.json,generation_config.json,model.safetensors,README.md}.
"""
import argparse
import glob
import gzip
import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "numeric"))
import llama_ref  # noqa: E402
import stio  # noqa: E402

SEED = 20240601
DOC_CAP = 8192  # bytes kept from the start of any one file
DOC_MIN = 256  # shorter files are skipped
HEAD_DEDUP = 1024  # files sharing their first 1 KiB count as duplicates
TARGET = {"heldout": 55_000, "client": 300_000, "pool": 1_500_000}  # bytes per source
SOURCES = ("legal", "man", "docs")
CLIENT_OF = {"legal": "client1", "man": "client2", "docs": "client3"}
SEQ = 256

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 2,
    "eos_token_id": 3,
    "head_dim": 32,
    "hidden_act": "silu",
    "hidden_size": 192,
    "initializer_range": 0.02,
    "intermediate_size": 512,
    "max_position_embeddings": SEQ,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 6,
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": "4.44.2",
    "use_cache": True,
    "vocab_size": 256,
}


# --------------------------------------------------------------------------- roff

_GLYPHS = {
    "aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'", "cq": "'", "em": "--", "en": "-",
    "hy": "-", "mi": "-", "bu": "*", "co": "(C)", "rg": "(R)", "tm": "(TM)", "ga": "`",
    "ha": "^", "ti": "~", "rs": "\\", "sl": "/", "pl": "+", "eq": "=", "mu": "x", "di": "/",
    "<=": "<=", ">=": ">=", "!=": "!=", "->": "->", "<-": "<-", "ua": "^", "da": "v",
    "dg": "+", "de": " deg", "ct": "c", "ps": "P", "sc": "S", "fm": "'", "sd": '"',
    "Fo": "<<", "Fc": ">>", "fo": "<", "fc": ">", "R": "(R)", "Tm": "(TM)",
    "~=": "~=", "+-": "+/-", "12": "1/2", "14": "1/4", "34": "3/4", "at": "@", "sh": "#",
    "Do": "$", "ul": "_", "ru": "_", "br": "|", "or": "|", "ba": "|", "lB": "[", "rB": "]",
    "lC": "{", "rC": "}", "la": "<", "ra": ">", "bv": "|",
}
_ESC = re.compile(r"""\\(?:
      f(?:\[[^\]]*\]|\(..|.)          # font change: dropped
    | s[+-]?(?:\d\d?|\(\d\d|\[\d+\])  # size change: dropped
    | \((..)                          # glyph \(xx             -> group 1
    | \[([^\]]*)\]                    # glyph \[name]          -> group 2
    | \*(?:\((..)|\[([^\]]*)\]|(.))   # string \*(xx \*[n] \*x -> groups 3, 4, 5
    | [Nhvwlo](?:'[^']*')             # \N'..' \h'..' ...: dropped
    | [kmMnYgV](?:\[[^\]]*\]|\(..|.)  # registers, colours: dropped
    | ([-e\\.&|^~ 0c%:/,!)\t'`"])     # one-character escapes -> group 6
    | (.)                             # anything else          -> group 7, kept literally
)""", re.X)
_ONE = {"-": "-", "e": "\\", "\\": "\\", ".": ".", "&": "", "|": "", "^": "", "~": " ", " ": " ",
        "0": " ", "c": "", "%": "", ":": "", "/": "", ",": "", "!": "", ")": "", "\t": "\t",
        "'": "'", "`": "`", '"': ""}
_FONT_ALT = {"BR", "RB", "BI", "IB", "IR", "RI", "SB"}
_FONT_ONE = {"B", "I", "SM", "CW", "UR", "MT"}


def _esc(m):
    g = m.groups()
    for name in (g[0], g[1], g[2], g[3], g[4]):
        if name is not None:
            return _GLYPHS.get(name, "")
    if g[5] is not None:
        return _ONE[g[5]]
    return g[6] if g[6] is not None else ""


def _roff_args(s):
    """Split roff macro arguments; double quotes group words ("" is a quote)."""
    out, cur, quoted, i = [], "", False, 0
    while i < len(s):
        ch = s[i]
        if ch == '"':
            if quoted and s[i + 1:i + 2] == '"':
                cur += '"'
                i += 1
            else:
                quoted = not quoted
        elif ch in " \t" and not quoted:
            if cur:
                out.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    if cur:
        out.append(cur)
    return out


def roff_to_text(src):
    """Plain text of a man(7) page; None for mdoc(7) pages, .so stubs and empty pages."""
    lines = src.split("\n")
    if any(ln.startswith((".Dd", ".Nm")) for ln in lines[:50]):
        return None
    out = []
    skip_until = None
    for ln in lines:
        if skip_until is not None:
            if ln.startswith(skip_until):
                skip_until = None
            continue
        if ln.startswith(('.\\"', "'\\\"", ".\\#", '\\"')) or ln.strip() in (".", "'"):
            continue
        if ln.startswith((".", "'")):
            name, _, rest = ln[1:].lstrip().partition(" ")
            if name in ("de", "de1", "am", "ig"):
                skip_until = ".."
            elif name == "TH":
                a = _roff_args(rest)
                out += ["%s(%s)" % (a[0], a[1]) if len(a) >= 2 else " ".join(a), ""]
            elif name in ("SH", "SS"):
                out += ["", " ".join(_roff_args(rest))]
            elif name in _FONT_ALT:
                out.append("".join(_roff_args(rest)))
            elif name in _FONT_ONE:
                out.append(" ".join(_roff_args(rest)))
            elif name in ("IP", "TP", "TQ"):
                out.append("")
                a = _roff_args(rest)
                if name == "IP" and a:
                    out.append(a[0])
            elif name in ("PP", "LP", "P", "sp", "HP"):
                out.append("")
            # every other request (so, nf, fi, RS, RE, ds, nr, ft, TS, TE, ...) is dropped
            continue
        if ln.startswith(("T{", "T}")):
            ln = ln[2:]
        out.append(ln)
    text = _ESC.sub(_esc, "\n".join(out))
    return text if text.strip() else None


# --------------------------------------------------------------------------- data

def archive_owned_files():
    """Paths installed by packages that come from the Debian archive.

    Packages that apt reports as [installed,local] (not in any configured
    archive, e.g. vendor repositories) are excluded.
    """
    res = subprocess.run(["apt", "list", "--installed"], capture_output=True, text=True,
                         check=True)
    local = set()
    for ln in res.stdout.splitlines():
        if "/" in ln and "local]" in ln:
            local.add(ln.split("/", 1)[0])
    owned, excluded = set(), set()
    for lst in sorted(glob.glob("/var/lib/dpkg/info/*.list")):
        pkg = os.path.basename(lst)[:-5].split(":", 1)[0]
        if pkg in local:
            excluded.add(pkg)
            continue
        with open(lst, encoding="utf-8", errors="replace") as f:
            owned.update(ln.rstrip("\n") for ln in f)
    return owned, sorted(excluded)


def normalise(raw):
    """UTF-8 text with LF line ends, no control characters, trailing blanks stripped,
    at most one empty line in a row, capped at DOC_CAP bytes; None if unusable."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n")
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)
    text = "\n".join(ln.rstrip() for ln in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    b = text.encode("utf-8")
    if len(b) > DOC_CAP:
        b = b[:DOC_CAP]
        b = b[:b.rfind(b"\n")] if b"\n" in b else b
        text = b.decode("utf-8", errors="ignore")
    if len(text.encode("utf-8")) < DOC_MIN:
        return None
    return text + "\n"


def _read(path):
    with open(path, "rb") as f:
        raw = f.read()
    return gzip.decompress(raw) if path.endswith(".gz") else raw


DOC_NAME = re.compile(r"^(README|NEWS|changelog)(\.Debian)?(\.(txt|md|rst))?(\.gz)?$")


def candidate_files():
    """{source: sorted list of paths} before ownership filtering."""
    legal = [p for p in glob.glob("/usr/share/common-licenses/*")]
    legal += glob.glob("/usr/share/doc/*/copyright")
    man = [p for p in glob.glob("/usr/share/man/man[1-8]/*") if p.endswith(".gz")]
    docs = [p for p in glob.glob("/usr/share/doc/*/*") if DOC_NAME.match(os.path.basename(p))]
    return {"legal": sorted(legal), "man": sorted(man), "docs": sorted(docs)}


def collect():
    """{source: [(path, text)]} of usable, de-duplicated documents, plus stats."""
    owned, excluded = archive_owned_files()
    seen_full, seen_head = set(), set()
    docs, stats = {}, {}
    for src, paths in candidate_files().items():
        st = {"candidates": len(paths), "not_archive": 0, "unusable": 0, "duplicate": 0}
        out = []
        for p in paths:
            if p not in owned or not os.path.isfile(p):
                st["not_archive"] += 1
                continue
            try:
                raw = _read(p)
            except (OSError, EOFError, gzip.BadGzipFile):
                st["unusable"] += 1
                continue
            if src == "man":
                try:
                    t = roff_to_text(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    t = None
                raw = t.encode("utf-8") if t else b""
            text = normalise(raw)
            if text is None:
                st["unusable"] += 1
                continue
            b = text.encode("utf-8")
            hf = hashlib.sha256(b).digest()
            hh = hashlib.sha256(b[:HEAD_DEDUP]).digest()
            if hf in seen_full or hh in seen_head:
                st["duplicate"] += 1
                continue
            seen_full.add(hf)
            seen_head.add(hh)
            out.append((p, text))
        st["usable"] = len(out)
        st["usable_bytes"] = sum(len(t.encode("utf-8")) for _, t in out)
        docs[src], stats[src] = out, st
    return docs, stats, excluded


def split(docs, seed):
    """Assign whole files to heldout / client shard / pool / unused per source."""
    parts = {"heldout": [], "client1": [], "client2": [], "client3": [], "pool": []}
    manifest = []
    for k, src in enumerate(SOURCES):
        order = list(docs[src])
        random.Random(seed * 31 + k).shuffle(order)
        fill = {"heldout": 0, "client": 0, "pool": 0}
        for path, text in order:
            n = len(text.encode("utf-8"))
            for kind in ("heldout", "client", "pool"):
                if fill[kind] < TARGET[kind]:
                    fill[kind] += n
                    name = CLIENT_OF[src] if kind == "client" else kind
                    parts[name].append((src, path, text))
                    manifest.append((name, src, n, path))
                    break
            else:
                manifest.append(("unused", src, n, path))
    return parts, manifest


def join(items):
    return "\n".join(t for _, _, t in items).encode("utf-8")


def build_data(seed, datadir, write_sources_md):
    t0 = time.time()
    docs, stats, excluded = collect()
    parts, manifest = split(docs, seed)
    os.makedirs(datadir, exist_ok=True)
    blobs = {name: join(items) for name, items in parts.items()}
    for name in ("client1", "client2", "client3", "heldout"):
        with open(os.path.join(datadir, name + ".txt"), "wb") as f:
            f.write(blobs[name])
    with open(os.path.join(datadir, "MANIFEST.tsv"), "w") as f:
        f.write("# split\tsource\tbytes\tpath  (bytes = normalised text kept, after the %d-byte cap)\n"
                % DOC_CAP)
        for row in sorted(manifest, key=lambda r: (r[0], r[1], r[3])):
            if row[0] != "unused":
                f.write("%s\t%s\t%d\t%s\n" % row)
    summary = {}
    for name, items in parts.items():
        per = {}
        for src, _, t in items:
            c = per.setdefault(src, [0, 0])
            c[0] += 1
            c[1] += len(t.encode("utf-8"))
        summary[name] = {"bytes": len(blobs[name]), "sha256": hashlib.sha256(blobs[name]).hexdigest(),
                         "per_source": per}
    if write_sources_md:
        write_sources(os.path.join(HERE, "SOURCES.md"), stats, excluded, summary, manifest, seed)
    print("data: %s (%.1f s)" % (", ".join("%s %d B" % (k, v["bytes"]) for k, v in summary.items()),
                                 time.time() - t0), flush=True)
    return blobs, summary, stats


def write_sources(path, stats, excluded, summary, manifest, seed):
    unused = {}
    for name, src, n, _ in manifest:
        if name == "unused":
            c = unused.setdefault(src, [0, 0])
            c[0] += 1
            c[1] += n
    L = []
    L.append("# Demo model data sources\n")
    L.append("Generated by `deploy/demo/train_demo.py` (seed %d); do not edit by hand.\n" % seed)
    L.append("All text is read from files installed on the build machine (Debian 12 bookworm) by "
             "packages that come from the Debian archive: a file is used only if it is listed in "
             "`/var/lib/dpkg/info/<pkg>.list` of a package that `apt list --installed` does not "
             "mark `local`. Excluded vendor packages on this machine: %s. Every text keeps the "
             "licence it is distributed under (see `/usr/share/doc/<pkg>/copyright`); all are "
             "freely redistributable as part of Debian main.\n" % ", ".join(excluded or ["none"]))
    L.append("## Sources\n")
    L.append("| source | globs | candidates | not from archive | unusable | duplicate | usable files | usable bytes |")
    L.append("|---|---|---|---|---|---|---|---|")
    globs = {"legal": "`/usr/share/common-licenses/*`, `/usr/share/doc/*/copyright`",
             "man": "`/usr/share/man/man[1-8]/*.gz` (English sections only)",
             "docs": "`/usr/share/doc/*/{README,NEWS,changelog}[.Debian][.txt|.md|.rst][.gz]`"}
    for src in SOURCES:
        s = stats[src]
        L.append("| %s | %s | %d | %d | %d | %d | %d | %d |" % (
            src, globs[src], s["candidates"], s["not_archive"], s["unusable"], s["duplicate"],
            s["usable"], s["usable_bytes"]))
    L.append("")
    L.append("Processing: gzip files are decompressed with Python's gzip; man pages are man(7) "
             "roff converted to plain text by `roff_to_text()` (requests dropped, font/size escapes "
             "removed, glyph escapes mapped to ASCII; mdoc(7) pages and `.so` stubs skipped). "
             "Every file must be valid UTF-8; CR and control characters (except tab and newline) "
             "are removed, trailing blanks stripped, runs of empty lines collapsed to one, and only "
             "the first %d bytes (cut at a line end) are kept; files under %d bytes are skipped. "
             "A file whose whole text or first %d bytes equal those of an earlier file (order: "
             "legal, man, docs; paths sorted) is a duplicate and skipped, so no text is shared "
             "between splits by copy.\n" % (DOC_CAP, DOC_MIN, HEAD_DEDUP))
    L.append("## Splits (whole files; per source the usable files are shuffled with "
             "`random.Random(seed*31 + k)` and filled in the order held-out, client shard, "
             "pre-training pool)\n")
    L.append("| split | file | bytes | files (legal / man / docs) | sha256 |")
    L.append("|---|---|---|---|---|")
    for name, fn in (("client1", "data/client1.txt"), ("client2", "data/client2.txt"),
                     ("client3", "data/client3.txt"), ("heldout", "data/heldout.txt"),
                     ("pool", "(not committed; rebuilt by the script)")):
        s = summary[name]
        per = s["per_source"]
        L.append("| %s | %s | %d | %s | `%s` |" % (
            name, fn, s["bytes"], " / ".join(str(per.get(src, [0, 0])[0]) for src in SOURCES),
            s["sha256"][:16]))
    L.append("| unused | - | %d | %s | - |" % (
        sum(v[1] for v in unused.values()),
        " / ".join(str(unused.get(src, [0, 0])[0]) for src in SOURCES)))
    L.append("")
    L.append("* client1 = licence and copyright texts only, client2 = man pages only, client3 = "
             "package READMEs / NEWS / changelogs only: the three federated clients are "
             "deliberately non-IID.")
    L.append("* heldout = files from all three sources, disjoint (by file) from every shard and "
             "from the pool.")
    L.append("* The demo model is pre-trained on the pool ONLY (disjoint from the shards and the "
             "held-out set), so the clients' calibration data and the evaluation text are both "
             "unseen by the shared model, as they would be for a real pre-trained LLM. There is "
             "plenty of Debian text for this (see the usable bytes above).")
    L.append("* `data/MANIFEST.tsv` lists every file used, its split and the bytes kept. The pool "
             "depends on the packages installed; its sha256 above lets a rebuild check that it "
             "saw the same text.\n")
    with open(path, "w") as f:
        f.write("\n".join(L))


# --------------------------------------------------------------------------- model

def init_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    nl = CONFIG["num_hidden_layers"]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.fill_(1.0)
            else:
                std = 0.02
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    std /= math.sqrt(2 * nl)
                p.copy_(torch.randn(p.shape, generator=g) * std)


@torch.no_grad()
def window_ppl(model, data, max_windows=None, batch=16):
    """exp(mean over non-overlapping SEQ windows of the mean next-token CE)."""
    ids = torch.tensor(list(data), dtype=torch.long)
    nw = ids.numel() // SEQ
    if max_windows:
        nw = min(nw, max_windows)
    win = ids[:nw * SEQ].view(nw, SEQ)
    losses = []
    for i in range(0, nw, batch):
        x = win[i:i + batch]
        logits, _ = model(x)
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, 256), x[:, 1:].reshape(-1),
                             reduction="none").view(x.shape[0], -1).mean(1)
        losses.append(ce.double())
    losses = torch.cat(losses)
    return math.exp(losses.mean().item()), nw


def lr_at(step, steps, peak, warm):
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train(pool, args):
    torch.manual_seed(args.seed)
    model = llama_ref.LlamaModule(CONFIG)
    init_weights(model, args.seed + 1)
    nparams = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    nodecay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": nodecay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    data = torch.tensor(list(pool), dtype=torch.long)
    g = torch.Generator().manual_seed(args.seed + 2)
    print("model: %d parameters; pool %d bytes; %d steps x %d x %d tokens" % (
        nparams, data.numel(), args.steps, args.batch, SEQ), flush=True)
    t0, c0 = time.time(), time.process_time()
    ema = None
    for step in range(args.steps):
        off = torch.randint(0, data.numel() - SEQ - 1, (args.batch,), generator=g)
        x = torch.stack([data[o:o + SEQ + 1] for o in off.tolist()])
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        logits, _ = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 25 == 0 or step == args.steps - 1:
            print("step %4d loss %.4f (ema %.4f, ppl %.2f) lr %.2e wall %.0f s cpu %.0f s" % (
                step, loss.item(), ema, math.exp(ema), opt.param_groups[0]["lr"],
                time.time() - t0, time.process_time() - c0), flush=True)
    return model, nparams, time.time() - t0, time.process_time() - c0


def check_against_reference(model, heldout):
    """Float64 golden reference forward on the exported weights vs the module."""
    w64 = {k: v.double() for k, v in model.hf_state_dict().items()}
    ids = torch.tensor(list(heldout[:2 * SEQ]), dtype=torch.long).view(2, SEQ)
    ref = llama_ref.ref_forward(CONFIG, w64, ids)
    with torch.no_grad():
        logits, _ = model(ids)
    err = ((logits.double() - ref["logits"]).abs().max() / ref["logits"].abs().max()).item()
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1),
                          reduction="none").view(2, -1).mean(1).double()
    nerr = (nll - ref["nll"]).abs().max().item()
    print("check: module vs float64 reference: max rel logits err %.2e, max nll diff %.2e" % (
        err, nerr), flush=True)
    assert err < 1e-4 and nerr < 1e-4, "training module disagrees with the reference"
    return err


def export(model, outdir, info):
    os.makedirs(outdir, exist_ok=True)
    sd = {k: v.detach().float().contiguous() for k, v in model.hf_state_dict().items()}
    stio.write(os.path.join(outdir, "model.safetensors"), sd, {"format": "pt"})
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(outdir, "generation_config.json"), "w") as f:
        json.dump({"_from_model_config": True, "bos_token_id": CONFIG["bos_token_id"],
                   "eos_token_id": CONFIG["eos_token_id"], "do_sample": False,
                   "max_length": CONFIG["max_position_embeddings"],
                   "transformers_version": CONFIG["transformers_version"]}, f, indent=2,
                  sort_keys=True)
        f.write("\n")
    with open(os.path.join(outdir, "README.md"), "w") as f:
        f.write(model_card(info))


def model_card(i):
    c = CONFIG
    ppl_rows = "\n".join("| %s | %d | %.3f |" % (k, v[1], v[0]) for k, v in i["ppl"].items())
    return """# fedprune demo model: byte-level Llama, %(np)s parameters

A tiny Hugging Face `LlamaForCausalLM` trained from scratch on English text that Debian
ships (licences, copyright files, man pages, package READMEs/changelogs). It exists so
fedprune can be demonstrated and tested end to end on a laptop: prune it with the three
non-IID client shards in `deploy/demo/data/` and measure perplexity on `heldout.txt`.
It is not useful for anything else.

## Architecture

| field | value |
|---|---|
| architecture | LlamaForCausalLM (pre-norm RMSNorm, RoPE rotate_half, GQA, SwiGLU) |
| vocab | 256: token id = raw byte value (no tokenizer, no BOS/EOS in the data; ids 2/3 are nominal) |
| hidden_size / intermediate_size | %(hs)d / %(it)d |
| layers / heads / kv heads / head_dim | %(nl)d / %(nh)d / %(nkv)d / %(hd)d |
| max_position_embeddings | %(mp)d |
| rope_theta / rms_norm_eps | %(theta)g / %(eps)g |
| tie_word_embeddings | false (separate `lm_head.weight`) |
| parameters | %(np)s (%(mb).2f MiB as F32 `model.safetensors`) |

## Training

* Data: the pre-training pool built by `train_demo.py`: %(pool)d bytes of Debian text from all
  three sources, disjoint by file from the client shards and the held-out set (see
  `deploy/demo/SOURCES.md`).
* Objective: next-byte cross-entropy on random %(seq)d-byte windows, batch %(batch)d,
  %(steps)d steps (%(tokens).2f M tokens), AdamW (lr %(lr)g, betas 0.9/0.95, weight decay 0.1
  on matrices), %(warm)d warm-up steps then cosine to 10%%, gradient clipping 1.0, float32,
  CPU with 2 threads, seed %(seed)d, `torch.use_deterministic_algorithms(True)`.
* Training time: %(ttime).0f s wall clock, %(tcpu).0f s CPU (2 threads), on the shared 2-core
  build machine (5-minute load average %(load).1f at the end; torch %(tv)s).
* The training module (`tests/numeric/llama_ref.LlamaModule`) was checked against the float64
  golden reference forward (`llama_ref.ref_forward`) on the exported weights: max relative
  logits error %(cerr).1e.

## Perplexity

Non-overlapping %(seq)d-byte windows (tail dropped), no BOS, ppl = exp(mean over windows of the
mean next-token cross-entropy), as in the FedPrLLM / Wanda evaluation. A uniform model scores 256.

| text | windows | perplexity |
|---|---|---|
%(rows)s

**Held-out perplexity: %(held).3f** (uniform: 256).

## Reproduce

```
/usr/bin/python3 deploy/demo/train_demo.py
```

This rebuilds `deploy/demo/data/` and `deploy/demo/model/` from the files installed on the
machine; the result is bit-identical on the same machine and package set.
""" % {
        "np": "{:,}".format(i["nparams"]), "hs": c["hidden_size"], "it": c["intermediate_size"],
        "nl": c["num_hidden_layers"], "nh": c["num_attention_heads"],
        "nkv": c["num_key_value_heads"], "hd": c["head_dim"],
        "mp": c["max_position_embeddings"], "theta": c["rope_theta"], "eps": c["rms_norm_eps"],
        "mb": i["nparams"] * 4 / 2**20, "pool": i["pool"], "seq": SEQ, "batch": i["batch"],
        "steps": i["steps"], "tokens": i["steps"] * i["batch"] * SEQ / 1e6, "lr": i["lr"],
        "warm": i["warmup"], "seed": i["seed"], "ttime": i["ttime"], "tcpu": i["tcpu"], "load": i["load"], "tv": torch.__version__,
        "cerr": i["cerr"], "rows": ppl_rows, "held": i["ppl"]["heldout"][0],
    }


def main():
    ap = argparse.ArgumentParser(description="Build the demo data and train the demo model.")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-only", action="store_true", help="only rebuild deploy/demo/data")
    ap.add_argument("--eval-windows", type=int, default=0,
                    help="cap every perplexity evaluation at this many windows (smoke runs)")
    ap.add_argument("--out", default=os.path.join(HERE, "model"), help="model output directory")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t_all = time.time()
    default_out = os.path.abspath(args.out) == os.path.join(HERE, "model")
    blobs, summary, _ = build_data(args.seed, os.path.join(HERE, "data"), write_sources_md=True)
    if args.data_only:
        return 0
    model, nparams, ttime, tcpu = train(blobs["pool"], args)
    model.eval()
    cerr = check_against_reference(model, blobs["heldout"])
    ppl = {}
    cap = args.eval_windows or 200
    ppl["heldout"] = window_ppl(model, blobs["heldout"], max_windows=args.eval_windows or None)
    for name in ("client1", "client2", "client3"):
        ppl["%s (first %d windows)" % (name, cap)] = window_ppl(model, blobs[name], max_windows=cap)
    ppl["pool (train, first %d windows)" % cap] = window_ppl(model, blobs["pool"], max_windows=cap)
    for k, (p, n) in ppl.items():
        print("ppl %-32s %8.3f over %d windows (uniform 256)" % (k, p, n), flush=True)
    info = {"nparams": nparams, "pool": len(blobs["pool"]), "batch": args.batch,
            "steps": args.steps, "lr": args.lr, "warmup": args.warmup, "seed": args.seed,
            "ttime": ttime, "tcpu": tcpu, "load": os.getloadavg()[1], "cerr": cerr, "ppl": ppl}
    export(model, args.out, info)
    print("wrote %s%s; total %.0f s" % (args.out, "" if default_out else " (non-default)",
                                        time.time() - t_all), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
