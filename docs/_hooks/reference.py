"""MkDocs hook: the command-line and config-key reference pages are generated from the code at build time
(the argparse parser and the specs' declarations), so they cannot drift from what peerlearn accepts."""

from __future__ import annotations

import argparse

MARKERS = {"<!-- generated: cli -->": "cli", "<!-- generated: config -->": "config"}


def on_page_markdown(markdown: str, page, config, files) -> str:
    for marker, what in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, cli_reference() if what == "cli" else config_reference())
    return markdown


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def cli_reference() -> str:
    from peerlearn.cli import make_parser

    parser = make_parser()
    out = []
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    for name, command in sub.choices.items():
        out.append(f"## peerlearn {name}\n\n{helps.get(name, '')}\n\n```\n{command.format_usage().strip()}\n```\n")
        rows = [(", ".join(a.option_strings) or a.dest, a.help) for a in command._actions
                if a.help != argparse.SUPPRESS and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        if rows:
            out.append("| argument | meaning |\n|---|---|\n" + "\n".join(f"| `{a}` | {_cell(h or '')} |" for a, h in rows))
        for inner in (a for a in command._actions if isinstance(a, argparse._SubParsersAction)):
            for sub_name, sub_command in inner.choices.items():
                out.append(f"\n### peerlearn {name} {sub_name}\n\n```\n{sub_command.format_usage().strip()}\n```\n")
                rows = [(", ".join(a.option_strings) or a.dest, a.help) for a in sub_command._actions
                        if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]
                if rows:
                    out.append("| argument | meaning |\n|---|---|\n" +
                               "\n".join(f"| `{a}` | {_cell(h or '')} |" for a, h in rows))
        out.append("")
    return "\n".join(out)


def config_reference() -> str:
    from peerlearn.report.catalog import catalog

    out, family = [], None
    for entry in catalog():
        title = entry.name if entry.family in ("experiment", "section") else f"{entry.family}: {entry.name}"
        if entry.family != family and entry.family not in ("experiment", "section"):
            family = entry.family
            out.append(f"## The {family} family (`{entry.where}`)\n")
        elif entry.family in ("experiment", "section"):
            family = entry.family
            out.append(f"## {'Top-level keys' if entry.family == 'experiment' else f'The {entry.name}: section'}\n")
        out.append(f"### {title}\n\n{_cell(entry.summary)}\n")
        if entry.fields:
            out.append("| key | default | bounds | description |\n|---|---|---|---|\n" + "\n".join(
                f"| `{f.key}` | `{_cell(repr(f.default))}` | {_cell(f.bounds or '')} | {_cell(f.description or '')} |"
                for f in entry.fields))
        out.append("")
    return "\n".join(out)
