"""Security battery (issue 36): a run folder from elsewhere is data. Each test plants what an attacker
could and checks that nothing runs and the user gets one line."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from peerlearn import cli
from peerlearn.report import snapshot_io
from tests.conftest import QUICK, SMALL


class _Boom:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch.save", "plain pickle", "inside a real snapshot"])
def test_resume_of_a_crafted_checkpoint_runs_nothing(interrupted_run, tmp_path, how, capsys):
    """H2: ``--resume`` used to unpickle checkpoint.pt with weights_only=False: a planted object ran code."""
    marker = tmp_path / "pwned"
    ckpt = interrupted_run / "checkpoint.pt"
    rows_before = (interrupted_run / "metrics.csv").read_text()
    if how == "torch.save":
        torch.save({"round": 10, "params_NP": _Boom(marker)}, ckpt)
    elif how == "plain pickle":
        ckpt.write_bytes(pickle.dumps({"round": 10, "x": _Boom(marker)}))
    else:  # a valid snapshot file whose payload carries the object
        torch.save({"format": snapshot_io.FORMAT, "snapshot": {"round": 10, "rows": _Boom(marker)}}, ckpt)
    capsys.readouterr()
    code = cli.main(["run", "--resume", str(interrupted_run), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert not marker.exists(), "unpickling the checkpoint ran code"
    assert code == 2 and len(err.splitlines()) == 1 and "checkpoint.pt" in err, err
    assert (interrupted_run / "metrics.csv").read_text() == rows_before


def test_a_snapshot_names_no_class_and_round_trips(tmp_path):
    """What is written holds no global a weights-only unpickler would have to admit, and reads back equal."""

    class Inner(NamedTuple):
        m: torch.Tensor
        steps: int

    import sys
    import types

    module = types.ModuleType("peerlearn_test_states")
    module.Inner = Inner
    Inner.__module__, Inner.__qualname__ = module.__name__, "Inner"
    sys.modules[module.__name__] = module
    try:
        snap = {"round": 7, "params_NP": torch.randn(3, 4), "state": (Inner(torch.ones(2), 3), None),
                "sampler": {"perm": np.arange(5, dtype=np.int64), "seed": np.uint32(9), "name": np.str_("x"), "f": np.float64(2.5),
                            "rng": {"state": 2**100 + 1, "inc": 5}},
                "rows": [{"round": 0, "acc_mean": 0.5, "epsilon": float("nan")}]}
        path = tmp_path / "c.pt"
        snapshot_io.save(snap, path)
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
        back = snapshot_io.load(path)
        assert type(back["state"][0]) is Inner and back["state"][0].steps == 3
        assert torch.equal(back["state"][0].m, torch.ones(2)) and back["state"][1] is None
        assert torch.equal(back["params_NP"], snap["params_NP"])
        perm = back["sampler"]["perm"]
        assert isinstance(perm, np.ndarray) and perm.dtype == np.int64 and (perm == np.arange(5)).all()
        assert back["sampler"]["seed"] == 9 and back["sampler"]["seed"].dtype == np.uint32
        assert back["sampler"]["rng"]["state"] == 2**100 + 1 and back["sampler"]["name"] == "x"
        assert back["sampler"]["f"] == 2.5 and back["sampler"]["f"].dtype == np.float64
        assert np.isnan(back["rows"][0]["epsilon"])
    finally:
        del sys.modules[module.__name__]


def test_a_snapshot_naming_a_class_that_is_not_loaded_imports_nothing(tmp_path):
    """A file's word never imports a module: ``os.path`` is loaded but not a NamedTuple, and a module that
    is not loaded is not imported."""
    path = tmp_path / "c.pt"
    for name in ("os.system", "peerlearn_no_such_module.State", "collections.OrderedDict"):
        torch.save({"format": snapshot_io.FORMAT, "snapshot": {"s": {"__namedtuple__": name, "fields": {}}}}, path)
        with pytest.raises(snapshot_io.SnapshotError, match="not a loaded NamedTuple"):
            snapshot_io.load(path)
    import sys

    assert "peerlearn_no_such_module" not in sys.modules


def test_writing_a_state_that_is_not_data_names_where_it_is(tmp_path):
    with pytest.raises(snapshot_io.SnapshotError, match=r"snapshot\.state\[1\]: a builtins\.object"):
        snapshot_io.save({"state": (1, object())}, tmp_path / "c.pt")

    class Local(NamedTuple):
        x: int

    with pytest.raises(snapshot_io.SnapshotError, match="defined inside a function"):
        snapshot_io.save({"state": Local(1)}, tmp_path / "c.pt")


def test_sweep_overwrite_deletes_only_run_folders_it_made_inside_its_folder(tmp_path, capsys):
    """H3: ``sweep --overwrite`` removed every ``dir`` an old sweep.json named: absolute paths, ``..`` and a
    symlink each deleted a folder outside the sweep."""
    import json

    from peerlearn.report.run_dir import RUN_MARKER
    from peerlearn.sweep import Sweep

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    (outside / RUN_MARKER).write_text("forged")  # a marker alone does not make a folder deletable
    out = tmp_path / "sweep"
    (out / "old" / "seed0").mkdir(parents=True)
    (out / "old" / "seed0" / RUN_MARKER).write_text("a peerlearn run folder\n")
    (out / "notes").mkdir()
    (out / "notes" / "mine.txt").write_text("mine")
    (out / "link").symlink_to(outside, target_is_directory=True)
    (out / "linked").mkdir()
    (out / "linked" / "run").symlink_to(outside, target_is_directory=True)
    cells = [{"dir": d} for d in (str(outside), "../outside", "link", "linked/run", "notes", "old/seed0", ".")]
    (out / "sweep.json").write_text(json.dumps({"definition": {"old": True}, "cells": cells}))
    sweep = Sweep(out, cells=[], definition={"new": True}, workers=1, threads=1)
    sweep.check_out(overwrite=True)
    sweep.run()
    assert (outside / "keep").read_text() == "precious"
    assert (out / "notes" / "mine.txt").read_text() == "mine" and (out / "sweep.json").is_file()
    # the links were never followed: the folder they point to is whole; the links themselves are gone (L1:
    # nothing is written through a link in a folder peerlearn reuses)
    assert sorted(p.name for p in outside.iterdir()) == [RUN_MARKER, "keep"]
    assert not (out / "link").is_symlink() and not (out / "linked" / "run").is_symlink()
    assert not (out / "old" / "seed0").exists()  # the one folder the old sweep made: replaced
    note = capsys.readouterr().err
    assert "left alone" in note and len(note.strip().splitlines()) == 1


def test_every_run_folder_carries_the_marker(tmp_path):
    from peerlearn.report.run_dir import RUN_MARKER

    out = tmp_path / "run"
    assert cli.main(["run", QUICK, *SMALL, "--out", str(out), "--quiet"]) == 0
    assert (out / RUN_MARKER).is_file()


def test_loading_a_downloaded_model_imports_no_plugin_beside_it(tmp_path):
    """M1: ``results.load_model`` imported the ``plugins:`` named in final_model.pt, resolved in the run folder:
    a ``helpers.py`` beside a downloaded model ran on load."""
    import sys

    from peerlearn import results

    run = tmp_path / "downloaded"
    assert cli.main(["run", QUICK, *SMALL, "--out", str(run), "--quiet"]) == 0
    saved = torch.load(run / "final_model.pt", weights_only=True)
    saved["config"]["plugins"] = ["helpers.py"]
    torch.save(saved, run / "final_model.pt")
    marker = tmp_path / "pwned"
    (run / "helpers.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(ValueError, match=r"names plugins \['helpers.py'\].*trust_plugins=True"):
        results.load_model(run)
    assert not marker.exists() and "helpers" not in sys.modules
    assert isinstance(results.load_model(tmp_path / "downloaded", trust_plugins=True), torch.nn.Module)
    assert marker.exists()  # said so: the plugin is code, and it ran


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "../up", "a/b", "tab\there", ".."])
def test_a_run_name_is_a_plain_folder_name(name, tmp_path, capsys):
    """L: ``name: /abs/path`` wrote outside runs/; control characters reached the terminal."""
    config = tmp_path / "c.yaml"
    config.write_text(f"name: {name!r}\nnum_nodes: 8\nnum_rounds: 2\n".replace("'", '"'))
    code = cli.main(["validate", str(config)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "name" in err and "plain folder name" in err, err


def test_markup_and_mathtext_in_a_run_name_are_shown_as_text(tmp_path, capsys, monkeypatch):
    """L: a name with rich markup or ``$...$`` crashed the summary or the plots after the run."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text('name: "odd [bold]x[red] $x_{ $ name"\nnum_nodes: 8\nnum_rounds: 4\neval_every: 2\n')
    assert cli.main(["run", str(config)]) == 0
    assert "odd [bold]x[red] $x_{ $ name" in capsys.readouterr().out
    run = tmp_path / "runs" / "odd [bold]x[red] $x_{ $ name"
    assert (run / "accuracy.png").is_file() and (run / "summary.json").is_file()


def test_the_traceback_file_is_a_fresh_private_file(tmp_path, monkeypatch, capsys):
    """L: the traceback file had a predictable name in /tmp and followed a planted symlink."""
    import os
    import re
    import stat
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = cli._internal_error(RuntimeError("boom"))
    err = capsys.readouterr().err
    path = re.search(r"traceback saved to (\S+)", err).group(1)
    assert code != 0 and os.path.dirname(path) == str(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and "RuntimeError: boom" in open(path).read()


def _forged_batch(path, dtype_name: bytes, flags: int):
    """A CIFAR-layout batch whose array's dtype is renamed and whose dtype state flags are rewritten."""
    import re

    arr = np.full((2, 1), 0x4141414141414141, dtype=np.int64)
    buf = pickle.dumps({b"data": arr, b"labels": [1, 2]}, protocol=2)
    buf = buf.replace(b"X\x02\x00\x00\x00i8", b"X\x02\x00\x00\x00" + dtype_name)
    buf = re.sub(rb"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t", b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK" + bytes([flags]) + b"t",
                 buf)
    path.write_bytes(buf)


@pytest.mark.parametrize("dtype_name, flags, message", [(b"O8", 63, "dtype 'O8'"), (b"i8", 63, "forged state"),
                                                       (b"i8", 0, "b'data' must be N x 3072 bytes")])
def test_a_cifar_batch_never_hands_numpy_a_dtype_from_the_file(tmp_path, dtype_name, flags, message):
    """M2: the CIFAR unpickler admitted ``numpy.dtype`` with its BUILD state: a forged dtype made numpy read
    an object pointer from raw bytes. Now the file's dtype is a name checked against integer types, its
    state against numpy's canonical one, and the array is rebuilt from bytes by peerlearn."""
    from pathlib import Path

    from peerlearn.data.images import _read_batch

    path = tmp_path / "data_batch_1"
    _forged_batch(path, dtype_name, flags)
    with pytest.raises(ValueError, match=message) as err:
        _read_batch(Path(path), b"labels")
    assert "\n" not in str(err.value)


@pytest.mark.integration
@pytest.mark.skipif(__import__("shutil").which("ss") is None, reason="needs ss (iproute2)")
def test_a_one_machine_distributed_run_listens_on_loopback_only(tmp_path):
    """H1 (first part): with ``--nproc`` the launch's store listened on every interface (TCPStore binds
    ``*`` when given a port): anyone who reached it could join the run. Every listening socket of the
    launcher and its ranks must be on 127.0.0.1."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    config = tmp_path / "c.yaml"
    config.write_text("num_nodes: 8\nnum_rounds: 100000\neval_every: 1000\nmodel: {name: mlp, hidden: [8]}\n"
                      "algorithm: {name: dsgd, lr: 0.1, batch_size: 8}\n")
    proc = subprocess.Popen([sys.executable, "-m", "peerlearn", "run", str(config), "--engine", "distributed",
                             "--nproc", "2", "--out", str(tmp_path / "run"), "--quiet", "--timeout-s", "20"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, listening = time.monotonic() + 120, {}
        while time.monotonic() < deadline and proc.poll() is None:
            pids = set(subprocess.run(["ps", "-o", "pid=", "-s", str(proc.pid)], capture_output=True,
                                      text=True).stdout.split())
            listening = {}
            for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines():
                owners = set(re.findall(r"pid=(\d+)", line))
                if owners & pids:
                    listening[line.split()[3]] = owners & pids
            ranks = len(pids) >= 3  # the launcher and both ranks are up
            if ranks and len(listening) >= 2 and (tmp_path / "run" / "metrics.csv").exists():
                break  # the store and gloo's listeners are up and the ranks have started training
            time.sleep(0.5)
        assert listening, "no listening socket of the run was found"
        assert all(addr.startswith("127.0.0.1:") for addr in listening), listening
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _plugin_run(tmp_path, monkeypatch):
    """A run made with the example plugin, stopped after round 10 (its folder signed with this account's key)."""
    import shutil

    from tests.conftest import interrupt_after

    plugin_dir = Path(__file__).resolve().parents[1] / "examples" / "plugin"
    shutil.copy(plugin_dir / "my_parts.py", tmp_path / "my_parts.py")
    shutil.copy(plugin_dir / "plugin.yaml", tmp_path / "plugin.yaml")
    out = tmp_path / "run"
    restore = interrupt_after(monkeypatch, 10)
    assert cli.main(["run", str(tmp_path / "plugin.yaml"), "--out", str(out), "--quiet", "--set", "num_rounds=20",
                     "--set", "eval_every=10"]) == 130
    restore()
    return out


def test_resume_imports_plugins_only_from_a_run_folder_you_signed(tmp_path, monkeypatch, capsys):
    """M1: ``--resume`` imported the plugins a run folder's config names. Now only a folder that carries this
    account's signature of them (as their files are now) imports them without --trust-plugins."""
    out = _plugin_run(tmp_path, monkeypatch)
    snapshot = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def fresh_copy():
        for name, data in snapshot.items():
            (out / name).write_bytes(data)

    monkeypatch.setenv("PEERLEARN_OWNER_KEY", str(tmp_path / "someone-else.key"))  # another account
    capsys.readouterr()
    assert cli.main(["run", "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "does not carry your signature" in err and "--trust-plugins" in err, err
    assert err.count("\n") == 1
    assert cli.main(["run", "--resume", str(out), "--quiet", "--trust-plugins"]) == 0  # your word
    assert cli.main(["run", "--trust-plugins", QUICK]) == 2  # only means something with --resume


def test_an_edited_plugin_or_a_crafted_folder_is_not_imported_on_resume(tmp_path, monkeypatch, capsys):
    import yaml

    out = _plugin_run(tmp_path, monkeypatch)
    ran = tmp_path / "ran"
    plugin = Path(yaml.safe_load((out / "config.yaml").read_text())["plugins"][0])
    plugin.write_text(plugin.read_text() + f"\nopen({str(ran)!r}, 'w').close()\n")  # changed since the run
    assert cli.main(["run", "--resume", str(out), "--quiet"]) == 2
    assert not ran.exists()
    assert "a plugin file changed since" in capsys.readouterr().err

    # a folder from elsewhere: a real interrupted run whose config names a plugin shipped beside it, with the
    # marker of a signed run copied in
    other = tmp_path / "downloaded"
    other.mkdir()
    for name in ("checkpoint.pt", "metrics.csv", ".peerlearn-run"):
        (other / name).write_bytes((out / name).read_bytes())
    (other / "evil.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["plugins"] = [str(other / "evil.py")]
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    assert cli.main(["run", "--resume", str(other), "--quiet"]) == 2
    assert not ran.exists()


M3_CASES = {  # issue 36, M3: each asked for far more than any machine has, and was built before any check
    "faults": ("num_nodes: 20000\nnum_rounds: 1000000\nfaults: {crash_fraction: 0.1}\nmodel: {name: logreg}\n",
               "faults: the faults' timeline of 1,000,001 rounds x 20,000 nodes needs about"),
    "erdos_renyi": ("num_nodes: 20000\ntopology: {graph: erdos_renyi, p: 1.0}\nmodel: {name: logreg}\n",
                    "topology.graph: erdos_renyi on 20,000 nodes (about 199,990,000 edges) needs about"),
    "mnist1d": ("data: {dataset: mnist1d, num_samples: 100000000}\n",
                "data.num_samples: 100,000,000 generated samples"),
}


@pytest.mark.integration
def test_sizes_that_grow_with_the_config_are_refused_before_any_work(tmp_path):
    """M3 under a 3 GiB address-space limit (``ulimit -v``): a faults timeline of rounds x nodes, a dense random
    graph and a generated dataset's sample count are each one line naming the field, exit 2, in seconds."""
    import os
    import resource
    import subprocess
    import sys

    for name, (text, _) in M3_CASES.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    script = ("import sys; from peerlearn import cli\n"
              f"for name in {list(M3_CASES)!r}:\n"
              f"    code = cli.main(['run', {str(tmp_path)!r} + '/' + name + '.yaml', '--out', {str(tmp_path)!r} + "
              "'/out-' + name, '--quiet'])\n"
              "    print(name, code, file=sys.stderr, flush=True)\n")
    limit = 3 * 2**30
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 0 and len(lines) == 2 * len(M3_CASES), proc.stderr
    for (name, (_, message)), (error, done) in zip(M3_CASES.items(), zip(lines[::2], lines[1::2])):
        assert done == f"{name} 2", (name, proc.stderr)
        assert error.startswith(f"config error: {message}") and "GiB available" in error, (name, error)
        assert not (tmp_path / f"out-{name}").exists()


def test_a_huge_seed_list_is_refused_before_it_is_made():
    from peerlearn.config import ConfigError
    from peerlearn.sweep import MAX_SEEDS, parse_seeds

    with pytest.raises(ConfigError, match=r"--seeds '0-1000000000': 1,000,000,001 seeds; a sweep runs at most"):
        parse_seeds("0-1000000000")
    assert len(parse_seeds(f"0-{MAX_SEEDS - 1}")) == MAX_SEEDS


def test_nothing_is_written_through_a_link_planted_in_a_reused_folder(tmp_path, interrupted_run):
    """L1: ``--out DIR --overwrite`` wrote through symlinks planted in DIR (config.yaml -> a user's file, logs ->
    a folder elsewhere); ``--resume`` of a folder from elsewhere likewise. The targets stay as they were."""
    victim, victim_dir = tmp_path / "victim.txt", tmp_path / "victim_dir"
    victim.write_text("the user's file\n")
    victim_dir.mkdir()
    out = tmp_path / "reused"
    out.mkdir()
    for name in ("config.yaml", "metrics.csv", "summary.json", "report.html", "final_model.pt", "checkpoint.pt.tmp",
                 ".peerlearn-run"):
        (out / name).symlink_to(victim)
    (out / "plots").symlink_to(victim_dir)
    assert cli.main(["run", QUICK, *SMALL, "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert victim.read_text() == "the user's file\n" and list(victim_dir.iterdir()) == []
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert (out / "metrics.csv").stat().st_size > 0

    (interrupted_run / "config.yaml").rename(interrupted_run / "config.real")
    (interrupted_run / "config.real").rename(tmp_path / "config.yaml")  # a link to a config that resumes
    (interrupted_run / "config.yaml").symlink_to(tmp_path / "config.yaml")
    before = (tmp_path / "config.yaml").read_bytes()
    (interrupted_run / "summary.json").unlink(missing_ok=True)
    (interrupted_run / "summary.json").symlink_to(victim)
    assert cli.main(["run", "--resume", str(interrupted_run), "--quiet"]) == 0
    assert victim.read_text() == "the user's file\n" and (tmp_path / "config.yaml").read_bytes() == before


def test_compare_and_results_read_only_the_runs_inside_a_sweep_folder(tmp_path, capsys):
    """L4: ``compare`` and ``results`` followed ``sweep.json`` entries out of the sweep folder (absolute paths,
    ``..``, a symlink). A sweep.json is data: only the run folders inside it are read."""
    import json
    import shutil

    from peerlearn.results import run_dirs

    run = tmp_path / "elsewhere" / "private-run"
    assert cli.main(["run", QUICK, *SMALL, "--out", str(run), "--quiet"]) == 0
    sweep = tmp_path / "downloaded-sweep"
    (sweep / "cells").mkdir(parents=True)
    shutil.copytree(run, sweep / "cells" / "a")
    (sweep / "cells" / "link").symlink_to(run)
    entries = ["cells/a", str(run), "../elsewhere/private-run", "cells/link", 7, None]
    (sweep / "sweep.json").write_text(json.dumps({"cells": [{"dir": d, "cell": "c"} for d in entries] + ["junk"]}))
    assert run_dirs([sweep]) == [sweep / "cells" / "a"]
    (sweep / "sweep.json").write_text("[1, 2]")
    with pytest.raises(FileNotFoundError, match="not a peerlearn sweep manifest"):
        run_dirs([sweep])
