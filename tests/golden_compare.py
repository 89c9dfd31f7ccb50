"""Golden rows that know where they were recorded.

Convolution, recurrent and some matrix kernels are chosen per CPU (ATen's instruction-set dispatch,
MKL's and oneDNN's own, OpenBLAS's core type), so the same seed gives the same numbers bit for bit only
on a platform like the one that recorded them. :func:`platform` is that platform as the libraries
report it; :func:`compare` checks rows bit for bit where it matches, and elsewhere floats to a relative
tolerance of :data:`RTOL` (above the rounding measured between kernels, below what a learning rate 1e-4
off does to the quickstart, see ``tests/test_goldens.py``), while counts (rounds, bytes, alive nodes)
stay exact everywhere. ``PEERLEARN_GOLDENS=tolerance`` forces the tolerant mode on a machine that
differs from the recording one in a way :func:`platform` cannot see.
"""

from __future__ import annotations

import functools
import math
import os
import platform as _platform
import re
from dataclasses import dataclass, field

RTOL = 1e-5
"""Relative tolerance for floats off the recording platform. Measured over every golden case (4 rounds
each) against this machine's AVX-512 kernels: AMD EPYC 1e-9 to 4e-9 (issue 35), ATen/MKL/oneDNN held
to AVX2 2.1e-6, to the default/SSE4 kernels 2.8e-6 (the Fashion-MNIST CNN: rounding compounds over the
rounds). A learning rate 1e-4 off moves the quickstart's consensus distance by 1.9e-4."""
ATOL = 1e-12
"""Absolute floor for values that are zero up to rounding (the consensus distance of equal models)."""
SCORE_RTOL = 1e-3
"""Relative tolerance, off the recording platform, for the attribution columns (``score_*``): a loss-delta score
is the difference of two nearly equal float32 losses, so its relative rounding is that of a loss divided by the
score (MeritRank's Byzantine mean moved by 1.3e-5 with ATen/MKL/oneDNN held to AVX2, where the losses moved by
~1e-7). The training columns beside them keep :data:`RTOL`."""
EXACT = frozenset({"round", "alive_nodes", "bytes_sent_total", "bytes_sent_per_node"})
"""Columns compared exactly everywhere: counts, whatever their type in the JSON."""

# environment variables that change which kernels the libraries pick
_KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA",
               "DNNL_MAX_CPU_ISA", "OPENBLAS_CORETYPE")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or "unknown"


def _cpu_flags() -> str:
    """A short digest of the CPU's feature flags: tells apart generations that share a model name."""
    import hashlib

    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1] for line in f if line.startswith("flags")), "")
    except OSError:
        return "unknown"
    return hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]


def _openblas() -> str:
    """numpy's and scipy's BLAS and the core type each runs (OpenBLAS picks kernels per CPU too)."""
    import numpy  # noqa: F401  (both loaded, whatever ran before: the same record in every process)
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    found = [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
             for i in threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(sorted(found)) or "none"


def platform() -> dict[str, str]:
    """What decides the float rounding of a run here: library versions and the kernels they dispatch."""
    return dict(_platform_once())


@functools.lru_cache(maxsize=None)
def _platform_once() -> tuple[tuple[str, str], ...]:
    """Read once per process: every golden case asks, and none of it changes while tests run."""
    import numpy
    import torch

    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([\w.\-]+)", config)
    onednn = re.search(r"MKL-DNN (v[\w.]+)", config)
    return tuple({
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": _platform.machine(),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "mkl": mkl.group(1) if mkl else "none",
        "onednn": onednn.group(1) if onednn else "none",
        "numpy": numpy.__version__,
        "numpy_blas": _openblas(),
        "kernel_env": " ".join(f"{k}={os.environ[k]}" for k in _KERNEL_ENV if k in os.environ) or "none",
    }.items())


def platform_differences(recorded: dict[str, str] | None) -> list[str]:
    """The fields of :func:`platform` that differ from ``recorded`` (all of them when nothing was recorded)."""
    here = platform()
    if not recorded:
        return ["not recorded"]
    return [f"{k}: {recorded.get(k)!r} -> {v!r}" for k, v in here.items() if recorded.get(k) != v]


def _is_nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def rel_diff(got, want) -> float:
    """|got - want| relative to |want| (0 for equal values, NaN == NaN; inf for a NaN against a number)."""
    if got == want or (_is_nan(got) and _is_nan(want)):
        return 0.0
    if _is_nan(got) or _is_nan(want) or not all(isinstance(v, (int, float)) for v in (got, want)):
        return math.inf
    return abs(got - want) / max(abs(want), ATOL)


@dataclass
class Comparison:
    """Outcome of comparing rows: the mode used, the largest relative difference, what failed."""

    mode: str
    max_rel: float = 0.0
    worst: str = ""
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def message(self, case: str) -> str:
        head = (f"{case}: {len(self.failures)} value(s) differ ({self.mode}); largest relative difference "
                f"{self.max_rel:.3g} at {self.worst}")
        return "\n".join([head, *self.failures[:12]])


def compare(got: list[dict], want: list[dict], exact: bool, rtol: float = RTOL) -> Comparison:
    """Compare evaluation rows: every column of ``want`` must be in ``got``; bit for bit when ``exact``,
    else floats to ``rtol`` relative (``ATOL`` absolute) and :data:`EXACT` columns and non-floats exactly."""
    result = Comparison(mode="bit for bit (recording platform)" if exact else f"floats to rel {rtol:g}")
    if [r.get("round") for r in got] != [r.get("round") for r in want]:
        result.failures.append(f"rounds {[r.get('round') for r in got]} != recorded {[r.get('round') for r in want]}")
        return result
    for g, w in zip(got, want):
        lost = set(w) - set(g)
        if lost:
            result.failures.append(f"round {w['round']}: columns lost {sorted(lost)}")
        for k in sorted(set(w) & set(g)):
            d = rel_diff(g[k], w[k])
            if d > result.max_rel:
                result.max_rel, result.worst = d, f"round {w['round']} {k}"
            strict = exact or k in EXACT or not (isinstance(w[k], float) and isinstance(g[k], float))
            if d == 0:
                continue
            tol = max(rtol, SCORE_RTOL) if k.startswith("score_") else rtol
            if strict or d == math.inf or not math.isclose(g[k], w[k], rel_tol=tol, abs_tol=ATOL):
                result.failures.append(f"round {w['round']} {k}: got {g[k]!r}, recorded {w[k]!r} (rel {d:.3g})")
    return result
