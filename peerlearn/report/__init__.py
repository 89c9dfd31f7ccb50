"""Run directories, plots and comparison tables."""

from peerlearn.report.run_dir import RunWriter, choose_run_dir, read_run

_PLOTS = ("plot_bands", "plot_compare", "plot_run")


def __getattr__(name: str):
    """The plotting functions, imported when first used: matplotlib costs 0.3 s of a command's start-up
    (``peerlearn validate`` draws nothing; benchmarks/bench_startup.py)."""
    if name in _PLOTS:
        from peerlearn.report import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'peerlearn.report' has no attribute {name!r}")

__all__ = ["RunWriter", "choose_run_dir", "plot_bands", "plot_compare", "plot_run", "read_run"]
