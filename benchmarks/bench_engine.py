"""Node-steps per second and peak memory vs N: batched engine vs a plain per-node loop.

One D-SGD round = one local SGD step per node (batch 16) + ring gossip (Metropolis-Hastings).
- batched: peerlearn's simulator parts (params_NP, vmap gradients, sparse gossip);
- loop:    N ``nn.Module``s, each with its own ``torch.optim.SGD``, gossip by a Python loop
           over ``parameters_to_vector`` copies.
Throughput is the best of 3 one-second windows. Same model, same data (synthetic, digits-shaped: 64 features, 10 classes, IID; digits has too
few samples for 4,096 nodes). Each (engine, N) runs in a fresh subprocess so its peak
RSS is its own.

    python benchmarks/bench_engine.py                      # full grid, prints a Markdown table
    python benchmarks/bench_engine.py --nodes 16 256 --models mlp
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _config(model: str, n: int):
    from peerlearn.config import parse_config

    hidden = {"mlp": [64], "mlp_wide": [256, 256]}[model]
    data = {"dataset": "synthetic", "num_features": 64, "num_classes": 10, "num_samples": 10 * n + 2000,
            "partition": "iid"}
    return parse_config({"num_nodes": n, "seed": 0, "data": data,
                         "model": {"name": "mlp", "hidden": hidden},
                         "algorithm": {"name": "dsgd", "lr": 0.05, "batch_size": 16}})


def measure(engine: str, model: str, n: int, min_seconds: float = 1.0, repeats: int = 3) -> dict:
    import torch

    from peerlearn.build import build
    from peerlearn.engines.comm import SimComm

    b = build(_config(model, n))
    if engine == "batched":
        comm, params = SimComm(b.W), b.params_NP.clone()
        state = b.algorithm.init(params)

        def round_():
            nonlocal params, state
            params, state, _ = b.algorithm.step(state, params, b.batches, b.grad_fn, comm)
    else:
        from torch.nn.utils import parameters_to_vector, vector_to_parameters

        import copy
        modules = [b.flat.load_into(copy.deepcopy(b.flat.module), b.params_NP[i]) for i in range(n)]
        opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in modules]
        W = b.W.tocsr()

        def round_():
            x, y = b.batches.next()
            for i, (m, opt) in enumerate(zip(modules, opts)):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(m(x[i]), y[i]).backward()
                opt.step()
            with torch.no_grad():
                vecs = [parameters_to_vector(m.parameters()) for m in modules]
                for i, m in enumerate(modules):
                    lo, hi = W.indptr[i], W.indptr[i + 1]
                    mixed = sum(float(w) * vecs[j] for j, w in zip(W.indices[lo:hi], W.data[lo:hi]))
                    vector_to_parameters(mixed, m.parameters())

    round_()  # warm-up
    best = float("inf")  # seconds per round: the best of `repeats` windows (the machine is shared and noisy)
    for _ in range(repeats):
        rounds, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds or rounds < 2:
            round_()
            rounds += 1
        best = min(best, (time.perf_counter() - start) / rounds)
    return {"engine": engine, "model": model, "nodes": n, "params": b.flat.num_params,
            "node_steps_per_s": n / best, "round_ms": 1000 * best,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[16, 64, 256, 1024, 4096])
    parser.add_argument("--models", nargs="+", default=["mlp", "mlp_wide"])
    parser.add_argument("--one", nargs=3, metavar=("ENGINE", "MODEL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], int(args.one[2]))))
        return
    print("| model (P) | N | batched node-steps/s | loop node-steps/s | speed-up | batched peak MB | loop peak MB |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models:
        for n in args.nodes:
            res = {}
            for engine in ("batched", "loop"):
                out = subprocess.run([sys.executable, __file__, "--one", engine, model, str(n)],
                                     capture_output=True, text=True, check=True)
                res[engine] = json.loads(out.stdout.strip().splitlines()[-1])
            bt, lp = res["batched"], res["loop"]
            print(f"| {model} ({bt['params']:,}) | {n} | {bt['node_steps_per_s']:,.0f} | {lp['node_steps_per_s']:,.0f} "
                  f"| {bt['node_steps_per_s'] / lp['node_steps_per_s']:.1f}x | {bt['peak_rss_mb']:,.0f} "
                  f"| {lp['peak_rss_mb']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
