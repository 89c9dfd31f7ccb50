"""The conformance battery for any member of any family, as functions a plugin's own tests call.

peerlearn runs these checks over every built-in member (``tests/test_spec_battery.py``); a plugin author
runs them over theirs, in their own test suite::

    import peerlearn.testing
    import my_parts  # registers the members

    def test_my_aggregator_conforms(tmp_path):
        peerlearn.testing.check_member("aggregator", "distance_filter", tmp_path=tmp_path)

Each check raises AssertionError saying what failed:

- :func:`check_round_trip`: the member's spec, with its defaults, survives YAML (what a run folder's
  ``config.yaml`` and ``--resume`` rely on);
- :func:`check_builds_and_runs`: a small config naming it validates, builds and runs one round with
  accuracies in [0, 1] (``config``: a config dict in which the member is chosen; default
  :func:`config_naming`);
- :func:`check_listed`: ``peerlearn list FAMILY`` shows it with every key and a summary;
- :func:`check_bad_value_is_one_line`: a value outside a key's declared bounds (or an unknown key) stops
  ``peerlearn run`` with one line naming the field, exit 2, before anything is written.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import yaml

BASE = {"seed": 0, "num_nodes": 16, "num_rounds": 1, "eval_every": 1,
        "topology": {"graph": "complete"}, "data": {"dataset": "digits", "test_samples": 100},
        "model": {"name": "mlp", "hidden": [8]}, "algorithm": {"name": "dsgd", "lr": 0.1, "batch_size": 4}}
"""A small, fast config (16 nodes, digits, one round) that the checks start from."""


def _registry(family: str):
    import peerlearn.config  # noqa: F401 (registers every built-in member)
    from peerlearn.spec import REGISTRIES

    if family not in REGISTRIES:
        raise AssertionError(f"no family {family!r}; the families are {', '.join(REGISTRIES)}")
    return REGISTRIES[family]


def _member(family: str, name: str):
    registry = _registry(family)
    if name not in registry:
        raise AssertionError(f"{family} {name!r} is not registered (was its module imported?)")
    return registry.get(name)


def config_naming(family: str, name: str, **sections) -> dict:
    """:data:`BASE` with ``name`` chosen where ``family`` is chosen (``algorithm.aggregator``, ``model.name``
    ...), then ``sections`` (e.g. ``threat={"num_byzantine": 2, "attack": name}``) replacing whole sections."""
    from peerlearn.config import switch_member

    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    section, key = _registry(family).where.split(".")
    switch_member(cfg, section, key, name)  # the base member's own keys go
    cfg[section] = {**cfg.get(section, {}), key: name}
    cfg.update(sections)
    return cfg


def check_round_trip(family: str, name: str) -> None:
    from peerlearn.spec import dump, validate

    cls = _member(family, name)
    spec = cls()
    back = validate(cls, yaml.safe_load(yaml.safe_dump(dump(spec))), _registry(family).where.split(".")[0])
    assert back == spec and dump(back) == dump(spec), f"{family} {name}: its spec changes through YAML: {dump(spec)}"


def check_builds_and_runs(family: str, name: str, config: dict | None = None) -> list[dict]:
    """Validate, build and run ``config`` (default :func:`config_naming`) for one round; returns the rows."""
    from peerlearn.build import build
    from peerlearn.config import parse_config
    from peerlearn.engines import simulate

    cfg = parse_config(config if config is not None else config_naming(family, name))
    chosen = {m.name for section in ("topology", "data", "model", "algorithm", "threat", "attribution")
              for m in getattr(cfg, section).members() if "name" in type(m).model_fields}
    assert name in chosen, f"{family} {name}: the config does not choose it (chosen: {sorted(chosen)})"
    rows = simulate(build(cfg))
    assert rows and rows[0]["round"] == 0 and rows[-1]["round"] == cfg.num_rounds, f"{family} {name}: rows {rows}"
    assert 0.0 <= rows[-1]["acc_mean"] <= 1.0, f"{family} {name}: acc_mean {rows[-1]['acc_mean']} is not in [0, 1]"
    if cfg.attribution.active:  # a scorer's summary column, finite once a round has been scored
        score = rows[-1].get("score_honest_mean")
        assert score is not None and score == score, f"{family} {name}: score_honest_mean {score} after a round"
    return rows


def check_listed(family: str, name: str) -> None:
    from peerlearn.report.catalog import catalog

    entry = next((e for e in catalog(family) if e.name == name), None)
    assert entry is not None, f"{family} {name}: not in peerlearn list {family}"
    keys = {f.key for f in entry.fields}
    cls = _member(family, name)
    assert keys == set(cls.model_fields) - {"name"}, f"{family} {name}: listed keys {sorted(keys)}"
    assert entry.summary != "-", f"{family} {name}: no summary (give its spec class a docstring)"


def bad_value(cls) -> tuple[str, object]:
    """A key of ``cls`` and a value its declared bounds refuse; else an unknown key."""
    from annotated_types import Ge, Gt, Le, Lt

    for key, info in cls.model_fields.items():
        for m in info.metadata:
            if isinstance(m, (Ge, Gt)):
                bound = m.ge if isinstance(m, Ge) else m.gt
                return key, bound - 1 if isinstance(m, Ge) else bound
            if isinstance(m, (Le, Lt)):
                bound = m.le if isinstance(m, Le) else m.lt
                return key, bound + 1 if isinstance(m, Le) else bound
    return "not_a_key_of_anything", 1


def check_bad_value_is_one_line(family: str, name: str, config: dict | None = None,
                                tmp_path: str | Path | None = None) -> None:
    """``peerlearn run`` on ``config`` with one of the member's keys out of bounds: exit 2, one line
    ``config error: <section>.<key>: ...``, no run folder (written under ``tmp_path``, else a temporary one)."""
    from peerlearn import cli

    cls = _member(family, name)
    key, value = bad_value(cls)
    cfg = config if config is not None else config_naming(family, name)
    section = _registry(family).where.split(".")[0]
    cfg = {**cfg, section: {**cfg[section], key: value}}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(tmp_path or scratch)
        path, out = folder / f"bad-{family}-{name}.yaml", folder / f"run-{family}-{name}"
        path.write_text(yaml.safe_dump(cfg))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(["run", str(path), "--out", str(out), "--quiet"])
        text = err.getvalue().strip()
        assert code == 2, f"{family} {name}: {section}.{key}={value!r} gave exit {code}, not 2: {text}"
        assert text.startswith(f"config error: {section}.{key}: ") and "\n" not in text, \
            f"{family} {name}: {section}.{key}={value!r} is not one line naming the field: {text}"
        assert not out.exists(), f"{family} {name}: a refused config wrote {out}"


def check_member(family: str, name: str, config: dict | None = None, tmp_path: str | Path | None = None) -> None:
    """Every check above, for one member (``config``: a config dict choosing it, when it needs more than
    :func:`config_naming` gives: a file, another section)."""
    check_round_trip(family, name)
    check_builds_and_runs(family, name, config)
    check_listed(family, name)
    check_bad_value_is_one_line(family, name, config, tmp_path)
