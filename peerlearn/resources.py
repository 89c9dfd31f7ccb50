"""What this machine can hold: the memory a run may use, to refuse impossible sizes before any work."""

from __future__ import annotations

import os


def available_memory_bytes() -> int | None:
    """Memory available to new allocations: ``MemAvailable``, or the cgroup limit or what ``ulimit -v`` leaves
    when lower; None if unknown."""
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
    room = _address_space_room()
    if room is not None and (found is None or room < found):
        found = room
    return found


def _address_space_room() -> int | None:
    """What ``ulimit -v`` (RLIMIT_AS) leaves of this process's address space; None without such a limit."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status") as f:
            size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (ImportError, OSError, StopIteration, ValueError):
        return None
    return max(0, soft - size)


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:,.1f} GiB"


def check_fits(need_bytes: float, what: str, field: str) -> None:
    """Raise ValueError (``field: what needs ~X GiB; Y GiB available``) when ``need_bytes`` cannot fit."""
    have = available_memory_bytes()
    if have is not None and need_bytes > have:
        raise ValueError(f"{field}: {what} needs about {gib(need_bytes)}; this machine has {gib(have)} available")


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4


def keep_freed_memory(on: bool = True) -> bool:
    """Serve large blocks from the heap and keep freed ones for reuse (glibc; False where unavailable).

    glibc hands every block above 32 MiB to ``mmap`` and returns it to the system on ``free``, so a tensor of
    N x P floats allocated every step (an update, a gossip output, a gradient) is page-faulted in afresh
    each time: allocate-and-add ran at 1.3 GB/s against 10.7 GB/s in place (issue 16). With mmap off
    for the heap and a 2 GiB trim threshold, a freed block is reused by the next allocation of its size:
    5x on that operation, a steady state without page faults (benchmarks/README.md). The process keeps
    its peak memory until it exits, and a heap that never gives memory back can fragment: ``peerlearn run``
    keeps freed memory only for runs estimated at a quarter of the available memory or less (1M
    logistic-regression nodes peaked at 18 GB with glibc's default and ran out of 24 GB with it kept).
    ``on=False`` restores glibc's steady state (blocks above 32 MiB mmapped). ``PEERLEARN_MALLOC=system``
    in the environment turns it off for ``peerlearn`` commands.
    """
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if on:
        return bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    # glibc's steady state: its dynamic mmap threshold at the 32 MiB it grows to, trimming above twice that
    return bool(mallopt(_M_MMAP_MAX, 65536) and mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
                and mallopt(_M_TRIM_THRESHOLD, 64 * 2**20))


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_threads(requested: int | None = None) -> tuple[int, float]:
    """``(intra-op threads, 1-minute load average)``: ``requested`` if given, else ``OMP_NUM_THREADS`` if set,
    else the idle cores (cores minus the load average, rounded; at least 1).

    On a shared machine a second thread that has to wait for a busy core makes every parallel operation
    wait for it: 2 threads ran 10-60x slower than 1 under load, and never much faster than 1 for the
    small per-node products of a simulation (benchmarks/README.md). Counting only idle cores never picks
    that case."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if requested:
        return int(requested), load
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), load
    cores = usable_cores()
    return max(1, min(cores, round(cores - load))), load
