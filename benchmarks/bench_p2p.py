"""The p2p engine's transport and scale on this machine (issue 40).

1. **Messages between two peers on loopback**: two :class:`~peerlearn.engines.p2p.swarm.Swarm` peers (real
   libp2p daemons, encrypted channels); peer A sends B messages of 64 KiB to 64 MiB of float32 rows, one at a
   time (each a new stream: what an exchange does), and the messages per second and MB/s are timed from the
   first send to the last arrival. The same tensors go through a ``torch.distributed`` gloo send/recv
   between two processes on 127.0.0.1 (plaintext, one persistent connection) for comparison.
2. **A swarm's peak memory**: ``peerlearn run quickstart --engine p2p --nproc 4``, the largest peak RSS of
   its processes.
3. **The largest swarm**: the quickstart with one node per peer and K peers, K = 8, 16, 32, ... until one
   fails or takes longer than ``--max-s``; wall time of each.

Usage: ``python benchmarks/bench_p2p.py [--quick]``; prints the tables with the thread count and the load
average (this machine is shared).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SIZES_KIB = [64, 1024, 16 * 1024, 64 * 1024]


def p2p_rates(sizes_kib: list[int], seconds: float) -> list[tuple[int, float, float]]:
    from peerlearn.engines.p2p.swarm import Admission, Swarm

    out = []
    for kib in sizes_kib:
        p = kib * 1024 // 4
        run = f"bench-{kib}"
        a = Swarm(run, Admission(run, b"s" * 32), p, 1)
        b = Swarm(run, Admission(run, b"s" * 32), p, 1, initial_peers=a.maddrs())
        row = torch.ones(1, p)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or count < 3:
            count += 1
            a.send_soon({b.peer_id: ({"round": count, "call": 0, "nodes": [0]}, row)}, 60.0).result(120)
            b.inbox.wait((count, 0), {a.peer_id}, time.monotonic() + 60)
        elapsed = time.perf_counter() - start
        out.append((kib, count / elapsed, count * kib / 1024 / elapsed))
        a.close()
        b.close()
    return out


def _gloo_worker(rank: int, port: int, sizes_kib: list[int], seconds: float, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    for kib in sizes_kib:
        t = torch.ones(kib * 1024 // 4)
        count, start = 0, time.perf_counter()
        while True:
            go = torch.tensor([1 if time.perf_counter() - start < seconds or count < 3 else 0])
            dist.broadcast(go, 0)
            if not int(go):
                break
            if rank == 0:
                dist.send(t, 1)
            else:
                dist.recv(t, 0)
            count += 1
        dist.barrier()
        if rank == 0:
            elapsed = time.perf_counter() - start
            results.append((kib, count / elapsed, count * kib / 1024 / elapsed))
    dist.destroy_process_group()


def gloo_rates(sizes_kib: list[int], seconds: float) -> list[tuple[int, float, float]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.list()
        mp.spawn(_gloo_worker, args=(port, sizes_kib, seconds, results), nprocs=2)
        return list(results)


def swarm(k: int, nodes: int, rounds: int, timeout_s: float) -> tuple[bool, float, float]:
    """``(completed, wall seconds, largest peak RSS of one process in MiB)`` of a K-peer quickstart swarm (run
    under a wrapper process, so that only the swarm's processes count towards the peak)."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "peerlearn", "run", "quickstart", "--engine", "p2p", "--nproc", str(k), "--set",
                f"num_nodes={nodes}", "--set", f"num_rounds={rounds}", "--set", "eval_every=10", "--out",
                f"{tmp}/swarm", "--quiet"]
        wrapper = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
                   "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", wrapper, *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout_s)
            code, peak_kib = (int(v) for v in out.split()[-2:])
        except (subprocess.TimeoutExpired, ValueError):
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every peer with it
            proc.wait()
            code, peak_kib = 1, 0
        return code == 0, time.perf_counter() - start, peak_kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two sizes, 4 and 8 peers")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per message size")
    parser.add_argument("--max-s", type=float, default=240.0, help="give up on a swarm size after this long")
    args = parser.parse_args()
    sizes = SIZES_KIB[:2] if args.quick else SIZES_KIB
    print(f"threads {torch.get_num_threads()}, cores {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    print("\n| message | p2p msg/s | p2p MB/s | gloo msg/s | gloo MB/s |\n|---|---|---|---|---|")
    for (kib, m1, mb1), (_, m2, mb2) in zip(p2p_rates(sizes, args.seconds), gloo_rates(sizes, args.seconds)):
        label = f"{kib} KiB" if kib < 1024 else f"{kib // 1024} MiB"
        print(f"| {label} | {m1:.1f} | {mb1:.1f} | {m2:.1f} | {mb2:.1f} |", flush=True)
    ok, wall, peak = swarm(4, 16, 100, args.max_s)
    print(f"\nquickstart, 16 nodes on 4 peers, 100 rounds: {'completed' if ok else 'FAILED'} in {wall:.1f} s; "
          f"largest peak RSS of a process {peak:.0f} MiB")
    print("\n| peers (1 node each) | 30 rounds | wall s |\n|---|---|---|")
    for k in ([4, 8] if args.quick else [8, 16, 32, 64]):
        ok, wall, _ = swarm(k, k, 30, args.max_s)
        print(f"| {k} | {'completed' if ok else 'failed or over ' + str(int(args.max_s)) + ' s'} | {wall:.1f} |",
              flush=True)
        if not ok:
            break
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
