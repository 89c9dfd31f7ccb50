"""Where a run's tensors live and in what precision it computes: the ``device``, ``dtype`` and
``deterministic`` keys.

``device: auto | cpu | cuda | cuda:N`` is resolved once, before any work (:func:`resolve`): ``auto`` is
``cuda`` (the current CUDA device) when torch sees one, else ``cpu``; a CUDA device on a machine without
CUDA, or an index that does not exist, is a one-line :class:`~peerlearn.spec.ConfigError` naming
``device``. :func:`peerlearn.build.build` puts a run's tensors there (parameters, data, masks, the sampler's
tables, the threat's views, what the algorithm holds), building them under :func:`scope`, which makes the
run's device the default of torch's factories; the engines run under it too. Random streams stay on the
host (:func:`draw`): every device draws the same numbers, so a CUDA run reproduces a CPU run to float
tolerance instead of following another random trajectory.

``dtype: bfloat16`` computes the forward and backward passes in bfloat16 (:func:`in_compute_dtype`);
the node models, the optimizer and algorithm state, gossip, the gradients handed to algorithms and the
metrics stay float32: bfloat16 keeps 8 bits of mantissa, so an update ``lr * g`` below 1/256 of a weight
would vanish if the weights themselves were bfloat16 (mixed precision as in Micikevicius et al. 2018,
"Mixed Precision Training", ICLR).

What a test double replaces is :class:`Cuda` (what this machine's CUDA offers): the placement rules are
checked on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, NamedTuple

import torch

from peerlearn.spec import ConfigError, config_error

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class Cuda(NamedTuple):
    """What this machine's CUDA offers (:func:`probe`; tests pass their own)."""

    available: bool
    count: int
    current: int  # the index of torch.cuda.current_device() (what plain "cuda" means)
    name: Callable[[int], str]  # index -> the GPU's name
    free_bytes: Callable[[int], int]  # index -> free memory now, in bytes


def probe() -> Cuda:
    """This machine's CUDA as torch sees it (no CUDA context is made where there is no GPU)."""
    if not torch.cuda.is_available():
        return Cuda(False, 0, 0, lambda i: "", lambda i: 0)
    return Cuda(True, torch.cuda.device_count(), torch.cuda.current_device(), torch.cuda.get_device_name,
                lambda i: int(torch.cuda.mem_get_info(i)[0]))


def resolve(key: str, cuda: Cuda | None = None) -> torch.device:
    """The device of the ``device`` key (see the module doc); ConfigError naming ``device`` when it is not here."""
    cuda = probe() if key != "cpu" and cuda is None else cuda
    if key == "cpu" or (key == "auto" and not cuda.available):
        return torch.device("cpu")
    if key == "auto":
        return torch.device("cuda", cuda.current)
    if not cuda.available:
        raise config_error("device", f"{key}: torch {torch.__version__} sees no CUDA GPU on this machine (a CPU "
                                     "build of torch, or no driver); use device: cpu or auto (peerlearn doctor "
                                     "shows what torch sees)")
    index = cuda.current if key == "cuda" else int(key.split(":")[1])
    if index >= cuda.count:
        raise config_error("device", f"{key}: this machine has {cuda.count} CUDA device"
                                     f"{'s' * (cuda.count != 1)} (cuda:0{f' to cuda:{cuda.count - 1}' if cuda.count > 1 else ''})")
    return torch.device("cuda", index)


def rank_device(key: str, local_rank: int, cuda: Cuda | None = None) -> int | None:
    """The GPU a rank of a distributed run computes on when its ``device`` key leaves the index open (``cuda``,
    or ``auto`` with a GPU): one GPU per rank by ``LOCAL_RANK`` (ranks beyond the GPUs share them, round
    robin); None when the key names the device itself (``cpu``, ``cuda:N``) or there is no GPU."""
    if key not in ("cuda", "auto"):
        return None
    cuda = probe() if cuda is None else cuda
    return local_rank % cuda.count if cuda.available and cuda.count else None


def check_fits(device: torch.device, need_bytes: float, what: str, cuda: Cuda | None = None) -> None:
    """ConfigError naming ``device`` when a run estimated at ``need_bytes`` would not fit in the GPU's free
    memory (a CPU's memory is checked by :func:`peerlearn.resources.check_fits`)."""
    if device.type != "cuda":
        return
    cuda = probe() if cuda is None else cuda
    free = cuda.free_bytes(device.index)
    if need_bytes > free:
        raise config_error("device", f"{device}: {what} needs about {need_bytes / 2**30:,.1f} GiB; "
                                     f"{cuda.name(device.index)} has {free / 2**30:,.1f} GiB free (fewer nodes, "
                                     "a smaller model, or device: cpu)")


def compute_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def to_device(tree, device: torch.device):
    """``tree`` (tensors in tuples, lists, dicts and NamedTuples) with every tensor on ``device``; a tensor
    already there is the same object (no copy on a CPU run)."""
    from torch.utils._pytree import tree_map

    return tree_map(lambda x: x.to(device) if is_tensor(x) and x.device != device else x, tree)


def tensors(obj, where: str = "built") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor reachable from ``obj`` through NamedTuples, lists, tuples, dicts, plain objects' attributes
    and what functions hold (closures, defaults, partial arguments, bound objects), with its path: what a run
    built on a device must hold only there (tests check it on the meta device, which every build can use)."""
    import functools
    import types

    seen: set[int] = set()

    def walk(x, path):
        if id(x) in seen or isinstance(x, (str, bytes, int, float, bool, type(None), type, types.ModuleType,
                                           torch.nn.Module, torch.Generator)):
            return
        seen.add(id(x))
        if is_tensor(x):
            yield path, x
        elif isinstance(x, types.FunctionType):
            for name, cell in zip(x.__code__.co_freevars, x.__closure__ or ()):
                try:
                    yield from walk(cell.cell_contents, f"{path}<{x.__qualname__}>.{name}")
                except ValueError:  # an empty cell
                    pass
            for i, v in enumerate(x.__defaults__ or ()):
                yield from walk(v, f"{path}<{x.__qualname__}>.default{i}")
        elif isinstance(x, types.MethodType):
            yield from walk(x.__self__, f"{path}.__self__")
        elif isinstance(x, functools.partial):
            yield from walk(x.func, f"{path}.func")
            yield from walk(list(x.args), f"{path}.args")
            yield from walk(x.keywords, f"{path}.keywords")
        elif isinstance(x, tuple) and hasattr(x, "_fields"):
            for f in x._fields:
                yield from walk(getattr(x, f), f"{path}.{f}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                yield from walk(v, f"{path}[{i}]")
        elif isinstance(x, dict):
            for k, v in x.items():
                yield from walk(v, f"{path}[{k!r}]")
        elif hasattr(x, "__dict__") and not isinstance(x, (types.BuiltinFunctionType, types.WrapperDescriptorType)):
            for k, v in vars(x).items():
                yield from walk(v, f"{path}.{k}")

    yield from walk(obj, where)


def draw(sample: Callable[..., torch.Tensor], *args, generator: torch.Generator, device: torch.device | None = None,
         **kwargs) -> torch.Tensor:
    """``sample(*args, generator=generator, **kwargs)`` drawn where ``generator`` lives (the host: see the
    module doc) and moved to ``device`` (default: the default device, the run's inside :func:`scope`)."""
    out = sample(*args, generator=generator, device=generator.device, **kwargs)
    target = torch.get_default_device() if device is None else device
    return out if out.device == target else out.to(target)


def from_host(array) -> torch.Tensor:
    """``torch.from_numpy(array)`` on the default device (the run's, inside :func:`scope`; no copy on a CPU run)."""
    t = torch.from_numpy(array)
    target = torch.get_default_device()
    return t if target.type == "cpu" else t.to(target)


def numpy(t: torch.Tensor):
    """``t`` as a numpy array (copied to the host from a GPU; the same memory on a CPU run)."""
    return t.numpy() if t.device.type == "cpu" else t.cpu().numpy()


@contextlib.contextmanager
def scope(device: torch.device, deterministic: bool = False) -> Iterator[None]:
    """Run a block on ``device`` (torch's factories default to it) and, with ``deterministic``, with
    ``torch.use_deterministic_algorithms`` on; both are put back as they were afterwards. A CPU run
    without ``deterministic`` changes nothing (its kernels are deterministic already)."""
    with contextlib.ExitStack() as stack:
        if device.type != "cpu":
            stack.enter_context(torch.device(device))
        if deterministic:
            was, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
            cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
            if device.type == "cuda" and cublas is None:  # what cuBLAS needs to be deterministic (CUDA >= 10.2)
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
            torch.use_deterministic_algorithms(True)

            def restore():
                torch.use_deterministic_algorithms(was, warn_only=warn)
                if device.type == "cuda" and cublas is None:
                    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
            stack.callback(restore)
        yield


def describe(cuda: Cuda | None = None) -> dict:
    """What ``peerlearn doctor`` prints: torch's version and build, the devices seen, what ``auto`` picks."""
    cuda = probe() if cuda is None else cuda
    gpus = [{"device": f"cuda:{i}", "name": cuda.name(i), "free_gib": round(cuda.free_bytes(i) / 2**30, 1)}
            for i in range(cuda.count)]
    return {"torch": torch.__version__, "cuda_build": torch.version.cuda or "none (a CPU build)",
            "gpus": gpus, "auto": str(resolve("auto", cuda)), "cpu_threads": torch.get_num_threads()}

