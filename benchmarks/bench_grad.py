"""Gradient paths against each other and against this machine's matrix-multiply roof, in one process.

For each dense model shape and node count: seconds per batched gradient call of every node (batch 16) with
the closed form (``dense``), ``vmap`` and, for reference, the square ``torch.mm`` rate and the batched
``bmm`` rate at the model's own shapes, all measured interleaved in this process (the machine is shared:
ratios from one run, not absolute numbers across runs). FLOPs of one gradient call: forward ``2 N B sum(in*out)``
plus backward ``4 N B sum(in*out)`` less the first layer's input gradient (``2 N B in_1 out_1``), which
nobody needs.

Usage: ``.venv/bin/python benchmarks/bench_grad.py [--threads 1] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import time

import torch

from _setup import set_threads
from peerlearn.models.functional import FlatModel, make_grad_fn
from peerlearn.models.nets import MLP, LogisticRegression

SHAPES = [  # (label, module factory, input width, classes, node counts)
    ("logreg 784-62", lambda: LogisticRegression((784,), 62), 784, 62, [64, 256]),
    ("mlp 64-64-10", lambda: MLP((64,), 10, (64,)), 64, 10, [64, 256, 1024]),
    ("mlp 64-256-256-10", lambda: MLP((64,), 10, (256, 256)), 64, 10, [64, 256]),
]
BATCH = 16


def best_time(fn, repeats: int, min_s: float = 0.2) -> float:
    """Best over ``repeats`` windows of the mean seconds per call (each window at least ``min_s``)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_s:
                break
        best = min(best, elapsed / calls)
    return best


def gradient_flops(layout: list[tuple[int, int]], num_nodes: int) -> float:
    macs = sum(i * o for i, o in layout)
    return num_nodes * BATCH * (6 * macs - 2 * layout[0][0] * layout[0][1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(set_threads(args.threads))
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    mm_s = best_time(lambda: torch.mm(a, b), args.repeats)
    mm_rate = 2 * 1024 ** 3 / mm_s
    print(f"square mm roof (1024^3, fp32): {mm_rate / 1e9:.1f} GFLOP/s")
    print("| model | N | dense ms | vmap ms | dense / vmap speed | dense GFLOP/s | % of mm roof | "
          "% of its bmm roof |")
    print("|---|---|---|---|---|---|---|---|")
    from peerlearn.models.dense import dense_layout

    for label, make, width, classes, counts in SHAPES:
        module = make()
        flat, layout = FlatModel(module), dense_layout(module)
        for n in counts:
            params = flat.init_params(n, seed=0, same_init=False)
            x = torch.randn(n, BATCH, width)
            y = torch.randint(0, classes, (n, BATCH))
            dense, vmapped = make_grad_fn(flat, "dense"), make_grad_fn(flat, "vmap")
            t_dense, t_vmap = [], []
            for _ in range(2):  # interleaved: both see the same machine
                t_dense.append(best_time(lambda: dense(params, (x, y)), args.repeats))
                t_vmap.append(best_time(lambda: vmapped(params, (x, y)), args.repeats))
            # the bmm roof at this model's own shapes: the forward products alone, timed bare
            hs = [torch.randn(n, BATCH, i) for i, _ in layout]
            ws = [torch.randn(n, o, i) for i, o in layout]
            bmm_s = best_time(lambda: [torch.bmm(h, w.transpose(1, 2)) for h, w in zip(hs, ws)], args.repeats)
            bmm_rate = 2 * n * BATCH * sum(i * o for i, o in layout) / bmm_s
            flops = gradient_flops(layout, n)
            td, tv = min(t_dense), min(t_vmap)
            print(f"| {label} | {n} | {td * 1e3:.2f} | {tv * 1e3:.2f} | {tv / td:.2f}x | {flops / td / 1e9:.1f} | "
                  f"{100 * flops / td / mm_rate:.0f}% | {100 * flops / td / bmm_rate:.0f}% |")


if __name__ == "__main__":
    main()
