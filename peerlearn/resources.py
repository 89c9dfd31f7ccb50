"""What this machine can hold and what a run will need of it: the memory available, a run's peak memory
estimated by part (:func:`memory_parts`), and the refusals of impossible sizes before any work
(:func:`check_config_fits` from the config alone, :func:`check_model_fits` once the data is loaded);
threads and the allocator."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # ExperimentConfig (peerlearn.config) is named as a string: the library never imports config
    from peerlearn.data.base import Dataset
    from peerlearn.models.functional import FlatModel


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


BASE_COPIES = 5  # float32 [N, P] tensors every round holds: params, the run's copy, grads, mixed, trained
GRAD_BUDGET = 2 * 2**30  # bytes of forward + backward activations before the gradient is chunked over nodes
EVAL_CHUNK = 4 * 2**24  # bytes of one evaluation chunk's activations (predicted_matches' max_elements)


def _data_bytes(ds: Dataset) -> int:
    return sum(t.numel() * t.element_size() for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))


def model_copies(cfg: ExperimentConfig) -> int:
    """Float32 copies of every node's model a round holds: :data:`BASE_COPIES`, the optimizer's state and the
    algorithm's own (``extra_copies``: 1 unless the algorithm's spec says otherwise)."""
    alg = cfg.algorithm
    optimizer = getattr(alg, "optimizer", None)
    return BASE_COPIES + alg.extra_copies + (optimizer.state_copies if optimizer is not None else 0)


def memory_parts(cfg: ExperimentConfig, ds: Dataset, num_params: int, activations_per_sample: int) -> dict[str, int]:
    """Bytes a run holds at its peak, by part: :func:`model_copies` float32 copies of every node's model, the dataset,
    a round's mini-batches (inputs, labels, the draws and indices behind them), the gradient's activations
    (bounded by chunking) and one evaluation chunk."""
    n, b = cfg.num_nodes, cfg.algorithm.batch_size
    sample = math.prod(ds.input_shape) * ds.x_train.element_size()
    return {"models": model_copies(cfg) * 4 * n * num_params, "data": _data_bytes(ds),
            "batches": n * b * (sample + ds.y_train.element_size() + 16),
            "activations": min(GRAD_BUDGET, 3 * 4 * b * activations_per_sample * n), "evaluation": EVAL_CHUNK}


def run_memory_bytes(built) -> int:
    """A built run's estimated peak memory (:func:`memory_parts`)."""
    ds = built.dataset
    act = built.flat.activation_numel(ds.input_shape, ds.x_train.dtype)
    return sum(memory_parts(built.config, ds, built.flat.num_params, act).values())


def _meta_model(cfg: ExperimentConfig, ds: Dataset) -> FlatModel | None:
    """The model built on the meta device (no memory used); None if it cannot be."""
    import torch

    from peerlearn.models.functional import FlatModel

    try:
        with torch.device("meta"):
            return FlatModel(cfg.model.build(ds.input_shape, ds.num_classes))
    except Exception:  # a module that cannot be built on the meta device is checked by its real build
        return None


REAL_FORWARD_MAX_PARAMS = 2**22
"""Up to this many parameters, activations are counted on a real one-sample forward pass instead of the
meta device: a meta ``addmm`` imports ``torch._dynamo`` (1.3 s of every small run's start-up), while
building a model this small costs milliseconds. Both count the same output sizes."""


def _activation_numel(cfg: ExperimentConfig, ds: Dataset, meta: FlatModel) -> int:
    import torch

    from peerlearn.models.functional import FlatModel

    if meta.num_params <= REAL_FORWARD_MAX_PARAMS:
        with torch.random.fork_rng(devices=[]):  # the global generator is left as it was
            try:
                real = FlatModel(cfg.model.build(ds.input_shape, ds.num_classes))
                return real.activation_numel(ds.input_shape, ds.x_train.dtype)
            except Exception:  # counted on the meta device below
                pass
    try:
        return meta.activation_numel(ds.input_shape, ds.x_train.dtype)
    except Exception:  # a forward pass that needs real values: count its parameters' worth
        return meta.num_params


def _meta_parts(cfg: ExperimentConfig, ds: Dataset, flat: FlatModel | None = None) -> dict[str, int] | None:
    flat = flat or _meta_model(cfg, ds)
    if flat is None:
        return None
    return memory_parts(cfg, ds, flat.num_params, _activation_numel(cfg, ds, flat))



def planned_memory_bytes(cfg: ExperimentConfig, ds: Dataset) -> int:
    """:func:`run_memory_bytes` of ``cfg`` on its loaded dataset ``ds``, no node model allocated (the model
    is built on the meta device, or once for real where it cannot be)."""
    parts = _meta_parts(cfg, ds)
    if parts is None:
        from peerlearn.models.functional import FlatModel

        flat = FlatModel(cfg.model.build(ds.input_shape, ds.num_classes))
        parts = memory_parts(cfg, ds, flat.num_params, flat.activation_numel(ds.input_shape, ds.x_train.dtype))
    return sum(parts.values())


FAULT_TIMELINE_BYTES = 3
"""Peak bytes per (round, node) of the faults' alive timeline: the boolean timeline and two temporaries."""


def check_config_fits(cfg: ExperimentConfig) -> None:
    """Refuse, before anything is built, what grows with the config's sizes alone: a random graph's edges
    (:attr:`GraphSpec.bytes_per_edge`) and the faults' timeline, ``(num_rounds + 1) x num_nodes``."""
    n, graph = cfg.num_nodes, cfg.topology.graph
    edges = graph.expected_edges(n)
    if edges is not None:
        check_fits(edges * graph.bytes_per_edge, f"{graph.name} on {n:,} nodes (about {edges:,.0f} edges)",
                   "topology.graph")
    if cfg.faults.active:
        check_fits(FAULT_TIMELINE_BYTES * (cfg.num_rounds + 1) * n,
                   f"the faults' timeline of {cfg.num_rounds + 1:,} rounds x {n:,} nodes", "faults")


def check_model_fits(cfg: ExperimentConfig, ds: Dataset, device=None) -> None:
    """Refuse, before allocating, a model or a node count this machine (or the run's GPU, ``device``) cannot
    hold (counted on the meta device: no memory is used), with the estimate by part."""
    flat = _meta_model(cfg, ds)
    if flat is None:
        return
    num_params = flat.num_params
    parts = _meta_parts(cfg, ds, flat)
    detail = ", ".join(f"{k} {v / 2**30:.1f}" for k, v in parts.items() if v >= 0.05 * 2**30)
    what = (f"{cfg.num_nodes:,} nodes x {num_params:,} parameters ({model_copies(cfg)} float32 copies of every node's "
            f"model, the data and a round's batches; GiB: {detail})")
    if device is not None and device.type == "cuda":  # the run lives on the GPU; the host holds the data once
        from peerlearn.device import check_fits as check_device_fits

        check_device_fits(device, sum(parts.values()), what)
        return
    check_fits(4.0 * num_params, f"{cfg.model.name} with {num_params:,} parameters", "model")
    check_fits(sum(parts.values()), what, "num_nodes")


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
