"""Sweeps: a config run over seeds x a grid of keys (x named variants), by a pool of worker processes.

Every cell of a sweep is an ordinary run directory, ``DIR/<cell>/seed<k>/``, run by its own
``peerlearn run`` process, so a sweep's runs read, resume and compare like any other. ``DIR/sweep.json``
records the plan and every cell's status as it ends (atomically rewritten); running the same sweep
again into ``DIR`` skips completed (and diverged) cells, resumes interrupted ones from their checkpoint
and retries failed ones. ``DIR/summary.csv`` aggregates the seeds of each cell (mean, std, min, max of
the final metrics; rounds and MB to a target) and ``DIR/accuracy.{png,pdf}`` draws the mean curves
with +-1 std bands.

A sweep is given on the command line (``--seeds 0,1,2 --grid algorithm.lr=0.05,0.1``) or declared in the
config under ``sweep:`` (so a paper's experiment is one file)::

    sweep:
      seeds: [0, 1, 2]
      grid: {algorithm.lr: [0.05, 0.1]}
      variants:                     # optional: named methods, each a config file and/or overrides
        MoDeST: {config: modest.yaml}
        D-SGD ring: {set: {algorithm.name: dsgd}}
      target: 0.9                   # optional: rounds / MB until acc_mean first reaches it
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from peerlearn.paths import drop_links, inside
from peerlearn.spec import ConfigError, format_error

SWEEP_FILE = "sweep.json"
FINAL_METRICS = ("acc_mean", "acc_min", "acc_max", "acc_avg_model", "acc_alive_mean", "attack_success", "loss_mean",
                 "consensus_distance", "bytes_sent_per_node", "sim_time_s", "epsilon", "round", "wall_time_s",
                 # with eval_train (peerlearn.engines.run.GENERALIZATION_COLUMNS)
                 "train_acc_mean", "train_eval_loss_mean", "test_loss_mean", "gap_acc_mean", "gap_loss_mean",
                 "train_acc_avg_model", "train_eval_loss_avg_model", "test_loss_avg_model")
DONE = ("completed", "diverged")  # a re-run leaves these; interrupted ones resume, failed ones run again
MAX_SEEDS = 10_000
"""Seeds one sweep may run: more is a typo (``0-1000000000``), not an experiment, and would be listed first."""


class Variant(BaseModel):
    """A named method of a sweep: a config file (relative to the sweep's file) and/or overrides."""

    model_config = ConfigDict(extra="forbid")
    config: str | None = Field(None, description="config file of this variant (default: the sweep's own file)")
    set: dict[str, Any] = Field({}, description="overrides, as --set key=value")


class SweepSpec(BaseModel):
    """The ``sweep:`` section of a config (every key also has a command-line flag)."""

    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(None, description="title of the figure and table")
    seeds: list[int] = Field([0], min_length=1, max_length=MAX_SEEDS, description="seeds each cell runs with")
    grid: dict[str, list[Any]] = Field({}, description="key -> values; the sweep runs their cartesian product")
    variants: dict[str, Variant] = Field({}, description="named methods compared (each x grid x seeds)")
    workers: int | None = Field(None, ge=1, le=256, description="runs at once (default: the cores and memory allow)")
    launcher: Literal["local", "ray", "slurm"] = Field(
        "local", description="where the runs execute: processes here, Ray tasks (RAY_ADDRESS, else a local "
                             "cluster), or Slurm jobs through submitit (peerlearn[ray], peerlearn[slurm])")
    slurm: dict[str, Any] = Field({}, description="slurm launcher: partition, minutes (per run, default 60), cpus "
                                                  "(default: the threads per run), gpus")
    target: float | None = Field(None, description="report rounds and MB per node until target_metric reaches this")
    target_metric: str = Field("acc_mean", description="metric of target and of the figure")
    x: Literal["round", "sim_time_s", "epsilon"] = Field(
        "round", description="the figure's x axis: rounds, simulated seconds (synchronous vs asynchronous runs) "
                             "or the privacy spent")


@dataclass
class Cell:
    """One run of the sweep: a variant x grid point x seed."""

    cell: str  # the cell's name (variant and grid point), shared by its seeds
    seed: int
    dir: str  # run directory, relative to the sweep directory
    config: str  # config file the run reads
    overrides: list[str]
    variant: str | None = None
    grid: dict = field(default_factory=dict)
    label: str = ""  # readable name: variant, then key=value of the grid point
    status: str = "pending"
    error: str | None = None
    wall_time_s: float | None = None


def _as_value(value: Any) -> str:
    """A value as ``--set`` parses it back (YAML): strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_") or "_"


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["key=v1,v2", ...]`` -> ``{key: [v1, v2]}`` (values parsed as YAML, like ``--set``)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ConfigError(f"config error: --grid {item!r}: expected key=v1,v2,..., e.g. --grid algorithm.lr=0.05,0.1")
        try:
            grid[key.strip()] = [yaml.safe_load(v) for v in raw.split(",")]
        except yaml.YAMLError:
            raise ConfigError(f"config error: --grid {item!r}: a value is not valid YAML") from None
    return grid


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` -> seeds (at most :data:`MAX_SEEDS`, counted before any list is made)."""
    try:
        ranges = []
        for part in text.split(","):
            lo, sep, hi = part.partition("-")
            ranges.append(range(int(lo), int(hi) + 1) if sep else range(int(part), int(part) + 1))
    except ValueError:
        raise ConfigError(f"config error: --seeds {text!r}: integers, e.g. --seeds 0,1,2 or --seeds 0-4") from None
    count = sum(len(r) for r in ranges)
    if count > MAX_SEEDS:
        raise ConfigError(f"config error: --seeds {text[:40]!r}: {count:,} seeds; a sweep runs at most {MAX_SEEDS:,}")
    seeds = [seed for r in ranges for seed in r]
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"config error: --seeds {text!r}: at least one seed, none negative")
    return list(dict.fromkeys(seeds))


def load_sweep(path: str | Path) -> SweepSpec:
    """The ``sweep:`` section of a config file (defaults when it has none)."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    section = raw.get("sweep") if isinstance(raw, dict) else None
    if section is None:
        return SweepSpec()
    if not isinstance(section, dict):
        raise ConfigError(f"config error: sweep: expected a mapping of keys, got {type(section).__name__}")
    try:
        return SweepSpec.model_validate(section)
    except ValidationError as err:
        raise ConfigError(format_error(err, "sweep")) from None


def plan(config: str | Path, spec: SweepSpec, extra: list[str] = ()) -> list[Cell]:
    """Every cell (variants x grid x seeds), each checked as a config (one line naming the cell) before any runs."""
    from peerlearn import runner
    from peerlearn.config import load_config

    base = Path(config)
    variants = spec.variants or {None: Variant()}
    keys = list(spec.grid)
    cells, checked = [], set()
    for (name, variant), point in itertools.product(variants.items(), itertools.product(*spec.grid.values())):
        grid = dict(zip(keys, point))
        file = str((base.parent / variant.config).resolve()) if variant.config else str(base)
        overrides = [*extra, *(f"{k}={_as_value(v)}" for k, v in variant.set.items()),
                     *(f"{k}={_as_value(v)}" for k, v in grid.items())]
        label = ",".join(([_slug(name)] if name is not None else []) + [_slug(f"{k}={_as_value(v)}")
                                                                          for k, v in grid.items()])
        label = label or "base"
        if (file, tuple(overrides)) not in checked:
            checked.add((file, tuple(overrides)))
            try:
                runner.check(load_config(file, overrides))
            except ConfigError as err:
                raise ConfigError(f"{err} (sweep cell {label})") from None
        for seed in spec.seeds:
            readable = ", ".join(([name] if name is not None else []) + [f"{k}={v}" for k, v in grid.items()])
            cells.append(Cell(cell=label, seed=seed, dir=f"{label}/seed{seed}", config=file,
                              overrides=[*overrides, f"seed={seed}", f"name={label}"], variant=name, grid=grid,
                              label=readable or label))
    dirs = [c.dir for c in cells]
    if len(set(dirs)) != len(dirs):
        raise ConfigError("config error: sweep: two cells share a folder name (variants or grid values that differ "
                          "only in characters other than letters, digits and ._=+-)")
    return cells


def default_workers(cells: list[Cell]) -> tuple[int, int]:
    """``(workers, threads per worker)``: as many runs at once as idle cores and memory allow (a run's
    estimated memory from its first cell's dataset and model size, plus ~0.5 GB for a Python process with
    torch; no node models are allocated here)."""
    from peerlearn.build import estimate_memory_bytes
    from peerlearn.config import load_config
    from peerlearn.resources import available_memory_bytes, choose_threads

    cores, _ = choose_threads(None)
    per_run = estimate_memory_bytes(load_config(cells[0].config, cells[0].overrides)) + 5e8
    have = available_memory_bytes()
    by_memory = max(1, int(0.8 * have // per_run)) if have else cores
    workers = max(1, min(cores, by_memory, len(cells)))
    return workers, max(1, cores // workers)


def _status_of(run_dir: Path) -> str | None:
    from peerlearn.report.run_dir import read_summary

    try:
        summary = read_summary(run_dir)
    except (json.JSONDecodeError, OSError):
        return None
    if summary is not None:
        return summary.get("status")
    return "interrupted" if (run_dir / "checkpoint.pt").is_file() else None


def removable_run_dir(out: Path, rel: Any) -> Path | None:
    """The folder ``rel`` (from a manifest: data, not trusted) if a sweep in ``out`` may delete it: a relative
    path inside ``out``, reached through no symlink (:func:`peerlearn.paths.inside`), holding the marker every
    run folder gets; else None."""
    from peerlearn.report.run_dir import RUN_MARKER

    path = inside(out, rel)
    if path is None:
        return None
    marker = path / RUN_MARKER
    return path if path.is_dir() and marker.is_file() and not marker.is_symlink() else None


class Sweep:
    """Runs the cells of a sweep in ``out`` with ``workers`` processes; ``on_done(cell, done, total)`` per cell."""

    def __init__(self, out: Path, cells: list[Cell], definition: dict, workers: int, threads: int,
                 launcher: str = "local", slurm: dict | None = None):
        self.out, self.cells, self.definition = Path(out), cells, definition
        self.workers, self.threads = workers, threads
        self.launcher, self.slurm = launcher, slurm or {}  # where the cells run (peerlearn.launchers)
        self.manifest = self.out / SWEEP_FILE
        self.replaced: list[str] = []  # run folders of a different sweep that --overwrite replaces
        self.grown = False  # the folder holds this sweep with fewer cells (check_out)

    def check_out(self, overwrite: bool) -> None:
        """``out`` must be empty, or hold this same sweep (then it resumes) or this sweep with fewer cells
        (then only the new ones run); another sweep or a user's files are refused."""
        if not self.out.exists():
            return
        if not self.out.is_dir():
            raise FileExistsError(f"--out {self.out}: is a file, not a folder; choose another --out")
        if self.manifest.is_file():
            try:
                old = json.loads(self.manifest.read_text())
            except json.JSONDecodeError:
                old = {}
            if old.get("definition") == self.definition:
                pass  # this sweep: it resumes
            elif self._grows(old):
                self.grown = True  # more seeds or grid values: only the new cells run
            elif not overwrite:
                raise FileExistsError(f"--out {self.out}: holds a different sweep (another config, grid or "
                                      "seeds); choose another folder, or pass --overwrite to run this one there")
            else:  # its runs were made with other settings: none of them may count as done for this sweep
                self.replaced = [c["dir"] for c in old.get("cells", []) if isinstance(c, dict) and "dir" in c]
        elif any(self.out.iterdir()) and not overwrite:
            raise FileExistsError(f"--out {self.out}: holds files that are not a peerlearn sweep; choose another "
                                  "folder or pass --overwrite")

    def _grows(self, old: dict) -> bool:
        """Whether this sweep is the old one (a manifest: data) with cells added: every old run is one of
        this sweep's, with the same config file and overrides (more seeds, more values of a grid key)."""
        cells = old.get("cells")
        if not isinstance(cells, list) or not cells:
            return False
        mine = {(c.dir, c.config, tuple(c.overrides)) for c in self.cells}
        return all(isinstance(c, dict) and (c.get("dir"), c.get("config"), tuple(c.get("overrides") or ())) in mine
                   for c in cells)

    def refresh(self) -> list[Cell]:
        """Each cell's status from what is on disk (a cell killed with the sweep resumes); the cells left to run."""
        for cell in self.cells:
            status = None if cell.dir in self.replaced else _status_of(self.out / cell.dir)
            cell.status = status if status in (*DONE, "interrupted") else "pending"
        return [c for c in self.cells if c.status not in DONE]

    def _save(self) -> None:
        tmp = self.manifest.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"definition": self.definition, "workers": self.workers, "threads": self.threads,
                                   "cells": [asdict(c) for c in self.cells]}, indent=1))
        tmp.replace(self.manifest)

    def _log(self, cell: Cell) -> Path:
        return self.out / "logs" / f"{cell.dir.replace('/', '-')}.log"

    def _command(self, cell: Cell) -> list[str]:
        run_dir = self.out / cell.dir
        if cell.status == "interrupted" and (run_dir / "checkpoint.pt").is_file():  # as refresh() found it
            return [sys.executable, "-m", "peerlearn", "run", "--resume", str(run_dir)]
        sets = [a for o in cell.overrides for a in ("--set", o)]
        return [sys.executable, "-m", "peerlearn", "run", cell.config, *sets, "--out", str(run_dir), "--overwrite"]

    def run(self, on_done: Callable[[Cell, int, int], None] | None = None) -> list[Cell]:
        """Run every cell not done yet; returns the cells. Ctrl-C (or SIGTERM) stops the running cells,
        which keep their checkpoints, and raises KeyboardInterrupt after the manifest is saved."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        left = []
        for rel in self.replaced:  # the replaced sweep's run folders: only those it listed, made and holds
            path = removable_run_dir(self.out, rel)
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
            elif (self.out / str(rel)).exists() or Path(str(rel)).is_absolute():
                left.append(str(rel))
        if left:
            print(f"note: the replaced sweep.json named {len(left)} folder(s) outside --out, behind a symlink or "
                  f"not made by peerlearn; left alone: {', '.join(left[:3])}{', ...' if len(left) > 3 else ''}",
                  file=sys.stderr)
        self.replaced = []
        drop_links(self.out)  # nothing is written through a link planted in the folder
        todo = self.refresh()
        done = len(self.cells) - len(todo)
        self._save()
        from peerlearn.launchers import make_launcher

        env = {"OMP_NUM_THREADS": str(self.threads), "PYTHONUNBUFFERED": "1"}
        running: dict[Any, tuple[Cell, float]] = {}  # job -> (cell, started)
        launcher = make_launcher(self.launcher, self.out, self.threads, self.slurm) if todo else None
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while todo or running:
                while todo and len(running) < self.workers:
                    cell = todo.pop(0)
                    job = launcher.start(self._command(cell), self._log(cell), env)
                    cell.status = "running"
                    running[job] = (cell, time.perf_counter())
                finished = [(job, code) for job in running if (code := job.poll()) is not None]
                if not finished:
                    time.sleep(0.1)
                    continue
                for job, code in finished:
                    cell, started = running.pop(job)
                    self._record(cell, code, time.perf_counter() - started)
                    done += 1
                    self._save()
                    if on_done is not None:
                        on_done(cell, done, len(self.cells))
        except KeyboardInterrupt:
            for job in running:  # each run saves its rows and checkpoint on SIGINT
                job.interrupt()
            deadline = time.monotonic() + 60
            for job, (cell, started) in running.items():
                job.wait(max(0.1, deadline - time.monotonic()))
                cell.status = _status_of(self.out / cell.dir) or "interrupted"
                if cell.status == "completed":
                    cell.error = None
            self._save()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            if launcher is not None:
                launcher.close()
        return self.cells

    def _record(self, cell: Cell, code: int, seconds: float) -> None:
        status = _status_of(self.out / cell.dir)
        cell.wall_time_s = round(seconds, 2)
        if code == 0 and status == "completed":
            cell.status, cell.error = "completed", None
            return
        cell.status = status if status in ("diverged", "stopped") else "failed"
        log = self._log(cell).read_text(errors="replace").splitlines()
        errors = [line for line in log if line.startswith(("error", "config error"))]
        cell.error = (errors[-1] if errors else (log[-1] if log else f"exit code {code}")).strip()[:500]


def aggregate(runs, cells: list[Cell], target: float | None = None, target_metric: str = "acc_mean"):
    """``summary.csv``'s table: one row per cell, mean / std (over seeds, ddof 1) / min / max of the final
    metrics of its completed runs (``runs``: run folder -> its rows as a DataFrame); with ``target``, the
    rounds and MB per node until ``target_metric`` first reached it (mean over the seeds that reached it)
    and how many did."""
    import pandas as pd

    from peerlearn.metrics import first_reaching

    records = []
    for cell_name in dict.fromkeys(c.cell for c in cells):
        members = [c for c in cells if c.cell == cell_name]
        first = members[0]
        row: dict[str, Any] = {"cell": cell_name, "label": first.label, "variant": first.variant, **first.grid,
                               "seeds": len(members), "completed": sum(c.status == "completed" for c in members),
                               "failed": ";".join(f"seed {c.seed}: {c.status}" for c in members
                                                  if c.status != "completed")}
        finals, hits = [], []
        for c in members:
            rows = runs.get(c.dir)
            if c.status != "completed" or rows is None or rows.empty:
                continue
            finals.append(rows.iloc[-1])
            if target is not None and target_metric in rows:
                hits.append(first_reaching(rows.to_dict("records"), target, target_metric))
        final = pd.DataFrame(finals)
        for metric in FINAL_METRICS:
            values = final[metric] if metric in final else pd.Series(dtype=float)
            if values.notna().any():
                row.update({f"{metric}_mean": values.mean(), f"{metric}_std": values.std(ddof=1),
                            f"{metric}_min": values.min(), f"{metric}_max": values.max()})
        if target is not None:
            got = [h for h in hits if h is not None]
            row["target_reached"] = f"{len(got)}/{len(hits)}"
            row["rounds_to_target_mean"] = float(pd.Series([h["round"] for h in got]).mean()) if got else math.nan
            row["mb_to_target_mean"] = (float(pd.Series([h["bytes_sent_per_node"] for h in got]).mean()) / 1e6
                                        if got else math.nan)
            row["sim_s_to_target_mean"] = (float(pd.Series([h.get("sim_time_s", math.nan) for h in got]).mean())
                                           if got else math.nan)
        records.append(row)
    return pd.DataFrame.from_records(records)


def summarize(out: Path, cells: list[Cell], spec: SweepSpec, group: str = "cell"):
    """Write ``summary.csv`` (atomically) and ``accuracy.{png,pdf}`` for the sweep in ``out``; returns the
    summary table (a DataFrame)."""
    from peerlearn.report.plots import plot_bands
    from peerlearn.results import load

    out = Path(out)
    done = [c for c in cells if c.status == "completed" and (out / c.dir / "metrics.csv").is_file()]
    df = load([out / c.dir for c in done]) if done else None  # aggregate reads only completed runs' rows
    by_run = {} if df is None else dict(tuple(df.groupby("run", sort=False)))
    table = aggregate({c.dir: by_run[str(out / c.dir)] for c in done}, cells, spec.target, spec.target_metric)
    tmp = out / "summary.csv.tmp"
    table.to_csv(tmp, index=False)
    tmp.replace(out / "summary.csv")
    if df is not None:
        metric = spec.target_metric if spec.target_metric in df else "acc_mean"
        group = "label" if group == "cell" else group
        plot_bands(df, group, [out / "accuracy.png", out / "accuracy.pdf"], metric=metric, x=spec.x,
                   title=spec.title or f"{out.name}: mean ± std over seeds {', '.join(map(str, spec.seeds))}")
    return table


def mean_pm(row: dict, metric: str, scale: float = 1.0, digits: int = 3) -> str:
    """``mean ± std`` of ``metric`` in a summary row (``-`` when not measured; no spread for one seed)."""
    mean, std = row.get(f"{metric}_mean", math.nan), row.get(f"{metric}_std", math.nan)
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    spread = "" if std is None or (isinstance(std, float) and math.isnan(std)) else f" ± {std / scale:.{digits}f}"
    return f"{mean / scale:.{digits}f}{spread}"


def cell_label(row: dict) -> str:
    """A summary row's readable name: its variant and grid values (the folder name is a slug of it)."""
    return str(row.get("label") or row["cell"])


def markdown_table(table, spec: SweepSpec) -> str:
    """The sweep's summary as a Markdown table (mean ± std over seeds), as the docs show it."""
    timed = "sim_time_s_mean" in table and bool(table["sim_time_s_mean"].notna().any()) and spec.x == "sim_time_s"
    private = "epsilon_mean" in table and bool(table["epsilon_mean"].notna().any())
    gap = "gap_acc_mean_mean" in table and bool(table["gap_acc_mean_mean"].notna().any())  # eval_train
    head = ["run", "seeds ok", "final acc mean", "acc min", "averaged model", "MB sent per node"]
    head += ["simulated s"] * timed + ["epsilon"] * private
    head += ["train acc", "gap: train - test acc", "gap: test - train loss"] * gap
    if spec.target is not None:
        head += [f"round to {spec.target:g}", f"MB to {spec.target:g}"] + [f"sim s to {spec.target:g}"] * timed
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.to_dict("records"):
        cells = [cell_label(row), f"{row['completed']}/{row['seeds']}", mean_pm(row, "acc_mean"),
                 mean_pm(row, "acc_min"), mean_pm(row, "acc_avg_model"), mean_pm(row, "bytes_sent_per_node", 1e6, 2)]
        cells += [mean_pm(row, "sim_time_s", digits=1)] * timed + [mean_pm(row, "epsilon", digits=1)] * private
        cells += [mean_pm(row, "train_acc_mean"), mean_pm(row, "gap_acc_mean"), mean_pm(row, "gap_loss_mean")] * gap
        if spec.target is not None:
            rounds, mb = row.get("rounds_to_target_mean", math.nan), row.get("mb_to_target_mean", math.nan)
            reached = row.get("target_reached", "")
            cells += ["never" if math.isnan(rounds) else f"{rounds:.0f} ({reached})",
                      "-" if math.isnan(mb) else f"{mb:.2f}"]
            if timed:
                sim = row.get("sim_s_to_target_mean", math.nan)
                cells.append("-" if sim is None or math.isnan(sim) else f"{sim:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def reproduction_files() -> dict[str, Path]:
    """The declared reproductions, name -> file: ``configs/reproduce/*.yaml`` under the working directory (a
    checkout, or a user's own), else those bundled with peerlearn."""
    from peerlearn import bundled

    folder = Path.cwd() / "configs" / "reproduce"
    if folder.is_dir() and folder.resolve() != bundled.REPRODUCTIONS:
        return {p.stem: p for p in sorted(folder.glob("*.yaml"))}
    return bundled.reproductions()
