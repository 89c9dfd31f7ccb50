"""What every command shares: the consoles, the one-line failure, exit codes, threads and the allocator."""

from __future__ import annotations

import os

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> int:
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)
    return 2


# a run's status -> the command's exit code (diverged, stopped: 1)
EXIT_CODE = {"completed": 0, "interrupted": 130}


def compute_setup(cfg) -> dict:
    """Threads (``threads`` or the idle cores), before the run allocates; what was chosen goes into
    summary.json (with the allocator mode, filled in by :func:`allocator_for`)."""
    import torch

    from peerlearn.report.sinks import environment
    from peerlearn.resources import choose_threads

    threads, load = choose_threads(cfg.threads)
    torch.set_num_threads(threads)
    return {"threads": threads, "load_average_1m": round(load, 2), "malloc": "system", "environment": environment()}


def allocator_for(built, compute: dict) -> None:
    """Keep freed memory for reuse (the steady state without page faults, benchmarks/README.md) when the
    run's estimated memory is at most a quarter of what is available: a heap that never gives memory back
    can fragment (1M logistic-regression nodes peaked at 18 GB with glibc's default and ran out of 24 GB
    with freed memory kept). ``PEERLEARN_MALLOC=system`` always leaves glibc as it is."""
    from peerlearn.build import run_memory_bytes
    from peerlearn.resources import available_memory_bytes, keep_freed_memory

    if os.environ.get("PEERLEARN_MALLOC", "").lower() == "system":
        return
    have = available_memory_bytes()
    if have is not None and 4 * run_memory_bytes(built) <= have and keep_freed_memory():
        compute["malloc"] = "kept"
