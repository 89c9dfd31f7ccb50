"""Seconds per simulator round against N on a ring, a random 8-regular graph and a complete graph.

One round = D-SGD (Metropolis-Hastings weights), one local SGD step (batch 16) per node, MLP 64-64-10 on
synthetic digits-shaped data (64 features, 10 classes), freed memory kept as ``peerlearn run`` keeps it.
Rounds are timed through :func:`peerlearn.engines.simulate` without evaluation rows in between, best of
three 3-round windows; the build (graph, weights, data) is timed on its own.

Usage: ``.venv/bin/python benchmarks/bench_scaling.py [--threads 1] [--nodes 64,256,1024,4096,16384]``
"""

from __future__ import annotations

import argparse
import time

from _setup import set_threads
from peerlearn.build import build
from peerlearn.config import parse_config
from peerlearn.engines import simulate
from peerlearn.resources import keep_freed_memory

GRAPHS = {"ring": {"graph": "ring"}, "random 8-regular": {"graph": "random_regular", "degree": 8},
          "complete": {"graph": "complete"}}


def measure(num_nodes: int, topology: dict, rounds: int) -> tuple[float, float]:
    """(build seconds, seconds per round)."""
    cfg = parse_config({"num_nodes": num_nodes, "num_rounds": rounds, "eval_every": rounds, "seed": 0,
                        "topology": topology,
                        "data": {"dataset": "synthetic", "num_samples": max(4096, 32 * num_nodes),
                                 "num_features": 64, "num_classes": 10, "test_samples": 64},
                        "model": {"name": "mlp", "hidden": [64]},
                        "algorithm": {"name": "dsgd", "lr": 0.05, "batch_size": 16},
                        "divergence": {"enabled": False}})
    start = time.perf_counter()
    built = build(cfg)
    build_s = time.perf_counter() - start
    times = []
    simulate(built, on_round=lambda round_, _row: times.append(time.perf_counter()))
    steps = [b - a for a, b in zip(times[:-2], times[1:-1])]  # the last round evaluates: left out
    return build_s, min(sum(steps[i:i + 3]) / 3 for i in range(0, len(steps) - 2, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nodes", default="64,256,1024,4096,16384")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    print(set_threads(args.threads))
    keep_freed_memory(True)
    names = list(GRAPHS)
    print("| N | " + " | ".join(f"{g} s/round" for g in names) + " | complete / ring | complete build s |")
    print("|---|" + "---|" * (len(names) + 2))
    for n in (int(v) for v in args.nodes.split(",")):
        got = {g: measure(n, GRAPHS[g], args.rounds) for g in names}
        cells = " | ".join(f"{got[g][1]:.4f}" for g in names)
        ratio = got["complete"][1] / got["ring"][1]
        print(f"| {n:,} | {cells} | {ratio:.2f}x | {got['complete'][0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
