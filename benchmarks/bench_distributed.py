"""Per-round exchange time of the distributed engine: ring gossip vs all-reduce, 2-8 ranks on one machine.

Each rank hosts one node with a 1M-parameter float32 model (4 MB). A "round" is one call of the
engine's ``Comm`` primitive, as an algorithm makes it:

- ring gossip: ``DistComm.mix`` on a ring with Metropolis-Hastings weights (each rank sends its row
  to its two neighbours and receives theirs: 8 MB out per rank, whatever the number of ranks);
- all-reduce: ``DistComm.all_reduce_mean`` (gloo's ring all-reduce of the rows' sum, then divided by the
  number of live nodes: 2 (n-1)/n x 4 MB out per rank);
- raw all-reduce: gloo's float32 all-reduce on the same 4 MB, for scale.

Ranks are real processes over gloo on 127.0.0.1 (a TCP store, the engine's ``Group``); every rank
times ``--rounds`` rounds after ``--warmup`` and the slowest rank's median is reported.

    .venv/bin/python benchmarks/bench_distributed.py [--ranks 2 4 6 8] [--params 1000000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank: int, world: int, port: int, params: int, rounds: int, warmup: int, queue) -> None:
    from peerlearn.engines.distributed import DistComm, node_blocks
    from peerlearn.engines.membership import Group
    from peerlearn.topology import metropolis_hastings_weights
    from peerlearn.topology.graphs import cycle_graph

    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, datetime.timedelta(seconds=120))
    comm = DistComm(node_blocks(world, world), Group(store, list(range(world)), rank, 120))
    comm.set_topology(metropolis_hastings_weights(cycle_graph(world)))
    x = torch.randn(1, params, generator=torch.Generator().manual_seed(rank))
    flat = x[0].clone()
    ops = {"ring gossip (mix)": lambda: comm.mix(x), "all-reduce (engine)": lambda: comm.all_reduce_mean(x),
           "raw gloo all-reduce (float32)": lambda: comm.group.all_reduce(flat)}
    out = {}
    for name, op in ops.items():
        times = []
        for i in range(warmup + rounds):
            comm.group.barrier()
            t = time.perf_counter()
            op()
            if i >= warmup:
                times.append(time.perf_counter() - t)
        out[name] = statistics.median(times)
    queue.put((rank, out))
    comm.group.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world: int, params: int, rounds: int, warmup: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, params, rounds, warmup, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
        if p.is_alive():
            p.kill()
    return {name: max(r[1][name] for r in results) for name in results[0][1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 6, 8])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"{args.params:,} float32 parameters per rank, median of {args.rounds} rounds, slowest rank; "
          f"{os.cpu_count()} cores")
    print("| ranks | ring gossip ms | all-reduce ms (engine) | raw gloo all-reduce ms | all-reduce / ring |")
    print("|---|---|---|---|---|")
    for world in args.ranks:
        t = measure(world, args.params, args.rounds, args.warmup)
        ring, red, raw = (t[k] * 1e3 for k in ("ring gossip (mix)", "all-reduce (engine)",
                                               "raw gloo all-reduce (float32)"))
        print(f"| {world} | {ring:.1f} | {red:.1f} | {raw:.1f} | {red / ring:.2f} |", flush=True)


if __name__ == "__main__":
    main()
