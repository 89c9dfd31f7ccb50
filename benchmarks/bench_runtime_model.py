"""The runtime model (``peerlearn.world.runtime``) against the distributed engine's measured exchange times.

Real processes over gloo on 127.0.0.1 (``bench_distributed.measure``: one node per rank, the engine's ``Comm``
calls). The model's two link constants are fitted on ring gossip alone: a ring gossip round sends two messages
of M bytes per rank, so its time at two sizes gives the per-message latency ``a`` and the bandwidth ``B``
(``t = a + 2 M / B``). With them the model predicts a ring all-reduce's time, ``2 (n - 1) a + 2 (n - 1) / n M / B``,
which is then measured. Prints the fit and, per model size, predicted against measured.

    .venv/bin/python benchmarks/bench_runtime_model.py [--ranks 4] [--sizes 100000 300000 1000000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from bench_distributed import measure  # noqa: E402

from peerlearn.world.runtime import ring_all_reduce_s  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    load = os.getloadavg()
    print(f"{args.ranks} ranks of 1 thread each, median of {args.rounds} rounds, slowest rank; {os.cpu_count()} cores, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    runs = {p: measure(args.ranks, p, args.rounds, args.warmup) for p in args.sizes}
    nbytes = np.array([4.0 * p for p in args.sizes])
    gossip = np.array([runs[p]["ring gossip (mix)"] for p in args.sizes])
    slope, latency = np.polyfit(2 * nbytes, gossip, 1)  # t = a + (2 M) / B
    bandwidth = 1 / slope
    print(f"fitted on ring gossip: latency {latency * 1e3:.2f} ms per message, bandwidth {bandwidth / 1e9:.2f} GB/s\n")
    print("| parameters | ring gossip ms | all-reduce predicted ms | all-reduce measured ms | measured / predicted |")
    print("|---|---|---|---|---|")
    for p, m, g in zip(args.sizes, nbytes, gossip):
        predicted = ring_all_reduce_s(args.ranks, m, bandwidth, max(latency, 0.0))
        measured = runs[p]["all-reduce (engine)"]
        print(f"| {p:,} | {g * 1e3:.1f} | {predicted * 1e3:.1f} | {measured * 1e3:.1f} | {measured / predicted:.2f} |")


if __name__ == "__main__":
    main()
