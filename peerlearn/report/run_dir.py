"""The run directory: ``config.yaml``, ``metrics.csv`` (appended row by row), ``summary.json``, plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import yaml

from peerlearn.engines.run import COLUMNS
from peerlearn.paths import drop_links
from peerlearn.report.ownership import marker_text


FINAL_MODEL = "final_model.pt"
MODEL_FORMAT = "peerlearn.final_model/1"


def flatten_config(config: dict, prefix: str = "") -> dict:
    """A nested config as ``{"algorithm.lr": 0.1, ...}``; lists become their text (one cell, one param)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value) if isinstance(value, (list, tuple)) else value
    return out


def strict_json(value):
    """``value`` with every non-finite float as ``None``: ``summary.json`` is valid JSON (RFC 8259 has no NaN),
    read by any strict parser (``jq``, JavaScript, ``json.loads(..., parse_constant=...)``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def choose_run_dir(out: str | None, name: str, overwrite: bool = False) -> Path:
    """``out`` if given, else a fresh ``runs/<name>[-k]``. A folder that holds anything is refused unless
    ``overwrite``: an earlier run, or a user's files (a run would replace its config.yaml)."""
    if out is not None:
        path = Path(out)
        blocked = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            raise FileExistsError(f"--out {path}: {blocked} is a file, not a folder; choose another --out")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            held = sorted(p.name for p in path.iterdir())
            earlier = (path / "metrics.csv").exists() or (path / "matrix.csv").exists()
            what = "an earlier run" if earlier else \
                f"files that are not a peerlearn run ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''})"
            raise FileExistsError(f"--out {path}: holds {what}; choose another folder or pass --overwrite")
        return path
    base = Path("runs") / name
    path, k = base, 1
    while path.exists():
        path, k = Path(f"{base}-{k}"), k + 1
    return path


CHECKPOINT = "checkpoint.pt"
RUN_MARKER = ".peerlearn-run"
SCORES_DIR = "attribution"  # per-node attribution scores, one CSV per evaluated round
"""Written into every run folder when it is made: a sweep's ``--overwrite`` deletes only folders holding it, and
``--resume`` imports a run's plugins only when it holds your signature of them (:mod:`.ownership`)."""


class RunWriter:
    """Writes one run's directory as the run goes, so an interrupted run keeps what it computed.

    ``rows`` (when resuming) are the rows of the checkpoint: ``metrics.csv`` is rewritten with
    them, dropping anything written after the checkpoint, and the run appends from there.
    """

    def __init__(self, path: Path, config: dict, rows: list[dict] | None = None, checkpoint_every: int = 0):
        self.path = Path(path)
        self.checkpoint_every = checkpoint_every
        self._checkpointed = int(rows[-1]["round"]) if rows else None  # round of the checkpoint on disk
        self.path.mkdir(parents=True, exist_ok=True)
        drop_links(self.path)  # a reused folder (--overwrite, --resume) may hold planted links
        # the plugins a resume may import again, signed with your key
        (self.path / RUN_MARKER).write_text(marker_text(config.get("plugins") or []))
        for stale in ("metrics.csv", "summary.json", "cooperation_graph.csv", "cooperation_graph.png", FINAL_MODEL, FINAL_MODEL + ".tmp", "report.html", CHECKPOINT + ".tmp",
                      "metrics.csv.tmp") + ((CHECKPOINT,) if rows is None else ()):
            (self.path / stale).unlink(missing_ok=True)
        if rows is None:  # a fresh run in a reused folder: the last run's per-round scores go
            for stale in sorted((self.path / SCORES_DIR).glob("round_*.csv")):
                stale.unlink()
        (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.config = config
        self.rows: list[dict] = []
        self.columns = list(COLUMNS)  # the fixed leading columns, then every other metric as it first appears
        self._open("w")
        for row in rows or ():
            self.append(row)

    @property
    def checkpointed_round(self) -> int | None:
        """The round of the checkpoint on disk (None: none written)."""
        return self._checkpointed

    def _open(self, mode: str) -> None:
        self._file = open(self.path / "metrics.csv", mode, newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=self.columns)
        if mode == "w":
            self._csv.writeheader()
            self._file.flush()

    def _widen(self, new: list[str]) -> None:
        """A metric appeared that earlier rows lack: rewrite the CSV with the wider header (atomically)."""
        self._file.close()
        self.columns += new
        tmp = self.path / "metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=self.columns)
            out.writeheader()
            for row in self.rows[:-1]:
                out.writerow({k: row.get(k, math.nan) for k in self.columns})
        tmp.replace(self.path / "metrics.csv")
        self._open("a")

    def checkpoint(self, snapshot: dict) -> None:
        """Save ``snapshot`` (from the engine) atomically: a kill mid-write leaves the previous one.

        With ``checkpoint_every = k > 0`` only snapshots at least k rounds after the last one saved
        are written (snapshots come at evaluated rounds; the first one is always written)."""
        from peerlearn.report import snapshot_io

        round_ = int(snapshot["round"])
        if self.checkpoint_every and self._checkpointed is not None and round_ - self._checkpointed < self.checkpoint_every:
            return
        self._checkpointed = round_
        tmp = self.path / (CHECKPOINT + ".tmp")
        snapshot_io.save({**snapshot, "config": self.config}, tmp)  # the config it belongs to: --resume checks it
        tmp.replace(self.path / CHECKPOINT)

    def scores(self, round_: int, table: dict) -> None:
        """``attribution/round_<r>.csv``: every node's attribution score at evaluated round ``r`` (node, honest,
        score), written atomically."""
        folder = self.path / SCORES_DIR
        folder.mkdir(exist_ok=True)
        node, honest = table["node"].double().cpu().tolist(), table["honest"].cpu().tolist()
        tmp = folder / f"round_{round_:06d}.csv.tmp"
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["node", "honest", "score"])
            out.writerows([i, int(h), repr(v)] for i, (h, v) in enumerate(zip(honest, node)))
        tmp.replace(folder / f"round_{round_:06d}.csv")

    def artifacts(self, named: dict) -> None:
        """What the algorithm learned beside the models: each ``[N, N]`` (or ``[N]``) tensor as ``<name>.csv``
        (rows: nodes) and, for a matrix, a heat map ``<name>.png``."""
        from peerlearn.report.plots import plot_matrix_heat

        for name, value in named.items():
            table = value.detach().double().cpu()
            table = table[:, None] if table.ndim == 1 else table
            tmp = self.path / f"{name}.csv.tmp"
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows([[repr(v) for v in row] for row in table.tolist()])
            tmp.replace(self.path / f"{name}.csv")
            if table.shape[1] > 1:
                plot_matrix_heat(table.numpy(), self.path / f"{name}.png", name.replace("_", " "))

    def save_model(self, params_NP, honest_N, input_shape: tuple, num_classes: int) -> None:
        """``final_model.pt``: every node's final model (``params_NP``, N x P), the honest nodes' average, and
        what :func:`peerlearn.results.load_model` needs to rebuild the module (written atomically)."""
        import torch

        honest = torch.ones(params_NP.shape[0], dtype=torch.bool) if honest_N is None else honest_N
        tmp = self.path / (FINAL_MODEL + ".tmp")
        torch.save({"format": MODEL_FORMAT, "params_NP": params_NP.detach().float().cpu().clone(),
                    "average": params_NP[honest].double().mean(0).float().cpu(), "honest_N": honest.cpu().clone(),
                    "input_shape": list(input_shape), "num_classes": int(num_classes), "config": self.config}, tmp)
        tmp.replace(self.path / FINAL_MODEL)

    def append(self, row: dict) -> None:
        """Write one evaluated row; every key the engine or the algorithm returned becomes a column."""
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self._widen(new)
        self._csv.writerow({k: row.get(k, math.nan) for k in self.columns})
        self._file.flush()

    def finish(self, status: str = "completed", extra: dict | None = None) -> dict:
        """Close the CSV, write ``summary.json`` and the plots; returns the summary.

        A completed run drops its checkpoint; an interrupted one keeps it for ``--resume``."""
        self._file.close()
        if status == "completed":
            (self.path / CHECKPOINT).unlink(missing_ok=True)
        final = dict(self.rows[-1]) if self.rows else {}
        summary = {
            "name": self.config.get("name"), "status": status,
            "num_nodes": self.config["num_nodes"], "seed": self.config["seed"],
            "rounds_completed": int(final.get("round", 0)),
            "wall_time_s": final.get("wall_time_s", 0.0),
            "final": final, **(extra or {}),
        }
        (self.path / "summary.json").write_text(json.dumps(strict_json(summary), indent=2, allow_nan=False))
        if self.rows:
            from peerlearn.report.html import write_report
            from peerlearn.report.plots import plot_run

            plots = plot_run(self.rows, self.path, title=str(self.config.get("name")))
            write_report(self.path / "report.html", self.config, summary, plots)
        return summary


def load_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """``(config dict, snapshot)`` of an interrupted run directory, for ``peerlearn run --resume``."""
    from peerlearn.report import snapshot_io

    path = Path(path)
    ckpt, config = path / CHECKPOINT, path / "config.yaml"
    if not ckpt.is_file() or not config.is_file():
        done = (read_summary(path) or {}).get("status") == "completed"
        raise FileNotFoundError(f"--resume {path}: " + ("the run is already complete" if done else
                                "no checkpoint.pt and config.yaml there (not a run directory, or it "
                                "stopped before its first evaluation)"))
    try:
        data = yaml.safe_load(config.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise FileNotFoundError(f"--resume {path}: config.yaml is not readable YAML ({str(err).splitlines()[0]})") \
            from None
    if not isinstance(data, dict):
        raise FileNotFoundError(f"--resume {path}: config.yaml does not hold a config (a mapping of keys)")
    try:  # data only (weights_only): a run folder from elsewhere must not run code when resumed
        snapshot = snapshot_io.load(ckpt)
    except snapshot_io.SnapshotError as err:
        raise FileNotFoundError(f"--resume {path}: checkpoint.pt: {err}; the rows in metrics.csv are kept; start a "
                                "new run to go on") from None
    except Exception as err:  # truncated, empty, random, foreign or a pickle naming code: torch raises many kinds
        raise FileNotFoundError(f"--resume {path}: checkpoint.pt is unreadable as data ({type(err).__name__}); the "
                                "rows in metrics.csv are kept; start a new run to go on") from None
    missing = [k for k in SNAPSHOT_KEYS if not isinstance(snapshot, dict) or k not in snapshot]
    if missing:
        raise FileNotFoundError(f"--resume {path}: checkpoint.pt is not a peerlearn checkpoint (no "
                                f"{', '.join(missing)}); the rows in metrics.csv are kept")
    return data, snapshot


SNAPSHOT_KEYS = ("round", "params_NP", "state", "rows", "sampler")  # what every engine's snapshot holds


def config_changes(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """The keys whose values differ between two config mappings, as ``key (old -> new)``."""
    out = []
    for key in sorted(set(saved) | set(now), key=str):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return out


def read_summary(path: str | Path) -> dict | None:
    """A run directory's ``summary.json`` (None before the run wrote one); its ``final`` metrics' nulls
    (metrics that were not a number) come back as NaN."""
    summary_file = Path(path) / "summary.json"
    if not summary_file.is_file():
        return None
    summary = json.loads(summary_file.read_text())
    if isinstance(summary.get("final"), dict):
        summary["final"] = {k: math.nan if v is None else v for k, v in summary["final"].items()}
    return summary


def read_run(path: str | Path) -> tuple[dict, list[dict]]:
    """``(summary, rows)`` of a run directory (summary may be partial for an interrupted run)."""
    path = Path(path)
    metrics = path / "metrics.csv"
    if not metrics.is_file():
        raise FileNotFoundError(f"{path}: not a run directory (no metrics.csv)")
    with open(metrics, newline="") as f:
        rows = [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()} for r in csv.DictReader(f)]
    summary = read_summary(path) or {"name": path.name, "status": "interrupted", "final": rows[-1] if rows else {}}
    summary.setdefault("name", path.name)
    return summary, rows
