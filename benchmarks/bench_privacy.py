"""Cost of privacy noise per D-SGD round (privacy/gaussian.py), against the plain round.

Synthetic data, an MLP (20-64-4, 1,604 parameters), 1 local step of batch 16, a random 8-regular
graph (4N undirected pairs). Variants: plain D-SGD; clipping + independent noise (N x P normal draws);
+ pairwise-cancelling noise (4N x P more draws, scattered to both ends of each pair). Rounds 2..R-1
are timed (no evaluation inside); the accountant's one-off set-up (Opacus import, the noise
covariance's diagonal inverse) happens in round 1 and is reported separately.

    .venv/bin/python benchmarks/bench_privacy.py [--nodes 1000 4000] [--rounds 12]
"""

from __future__ import annotations

import argparse
import time

import torch

from peerlearn.config import parse_config
from peerlearn.build import build
from peerlearn.engines import simulate

VARIANTS = {"plain": {}, "independent": {"clip": 1.0, "noise_multiplier": 1.0},
            "independent + pairwise": {"clip": 1.0, "noise_multiplier": 0.3, "pairwise_multiplier": 0.5}}


def measure(privacy: dict, n: int, rounds: int) -> tuple[float, float]:
    """(seconds per round, seconds of round 1)."""
    cfg = parse_config({
        "seed": 0, "num_nodes": n, "num_rounds": rounds, "eval_every": rounds,
        "topology": {"graph": "random_regular", "degree": 8},
        "data": {"dataset": "synthetic", "num_samples": 20 * n, "test_samples": 500},
        "model": {"name": "mlp", "hidden": [64]},
        "algorithm": {"name": "dsgd", "lr": 0.05, "batch_size": 16}, "privacy": privacy})
    built = build(cfg)
    marks: dict[int, float] = {}
    start = time.perf_counter()
    simulate(built, on_round=lambda r, _row: marks.setdefault(r, time.perf_counter()))
    return (marks[rounds - 1] - marks[1]) / (rounds - 2), marks[1] - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'nodes':>6} {'variant':>24} {'ms/round':>9} {'x plain':>8} {'round 1 s':>10}")
    for n in args.nodes:
        base = None
        for name, privacy in VARIANTS.items():
            per_round, first = measure(privacy, n, args.rounds)
            base = base or per_round
            print(f"{n:>6} {name:>24} {1e3 * per_round:>9.1f} {per_round / base:>8.2f} {first:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
