#!/usr/bin/python3
"""PyTorch side of bench_select (issue 4): Wanda scoring + per-row mask selection as the
reference does it (fedprllm.md 3.2-3.3):

    metric = |W| * sqrt(scaler_row)
    idx = torch.sort(metric, dim=-1, stable=True).indices[:, :k]     k = int(cols * s)
    mask = zeros(bool); mask.scatter_(1, idx, True)

Reads NAME.w.f32 (rows x cols) and NAME.s.f32 (cols) from --dir for every NAME:ROWS:COLS
argument, times all matrices --reps times with torch.set_num_threads(--threads) and prints
"result torch_median_s=SECONDS" (wall) and "result torch_cpu_median_s=SECONDS" (CPU time of
the process, all threads). After timing, writes each mask bit-packed like fedprune's
(row-major, LSB first) to NAME.torch.mask so the caller can compare bit for bit.
Run with /usr/bin/python3 (the interpreter with torch).
"""
import argparse
import statistics
import time

import numpy as np
import torch


def select(w, s, sparsity):
    metric = torch.abs(w) * torch.sqrt(s.reshape(1, -1))
    k = int(w.shape[1] * sparsity)
    idx = torch.sort(metric, dim=-1, stable=True)[1][:, :k]
    mask = torch.zeros_like(metric, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("mats", nargs="+", help="NAME:ROWS:COLS")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    mats = []
    for spec in a.mats:
        name, rows, cols = spec.split(":")
        rows, cols = int(rows), int(cols)
        w = np.fromfile(f"{a.dir}/{name}.w.f32", dtype=np.float32).reshape(rows, cols)
        s = np.fromfile(f"{a.dir}/{name}.s.f32", dtype=np.float32)
        mats.append((name, torch.from_numpy(w), torch.from_numpy(s)))
    times, cpus = [], []
    masks = None
    for _ in range(a.reps):
        masks = []
        t0, c0 = time.perf_counter(), time.process_time()
        for name, w, s in mats:
            masks.append(select(w, s, a.sparsity))
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"reps {', '.join(f'{t:.3f}' for t in times)} s")
    for (name, _, _), m in zip(mats, masks):
        bits = np.packbits(m.numpy().reshape(-1), bitorder="little")
        bits.tofile(f"{a.dir}/{name}.torch.mask")
    print(f"result torch_median_s={statistics.median(times):.6f}")
    print(f"result torch_cpu_median_s={statistics.median(cpus):.6f}")


if __name__ == "__main__":
    main()
