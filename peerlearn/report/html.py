"""``report.html``: one self-contained page per run (config, final metrics, plots, environment).

Self-contained means one file: the plots are embedded as base64 PNG data, styles are inline, nothing
is fetched when it opens, so it can be mailed, attached or opened on a machine without peerlearn.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import yaml

from peerlearn.report.tables import _TABLE_COLUMNS, _fmt

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 72em;
       color: #1d1d1f; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
.status { display: inline-block; padding: 0.1em 0.6em; border-radius: 0.6em; font-weight: 600; }
.completed { background: #d8f5dd; } .other { background: #fde2cf; }
table { border-collapse: collapse; } td, th { padding: 0.25em 0.9em; border-bottom: 1px solid #ddd; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; } .plots img { max-width: 100%; width: 34em; }
pre { background: #f5f5f7; padding: 1em; overflow-x: auto; font-size: 0.9em; }
"""


def _rows(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"<tr><td>{html.escape(k)}</td><td class='num'>{html.escape(v)}</td></tr>" for k, v in pairs)


def _final_table(final: dict) -> list[tuple[str, str]]:
    out = []
    for header, key, kind in _TABLE_COLUMNS:
        if kind == "split":
            cells = [_fmt(final.get(k, math.nan), "s") for k in ("sim_compute_s", "sim_comm_s", "sim_wait_s")]
            if any(c != "-" for c in cells):
                out.append((header.strip(), " / ".join(cells)))
            continue
        value = final.get(key, math.nan)
        cell = _fmt(math.nan if value is None else value, kind)
        if cell != "-" or key in ("acc_mean", "round"):
            out.append((header, cell))
    return out


def write_report(path: Path, config: dict, summary: dict, plots: list[Path]) -> Path:
    """Write ``report.html`` for a finished (or stopped) run from its summary and its plot files."""
    env = summary.get("environment", {})
    status = str(summary.get("status", "?"))
    title = f"{summary.get('name') or 'run'}"
    setting = (f"{config.get('algorithm', {}).get('name', '?')} on {config.get('topology', {}).get('graph', '?')}, "
               f"{config.get('num_nodes')} nodes, {config.get('data', {}).get('dataset', '?')}, seed {config.get('seed')}")
    environment = [("peerlearn", str(env.get("peerlearn", "?"))), ("torch", str(env.get("torch", "?"))),
                   ("python", str(env.get("python", "?"))), ("platform", str(env.get("platform", "?"))),
                   ("device", str(env.get("device", "cpu"))), ("threads", str(summary.get("threads", "?"))),
                   ("load average (1 min) at start", str(summary.get("load_average_1m", "?"))),
                   ("allocator", str(summary.get("malloc", "?"))),
                   ("wall time", f"{float(summary.get('wall_time_s') or 0.0):.1f} s"),
                   ("rounds completed", f"{summary.get('rounds_completed', 0)} of {config.get('num_rounds')}"),
                   ("written", str(env.get("finished", "?")))]
    images = []
    for plot in plots:
        data = base64.b64encode(Path(plot).read_bytes()).decode("ascii")
        images.append(f"<figure><img alt='{html.escape(Path(plot).stem)}' src='data:image/png;base64,{data}'>"
                      f"<figcaption>{html.escape(Path(plot).name)}</figcaption></figure>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}: peerlearn report</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(setting)} &middot; <span class="status {'completed' if status == 'completed' else 'other'}">{
        html.escape(status)}</span></p>
<h2>Final evaluated round</h2><table>{_rows(_final_table(summary.get('final') or {}))}</table>
<h2>Plots</h2><div class="plots">{''.join(images) or '<p>no evaluated rows</p>'}</div>
<h2>Environment</h2><table>{_rows(environment)}</table>
<h2>Config</h2><pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>
<p><small>Files beside this page: metrics.csv (every evaluated round), summary.json, config.yaml (rerun with
<code>peerlearn run config.yaml</code>), final_model.pt (load with <code>peerlearn.results.load_model</code>).</small></p>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path
