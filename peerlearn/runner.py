"""One run into its run folder, whatever the engine: what ``peerlearn run`` (the simulator, the event
engine, each rank of a distributed run) and the sweep's cells (which are ``peerlearn run`` processes)
share.

:func:`load_resume` reads an interrupted run's config and checkpoint as data (its plugins only when the
folder is yours); :func:`check` asks what a config needs of this machine (the trackers' extras);
:func:`start` checks, sets the threads, builds the run (every config error surfaces here,
before any folder is written) and chooses the allocator; :class:`RunFolder` is the folder being written (``metrics.csv``,
trackers, checkpoints, the final model) with the engine callbacks that feed it; :func:`outcome` runs
the engine and turns how it ended into the run's status (``completed``, ``interrupted`` on Ctrl-C,
``diverged`` when the divergence rule stopped it, ``stopped`` when a distributed rank could not go on);
:meth:`RunFolder.finish` writes the summary for that status. :data:`EXIT_CODE` maps a status to the
process's exit code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

EXIT_CODE = {"completed": 0, "left": 0, "interrupted": 130}  # any other status: 1 ("left": a p2p peer's planned
# leave, peerlearn.engines.p2p.churn)


def compute_setup(cfg) -> dict:
    """Threads (``threads`` or the idle cores), before the run allocates; what was chosen goes into
    summary.json (with the allocator mode, filled in by :func:`allocator_for`)."""
    import torch

    from peerlearn.device import resolve
    from peerlearn.report.sinks import environment
    from peerlearn.resources import choose_threads

    threads, load = choose_threads(cfg.threads)
    torch.set_num_threads(threads)
    return {"threads": threads, "load_average_1m": round(load, 2), "malloc": "system",
            "environment": environment(str(resolve(cfg.device)))}


def allocator_for(built, compute: dict) -> None:
    """Keep freed memory for reuse (the steady state without page faults, benchmarks/README.md) when the
    run's estimated memory is at most a quarter of what is available: a heap that never gives memory back
    can fragment (1M logistic-regression nodes peaked at 18 GB with glibc's default and ran out of 24 GB
    with freed memory kept). ``PEERLEARN_MALLOC=system`` always leaves glibc as it is."""
    from peerlearn.resources import available_memory_bytes, keep_freed_memory, run_memory_bytes

    if os.environ.get("PEERLEARN_MALLOC", "").lower() == "system":
        return
    have = available_memory_bytes()
    if have is not None and 4 * run_memory_bytes(built) <= have and keep_freed_memory():
        compute["malloc"] = "kept"


def check(cfg) -> None:
    """What a run of a valid config needs of this machine beyond the config: its ``device`` here and every
    tracker's extra installed (a ConfigError naming it). ``peerlearn run``, ``validate``, ``sweep`` and
    ``matrix`` check it before any work."""
    if cfg.device != "cpu":
        from peerlearn.device import resolve

        resolve(cfg.device)
    if cfg.tracking:
        from peerlearn.report.trackers import check_trackers

        check_trackers(cfg.tracking)


def start(cfg) -> tuple[dict, object]:
    """``(compute, built)``: the run checked (:func:`check`) and built (a ConfigError before anything is
    written), the threads set, the allocator chosen."""
    from peerlearn.build import build

    check(cfg)
    compute = compute_setup(cfg)
    built = build(cfg)
    allocator_for(built, compute)
    return compute, built


def load_resume(run_dir: str, trust_plugins: bool = False, note: Callable[[str], None] = lambda line: None,
                device: str | None = None) -> tuple[object, dict]:
    """``(cfg, snapshot)`` of the interrupted run in ``run_dir``, for ``--resume``: its config.yaml and checkpoint
    read as data; its plugins imported only when the folder carries your signature of them or
    ``trust_plugins``; a config.yaml edited since the checkpoint refused, naming the changed keys. ``note``
    gets a line when the config holds keys this peerlearn no longer reads (they are ignored). ``device``
    continues the run on another device (checkpoints are saved from the host: a GPU run resumes on a CPU)."""
    from peerlearn.config import ConfigError, load_plugins, parse_config, prune_unread, to_dict
    from peerlearn.report.run_dir import config_changes, load_checkpoint

    data, resume = load_checkpoint(run_dir)
    plugins = data.get("plugins") or []
    listed = isinstance(plugins, list)  # a lone name is checked, not loaded: parse_config refuses it below
    _check_plugins_are_yours(run_dir, plugins if listed else [plugins], trust_plugins)  # before any import
    load_plugins(plugins if listed else [])  # their members' keys are read keys
    data, dropped = prune_unread(data)
    if dropped:  # a run directory written before keys belonged to members
        note(f"{run_dir}/config.yaml holds keys its parts do not read (written by an earlier peerlearn); ignored: "
             f"{', '.join(dropped)}")
    cfg = parse_config(data)
    changed = []
    if "config" in resume:  # a section or key added to peerlearn since the checkpoint counts as its default
        try:
            saved = to_dict(parse_config(prune_unread(dict(resume["config"]))[0]))
        except ConfigError:  # not a config this peerlearn reads: compare what there is
            saved = {**{k: v for k, v in to_dict(parse_config({})).items() if k not in resume["config"]},
                     **resume["config"]}
        changed = config_changes(saved, to_dict(cfg))
    if changed:  # one run, one config: an edited config.yaml would mix two
        raise ConfigError(f"config error: --resume {run_dir}: config.yaml differs from the one the checkpoint "
                          f"was written with: {', '.join(changed)}; restore it, or start a new run")
    if device is not None:
        cfg = cfg.model_copy()
        cfg.device = device  # validated on assignment
    return cfg, resume


def _check_plugins_are_yours(run_dir: str, plugins: list, trusted: bool) -> None:
    """A resumed run imports its config's plugins (code) only when the folder holds your signature of them,
    or you said --trust-plugins; otherwise one line naming them, before anything is imported."""
    from peerlearn.config import ConfigError
    from peerlearn.report.ownership import signed_by_you
    from peerlearn.report.run_dir import RUN_MARKER

    if plugins and not trusted and not signed_by_you(Path(run_dir) / RUN_MARKER, plugins):
        raise ConfigError(f"config error: --resume {run_dir}: its config names plugins "
                          f"({', '.join(map(str, plugins))}), which are code, and the folder does not carry your "
                          "signature of them (a run from elsewhere, or a plugin file changed since): read them, "
                          "then pass --trust-plugins")


class RunFolder:
    """A run folder being written: ``metrics.csv`` and the trackers get every row (``on_eval``),
    checkpoints come from the engine (``on_checkpoint``), the final models at the end (``on_finish``).

    Args:
        cfg: the run's config (written as ``config.yaml``).
        path: the folder (chosen by :func:`peerlearn.report.choose_run_dir`, or the resumed one).
        resume: the checkpoint a resumed run continues from (its rows are kept, later ones dropped).
        lines: print a progress line per row (when the output is not a terminal).
    """

    def __init__(self, cfg, path: Path, resume: dict | None = None, lines: bool = False):
        from peerlearn.config import to_dict
        from peerlearn.report import RunWriter
        from peerlearn.report.sinks import RunSinks

        self.cfg, self.path = cfg, Path(path)
        self.writer = RunWriter(self.path, to_dict(cfg), rows=None if resume is None else resume["rows"],
                                checkpoint_every=cfg.checkpoint_every)
        self.sinks = RunSinks(cfg, self.writer, lines=lines, first_round=0 if resume is None else resume["round"])

    def callbacks(self, built, checkpoints: bool = True) -> dict:
        """The engine's ``on_eval``, ``on_finish`` and (``checkpoints``) ``on_checkpoint``."""
        out = {"on_eval": self.sinks, "on_finish": self.sinks.save_model(built)}
        if checkpoints:
            out["on_checkpoint"] = self.writer.checkpoint
        if getattr(built, "attribution", None) is not None:  # the simulator's scorer (other engines refuse one)
            out["on_scores"] = self.writer.scores
        if getattr(getattr(built, "algorithm", None), "artifacts", None) is not None:  # simulator-only algorithms
            out["on_artifacts"] = self.writer.artifacts
        return out

    def finish(self, status: str, compute: dict) -> dict:
        """Close the trackers and write ``summary.json`` (and the report) for ``status``; the summary."""
        return self.sinks.finish(status, compute)


def outcome(go: Callable[[], object], say: Callable[[str, BaseException], None] = lambda status, err: None) -> str:
    """Run ``go()`` (the engine) and return the run's status; ``say(status, error)`` is called for a run that
    did not complete, to tell the user in one line (the rows written so far stay either way)."""
    from peerlearn.engines.membership import RunStopped

    try:
        go()
    except KeyboardInterrupt as err:
        say("interrupted", err)
        return "interrupted"
    except FloatingPointError as err:  # the divergence rule
        say("diverged", err)
        return "diverged"
    except RunStopped as err:  # a distributed rank left out, or the run lost what it cannot lose
        say("stopped", err)
        return "stopped"
    return "completed"
