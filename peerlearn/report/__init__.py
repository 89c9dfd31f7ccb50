"""Run directories, plots and comparison tables."""

from peerlearn.report.run_dir import RunWriter, choose_run_dir, read_run
from peerlearn.report.plots import plot_bands, plot_compare, plot_run

__all__ = ["RunWriter", "choose_run_dir", "plot_bands", "plot_compare", "plot_run", "read_run"]
