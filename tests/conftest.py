import os

import pytest
import torch

# one intra-op thread everywhere, in this process (peerlearn run chooses from OMP_NUM_THREADS) and in the
# processes tests start: the same seed must give the same numbers on every machine
os.environ.setdefault("OMP_NUM_THREADS", "1")

from peerlearn.config import parse_config, switch_member


@pytest.fixture(scope="session", autouse=True)
def _owner_key(tmp_path_factory):
    """The key that signs a run's plugins (peerlearn.report.ownership) lives in the test session's folder, not
    in the home directory; processes the tests start inherit it."""
    os.environ["PEERLEARN_OWNER_KEY"] = str(tmp_path_factory.mktemp("owner") / "owner.key")
    yield


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # fixed thread count: the same seed must give the same numbers on every machine; the global
    # generator is reseeded per test, so a test's random inputs do not depend on which tests ran before
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


def tiny_config(**sections):
    """A small, fast config (16 nodes, digits) with nested overrides: tiny_config(topology={...})."""
    base = {"seed": 0, "num_nodes": 16, "num_rounds": 20, "eval_every": 5,
            "data": {"dataset": "digits", "partition": "iid"},
            "model": {"name": "mlp", "hidden": [16]},
            "algorithm": {"name": "dsgd", "lr": 0.1, "batch_size": 8}}
    for key, value in sections.items():
        if isinstance(value, dict):
            for k, v in value.items():  # naming another member drops the keys only the old one read
                switch_member(base, key, k, v)
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return parse_config(base)


QUICK = "configs/quickstart.yaml"
SMALL = ["--set", "num_rounds=20", "--set", "eval_every=5", "--set", "num_nodes=8"]  # a quick CLI run


@pytest.fixture
def interrupted_run(tmp_path, monkeypatch):
    """A quickstart run stopped like a Ctrl-C after round 10: its folder holds rows and a checkpoint."""
    from peerlearn import cli

    out = tmp_path / "run"
    restore = interrupt_after(monkeypatch, 10)
    assert cli.main(["run", QUICK, *SMALL, "--out", str(out), "--quiet"]) == 130
    restore()
    return out


def interrupt_after(monkeypatch, round_: int):
    """Make the next ``peerlearn run`` stop like a Ctrl-C right after the row of ``round_`` is written
    (before its checkpoint); returns a function that undoes it."""
    from peerlearn.engines import simulator

    real = simulator.simulate

    def interrupted(built, on_eval=None, **kwargs):
        def stop(row):
            on_eval(row)
            if row["round"] >= round_:
                raise KeyboardInterrupt

        return real(built, on_eval=stop, **kwargs)

    monkeypatch.setattr(simulator, "simulate", interrupted)
    return lambda: monkeypatch.setattr(simulator, "simulate", real)


def ctrl_c_as_in_a_terminal() -> None:
    """``preexec_fn`` of a process a test interrupts with SIGINT: Ctrl-C acts as in a terminal even when the
    suite itself runs with SIGINT ignored (a job started in the background by a shell without job control,
    ``nohup``, some CI runners), which every child would otherwise inherit and Python would keep."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def checkpoint_keeper(tmp_path):
    """``(on_checkpoint, snapshots)``: every snapshot an engine hands over, through the disk format ``--resume``
    reads (``snapshots[round]``)."""
    from peerlearn.report import snapshot_io

    snapshots = {}

    def keep(snapshot):
        snapshot_io.save(snapshot, tmp_path / "snapshot.pt")
        snapshots[snapshot["round"]] = snapshot_io.load(tmp_path / "snapshot.pt")

    return keep, snapshots


def same_rows(rows: list[dict]) -> list[dict]:
    """Rows as comparable values (repr: NaN equals NaN), without the wall-clock columns."""
    return [{k: repr(v) for k, v in r.items() if k not in ("wall_time_s", "eval_time_s")} for r in rows]
