"""Run the code of the getting-started and how-to pages, so the docs cannot rot (``make docs``, CI).

Every ``bash`` or ``python`` block of those pages carries a marker on the line before it:

- ``<!-- docs-check: run -->``: run it (a page's blocks run in order, in one empty folder, as a reader
  following the page would); it must exit 0.
- ``<!-- docs-check: fails -->``: run it; it must exit 2 with one line on stderr (a bad config's error).
- ``<!-- docs-check: excerpt PATH -->``: every line of it (but ``...`` elisions) is in the file PATH, in order;
  its import lines (a subset of the file's) must run.
- ``<!-- docs-check: skip REASON -->``: not run, for the reason given (e.g. needs several machines).

An unmarked block is an error: each is checked or says why not. ``peerlearn`` and ``python`` are the ones
of the environment running this script.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["docs/index.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "howto").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- docs-check: (?P<mark>[^>]*?) -->\n)?```(?P<lang>bash|python)\n(?P<code>.*?)```", re.S)
TIMEOUT_S = 300
KINDS = ("run", "fails", "excerpt", "skip")


def blocks(page: Path):
    for m in BLOCK.finditer(page.read_text(encoding="utf-8")):
        line = page.read_text(encoding="utf-8")[: m.start("lang")].count("\n") + 1
        yield line, (m.group("mark") or "").strip(), m.group("lang"), m.group("code")


def _excerpt_missing(code: str, path: Path) -> str | None:
    """The first line of ``code`` not in ``path`` in order (None: all are); its imports (a snippet names what
    it uses, a subset of the file's) must run instead."""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    imports = [ln for ln in code.splitlines() if ln.startswith(("import ", "from "))]
    if imports:
        done = subprocess.run([sys.executable, "-c", "\n".join(imports)], capture_output=True, text=True)
        if done.returncode != 0:
            return f"its imports fail: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
    at = 0
    for want in (ln.strip() for ln in code.splitlines()):
        if not want or want.startswith("...") or want.startswith(("import ", "from ")):
            continue
        try:
            at = lines.index(want, at) + 1
        except ValueError:
            return want
    return None


def run(lang: str, code: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def check_page(name: str, env: dict) -> tuple[dict, list[str], list[str]]:
    """One page's blocks, in order, in one empty folder: ``(counts, failures, progress lines)``."""
    failures, lines, counts = [], [], dict.fromkeys(KINDS, 0)
    page = ROOT / name
    with tempfile.TemporaryDirectory(prefix="peerlearn-docs-") as tmp:
        for line, mark, lang, code in blocks(page):
            where = f"{name}:{line}"
            kind, _, arg = mark.partition(" ")
            if kind not in counts:
                failures.append(f"{where}: a {lang} block without a docs-check marker (run, fails, excerpt PATH "
                                "or skip REASON)")
                continue
            counts[kind] += 1
            if kind == "skip":
                if not arg:
                    failures.append(f"{where}: skip needs a reason")
                continue
            if kind == "excerpt":
                missing = _excerpt_missing(code, ROOT / arg) if (ROOT / arg).is_file() else f"no file {arg}"
                if missing:
                    failures.append(f"{where}: not in {arg}: {missing}")
                continue
            started = time.perf_counter()
            done = run(lang, code, Path(tmp), env)
            took = time.perf_counter() - started
            err = done.stderr.strip()
            if kind == "run" and done.returncode != 0:
                failures.append(f"{where}: exit {done.returncode}\n{(done.stdout + done.stderr)[-2000:]}")
            elif kind == "fails" and (done.returncode != 2 or len(err.splitlines()) != 1):
                failures.append(f"{where}: expected exit 2 and one line, got exit {done.returncode}:\n{err[-2000:]}")
            lines.append(f"{where}: {kind} ok in {took:.1f} s" if not failures or not failures[-1].startswith(where)
                         else f"{where}: {kind} FAILED")
    return counts, failures, lines


def main() -> int:
    """Every page, two at a time (pages are independent; a page's blocks run in order): the examples are
    mostly one-process runs, so two pages share a 2-core machine without slowing each other much."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MPLBACKEND": "Agg"}
    failures, counts = [], dict.fromkeys(KINDS, 0)
    workers = int(os.environ.get("DOCS_CHECK_WORKERS", "2"))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # the longest page (sweeps) is last in PAGES: submitted first, so the other worker takes the rest
        futures = {name: pool.submit(check_page, name, env) for name in reversed(PAGES)}
        for page_counts, page_failures, lines in (futures[name].result() for name in PAGES):
            for line in lines:
                print(line, flush=True)
            failures += page_failures
            for kind, count in page_counts.items():
                counts[kind] += count
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    print(f"docs examples: {counts['run']} run, {counts['fails']} failing as documented, {counts['excerpt']} "
          f"excerpts checked, {counts['skip']} skipped with a reason; {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
