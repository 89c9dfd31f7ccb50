"""Start a swarm of ``K`` peers on this machine (``peerlearn run CONFIG --engine p2p --nproc K``).

Peer 0 starts the swarm and writes its addresses; peers ``1..K-1`` join through them. The launch draws a
fresh secret that only its peers get (every peer proves it: :class:`~peerlearn.engines.p2p.swarm.Admission`),
listens on 127.0.0.1 only, waits for every peer and says which ones died; a peer's death does not stop the
others. Each peer writes its own run folder, ``OUT/peer<i>``. Interrupting the launcher interrupts every peer.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peerlearn.engines.launch import launch_environment, wait_all

ADDRESS_FILE = "PEERLEARN_P2P_ADDRESS_FILE"  # where peer 0 writes its multiaddrs (one per line)


def launch_swarm(worker_argv: list[str], nproc: int, out_dir: Path, startup_timeout_s: float = 120.0,
                 grace_s: float = 10.0) -> list[int]:
    """Run ``python -m peerlearn *worker_argv --peer i/K --out OUT/peer<i>`` for every peer; their exit codes."""
    base = launch_environment(nproc)  # a fresh secret for this launch's peers, and nobody else
    with tempfile.TemporaryDirectory(prefix="peerlearn-p2p-") as tmp:
        address = Path(tmp) / "peer0.maddrs"

        def start(i: int, extra: list[str], env: dict) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-m", "peerlearn", *worker_argv, "--peer", f"{i}/{nproc}",
                                     "--out", str(out_dir / f"peer{i}"), *extra], env=env)

        procs = [start(0, [], {**base, ADDRESS_FILE: str(address)})]

        def the_others() -> None:  # once peer 0 has written its addresses
            deadline = time.monotonic() + startup_timeout_s
            while not (address.is_file() and address.read_text().strip()):
                if procs[0].poll() is not None or time.monotonic() > deadline:
                    return  # peer 0 failed (its one line says why) or never started: nobody to join
                time.sleep(0.05)
            join = [a for line in address.read_text().split() for a in ("--join", line)]
            procs.extend(start(i, join, base) for i in range(1, nproc))

        return wait_all(procs, grace_s, "peer", then=the_others)
