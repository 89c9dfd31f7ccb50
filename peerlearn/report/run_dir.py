"""The run directory: ``config.yaml``, ``metrics.csv`` (appended row by row), ``summary.json``, plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import yaml

from peerlearn.engines.run import COLUMNS


def choose_run_dir(out: str | None, name: str, overwrite: bool = False) -> Path:
    """``out`` if given (refusing to mix with an earlier run unless ``overwrite``), else a fresh ``runs/<name>[-k]``."""
    if out is not None:
        path = Path(out)
        if (path / "metrics.csv").exists() and not overwrite:
            raise FileExistsError(f"--out {path}: holds an earlier run; choose another folder or pass --overwrite")
        return path
    base = Path("runs") / name
    path, k = base, 1
    while path.exists():
        path, k = Path(f"{base}-{k}"), k + 1
    return path


CHECKPOINT = "checkpoint.pt"


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
        for stale in ("metrics.csv", "summary.json") + ((CHECKPOINT,) if rows is None else ()):
            (self.path / stale).unlink(missing_ok=True)
        (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.config = config
        self.rows: list[dict] = []
        self.columns = list(COLUMNS)  # the fixed leading columns, then every other metric as it first appears
        self._open("w")
        for row in rows or ():
            self.append(row)

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
        import torch

        round_ = int(snapshot["round"])
        if self.checkpoint_every and self._checkpointed is not None and round_ - self._checkpointed < self.checkpoint_every:
            return
        self._checkpointed = round_
        tmp = self.path / (CHECKPOINT + ".tmp")
        torch.save(snapshot, tmp)
        tmp.replace(self.path / CHECKPOINT)

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
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True))
        if self.rows:
            from peerlearn.report.plots import plot_run

            plot_run(self.rows, self.path, title=str(self.config.get("name")))
        return summary


def load_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """``(config dict, snapshot)`` of an interrupted run directory, for ``peerlearn run --resume``."""
    import torch

    path = Path(path)
    ckpt, config = path / CHECKPOINT, path / "config.yaml"
    if not ckpt.is_file() or not config.is_file():
        summary = path / "summary.json"
        done = summary.is_file() and json.loads(summary.read_text()).get("status") == "completed"
        raise FileNotFoundError(f"--resume {path}: " + ("the run is already complete" if done else
                                "no checkpoint.pt and config.yaml there (not a run directory, or it "
                                "stopped before its first evaluation)"))
    # our own file, written by RunWriter.checkpoint: it holds NamedTuple states, hence weights_only=False
    return yaml.safe_load(config.read_text()), torch.load(ckpt, weights_only=False)


def read_run(path: str | Path) -> tuple[dict, list[dict]]:
    """``(summary, rows)`` of a run directory (summary may be partial for an interrupted run)."""
    path = Path(path)
    metrics = path / "metrics.csv"
    if not metrics.is_file():
        raise FileNotFoundError(f"{path}: not a run directory (no metrics.csv)")
    with open(metrics, newline="") as f:
        rows = [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()} for r in csv.DictReader(f)]
    summary_file = path / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {
        "name": path.name, "status": "interrupted", "final": rows[-1] if rows else {}}
    summary.setdefault("name", path.name)
    return summary, rows
