"""The package's import graph (read with ast, every import statement, lazy ones included): no cycles,
and the library never imports the composition root (config, build), the engines or the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "peerlearn"
# not library: the composition root, the engines, the reports and the command line
# the application layer: it builds and runs experiments (sweeps and results read configs, rebuild models)
ROOT_OR_APP = ("peerlearn.config", "peerlearn.build", "peerlearn.engines", "peerlearn.report", "peerlearn.cli",
               "peerlearn.__main__", "peerlearn.sweep", "peerlearn.results", "peerlearn.runner", "peerlearn.matrix",
               "peerlearn.testing", "peerlearn.examples")  # examples: a user's code, shipped to copy
FORBIDDEN = ("peerlearn.config", "peerlearn.build", "peerlearn.engines", "peerlearn.cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports (``from a import b`` counts a.b when it is a module)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def _is_in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_library_never_imports_config_build_engines_or_cli():
    graph = _graph()
    bad = sorted(f"{m} imports {t}" for m, targets in graph.items() if not _is_in(m, ROOT_OR_APP)
                 for t in targets if _is_in(t, FORBIDDEN))
    assert not bad, bad


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ importing its own submodules is how it re-exports them, not a cycle
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_the_walker_sees_imports():
    graph = _graph()
    assert "peerlearn.spec" in graph["peerlearn.topology.base"]
    assert "peerlearn.config" in graph["peerlearn.build"]


def test_the_composition_root_sits_below_the_reports():
    """config.py and build.py make runs; writing and reading them (report/) sits above and is reached from the
    runner (issue 37: config.py checked the trackers through report.trackers)."""
    graph = _graph()
    bad = sorted(f"{m} imports {t}" for m in ("peerlearn.config", "peerlearn.build") for t in graph[m]
                 if _is_in(t, ("peerlearn.report",)))
    assert not bad, bad
