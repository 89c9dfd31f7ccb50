"""What this machine can hold: the memory a run may use, to refuse impossible sizes before any work."""

from __future__ import annotations

import os


def available_memory_bytes() -> int | None:
    """Memory available to new allocations (``MemAvailable``, or the cgroup limit when lower); None if unknown."""
    found = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
                    break
    except OSError:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(limit_file).read().strip()
        except OSError:
            continue
        if text.isdigit() and (found is None or int(text) < found):
            found = int(text)
    return found


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:,.1f} GiB"


def check_fits(need_bytes: float, what: str, field: str) -> None:
    """Raise ValueError (``field: what needs ~X GiB; Y GiB available``) when ``need_bytes`` cannot fit."""
    have = available_memory_bytes()
    if have is not None and need_bytes > have:
        raise ValueError(f"{field}: {what} needs about {gib(need_bytes)}; this machine has {gib(have)} available")
