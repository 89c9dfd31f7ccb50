"""What every benchmark records next to its figures: torch's version, the thread count and the load average."""

from __future__ import annotations

import os

import torch


def set_threads(threads: int) -> str:
    """Use ``threads`` intra-op threads; returns the header line to print above the results."""
    torch.set_num_threads(threads)
    load = os.getloadavg()
    return (f"torch {torch.__version__}, {threads} thread(s), load average {load[0]:.2f} {load[1]:.2f} "
            f"{load[2]:.2f}, {os.cpu_count()} cores")
