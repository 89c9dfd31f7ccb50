"""What every command shares: the consoles and the one-line failure."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> int:
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)
    return 2
