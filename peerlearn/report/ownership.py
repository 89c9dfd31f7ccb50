"""Which run folders are yours: a key of your own signs the plugins a run will import when resumed.

A run folder is data, but ``peerlearn run --resume DIR`` rebuilds the run from ``DIR/config.yaml``,
and a config's ``plugins:`` are code. A folder you wrote may import them again; one from elsewhere
(downloaded, shared, or edited since) must not without your word (``--trust-plugins``). So when a
run's config names plugins, its marker (``.peerlearn-run``) records an HMAC, under a key only your
account can read, of the plugins and the SHA-256 of each plugin file as the run started. On resume
the record must verify against the plugins the folder names now and their files as they are now.

The key is 32 random bytes in ``$XDG_CONFIG_HOME/peerlearn/owner.key`` (default
``~/.config/peerlearn``; ``PEERLEARN_OWNER_KEY`` names another file), made on the first run that
names plugins, mode 0600. Runs without plugins have nothing to sign and never touch it.

References:
    Bellare, Canetti and Krawczyk, "Keying Hash Functions for Message Authentication", CRYPTO 1996 (HMAC).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

KEY_BYTES = 32


def key_path() -> Path:
    if os.environ.get("PEERLEARN_OWNER_KEY"):
        return Path(os.environ["PEERLEARN_OWNER_KEY"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "peerlearn" / "owner.key"


def _key(create: bool) -> bytes | None:
    path = key_path()
    try:
        data = path.read_bytes()
        return data if len(data) >= KEY_BYTES else None
    except FileNotFoundError:
        if not create:
            return None
    except OSError:
        return None
    data = secrets.token_bytes(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:  # another run made it first
        return _key(False)
    except OSError:  # a read-only home: the run is not signed (its resume will ask for --trust-plugins)
        return None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return data


def _digests(plugins: list) -> list:
    """Each plugin with the SHA-256 of its file (a .py path), or None (a module name: found by Python's own
    import path, which is your environment, not the run folder)."""
    out = []
    for spec in plugins:
        spec = str(spec)
        digest = None
        if spec.endswith(".py") or "/" in spec:
            try:
                digest = hashlib.sha256(Path(spec).read_bytes()).hexdigest()
            except OSError:
                digest = "missing"
        out.append([spec, digest])
    return out


def _tag(key: bytes, plugins: list) -> str:
    return hmac.new(key, json.dumps(_digests(plugins)).encode(), hashlib.sha256).hexdigest()


def marker_text(plugins: list) -> str:
    """What a new run folder's marker holds: the signature of its plugins, when it names any."""
    record = {"peerlearn_run": 1}
    key = _key(create=True) if plugins else None
    if key is not None:
        record["plugins_signed"] = _tag(key, plugins)
    return json.dumps(record) + "\n"


def signed_by_you(marker: Path, plugins: list) -> bool:
    """Whether ``marker`` (a run folder's ``.peerlearn-run``) holds your signature of ``plugins`` as their
    files are now."""
    key = _key(create=False)
    if key is None or marker.is_symlink():
        return False
    try:
        record = json.loads(marker.read_text())
        tag = str(record["plugins_signed"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return hmac.compare_digest(tag, _tag(key, plugins))
