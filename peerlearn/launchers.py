"""Where a sweep's runs execute: processes on this machine (default), tasks on a Ray cluster, or jobs in a
Slurm queue through submitit.

A launcher starts one cell's command (``python -m peerlearn run ...``) with its log file and hands back a
job the sweep polls; everything else (the manifest, skipping completed cells, resuming interrupted ones,
recording failures, the summary) is the sweep's and the same on every launcher. The run folders land
under the sweep's ``--out``, which must be on a filesystem every worker sees.

- ``local``: a process per cell on this machine.
- ``ray`` (extra ``peerlearn[ray]``): a Ray task per cell, each reserving ``threads`` CPUs, on the cluster
  at ``RAY_ADDRESS``, else on a local cluster started for the sweep on 127.0.0.1 (Moritz et al., "Ray: A
  Distributed Framework for Emerging AI Applications", OSDI 2018).
- ``slurm`` (extra ``peerlearn[slurm]``): a job per cell through submitit's ``AutoExecutor`` with the
  sweep's ``slurm:`` settings (partition, minutes, CPUs, GPUs per cell); where Slurm is not installed
  (no ``sbatch``), submitit runs the jobs on this machine, and the sweep says so.

Interrupting the sweep interrupts every running cell (SIGINT: each keeps its rows and checkpoint).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from peerlearn.spec import ConfigError

LAUNCHERS = ("local", "ray", "slurm")


def _spawn(cmd: list[str], log, extra_env: dict) -> subprocess.Popen:
    """``cmd`` writing to the open file ``log``, with ``extra_env`` over this process's environment."""
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **extra_env})


def run_command(cmd: list[str], log_path: str, extra_env: dict) -> int:
    """Run ``cmd`` with its output appended to ``log_path`` and ``extra_env`` over the worker's environment;
    its exit code. Interrupted (Ctrl-C, a cancelled task or job), it passes SIGINT on and waits for the run
    to save its rows and checkpoint (at most a minute)."""
    with open(log_path, "a") as log:
        proc = _spawn(cmd, log, extra_env)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            try:
                return proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()


class LocalJob:
    def __init__(self, cmd: list[str], log_path: Path, extra_env: dict):
        self.log = open(log_path, "a")
        self.proc = _spawn(cmd, self.log, extra_env)

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None:
            self.log.close()
        return code

    def interrupt(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def wait(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Local:
    name = "local"

    def start(self, cmd: list[str], log_path: Path, extra_env: dict) -> LocalJob:
        return LocalJob(cmd, log_path, extra_env)

    def close(self) -> None:
        pass


class _PolledJob:
    """A job whose result arrives later (a Ray task, a submitit job): ``done()`` / ``result()`` / ``cancel()``
    given by the launcher."""

    def __init__(self, done, result, cancel):
        self._done, self._result, self._cancel = done, result, cancel

    def poll(self) -> int | None:
        if not self._done():
            return None
        try:
            return int(self._result())
        except Exception:  # the task or job itself failed (not the run): its log says why
            return 1

    def interrupt(self) -> None:
        self._cancel()

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._done() and time.monotonic() < deadline:
            time.sleep(0.2)


class Ray:
    """Each cell a Ray task reserving ``threads`` CPUs."""

    name = "ray"

    def __init__(self, threads: int):
        try:
            import ray
        except ImportError:
            raise ConfigError("config error: --launcher ray: needs Ray: pip install 'peerlearn[ray]'") from None
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, log_to_driver=False)
            else:  # a cluster of this machine, reachable only from it
                ray.init(address="local", include_dashboard=False, log_to_driver=False,
                         _node_ip_address="127.0.0.1")
            self.started = True
        self.task = ray.remote(num_cpus=threads, max_retries=0)(run_command)

    def start(self, cmd: list[str], log_path: Path, extra_env: dict) -> _PolledJob:
        ref = self.task.remote(cmd, str(log_path), extra_env)
        return _PolledJob(lambda: bool(self.ray.wait([ref], timeout=0)[0]), lambda: self.ray.get(ref),
                          lambda: self.ray.cancel(ref))

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


class Slurm:
    """Each cell a job through submitit (a Slurm job, or a local one where Slurm is not installed)."""

    name = "slurm"

    def __init__(self, folder: Path, threads: int, settings: dict):
        try:
            import submitit
        except ImportError:
            raise ConfigError("config error: --launcher slurm: needs submitit: pip install 'peerlearn[slurm]'") from None
        self.here = not _has_slurm()
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster="local" if self.here else "slurm")
        params = {"timeout_min": int(settings.get("minutes", 60)), "cpus_per_task": int(settings.get("cpus", threads))}
        if not self.here:
            params.update({"slurm_partition": settings.get("partition"), "gpus_per_node": settings.get("gpus", 0)})
            params = {k: v for k, v in params.items() if v is not None}
        self.executor.update_parameters(**params)

    def start(self, cmd: list[str], log_path: Path, extra_env: dict) -> _PolledJob:
        job = self.executor.submit(run_command, cmd, str(log_path), extra_env)
        return _PolledJob(job.done, job.result, lambda: job.cancel(check=False))

    def close(self) -> None:
        pass


def _has_slurm() -> bool:
    return shutil.which("sbatch") is not None


def where(name: str) -> str:
    """Where launcher ``name`` runs the cells, in words (for the sweep's first line)."""
    if name == "slurm" and not _has_slurm():
        return "as submitit jobs on this machine (no Slurm here: sbatch not found)"
    return {"local": "as processes on this machine", "ray": "as Ray tasks", "slurm": "as Slurm jobs (submitit)"}[name]


def make_launcher(name: str, out: Path, threads: int, slurm: dict | None = None):
    """The launcher ``name`` (one of :data:`LAUNCHERS`) for a sweep into ``out``."""
    if name == "local":
        return Local()
    if name == "ray":
        return Ray(threads)
    if name == "slurm":
        return Slurm(Path(out) / "logs" / "submitit", threads, slurm or {})
    raise ConfigError(f"config error: --launcher: one of {', '.join(LAUNCHERS)}, got {name!r}")
