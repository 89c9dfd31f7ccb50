"""The GPU check (issue 17): one command, a few minutes, one compact report of what peerlearn does on a GPU.

On a machine with CUDA it runs, on ``--device`` (default ``cuda``) against the CPU where it compares:

1. the quickstart on the GPU and on the CPU: the largest difference of ``acc_mean`` over the rows (the two
   agree to float tolerance, not bit for bit: the random streams are the same, the kernels round
   differently), and the ratio of their rounds per second;
2. the equivalences that matter, on the GPU: D-SGD on a complete graph with uniform weights = synchronous
   SGD (``centralized``); batched gradients (``dense``, ``vmap``) = one autograd call per node (``loop``); a
   run resumed from a checkpoint written to disk = the uninterrupted run, row for row;
3. ``dtype: bfloat16`` against ``float32`` on the quickstart (final accuracy of each);
4. the largest number of nodes that fits for logistic regression and for the 64-64-10 MLP (synthetic data,
   2 samples per node, a ring), with seconds per round and peak GPU memory at each size tried (targets on
   one H100/H200-class GPU: 10,000,000 and 1,000,000 nodes);
5. two distributed ranks (``--engine distributed --nproc 2``) on the GPU(s) reproducing the simulator.

Usage::

    python benchmarks/gpu_check.py                    # on a GPU machine, about 5 minutes
    python benchmarks/gpu_check.py --device cpu --quick   # the script itself, on any machine (small sizes)

Prints the report and writes it as JSON (``--out``, default ``gpu_check.json``); paste the printed report
into ``benchmarks/README.md`` with the GPU's name. A check that fails prints its error in its row and
the others still run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from peerlearn.build import build
from peerlearn.config import load_config, parse_config, to_dict
from peerlearn.engines import simulate
from peerlearn.report import snapshot_io

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "peerlearn" / "configs" / "quickstart.yaml"


def config(path: Path = QUICKSTART, **changes):
    """A bundled config with top-level and ``section.key`` changes."""
    data = to_dict(load_config(str(path), []))
    for key, value in changes.items():
        *sections, leaf = key.split("__")
        where = data
        for s in sections:
            where = where[s]
        where[leaf] = value
    return parse_config(data)


def timed_run(cfg, **callbacks):
    built = build(cfg)
    started = time.perf_counter()
    rows = simulate(built, **callbacks)
    if built.device.type == "cuda":
        torch.cuda.synchronize(built.device)
    return rows, time.perf_counter() - started


def check_quickstart(device: str, rounds: int) -> dict:
    cpu_rows, cpu_s = timed_run(config(num_rounds=rounds, device="cpu"))
    dev_rows, dev_s = timed_run(config(num_rounds=rounds, device=device))
    diff = max(abs(a["acc_mean"] - b["acc_mean"]) for a, b in zip(cpu_rows, dev_rows))
    return {"rounds": rounds, "acc_cpu": cpu_rows[-1]["acc_mean"], "acc_device": dev_rows[-1]["acc_mean"],
            "max_abs_acc_diff": diff, "rounds_per_s_cpu": rounds / cpu_s, "rounds_per_s_device": rounds / dev_s,
            "speedup": cpu_s / dev_s, "ok": diff < 0.02}


def check_complete_graph_is_synchronous_sgd(device: str) -> dict:
    finals = {}
    for name, changes in (("complete", {"topology__mixing": "uniform"}), ("centralized", {"algorithm__weighting": "uniform"})):
        kept = {}
        timed_run(config(ROOT / "peerlearn" / "configs" / f"{name}.yaml", num_rounds=50, device=device, **changes),
                  on_finish=lambda p: kept.update(p=p.detach().cpu()))
        finals[name] = kept["p"]
    diff = float((finals["complete"] - finals["centralized"]).abs().max())
    return {"max_abs_param_diff": diff, "ok": diff < 1e-3}  # float rounding over 50 rounds of lr 0.2


def check_batched_equals_per_node(device: str) -> dict:
    from peerlearn.models.base import MODELS
    from peerlearn.models.functional import FlatModel, make_grad_fn

    dev = torch.device(device)
    torch.manual_seed(0)
    out = {}
    for name, shape in (("mlp", (64,)), ("cnn", (1, 8, 8))):
        spec = MODELS.get(name)()
        flat = FlatModel(spec.build(shape, 10).to(dev))
        params = flat.init_params(8, seed=0, same_init=False).to(dev)
        batch = (torch.randn(8, 16, *shape, device=dev), torch.randint(0, 10, (8, 16), device=dev))
        loss_ref, ref = make_grad_fn(flat, "loop")(params, batch)
        for strategy in ("vmap",) + (("dense",) if name == "mlp" else ()):
            loss, grads = make_grad_fn(flat, strategy)(params, batch)
            out[f"{name}_{strategy}"] = float((grads - ref).abs().max())
    return {**out, "ok": all(v < 1e-4 for v in out.values())}


def check_resume(device: str) -> dict:
    cfg = config(num_rounds=40, eval_every=10, device=device)
    straight, _ = timed_run(cfg)
    saved = {}

    def keep(snapshot):
        if snapshot["round"] == 20:
            path = Path(tempfile.mkdtemp()) / "checkpoint.pt"
            snapshot_io.save(snapshot, path)  # through the disk, as --resume reads it
            saved["snap"] = snapshot_io.load(path)

    timed_run(cfg, on_checkpoint=keep)
    resumed, _ = timed_run(cfg, resume=saved["snap"])
    same = [a["acc_mean"] == b["acc_mean"] and a["loss_mean"] == b["loss_mean"]
            for a, b in zip(straight, resumed) if a["round"] > 20]
    return {"rows_compared": len(same), "identical": all(same), "ok": all(same) and len(same) > 0}


def check_bfloat16(device: str, rounds: int) -> dict:
    f32, s32 = timed_run(config(num_rounds=rounds, device=device))
    b16, s16 = timed_run(config(num_rounds=rounds, device=device, dtype="bfloat16"))
    return {"acc_float32": f32[-1]["acc_mean"], "acc_bfloat16": b16[-1]["acc_mean"], "s_float32": s32,
            "s_bfloat16": s16, "ok": abs(f32[-1]["acc_mean"] - b16[-1]["acc_mean"]) < 0.03}


def scale_config(n: int, model: str, device: str):
    features, classes = (10, 2) if model == "logreg" else (64, 10)
    return parse_config({
        "name": f"scale-{model}-{n}", "seed": 0, "num_nodes": n, "num_rounds": 3, "eval_every": 1000,
        "eval_nodes": min(n, 1000), "save_model": False, "device": device,
        "topology": {"graph": "ring", "mixing": "metropolis_hastings"},
        "data": {"dataset": "synthetic", "num_samples": int(2.6 * n) + 2000, "num_features": features,
                 "num_classes": classes, "partition": "iid", "min_samples_per_node": 2, "test_samples": 1000},
        "model": {"name": model, **({"hidden": [64]} if model == "mlp" else {})},
        "algorithm": {"name": "dsgd", "lr": 0.1, "batch_size": 2}})


def check_scale(device: str, model: str, sizes: list[int], budget_s: float) -> dict:
    """Each size in turn until one does not fit (a config error from the memory estimate, or out of memory)
    or the budget is spent: seconds per round (evaluation excluded) and peak memory."""
    tried, started = [], time.perf_counter()
    for n in sizes:
        if time.perf_counter() - started > budget_s:
            tried.append({"nodes": n, "result": "skipped (time budget)"})
            break
        if torch.cuda.is_available() and device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            t0 = time.perf_counter()
            built = build(scale_config(n, model, device))
            build_s = time.perf_counter() - t0
            rows = simulate(built)
            first, last = rows[0], rows[-1]
            per_round = (last["wall_time_s"] - first["wall_time_s"] - first["eval_time_s"]) / 3
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else math.nan
            tried.append({"nodes": n, "result": "ok", "s_per_round": per_round, "peak_gib": peak,
                          "build_s": build_s, "params_per_node": built.flat.num_params})
            del built, rows
        except Exception as err:  # out of memory or refused by the estimate: the previous size is the largest
            tried.append({"nodes": n, "result": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"})
            break
    fits = [t["nodes"] for t in tried if t["result"] == "ok"]
    return {"model": model, "largest_ok": max(fits) if fits else 0, "tried": tried}


def check_distributed(device: str, rounds: int) -> dict:
    out = Path(tempfile.mkdtemp())
    cmd = [sys.executable, "-m", "peerlearn", "run", str(QUICKSTART), "--engine", "distributed", "--nproc", "2",
           "--device", device.split(":")[0], "--set", f"num_rounds={rounds}", "--out", str(out / "dist"), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "MPLBACKEND": "Agg"})
    if proc.returncode != 0:
        return {"ok": False, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    import csv

    with open(out / "dist" / "metrics.csv") as f:
        dist_rows = list(csv.DictReader(f))
    sim_rows, _ = timed_run(config(num_rounds=rounds, device=device))
    diff = max(abs(float(a["acc_mean"]) - b["acc_mean"]) for a, b in zip(dist_rows, sim_rows))
    return {"ranks": 2, "gpus": torch.cuda.device_count(), "max_abs_acc_diff": diff, "ok": diff < 0.02}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device checked (cuda, cuda:N; cpu tries the script)")
    parser.add_argument("--quick", action="store_true", help="small sizes (to try the script on a CPU)")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--scale-budget-s", type=float, default=60.0, help="time for each scale search (the next size starts only within it)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"no CUDA GPU here (torch {torch.__version__}): nothing to check; --device cpu --quick tries the script")
        return 2
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rounds = 60 if args.quick else 500
    logreg = [10_000, 100_000] if args.quick else [1_000_000, 10_000_000, 20_000_000]
    mlp = [1_000, 10_000] if args.quick else [100_000, 1_000_000, 2_000_000]
    checks = {
        "quickstart device vs cpu": lambda: check_quickstart(args.device, rounds),
        "complete graph = synchronous SGD": lambda: check_complete_graph_is_synchronous_sgd(args.device),
        "batched = per-node gradients": lambda: check_batched_equals_per_node(args.device),
        "resume = uninterrupted": lambda: check_resume(args.device),
        "bfloat16 vs float32": lambda: check_bfloat16(args.device, rounds),
        "largest N, logreg": lambda: check_scale(args.device, "logreg", logreg, args.scale_budget_s),
        "largest N, mlp 64-64-10": lambda: check_scale(args.device, "mlp", mlp, args.scale_budget_s),
        "2 distributed ranks = simulator": lambda: check_distributed(args.device, 100 if not args.quick else 30),
    }
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "none (cpu)"
    report = {"gpu": gpu, "gpus": torch.cuda.device_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "host": platform.node(), "cpu_threads": torch.get_num_threads(), "device": args.device,
              "load_average_1m": os.getloadavg()[0], "checks": {}}
    print(f"peerlearn GPU check on {gpu} (torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{torch.get_num_threads()} CPU threads)")
    for name, run in checks.items():
        started = time.perf_counter()
        try:
            result = run()
        except Exception as err:
            result = {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}",
                      "where": traceback.format_exc().strip().splitlines()[-3:]}
        result["seconds"] = round(time.perf_counter() - started, 1)
        report["checks"][name] = result
        print(f"- {name}: {_line(result)}", flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(f"(written to {args.out})")
    return 0 if all(r.get("ok", True) for r in report["checks"].values()) else 1


def _line(result: dict) -> str:
    if "tried" in result:
        sizes = "; ".join(f"{t['nodes']:,}: " + (f"{t['s_per_round']:.3f} s/round, {t['peak_gib']:.1f} GiB peak"
                                                 if t["result"] == "ok" else t["result"]) for t in result["tried"])
        return f"largest {result['largest_ok']:,} ({sizes}) [{result['seconds']} s]"
    shown = {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in result.items() if k not in ("where",)}
    return ", ".join(f"{k} {v}" for k, v in shown.items())


if __name__ == "__main__":
    sys.exit(main())
