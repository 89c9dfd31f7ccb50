"""What every command shares: the consoles and the one-line failure."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def check_waits(args, default_timeout_s: float) -> None:
    """``--timeout-s`` (set to its engine's ``default_timeout_s`` when not given) and ``--startup-timeout-s`` of a
    distributed rank or a p2p peer: a positive number of seconds below 1e6, else a ConfigError naming the flag."""
    from peerlearn.config import ConfigError

    args.timeout_s = default_timeout_s if args.timeout_s is None else args.timeout_s
    for flag, value in (("--timeout-s", args.timeout_s), ("--startup-timeout-s", args.startup_timeout_s)):
        if not 0 < value < 1e6:
            raise ConfigError(f"config error: {flag}: a positive number of seconds below 1e6, got {value}")


def fail(message: str) -> int:
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)
    return 2
