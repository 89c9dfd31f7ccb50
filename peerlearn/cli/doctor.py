"""``peerlearn doctor``: what this machine offers a run (torch's version and build, the GPUs torch sees,
what ``device: auto`` picks, the distributed engine's backend)."""

from __future__ import annotations

import json

from peerlearn.cli.common import console


def cmd_doctor(args) -> int:
    from rich.table import Table

    from peerlearn import __version__
    from peerlearn.device import describe

    info = {"peerlearn": __version__, **describe()}
    if args.json:
        console.print_json(json.dumps(info))
        return 0
    table = Table(title="peerlearn doctor", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("peerlearn", info["peerlearn"])
    table.add_row("torch", info["torch"])
    table.add_row("CUDA build", str(info["cuda_build"]))
    for gpu in info["gpus"] or [{"device": "-", "name": "no CUDA GPU seen", "free_gib": None}]:
        free = "" if gpu["free_gib"] is None else f" ({gpu['free_gib']} GiB free)"
        table.add_row("GPU" if gpu["device"] == "-" else gpu["device"], f"{gpu['name']}{free}")
    table.add_row("device: auto", info["auto"])
    table.add_row("distributed backend", "gloo (GPU ranks send through host memory: docs/howto/gpu.md)"
                  if info["gpus"] else "gloo")
    table.add_row("CPU threads", str(info["cpu_threads"]))
    console.print(table)
    if not info["gpus"]:
        console.print("to run on a GPU: install peerlearn into an environment whose torch is a CUDA build "
                      "(pip install -e . there), then device: cuda (docs/howto/gpu.md)", markup=False)
    return 0
