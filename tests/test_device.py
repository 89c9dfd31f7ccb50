"""The ``device``, ``dtype`` and ``deterministic`` keys (issue 17) on a machine without a GPU.

What needs CUDA itself is checked by ``benchmarks/gpu_check.py`` on a GPU. Here: the placement rules through
a test double of the machine's CUDA (:class:`peerlearn.device.Cuda`), the one-line errors, placement on the
meta device (every tensor a build makes, closures included, lands on the run's device: a forgotten host
tensor would show up), mixed precision, determinism and device-independent checkpoints.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from peerlearn import build as build_module
from peerlearn.config import ConfigError, load_config
from peerlearn.device import Cuda, check_fits, draw, rank_device, resolve, scope, tensors
from peerlearn.engines import simulate
from peerlearn.models.functional import FlatModel, in_compute_dtype, make_grad_fn
from tests.conftest import QUICK, SMALL, tiny_config

NO_CUDA = Cuda(False, 0, 0, lambda i: "", lambda i: 0)


def two_gpus(current: int = 0, free_gib: float = 80.0) -> Cuda:
    return Cuda(True, 2, current, lambda i: f"Test GPU {i}", lambda i: int(free_gib * 2**30))


def test_auto_and_cpu_resolve_without_a_gpu_and_auto_picks_the_current_gpu():
    assert resolve("cpu", NO_CUDA) == torch.device("cpu")
    assert resolve("auto", NO_CUDA) == torch.device("cpu")
    assert resolve("auto", two_gpus(current=1)) == torch.device("cuda", 1)
    assert resolve("cuda", two_gpus(current=1)) == torch.device("cuda", 1)
    assert resolve("cuda:0", two_gpus(current=1)) == torch.device("cuda", 0)


@pytest.mark.parametrize("key, cuda, says", [
    ("cuda", NO_CUDA, "sees no CUDA GPU"),
    ("cuda:0", NO_CUDA, "sees no CUDA GPU"),
    ("cuda:2", two_gpus(), "this machine has 2 CUDA devices (cuda:0 to cuda:1)"),
])
def test_a_device_that_is_not_here_is_one_line_naming_the_field(key, cuda, says):
    with pytest.raises(ConfigError) as err:
        resolve(key, cuda)
    message = str(err.value)
    assert message.startswith("config error: device: ") and says in message and "\n" not in message


def test_a_run_larger_than_the_gpus_free_memory_is_refused_before_any_work():
    small = two_gpus(free_gib=1.0)
    check_fits(torch.device("cuda", 0), 0.5 * 2**30, "the run", small)  # fits
    check_fits(torch.device("cpu"), 1e15, "the run", small)  # a CPU's memory is checked elsewhere
    with pytest.raises(ConfigError, match=r"config error: device: cuda:0: the run needs about 2.0 GiB; "
                                          r"Test GPU 0 has 1.0 GiB free"):
        check_fits(torch.device("cuda", 0), 2 * 2**30, "the run", small)


def test_each_distributed_rank_takes_its_own_gpu_by_local_rank():
    assert [rank_device("cuda", r, two_gpus()) for r in range(4)] == [0, 1, 0, 1]
    assert rank_device("auto", 1, two_gpus()) == 1
    assert rank_device("cuda:1", 0, two_gpus()) is None  # the config names the device itself
    assert rank_device("cpu", 0, two_gpus()) is None
    assert rank_device("auto", 0, NO_CUDA) is None


# configs whose builds make no data-dependent decision on their tensors (the meta device has no values)
META_BUILDS = ["quickstart", "byzantine", "fedavg", "choco", "privacy", "crash", "time_varying", "dimat",
               "variance_correction", "modest", "diloco", "gradient_tracking", "spsa", "loss_delta"]


@pytest.mark.parametrize("name", META_BUILDS)
def test_every_tensor_a_build_makes_lives_on_the_runs_device(name, monkeypatch):
    """The meta device stands in for a GPU: every tensor reachable from the built run (the data, the models,
    the sampler's tables, the masks, the threat, what the algorithm's functions hold) must be on it."""
    monkeypatch.setattr(build_module, "resolve_device", lambda key: torch.device("meta"))
    built = build_module.build(load_config(f"configs/{name}.yaml", []))
    found = list(tensors(built))
    assert len(found) >= 10
    elsewhere = [path for path, t in found if t.device.type != "meta"]
    assert not elsewhere, f"left on the host: {elsewhere}"


def test_a_cpu_build_holds_its_tensors_on_the_cpu():
    built = build_module.build(tiny_config())
    assert built.device == torch.device("cpu")
    assert {t.device.type for _, t in tensors(built)} == {"cpu"}


def test_random_streams_draw_on_the_host_and_land_on_the_default_device():
    g = torch.Generator().manual_seed(3)
    with scope(torch.device("meta")):
        on_meta = draw(torch.rand, 4, 2, generator=g, dtype=torch.float64)
    assert on_meta.device.type == "meta"
    again = draw(torch.rand, 4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(again, torch.rand(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64))


def test_deterministic_is_on_during_the_run_only_and_changes_no_cpu_number():
    before = torch.are_deterministic_algorithms_enabled()
    with scope(torch.device("cpu"), deterministic=True):
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before
    plain = simulate(build_module.build(tiny_config(num_rounds=10)))
    strict = simulate(build_module.build(tiny_config(num_rounds=10, deterministic=True)))
    assert [r["acc_mean"] for r in plain] == [r["acc_mean"] for r in strict]
    assert [r["loss_mean"] for r in plain][1:] == [r["loss_mean"] for r in strict][1:]


@pytest.mark.parametrize("strategy", ["dense", "vmap"])
def test_bfloat16_gradients_match_float32_and_come_back_float32(strategy):
    torch.manual_seed(0)
    flat = FlatModel(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)))
    params = flat.init_params(6, seed=1, same_init=False)
    batch = (torch.randn(6, 32, 8), torch.randint(0, 3, (6, 32)))
    loss32, grads32 = make_grad_fn(flat, strategy)(params, batch)
    loss16, grads16 = in_compute_dtype(make_grad_fn(flat, strategy), torch.bfloat16)(params, batch)
    assert loss16.dtype == grads16.dtype == torch.float32
    assert torch.allclose(loss16, loss32, rtol=2e-2, atol=2e-2)
    assert float((grads16 - grads32).norm() / grads32.norm()) < 5e-2  # bfloat16 keeps 8 bits of mantissa
    assert in_compute_dtype(make_grad_fn(flat, strategy), torch.float32) is not None


def test_a_bfloat16_run_keeps_its_models_and_state_float32_and_learns_as_float32():
    cfg = dict(num_rounds=30, eval_every=10, algorithm={"name": "dsgd", "lr": 0.1, "batch_size": 8,
                                                         "optimizer": "sgd", "momentum": 0.9})
    finals = {}
    for dtype in ("float32", "bfloat16"):
        built = build_module.build(tiny_config(dtype=dtype, **cfg))
        kept = {}
        rows = simulate(built, on_finish=lambda p: kept.update(params=p),
                        on_checkpoint=lambda snap: kept.update(state=snap["state"]))
        assert kept["params"].dtype == torch.float32
        assert all(t.dtype in (torch.float32, torch.float64, torch.int64) for _, t in tensors(kept["state"]))
        finals[dtype] = rows[-1]["acc_mean"]
    assert finals["float32"] > 0.6
    assert abs(finals["bfloat16"] - finals["float32"]) < 0.05


def test_cli_refuses_a_gpu_device_here_in_one_line_before_any_folder(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "peerlearn", "run", QUICK, *SMALL, "--device", "cuda", "--out",
                           str(out), "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("config error: device: cuda: ") and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
    bad = subprocess.run([sys.executable, "-m", "peerlearn", "validate", QUICK, "--set", "device=gpu"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == ("config error: device: auto, cpu, cuda or cuda:N "
                                                          "(got 'gpu')")


def test_a_run_resumes_on_the_device_given_and_gives_the_same_rows(interrupted_run, tmp_path):
    """``--resume DIR --device cpu``: the checkpoint (saved from the host) continues where it is asked to, with
    the uninterrupted run's rows; a device that is not here is refused and the folder left as it was."""
    from peerlearn import cli
    from peerlearn.results import load

    before = (interrupted_run / "metrics.csv").read_text()
    if not torch.cuda.is_available():
        assert cli.main(["run", "--resume", str(interrupted_run), "--device", "cuda", "--quiet"]) == 2
        assert (interrupted_run / "metrics.csv").read_text() == before
    assert cli.main(["run", "--resume", str(interrupted_run), "--device", "cpu", "--quiet"]) == 0
    full = tmp_path / "full"
    assert cli.main(["run", QUICK, *SMALL, "--out", str(full), "--quiet"]) == 0
    resumed, straight = load(interrupted_run), load(full)
    assert resumed["round"].tolist() == straight["round"].tolist()
    assert resumed["acc_mean"].tolist() == straight["acc_mean"].tolist()


def test_doctor_says_what_auto_picks(capsys):
    from peerlearn import cli

    assert cli.main(["doctor", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] == torch.__version__
    assert info["auto"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert len(info["gpus"]) == torch.cuda.device_count()


def test_the_summary_records_the_device(tmp_path):
    from peerlearn import cli

    out = tmp_path / "run"
    assert cli.main(["run", QUICK, *SMALL, "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["device"] == "cpu"
