"""Seconds per simulator round against N, with glibc's allocator as it comes and with freed memory kept
(:func:`peerlearn.resources.keep_freed_memory`), interleaved in one process.

One round = D-SGD on a ring (Metropolis-Hastings), one local SGD step (batch 16) per node on synthetic
digits-shaped data (64 features, 10 classes), the model's gradient by the path ``auto`` picks. Rounds
are timed through :func:`peerlearn.engines.simulate` without evaluation rows in between (``eval_every``
above the rounds timed), best of three windows per mode.

Usage: ``.venv/bin/python benchmarks/bench_round.py [--threads 1] [--nodes 64,1024,4096,16384]``
"""

from __future__ import annotations

import argparse
import time

import torch

from _setup import set_threads
from peerlearn.build import build
from peerlearn.config import parse_config
from peerlearn.engines import simulate
from peerlearn.resources import keep_freed_memory

MODELS = {"mlp 64-64-10": ([64], 16384), "mlp 64-256-256-10": ([256, 256], 1024)}  # hidden, largest N timed


def seconds_per_round(num_nodes: int, hidden: list[int], rounds: int) -> float:
    cfg = parse_config({"num_nodes": num_nodes, "num_rounds": rounds, "eval_every": rounds, "seed": 0,
                        "topology": {"graph": "ring"},
                        "data": {"dataset": "synthetic", "num_samples": max(4096, 32 * num_nodes),
                                 "num_features": 64, "num_classes": 10, "test_samples": 64},
                        "model": {"name": "mlp", "hidden": hidden},
                        "algorithm": {"name": "dsgd", "lr": 0.05, "batch_size": 16},
                        "divergence": {"enabled": False}})
    built = build(cfg)
    times = []

    def on_round(round_, _row):
        times.append(time.perf_counter())

    simulate(built, on_round=on_round)
    steps = [b - a for a, b in zip(times[:-2], times[1:-1])]  # the last round evaluates: left out
    return min(sum(steps[i:i + 3]) / 3 for i in range(0, len(steps) - 2, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nodes", default="64,1024,4096,16384")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    print(set_threads(args.threads))
    print("| model | N | s/round, glibc default | s/round, freed memory kept | speed-up |")
    print("|---|---|---|---|---|")
    for label, (hidden, largest) in MODELS.items():
        for n in (int(v) for v in args.nodes.split(",")):
            if n > largest:  # the wide model stops where its rounds take minutes
                continue
            got = {}
            for mode in ("system", "kept", "system", "kept"):  # interleaved: both see the same machine
                keep_freed_memory(mode == "kept")
                got.setdefault(mode, []).append(seconds_per_round(n, hidden, args.rounds))
            system, kept = min(got["system"]), min(got["kept"])
            print(f"| {label} | {n} | {system:.4f} | {kept:.4f} | {system / kept:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
