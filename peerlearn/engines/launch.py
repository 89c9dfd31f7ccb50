"""Start the ranks of a distributed run on this machine, and let them outlive each other.

``torchrun`` stops every worker as soon as one fails (and restarts them all if allowed): right for
data-parallel jobs, wrong for decentralized learning, where a peer that dies is part of the
experiment. :func:`launch_local` hosts the launch's key-value store (which the survivors need to
agree on who is left) on 127.0.0.1 only, draws the launch's secret (``PEERLEARN_SECRET``, which its
ranks join with: :mod:`peerlearn.engines.join`), starts ``nproc`` ranks with the ``torch.distributed`` environment
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), waits for all of them, and says which
ones died. Interrupting the launcher interrupts every rank; no rank outlives it.
"""

from __future__ import annotations

import datetime
import os
import secrets
import signal
import subprocess
import sys

from peerlearn.engines.membership import loopback_store


def launch_local(worker_argv: list[str], nproc: int, grace_s: float = 10.0) -> int:
    """Run ``python -m peerlearn *worker_argv`` as ranks ``0..nproc-1`` on 127.0.0.1.

    Returns rank 0's exit code (rank 0 writes the run: 0 when the run completed, even without some
    ranks), or the first failure's code when rank 0 was killed.
    """
    store = loopback_store(0, datetime.timedelta(seconds=60))
    base = {**launch_environment(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port),
            "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "TORCHELASTIC_USE_AGENT_STORE": "True"}
    procs = [subprocess.Popen([sys.executable, "-m", "peerlearn", *worker_argv],
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(nproc)]
    codes = wait_all(procs, grace_s, "rank")
    if codes[0] >= 0:
        return codes[0]
    return next((c for c in codes if c > 0), 1)


def launch_environment(nproc: int) -> dict[str, str]:
    """The environment of the ``nproc`` processes a launch starts on this machine: this one's, with a fresh
    secret that only they get (``PEERLEARN_SECRET``; a secret of the caller's is not passed on) and the cores
    shared among them (``OMP_NUM_THREADS``, unless set)."""
    threads = max(1, (os.cpu_count() or 1) // nproc)
    environ = {k: v for k, v in os.environ.items() if k not in ("PEERLEARN_SECRET", "PEERLEARN_SECRET_FILE")}
    return {**environ, "PEERLEARN_SECRET": secrets.token_hex(32),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}


def wait_all(procs: list[subprocess.Popen], grace_s: float, what: str, then=None) -> list[int]:
    """The exit codes of ``procs`` (``then()``, if given, runs first and may start more of them into the list):
    Ctrl-C interrupts every one, none outlives this call (killed after ``grace_s``), and each that was killed
    by a signal is named in one line (``what``: rank, peer)."""
    try:
        if then is not None:
            then()
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        raise
    finally:
        for p in procs:  # whatever happened, no process outlives the launcher
            try:
                p.wait(grace_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    for i, code in enumerate(codes):
        if code < 0:
            print(f"peerlearn: {what} {i} was killed by {signal.Signals(-code).name}", file=sys.stderr)
    return codes
