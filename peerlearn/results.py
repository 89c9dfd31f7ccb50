"""Results in Python: run directories and sweeps as pandas DataFrames, and the saved final models.

>>> from peerlearn import results
>>> df = results.load("runs/sweep-lr")             # a sweep, a run directory, a glob or a list of them
>>> df.groupby(["algorithm.lr", "round"]).acc_mean.agg(["mean", "std"])
>>> final = results.load_summary("runs/sweep-lr")  # one row per run: status and final metrics
>>> model = results.load_model("runs/quickstart")   # the honest nodes' average as a torch.nn.Module

Columns of :func:`load`: every column of ``metrics.csv`` as written, then ``run`` (the run directory),
``status``, every config key flattened with dots (``algorithm.lr``, ``topology.graph``, ``seed`` ...; a
key that collides with a metric is prefixed ``config.``), and, for runs of a sweep, ``cell`` (its folder),
``label`` (its variant and grid values, readable) and ``variant``. Empty CSV cells (a metric not measured at that row) are NaN.
"""

from __future__ import annotations

import glob as globbing
import json
from pathlib import Path

import yaml

from peerlearn.paths import inside
from peerlearn.report.run_dir import FINAL_MODEL, MODEL_FORMAT, flatten_config, read_summary

SWEEP_FILE = "sweep.json"


def run_dirs(paths) -> list[Path]:
    """The run directories named by ``paths``: run directories, sweep directories (their runs), globs of
    either, or folders holding runs (searched below), in a stable order without repeats."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for item in paths:
        text = str(item)
        matches = sorted(globbing.glob(text)) if any(c in text for c in "*?[") else [text]
        if not matches:
            raise FileNotFoundError(f"{text}: matches no file")
        for match in map(Path, matches):
            if (match / "metrics.csv").is_file():
                found.append(match)
            elif (match / SWEEP_FILE).is_file():  # its cells' folders, only those inside it (the file is data)
                found += [path for path in (inside(match, c.get("dir")) for c in _manifest_cells(match))
                          if path is not None and (path / "metrics.csv").is_file()]
            elif match.is_dir():
                below = sorted(p.parent for p in match.rglob("metrics.csv"))
                if not below:
                    raise FileNotFoundError(f"{match}: holds no run (no metrics.csv in it or below it)")
                found += below
            else:
                raise FileNotFoundError(f"{match}: not a run or sweep directory")
    return list(dict.fromkeys(found))


def _manifest_cells(folder: Path) -> list[dict]:
    """The cells a sweep folder's ``sweep.json`` lists (entries that are not mappings are skipped); a
    FileNotFoundError naming the file when it is not a sweep manifest."""
    try:
        cells = json.loads((folder / SWEEP_FILE).read_text())["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        raise FileNotFoundError(f"{folder / SWEEP_FILE}: not a peerlearn sweep manifest") from None
    if not isinstance(cells, list):
        raise FileNotFoundError(f"{folder / SWEEP_FILE}: not a peerlearn sweep manifest")
    return [c for c in cells if isinstance(c, dict)]


def _sweep_labels(run: Path, manifests: dict[Path, dict]) -> dict:
    """``cell``, ``label`` and ``variant`` of a run inside a sweep directory (its parents hold sweep.json);
    ``manifests`` keeps each manifest read once per call of :func:`load` or :func:`load_summary`."""
    for parent in run.parents:
        manifest = parent / SWEEP_FILE
        if manifest.is_file():
            if parent not in manifests:
                manifests[parent] = {c.get("dir"): {"cell": c.get("cell"), "label": c.get("label") or c.get("cell"),
                                                    "variant": c.get("variant")} for c in _manifest_cells(parent)}
            return manifests[parent].get(run.relative_to(parent).as_posix(), {})
    return {}


def _config_columns(run: Path, taken: set[str]) -> dict:
    config_file = run / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    flat = flatten_config(config if isinstance(config, dict) else {})
    return {(f"config.{k}" if k in taken else k): v for k, v in flat.items()}


def load(paths):
    """One row per evaluated round of every run named by ``paths`` (see :func:`run_dirs`), as a DataFrame."""
    import pandas as pd

    frames, manifests = [], {}
    for run in run_dirs(paths):
        metrics = pd.read_csv(run / "metrics.csv")
        extra = {"run": str(run), "status": (read_summary(run) or {"status": "interrupted"}).get("status"),
                 **_sweep_labels(run, manifests),
                 **_config_columns(run, set(metrics.columns) | {"run", "status", "cell", "label", "variant"})}
        for key, value in extra.items():
            metrics[key] = value
        frames.append(metrics)
    return pd.concat(frames, ignore_index=True)


def swarm(path):
    """A p2p swarm's folder (``peer<i>/`` run folders, from ``--engine p2p --nproc K``) as one row per evaluated
    round: ``peers`` (how many reported it), every ``*_mean`` column (``acc_mean``, ``loss_mean``, an algorithm's
    ``heads_acc_mean``, ...) averaged over the peers' honest nodes, ``acc_min``/``acc_max`` over every peer's nodes, ``wall_time_s`` (the last peer's), and the sums of
    bytes and message counts. A peer that died stops reporting: its rounds after that count the live ones."""
    import json

    import numpy as np
    import pandas as pd

    folders = sorted(p for p in Path(path).glob("peer*") if (p / "metrics.csv").is_file() and (p / "peer.json").is_file())
    if not folders:
        raise FileNotFoundError(f"{path}: no peer<i>/ run folders of a swarm (peerlearn run --engine p2p --nproc K)")
    frames = []
    for folder in folders:
        card = json.loads((folder / "peer.json").read_text())
        frame = pd.read_csv(folder / "metrics.csv")
        frame["weight"] = card.get("honest_nodes", card["nodes"][1] - card["nodes"][0])
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    summed = [c for c in ("bytes_sent_total", "payload_bytes_sent", "overhead_bytes_sent", "bytes_received",
                          "dropped_messages", "unsent_messages", "refused_messages", "messages_sent", "messages_received") if c in rows]

    def merge(group):
        w = group["weight"].to_numpy(dtype=float)
        out = {"peers": len(group), "wall_time_s": group["wall_time_s"].max(),
               "acc_min": group["acc_min"].min(), "acc_max": group["acc_max"].max()}
        for key in [c for c in group.columns if c.endswith("_mean")]:
            values = group[key].to_numpy(dtype=float)
            ok = ~np.isnan(values) & (w > 0)
            out[key] = float(np.average(values[ok], weights=w[ok])) if ok.any() else float("nan")
        out.update({c: group[c].sum() for c in summed})
        if "epsilon" in group:  # the privacy spent by the swarm's worst node
            out["epsilon"] = group["epsilon"].max()
        return pd.Series(out)

    merged = rows.groupby("round").apply(merge, include_groups=False).reset_index()
    return merged.astype({c: "int64" for c in ("peers", *summed)})


def load_summary(paths):
    """One row per run: ``run``, ``status``, ``rounds_completed``, ``wall_time_s``, the final evaluated
    row's metrics (``final_`` prefix dropped: same names as :func:`load`) and the config columns."""
    import pandas as pd

    records, manifests = [], {}
    for run in run_dirs(paths):
        summary = read_summary(run) or {"status": "interrupted"}
        final = summary.get("final") or {}
        if not final:  # interrupted before summary.json: the last row written
            last = pd.read_csv(run / "metrics.csv").tail(1).to_dict("records")
            final = last[0] if last else {}
        head = {"run": str(run), "status": summary.get("status"),
                "rounds_completed": summary.get("rounds_completed", final.get("round")),
                "run_wall_time_s": summary.get("wall_time_s")}
        records.append({**head, **final, **_sweep_labels(run, manifests),
                        **_config_columns(run, set(final) | set(head) | {"cell", "label", "variant"})})
    return pd.DataFrame.from_records(records)


def _signed_by_you(run_dir, plugins: list) -> bool:
    from peerlearn.report.ownership import signed_by_you
    from peerlearn.report.run_dir import RUN_MARKER

    return isinstance(plugins, list) and signed_by_you(Path(run_dir) / RUN_MARKER, plugins)


def load_model(run_dir, node: int | str = "average", trust_plugins: bool = False):
    """The model a run ended with, as a ``torch.nn.Module`` in eval mode: ``node="average"`` (default) the
    honest nodes' average, an integer the model of that node. Reads ``final_model.pt`` (written at the end
    of every completed run unless ``save_model: false``) as data.

    A run whose config names ``plugins:`` needs them to rebuild its model, and a plugin is code (resolved
    in the run folder): they are imported only when the folder carries your signature of them (a run you
    made here, as ``--resume`` checks) or with ``trust_plugins=True``, for a run folder you trust;
    otherwise a ValueError names them."""
    import torch

    from peerlearn.config import parse_config

    path = Path(run_dir) / FINAL_MODEL
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {FINAL_MODEL} (the run did not complete, or ran with save_model: false)")
    saved = torch.load(path, weights_only=True)
    if saved.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a peerlearn final model (format {saved.get('format')!r})")
    config = saved.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: holds no config mapping")
    plugins = config.get("plugins") or []
    if plugins and not trust_plugins and not _signed_by_you(run_dir, plugins):
        raise ValueError(f"{run_dir}: its config names plugins {plugins}, which are code that would run here; pass "
                         "trust_plugins=True only for a run folder you trust")
    cfg = parse_config(config, base_dir=Path(run_dir).resolve())
    module = cfg.model.build(tuple(saved["input_shape"]), saved["num_classes"])
    if node == "average":
        vector = saved["average"]
    elif isinstance(node, int) and 0 <= node < saved["params_NP"].shape[0]:
        vector = saved["params_NP"][node]
    else:
        raise ValueError(f"node: 'average' or a node index in 0..{saved['params_NP'].shape[0] - 1}, got {node!r}")
    torch.nn.utils.vector_to_parameters(vector.clone(), module.parameters())
    return module.eval()
