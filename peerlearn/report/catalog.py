"""``peerlearn list``: every member of every family and every config section, generated from the specs
(plugins' members included), as rich tables or JSON."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from peerlearn.spec import REGISTRIES, Described, describe, describe_fields, summary_line


def _sections() -> list[Described]:
    from peerlearn.config import SECTIONS, ExperimentConfig

    out = [Described("experiment", "", "experiment", "top-level keys of a config", [],
                     [f for f in describe_fields(ExperimentConfig) if f.key not in SECTIONS], "peerlearn.config")]
    for key, kind in SECTIONS.items():
        if isinstance(kind, type):
            out.append(Described("section", key, key, summary_line(kind), [], describe_fields(kind), kind.__module__))
    return out


ORDER = ("graph", "mixing", "schedule", "dataset", "partition", "model", "algorithm", "optimizer", "aggregator",
         "compressor", "attack")  # built-in families first, in the order of a config; plugins' families after


def catalog(family: str | None = None, own_only: bool = False) -> list[Described]:
    """Every member (and section) described; ``family``: one family's name or one section's key;
    ``own_only``: members without the keys their whole family shares."""
    import peerlearn.config  # noqa: F401 (registers every built-in family and member)

    entries = _sections()
    for name in sorted(REGISTRIES, key=lambda f: ORDER.index(f) if f in ORDER else len(ORDER)):
        entries += describe(REGISTRIES[name], own_only)
    if family is None:
        return entries
    chosen = [e for e in entries if family in (e.family, e.name if e.family in ("section", "experiment") else None)]
    if not chosen:
        names = list(REGISTRIES) + [e.name for e in entries if e.family in ("section", "experiment")]
        from peerlearn.spec import ConfigError

        raise ConfigError(f"config error: list {family!r}: no such family or section; choose one of "
                          f"{', '.join(names)}")
    return chosen


def as_json(entries: list[Described]) -> list[dict[str, Any]]:
    return [e.as_dict() for e in entries]


def _short(entry: Described) -> str:
    return ", ".join(f"{f.key}={f.default!r}" for f in entry.fields) or "-"


def render(console: Console, entries: list[Described], detailed: bool) -> None:
    """Overview: one table per family (name, keys = defaults, summary). Detailed: one table per member
    with each key's default, bounds and description."""
    if not detailed:
        by_family: dict[str, list[Described]] = {}
        for e in entries:
            by_family.setdefault(e.family if e.family not in ("section", "experiment") else "sections", []).append(e)
        for family, members in by_family.items():
            where = (f"{REGISTRIES[family].doc}; {members[0].where}" if family in REGISTRIES
                     else "config sections (their own keys)")
            if family in REGISTRIES and REGISTRIES[family].base.model_fields:
                shared = ", ".join(f.key for f in describe_fields(REGISTRIES[family].base))
                where += f"; every {family} also takes: {shared}" if shared else ""
            table = Table(title=Text(f"{family}  ({where})", style="bold"), title_justify="left")
            table.add_column("name", style="bold")
            table.add_column("keys (= default)")
            table.add_column("what it is")
            for e in members:
                caps = f" [{', '.join(e.capabilities)}]" if e.capabilities else ""
                table.add_row(*map(Text, (e.name, _short(e), e.summary + caps)))  # no rich markup in values
            console.print(table)
        console.print("peerlearn list FAMILY shows every key's bounds and description; --json for tools.",
                      markup=False)
        return
    for e in entries:
        caps = f"  capabilities: {', '.join(e.capabilities)}" if e.capabilities else ""
        table = Table(title=Text(f"{e.family} {e.name}: {e.summary}{caps}", style="bold"), title_justify="left")
        for col in ("key", "default", "type", "bounds", "description"):
            table.add_column(col, style="bold" if col == "key" else None, no_wrap=col in ("key", "default"))
        prefix = f"{e.where.split('.')[0]}." if e.where else ""
        for f in e.fields:
            table.add_row(*map(Text, (prefix + f.key, repr(f.default), f.type, f.bounds, f.description)))
        console.print(table)
