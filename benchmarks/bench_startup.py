"""Start-up cost of the command line (issue 39): what a user waits for besides training.

Measures, as fresh processes (the way a user or a sweep's worker pays it), the median of ``--repeats``:

- ``peerlearn --version``;
- ``peerlearn validate QUICKSTART`` (keys, data, graph, partition, model and algorithm built);
- a 16-node, 100-round run of the quickstart: the whole process's wall time, the training loop's own
  (``wall_time_s`` of the last row) and their difference, the non-training time (imports, build, the
  report and plots written at the end);
- ``python -X importtime`` of ``peerlearn.cli``: the modules that cost most to import.

Usage: ``python benchmarks/bench_startup.py [--repeats 5]``; prints one table, with the thread count and
the 1-minute load average (this machine is shared).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEERLEARN = [sys.executable, "-m", "peerlearn"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def from_source(folder: str) -> list[str]:
    """``python -m peerlearn`` from another checkout (e.g. a ``git worktree`` of an older commit), with this
    environment's packages: ``-S`` keeps an editable install's import hook from choosing this one."""
    import sysconfig

    code = (f"import sys; sys.path[:0] = [{folder!r}]; sys.path.append({sysconfig.get_paths()['purelib']!r}); "
            "import runpy; sys.argv[0] = 'peerlearn'; runpy.run_module('peerlearn', run_name='__main__')")
    return [sys.executable, "-S", "-c", code]


def timed(cmd: list[str], cwd: str | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=ENV, cwd=cwd)
    return time.perf_counter() - started


def run_split(tmp: Path, k: int) -> tuple[float, float]:
    """(process wall time, training loop wall time) of one 16-node, 100-round quickstart run."""
    out = tmp / f"run{k}"
    total = timed([*PEERLEARN, "run", "quickstart", "--set", "num_nodes=16", "--set", "num_rounds=100",
                   "--out", str(out), "--quiet", "--threads", "1"])
    with open(out / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    return total, float(last["wall_time_s"])


def slowest_imports(count: int = 8) -> list[tuple[float, str]]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import peerlearn.cli.run, peerlearn.build"],
                          capture_output=True,
                          text=True, env=ENV)
    rows = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (p.strip() for p in line.removeprefix("import time:").split("|"))
            if cumulative.isdigit():
                rows.append((int(cumulative) / 1e6, name))
    top = sorted(rows, reverse=True)
    return [r for r in top if not r[1].startswith(" ")][:count] or top[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--source", metavar="DIR", help="measure the peerlearn in DIR (another checkout) instead")
    args = parser.parse_args()
    if args.source:
        PEERLEARN[:] = from_source(args.source)
    timed([*PEERLEARN, "--version"])  # warm the page cache and the bytecode
    version = statistics.median(timed([*PEERLEARN, "--version"]) for _ in range(args.repeats))
    validate = statistics.median(timed([*PEERLEARN, "validate", "quickstart"]) for _ in range(args.repeats))
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_split(Path(tmp), k) for k in range(args.repeats)]
    total = statistics.median(r[0] for r in runs)
    train = statistics.median(r[1] for r in runs)
    overhead = statistics.median(r[0] - r[1] for r in runs)
    print(f"# peerlearn start-up ({args.source or 'this checkout'}), median of {args.repeats}; OMP_NUM_THREADS=1, load average (1 min) "
          f"{os.getloadavg()[0]:.2f}, {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print("| what | seconds |\n|---|---|")
    print(f"| `peerlearn --version` | {version:.2f} |")
    print(f"| `peerlearn validate quickstart` | {validate:.2f} |")
    print(f"| 16 nodes x 100 rounds: whole process | {total:.2f} |")
    print(f"| ... of which training (`wall_time_s`) | {train:.2f} |")
    print(f"| ... the rest (imports, build, report) | {overhead:.2f} |")
    if not args.source:
        print("\nslowest imports of a run (cumulative s): " +
              ", ".join(f"{name} {s:.2f}" for s, name in slowest_imports()))


if __name__ == "__main__":
    main()
