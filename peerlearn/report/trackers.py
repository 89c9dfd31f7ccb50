"""Experiment trackers: TensorBoard, Weights & Biases and MLflow, each an optional extra.

``tracking: [tensorboard, wandb, mlflow]`` in a config sends every evaluation row, as it is written to
``metrics.csv``, to each tracker named. Nothing needs a network: TensorBoard writes event files into the
run directory (``tensorboard/``), W&B runs in offline mode into ``wandb/`` (``wandb sync`` uploads it
later; ``WANDB_MODE`` set by the user wins), MLflow logs to a local file store ``mlruns/`` (an
``MLFLOW_TRACKING_URI`` set by the user wins). The core never imports them: a tracker named without
its extra installed is a one-line config error naming the extra, before the run starts.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

from peerlearn.report.run_dir import flatten_config
from peerlearn.spec import ConfigError

# tracker -> (module that must import, extra that installs it)
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


def check_trackers(names: list[str]) -> None:
    """One line naming the extra to install, for the first tracker whose package is missing."""
    for name in names:
        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"config error: tracking: {name} needs its extra: pip install 'peerlearn[{extra}]' "
                              f"(or pip install {module}); or remove it from tracking")


def _numbers(row: dict) -> dict[str, float]:
    """The row's finite numeric metrics (trackers plot numbers; NaN means 'not measured' here)."""
    out = {}
    for key, value in row.items():
        if key != "round" and isinstance(value, (int, float)) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


class TensorBoardTracker:
    """Scalars per evaluated round into ``<run>/tensorboard`` (``tensorboard --logdir <run>``)."""

    def __init__(self, run_dir: Path, config: dict, first_round: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run goes on after its checkpoint's round: what was logged after it is rolled back
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"),
                                    purge_step=first_round + 1 if first_round else None)
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flatten_config(config).items()))

    def log(self, row: dict) -> None:
        step = int(row["round"])
        for key, value in _numbers(row).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # an interrupted run keeps every row it logged

    def close(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()


class WandbTracker:
    """An offline W&B run in ``<run>/wandb`` (``wandb sync <run>/wandb/offline-run-*`` uploads it)."""

    def __init__(self, run_dir: Path, config: dict, first_round: int = 0):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "peerlearn"), name=str(config.get("name")),
                              dir=str(run_dir), config=flatten_config(config), mode=os.environ.get("WANDB_MODE", "offline"),
                              reinit=True)

    def log(self, row: dict) -> None:
        self.run.log(_numbers(row), step=int(row["round"]))

    def close(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "completed" else 1)


class MlflowTracker:
    """An MLflow run in the local file store ``<run>/mlruns`` (``mlflow ui --backend-store-uri <run>/mlruns``)."""

    def __init__(self, run_dir: Path, config: dict, first_round: int = 0):
        if "MLFLOW_TRACKING_URI" not in os.environ:  # MLflow 3 refuses a file store unless asked (a database
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # store needs SQLAlchemy, not in skinny)
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", (Path(run_dir) / "mlruns").resolve().as_uri()))
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "peerlearn"))
        mlflow.start_run(run_name=str(config.get("name")))
        params = flatten_config(config)
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per call
            mlflow.log_params(dict(list(params.items())[start:start + 100]))

    def log(self, row: dict) -> None:
        self.mlflow.log_metrics(_numbers(row), step=int(row["round"]))

    def close(self, status: str) -> None:
        self.mlflow.end_run(status="FINISHED" if status == "completed" else "KILLED")


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


class Trackers:
    """Every tracker a config names, fed the same rows."""

    def __init__(self, names: list[str], run_dir: Path, config: dict, first_round: int = 0):
        """``first_round``: the checkpoint's round of a resumed run (TensorBoard drops what it logged after)."""
        check_trackers(names)
        self.open = [TRACKERS[n](run_dir, config, first_round) for n in dict.fromkeys(names)]

    def log(self, row: dict) -> None:
        for tracker in self.open:
            tracker.log(row)

    def close(self, status: str) -> None:
        for tracker in self.open:
            tracker.close(status)
        self.open = []
