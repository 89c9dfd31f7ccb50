"""What ships inside the package, so that ``pip install peerlearn`` works without the repository: the example
configs (``peerlearn run quickstart``), the declared reproductions (``peerlearn reproduce NAME``) and the
examples that ``peerlearn init`` copies into a folder to edit (the quickstart, a plugin skeleton, an
analysis script). In the repository, ``configs/`` and ``examples/`` are links to these folders.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT / "configs"
REPRODUCTIONS = CONFIGS / "reproduce"
EXAMPLES = ROOT / "examples"

# what ``peerlearn init`` copies: file in the package -> name in the new folder
INIT_FILES = {CONFIGS / "quickstart.yaml": "quickstart.yaml",
              EXAMPLES / "plugin" / "my_parts.py": "my_parts.py",
              EXAMPLES / "plugin" / "plugin.yaml": "plugin.yaml",
              EXAMPLES / "analyze_results.py": "analyze_results.py"}


def configs() -> dict[str, Path]:
    """The bundled example configs, name -> file (``quickstart``, ``ring``, ...)."""
    return {p.stem: p for p in sorted(CONFIGS.glob("*.yaml"))}


def reproductions() -> dict[str, Path]:
    """The bundled declared reproductions, name -> sweep file."""
    return {p.stem: p for p in sorted(REPRODUCTIONS.glob("*.yaml"))}


def config_path(arg: str) -> str:
    """``arg`` when it names a file (a user's file always wins), else the bundled config of that name
    (``quickstart`` or ``quickstart.yaml``); otherwise ``arg`` unchanged, for the loader's error."""
    if Path(arg).exists():
        return arg
    name = arg.removesuffix(".yaml").removesuffix(".yml")
    found = configs().get(name) if "/" not in arg else None
    return str(found) if found is not None else arg


def unknown_config_hint(arg: str) -> str:
    """What to say of a config that is neither a file nor a bundled name (a path: only that it is missing)."""
    if "/" in arg:
        return f"file {arg!r} does not exist"
    return f"{arg}: no such file, and not a bundled config ({', '.join(configs())})"


def init_folder(folder: Path) -> list[Path]:
    """Copy :data:`INIT_FILES` into ``folder`` (made if missing); refuses to overwrite any file already there,
    before copying anything. Returns the files written."""
    targets = {src: folder / name for src, name in INIT_FILES.items()}
    taken = [str(t) for t in targets.values() if t.exists() or t.is_symlink()]
    if taken:
        raise FileExistsError(f"{', '.join(taken)} already exist{'s' if len(taken) == 1 else ''}; peerlearn init "
                              "never overwrites a file (choose an empty folder)")
    folder.mkdir(parents=True, exist_ok=True)
    for src, dst in targets.items():
        shutil.copyfile(src, dst)
    return list(targets.values())
