"""Start the ranks of a distributed run on this machine, and let them outlive each other.

``torchrun`` stops every worker as soon as one fails (and restarts them all if allowed): right for
data-parallel jobs, wrong for decentralized learning, where a peer that dies is part of the
experiment. :func:`launch_local` hosts the launch's key-value store (which the survivors need to
agree on who is left), starts ``nproc`` ranks with the ``torch.distributed`` environment
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), waits for all of them, and says which
ones died. Interrupting the launcher interrupts every rank; no rank outlives it.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys

import torch.distributed as dist


def launch_local(worker_argv: list[str], nproc: int, grace_s: float = 10.0) -> int:
    """Run ``python -m peerlearn *worker_argv`` as ranks ``0..nproc-1`` on 127.0.0.1.

    Returns rank 0's exit code (rank 0 writes the run: 0 when the run completed, even without some
    ranks), or the first failure's code when rank 0 was killed.
    """
    # TCPStore given only a port listens on every interface, where anyone who reaches it can read and write
    # every key: hand it a socket already bound to the loopback interface instead
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, None, True, datetime.timedelta(seconds=60), wait_for_workers=False,
                          master_listen_fd=listener.detach())  # the store owns the socket from here
    threads = max(1, (os.cpu_count() or 1) // nproc)
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc), "TORCHELASTIC_USE_AGENT_STORE": "True",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    procs = [subprocess.Popen([sys.executable, "-m", "peerlearn", *worker_argv],
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(nproc)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        raise
    finally:
        for p in procs:  # whatever happened, no rank outlives the launcher
            try:
                p.wait(grace_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    for r, code in enumerate(codes):
        if code < 0:
            print(f"peerlearn: rank {r} was killed by {signal.Signals(-code).name}", file=sys.stderr)
    if codes[0] >= 0:
        return codes[0]
    return next((c for c in codes if c > 0), 1)
