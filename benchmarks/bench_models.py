"""The larger models (ResNet, VGG-11, transformer): one batched gradient call of every node with ``vmap``
against the per-node ``loop``, interleaved in one process (ratios, not absolute numbers: the machine is
shared).

Usage: ``.venv/bin/python benchmarks/bench_models.py [--threads 1] [--nodes 16] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import time

import torch

from _setup import set_threads
from peerlearn.models import FlatModel, build_model, make_grad_fn

MODELS = [  # (label, name, keys, input shape, classes)
    ("ResNet-8 (CIFAR, GroupNorm)", "resnet", {"depth": 8}, (3, 32, 32), 10),
    ("ResNet-20 (CIFAR, GroupNorm)", "resnet", {"depth": 20}, (3, 32, 32), 10),
    ("VGG-11, width 16", "vgg11", {}, (3, 32, 32), 10),
    ("transformer d=64, 2 layers, 80 tokens", "transformer", {}, (80,), 95),
]
BATCH = 16


def seconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(set_threads(args.threads))
    print(f"| model | P | vmap s | loop s | loop speed-up ({args.nodes} nodes x batch {BATCH}) |")
    print("|---|---|---|---|---|")
    for label, name, keys, shape, classes in MODELS:
        flat = FlatModel(build_model(name, shape, classes, **keys))
        params = flat.init_params(args.nodes, seed=0, same_init=False)
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, classes, (args.nodes, BATCH, *shape), generator=g) if name == "transformer" else \
            torch.randn(args.nodes, BATCH, *shape, generator=g)
        y = torch.randint(0, classes, (args.nodes, BATCH), generator=g)
        vmapped, looped = make_grad_fn(flat, "vmap"), make_grad_fn(flat, "loop")
        t_vmap, t_loop = [], []
        for _ in range(2):  # interleaved: both see the same machine
            t_vmap.append(seconds(lambda: vmapped(params, (x, y)), args.repeats))
            t_loop.append(seconds(lambda: looped(params, (x, y)), args.repeats))
        v, lo = min(t_vmap), min(t_loop)
        print(f"| {label} | {flat.num_params:,} | {v:.2f} | {lo:.2f} | {v / lo:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
