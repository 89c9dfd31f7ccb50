"""Events per second of the asynchronous engine with training (engines/async_engine.py).

An event is one node update: a waking node's local steps (async push-sum, async local SGD) or a
receiver's merge and local steps (gossip learning), with its messages. Synthetic data, an MLP
(20-32-4, 804 parameters), 1 local step of batch 16, a random 8-regular graph, log-normal node
speeds (sigma 0.5), 4 slices per round. The synchronous D-SGD engine on the same setup is the
reference (one event = one node's round). Rounds 2..R-1 are timed (no evaluation inside).

    .venv/bin/python benchmarks/bench_async_engine.py [--nodes 1000 10000] [--rounds 12]
"""

from __future__ import annotations

import argparse
import time

import torch

from peerlearn.config import parse_config
from peerlearn.build import build
from peerlearn.engines import simulate


def measure(name: str, n: int, rounds: int) -> tuple[float, float]:
    cfg = parse_config({
        "seed": 0, "num_nodes": n, "num_rounds": rounds, "eval_every": rounds,
        "topology": {"graph": "random_regular", "degree": 8},
        "data": {"dataset": "synthetic", "num_samples": 20 * n, "test_samples": 500},
        "model": {"name": "mlp", "hidden": [32]},
        "algorithm": {"name": name, "lr": 0.05, "batch_size": 16,
                      **({"outer_lr": 1.0, "outer_momentum": 0.0} if name == "async_local_sgd" else {})},
        "clock": {"speed_sigma": 0.5}})
    built = build(cfg)
    marks: dict[int, tuple[float, int]] = {}

    def on_round(round_: int, _row: dict) -> None:
        marks[round_] = (time.perf_counter(), int(built.batches.drawn_N.sum()))

    simulate(built, on_round=on_round)
    (t0, e0), (t1, e1) = marks[1], marks[rounds - 1]
    return (e1 - e0) / (t1 - t0), (e1 - e0) / (rounds - 2) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--algorithms", nargs="+", default=["gossip_learning", "async_push_sum", "async_local_sgd",
                                                              "dsgd"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("| N | algorithm | events per node per round | events/s |")
    print("|---|---|---|---|")
    for n in args.nodes:
        for name in args.algorithms:
            rate, per_node = measure(name, n, args.rounds)
            print(f"| {n:,} | {name} | {per_node:.2f} | {rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
