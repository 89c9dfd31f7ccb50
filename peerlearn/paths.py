"""Folders peerlearn writes into: it never writes through a symbolic link planted in one."""

from __future__ import annotations

import os
from pathlib import Path


def drop_links(folder: Path) -> list[str]:
    """Remove every symbolic link inside ``folder`` (walking no link): peerlearn never writes through one, so a
    link planted in a folder it reuses (``--overwrite``, ``--resume``, a sweep) cannot make it overwrite a file
    elsewhere. The links' targets are untouched. Returns the removed links, relative to ``folder``."""
    removed = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink():
                path.unlink()
                removed.append(str(path.relative_to(folder)))
    return removed


def inside(folder: Path, rel) -> Path | None:
    """``folder / rel`` when ``rel`` (read from a file: data, not trusted) is a relative path that stays inside
    ``folder`` and passes through no symbolic link; None otherwise (absolute, ``..``, a link, not a string)."""
    if not isinstance(rel, str) or not rel.strip():
        return None
    parts = Path(rel).parts
    if Path(rel).is_absolute() or not parts or ".." in parts:
        return None
    path = Path(folder)
    for part in parts:
        path = path / part
        if path.is_symlink():
            return None
    try:
        path.resolve(strict=True).relative_to(Path(folder).resolve(strict=True))
    except (OSError, ValueError):
        return None
    return path
