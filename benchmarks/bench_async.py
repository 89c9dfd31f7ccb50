"""Events per second of the asynchronous pairwise-gossip engine (engines/async_gossip.py).

An event is one pairwise exchange (two rows averaged). Nodes wake on Poisson clocks with a
1-second mean period on a random 8-regular graph; slices of 0.1 s batch about N/10 wake-ups.
Best of three runs per (N, P).

    .venv/bin/python benchmarks/bench_async.py [--nodes 1000 10000] [--params 1000 10000]
"""

from __future__ import annotations

import argparse
import time

import torch

from peerlearn.engines.async_gossip import pairwise_gossip
from peerlearn.topology import random_graphs


def measure(n: int, p: int, duration_s: float = 20.0, repeats: int = 3) -> tuple[float, int]:
    adj = random_graphs.random_regular_graph(n, 8, seed=0)
    x = torch.randn(n, p)
    best = 0.0
    for r in range(repeats):
        start = time.perf_counter()
        _, trace = pairwise_gossip(x, adj, duration_s=duration_s, slice_s=0.1, seed=r, record_every=10**9)
        best = max(best, trace.exchanges / (time.perf_counter() - start))
    return best, trace.exchanges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--params", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("| N | P | exchanges per run | exchanges/s | node-updates/s |")
    print("|---|---|---|---|---|")
    for n in args.nodes:
        for p in args.params:
            rate, count = measure(n, p)
            print(f"| {n:,} | {p:,} | {count:,} | {rate:,.0f} | {2 * rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
