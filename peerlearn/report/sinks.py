"""Where a run's evaluation rows go besides the engine (``metrics.csv``, experiment trackers, progress lines
off a terminal), its final models, and the environment it ran in."""

from __future__ import annotations

import math
import time


def environment(device: str = "cpu") -> dict:
    """What a reader of a result needs to know about where it ran (summary.json, report.html): ``device`` is
    the run's resolved device (a GPU's name is added)."""
    import platform

    import torch

    from peerlearn import __version__
    from peerlearn.config import plugin_provenance

    return {"peerlearn": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(terse=True), "device": _device_name(device), "hostname": platform.node(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "plugins": plugin_provenance()}


def _device_name(device: str) -> str:
    import torch

    if not device.startswith("cuda"):
        return device
    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


class RunSinks:
    """Where a run's evaluation rows go besides the engine: ``metrics.csv`` (the writer), the experiment
    trackers, and, when the output is not a terminal (nohup, a batch scheduler, a pipe), one progress
    line per evaluation with the round, accuracy, rounds/s and the time left."""

    def __init__(self, cfg, writer, lines: bool, first_round: int = 0):
        from peerlearn.report.trackers import Trackers

        self.cfg, self.writer, self.lines = cfg, writer, lines
        self.trackers = Trackers(cfg.tracking, writer.path, writer.config, first_round)
        self.first_round, self.started = first_round, time.perf_counter()

    def __call__(self, row: dict) -> None:
        self.writer.append(row)
        self.trackers.log(row)
        if self.lines:
            round_, total = int(row["round"]), self.cfg.num_rounds
            elapsed = time.perf_counter() - self.started
            rate = (round_ - self.first_round) / elapsed if elapsed > 0 and round_ > self.first_round else math.nan
            left = (total - round_) / rate if rate > 0 else math.nan
            eta = "-" if math.isnan(left) else f"{int(left // 60)}m{int(left % 60):02d}s"
            print(f"{self.cfg.name}: round {round_}/{total}  acc {row.get('acc_mean', math.nan):.4f}  "
                  f"{'-' if math.isnan(rate) else f'{rate:.3g}'} rounds/s  ETA {eta}", flush=True)

    def save_model(self, built):
        """The engines' ``on_finish``: the final models into ``final_model.pt`` (unless ``save_model: false``)."""
        if not self.cfg.save_model:
            return None
        return lambda params_NP: self.writer.save_model(params_NP, built.honest_N, built.dataset.input_shape,
                                                        built.dataset.num_classes)

    def finish(self, status: str, compute: dict) -> dict:
        self.trackers.close(status)
        compute["environment"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
        return self.writer.finish(status, compute)
