"""The experiment config: loading, ``--set`` overrides, plugins, and the rules between families.

A config is YAML whose sections each name members of families (``topology.graph``,
``algorithm.name``, ``algorithm.aggregator`` ...) next to those members' own keys; every member's
keys, defaults and bounds are declared by its spec beside its code (:mod:`peerlearn.spec`).
:func:`load_config` validates a config completely before any work starts and raises
:class:`ConfigError` with one line naming the field and what is allowed. ``build`` lives in
:mod:`peerlearn.build`.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, field_validator

from peerlearn.algorithms.base import ALGORITHMS, AlgorithmSpec
from peerlearn.attacks.base import ThreatSpec
from peerlearn.attribution.base import AttributionSpec
from peerlearn.data.base import DataSpec
from peerlearn.divergence import DivergenceSpec
from peerlearn.models.base import MODELS, ModelSpec
from peerlearn.privacy.spec import PrivacySpec
from peerlearn.spec import (REGISTRIES, ConfigError, Registry, Spec, config_error, dump, file_plugin_module,
                            format_error, member_keys, validate)
from peerlearn.topology.base import TopologySpec
from peerlearn.world.clock import ClockSpec
from peerlearn.world.faults import FaultsSpec

for _family in ("topology", "data", "models", "optim", "algorithms", "aggregators", "compressors", "attacks",
                "attribution"):
    importlib.import_module(f"peerlearn.{_family}")  # every built-in family registers its members on import

__all__ = ["ConfigError", "ExperimentConfig", "REGISTRIES", "SECTIONS", "apply_overrides", "load_config",
           "load_plugins", "parse_config", "switch_member", "to_dict"]

ENTRY_POINT_GROUP = "peerlearn.plugins"


class ExperimentConfig(Spec):
    """A whole run: its size and seed, and one spec per section."""

    name: str | None = Field(None, description="run name (default: the config file's name): a plain folder name, "
                             "the run is written to runs/NAME")
    seed: int = Field(0, ge=0, lt=2**32, description="seed of every random choice in the run")
    num_nodes: int = Field(16, ge=1, le=100_000_000, description="number of nodes")
    num_rounds: int = Field(100, ge=1, description="communication rounds")
    eval_every: int = Field(10, ge=1, description="evaluate every this many rounds (and at the last round)")
    eval_nodes: int | None = Field(None, ge=1, le=1_000_000, description="test the models of a seeded random subset "
                                   "of this many nodes (default: every node); at 100k+ nodes an evaluation of all "
                                   "costs several rounds. The acc_* columns then estimate over the subset; the "
                                   "averaged model, alive_nodes and consensus_distance still count every node")
    eval_train: int = Field(0, ge=0, description="also test every model on a seeded subset of this many of the "
                            "nodes' training samples, and score test and training cross-entropy (0: off). Rows gain "
                            "train_acc_mean, train_eval_loss_mean, test_loss_mean, the averaged model's three, and "
                            "the generalization gaps gap_acc_mean (train minus test accuracy) and gap_loss_mean "
                            "(test minus training loss)")
    checkpoint_every: int = Field(0, ge=0, description="write checkpoint.pt (for --resume) at evaluated rounds at "
                                  "least this many rounds apart (0: at every evaluation; it holds every node's "
                                  "model, so large runs want fewer)")

    @field_validator("tracking", mode="before")
    @classmethod
    def _one_tracker(cls, v):
        """``tracking: tensorboard`` means ``[tensorboard]``."""
        return [v] if isinstance(v, str) else v

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", v):
            raise ValueError("auto, cpu, cuda or cuda:N")
        return v

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        """A name becomes a folder under runs/ and a title: no path, no control characters."""
        if v is not None and (not v.strip() or v in (".", "..") or len(v) > 200 or any(c in v for c in "/\\")
                              or any(ord(c) < 32 or ord(c) == 127 for c in v)):
            raise ValueError("a plain folder name: no '/' or '\\', no control characters, not '.' or '..', at most "
                             "200 characters")
        return v

    threads: int | None = Field(None, ge=1, le=4096, description="intra-op threads (default: OMP_NUM_THREADS if set, "
                                "else the idle cores by the load average; recorded in summary.json)")
    device: str = Field("cpu", description="where every tensor of the run lives: cpu, cuda (the current GPU), cuda:N, or "
                        "auto (cuda when torch sees a GPU, else cpu); a CUDA run agrees with a CPU run to float "
                        "tolerance, not bit for bit (docs/howto/gpu.md)")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="precision of the forward and backward "
                                                  "passes; the node models, optimizer and algorithm state, gossip "
                                                  "and the metrics stay float32 (mixed precision)")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms during the run: the same "
                                "seed gives the same numbers on a GPU too, at some speed (CPU kernels already do)")
    save_model: bool = Field(True, description="write final_model.pt: every node's final model and the honest nodes' "
                             "average (peerlearn.results.load_model reads it back); N x P float32 values on disk")
    tracking: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        [], description="experiment trackers that receive every evaluation row (optional extras: pip install "
                        "'peerlearn[tensorboard]'; W&B offline, MLflow to a local file store)")
    plugins: list[str] = Field([], description="modules (names or .py paths) imported before validation; they "
                               "register their own members with the families' registries")
    topology: SerializeAsAny[TopologySpec] = Field(default_factory=TopologySpec)
    data: SerializeAsAny[DataSpec] = Field(default_factory=DataSpec)
    model: SerializeAsAny[ModelSpec] = Field(default_factory=lambda: MODELS.get("mlp")())
    algorithm: SerializeAsAny[AlgorithmSpec] = Field(default_factory=lambda: ALGORITHMS.get("dsgd")())
    threat: ThreatSpec = Field(default_factory=ThreatSpec)
    faults: FaultsSpec = Field(default_factory=FaultsSpec)
    clock: ClockSpec = Field(default_factory=ClockSpec)
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)
    divergence: DivergenceSpec = Field(default_factory=DivergenceSpec)
    attribution: AttributionSpec = Field(default_factory=AttributionSpec)

    @property
    def num_byzantine(self) -> int:
        return self.threat.count(self.num_nodes)


# section -> (spec class of a plain section, or the registry whose member the section is)
SECTIONS: dict[str, type[Spec] | Registry] = {
    "topology": TopologySpec, "data": DataSpec, "model": MODELS, "algorithm": ALGORITHMS, "threat": ThreatSpec,
    "faults": FaultsSpec, "clock": ClockSpec, "privacy": PrivacySpec,
    "divergence": DivergenceSpec, "attribution": AttributionSpec}
_DEFAULT_MEMBER = {"model": "mlp", "algorithm": "dsgd"}


# ---------------------------------------------------------------------------------------------
# Plugins: user modules that register members before validation
# ---------------------------------------------------------------------------------------------
_LOADED: dict[str, object] = {}
_PROVENANCE: dict[str, dict] = {}


def _resolve(spec: str, base_dir: Path | None) -> str:
    """A plugin given as a .py path, made absolute (relative to the config's folder, else the working
    directory), so that a resumed run or another rank finds it; a module name stays as it is."""
    if not (spec.endswith(".py") or "/" in spec):
        return spec
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base_dir / path if base_dir is not None and (base_dir / path).is_file() else Path.cwd() / path
    return str(path.resolve())


def _import_plugin(spec: str, base_dir: Path | None) -> str:
    spec = _resolve(spec, base_dir)
    if spec in _LOADED:
        return spec
    try:
        if spec.endswith(".py") or "/" in spec:
            path = Path(spec)
            if not path.is_file():
                raise FileNotFoundError(f"no such file {str(path)!r}")
            name = file_plugin_module(path.stem)
            loader = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[name] = module
            loader.loader.exec_module(module)
        else:
            extra = [str(p) for p in (base_dir, Path.cwd()) if p is not None and str(p) not in sys.path]
            sys.path[:0] = extra
            try:
                module = importlib.import_module(spec)
            finally:
                for p in extra:
                    sys.path.remove(p)
    except ConfigError:
        raise
    except Exception as err:  # any failure of the user's module is one line naming it
        detail = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(f"config error: plugins: {spec!r} failed to import: {type(err).__name__}"
                          f"{': ' + detail if detail else ''}") from None
    _LOADED[spec] = module
    _PROVENANCE[spec] = _provenance(spec, module)
    return spec


def _provenance(spec: str, module) -> dict:
    """Where a plugin's code came from: its file and the file's SHA-256, and the version of the package that
    installed it when there is one."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    record = {"plugin": spec}
    path = getattr(module, "__file__", None)
    if path:
        record["file"] = str(path)
        try:
            record["sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            pass
    top = getattr(module, "__name__", "").split(".")[0]
    for dist in packages_distributions().get(top, [])[:1]:
        try:
            record["package"], record["version"] = dist, version(dist)
        except PackageNotFoundError:
            pass
    return record


def plugin_provenance() -> list[dict]:
    """Every plugin this process has imported (config ``plugins:``, ``PEERLEARN_PLUGINS``, installed entry
    points) with its file hash or package version: what code made a run (summary.json)."""
    return list(_PROVENANCE.values())


def load_plugins(names: list[str] = (), base_dir: Path | None = None) -> list[str]:
    """Import the installed ``peerlearn.plugins`` entry points, ``PEERLEARN_PLUGINS`` (comma-separated) and
    ``names`` (module names, or .py paths relative to ``base_dir``); each registers its members.
    Returns ``names`` resolved (paths made absolute)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if f"entry-point:{ep.name}" not in _LOADED:
            try:
                _LOADED[f"entry-point:{ep.name}"] = ep.load()
                _PROVENANCE[f"entry-point:{ep.name}"] = {
                    "plugin": ep.name, "entry_point": ep.value, "package": ep.dist.name if ep.dist else None,
                    "version": ep.dist.version if ep.dist else None}
            except Exception as err:
                raise ConfigError(f"config error: plugins: the installed plugin {ep.name!r} ({ep.value}) failed "
                                  f"to import: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                                  ) from None
    env = [p.strip() for p in os.environ.get("PEERLEARN_PLUGINS", "").split(",") if p.strip()]
    for spec in env:
        _import_plugin(spec, None)
    return [_import_plugin(spec, base_dir) for spec in names]


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------
def _section_class(section: str, flat: dict) -> type[Spec] | None:
    kind = SECTIONS.get(section)
    if isinstance(kind, Registry):
        name = flat.get("name", _DEFAULT_MEMBER[section])
        return kind.get(name) if isinstance(name, str) and name in kind else None
    return kind


def switch_member(data: dict, section: str, key: str, value: Any) -> None:
    """Name another member in ``section.key`` (``algorithm.name``, ``data.partition`` ...): the keys
    only the old member read are dropped, so a --set or a sweep can switch members of a config."""
    flat = data.get(section)
    if not isinstance(flat, dict):
        return
    before = _section_class(section, flat)
    after_flat = {**flat, key: value}
    after = _section_class(section, after_flat)
    if before is None or after is None:
        return
    gone = member_keys(before, flat) - member_keys(after, after_flat)
    for k in gone:
        flat.pop(k, None)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested config dict. Naming another
    member (``--set model.name=cnn``) drops the keys only the old member read."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config error: --set {item!r}: expected key=value, e.g. --set algorithm.lr=0.05")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"config error: --set {item!r}: the value is not valid YAML "
                              f"({' '.join(str(err).split())[:120]})") from None
        if not all(parts):
            raise ConfigError(f"config error: --set {item!r}: expected key=value, e.g. --set algorithm.lr=0.05")
        if len(parts) == 2 and parts[0] in SECTIONS:
            switch_member(data, parts[0], parts[1], value)
        for part in parts[:-1]:
            child = node.get(part)
            if isinstance(child, str):  # a member named by a string: its keys go beside it (flat)
                break
            node = node.setdefault(part, {}) if child is None else child
            if not isinstance(node, dict):
                raise ConfigError(f"config error: {key}: {part} is not a section")
        node[parts[-1]] = value
    return data


def _section(key: str, raw: Any) -> Spec:
    kind = SECTIONS[key]
    if isinstance(kind, Registry):
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise config_error(key, f"expected a mapping of keys, got {type(raw).__name__}")
        return validate(kind.get(raw.get("name", _DEFAULT_MEMBER[key]), f"{key}.name"), raw, key)
    return validate(kind, raw, key)


def parse_config(data: dict | None, overrides: list[str] = (), base_dir: Path | None = None) -> ExperimentConfig:
    """Validate a config mapping (plus ``--set`` overrides): plugins first (those the overrides leave in
    force), then the overrides (so that they can name the plugins' members), every section, and the
    rules between families."""
    in_force = apply_overrides(copy.deepcopy(dict(data or {})), list(overrides)).get("plugins", [])
    if not isinstance(in_force, list):
        raise config_error("plugins", f"a list of module names or .py paths, got {in_force!r}")
    resolved = load_plugins(in_force, base_dir)
    data = apply_overrides(copy.deepcopy(dict(data or {})), list(overrides))  # now with their members known
    if in_force:
        data["plugins"] = resolved
    allowed = ExperimentConfig.model_fields
    for key in data:
        if key not in allowed:
            raise config_error(key, f"unknown key; allowed: {', '.join(allowed)}")
    values = {k: (_section(k, v) if k in SECTIONS else v) for k, v in data.items()}
    try:
        cfg = ExperimentConfig.model_validate(values)
    except ValidationError as err:
        raise ConfigError(format_error(err, "")) from None
    personal_split(cfg)
    check_consistency(cfg)
    return cfg


PERSONAL_TEST_FRACTION = 0.2


def personal_split(cfg: ExperimentConfig) -> None:
    """A personalized algorithm is judged on each node's own held-out data, as its papers do: unless the config
    says otherwise, ``data.local_test_fraction`` becomes 0.2 for it (written out in the run's config.yaml)."""
    data = cfg.data
    if cfg.algorithm.capabilities.personalized and "local_test_fraction" not in data.model_fields_set \
            and not data.relay_fraction:
        data.local_test_fraction = PERSONAL_TEST_FRACTION


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config error: file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config error: {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config error: {path} is not UTF-8 text (a YAML config is)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config error: {path}: expected a mapping of keys, got {type(raw).__name__}")
    raw.pop("sweep", None)  # a declared sweep (peerlearn sweep reads it); the rest is the base config
    cfg = parse_config(raw, overrides, base_dir=path.resolve().parent)
    if cfg.name is None:
        cfg.name = path.stem
    return cfg


def check_consistency(cfg: ExperimentConfig) -> None:
    """Rules between families, read from capabilities; then every member's own ``check``."""
    a, t = cfg.algorithm, cfg.topology
    caps = a.capabilities
    if cfg.eval_nodes is not None and cfg.eval_nodes > cfg.num_nodes:
        raise config_error("eval_nodes", f"must be at most num_nodes={cfg.num_nodes}, got {cfg.eval_nodes}")
    if caps.global_model and not cfg.model.same_init:
        raise config_error("model.same_init", f"algorithm {a.name} trains one global model, so it needs "
                                              "same_init: true")
    if t.mixing.capabilities.column_stochastic and not caps.column_stochastic:
        fits = [n for n, c in ALGORITHMS.items() if c.capabilities.column_stochastic]
        raise config_error("topology.mixing", f"{t.mixing.name} weights do not preserve the average under {a.name}; "
                                              f"use algorithm {' or '.join(fits)} (or a doubly stochastic mixing "
                                              "rule)")
    if caps.static_topology and (t.schedule.capabilities.time_varying or cfg.faults.active):
        raise config_error("algorithm.name", f"{a.name} keeps running sums over a fixed W; it needs a static "
                                             "topology.schedule and no faults")
    for section in SECTIONS:
        for member in getattr(cfg, section).members():
            member.check(cfg)


def to_dict(cfg: ExperimentConfig) -> dict:
    """The config as the flat YAML mapping :func:`parse_config` reads back (``config.yaml`` of a run)."""
    out = {k: v for k, v in cfg.model_dump(mode="json", exclude=set(SECTIONS)).items()}
    out.update({k: dump(getattr(cfg, k)) for k in SECTIONS})
    return out


def prune_unread(data: dict) -> tuple[dict, list[str]]:
    """``data`` without the section keys none of its chosen members reads, and those keys. For a
    ``config.yaml`` written before keys belonged to members (every key of every section was saved)."""
    out, dropped = dict(data), []
    for section in SECTIONS:
        flat = out.get(section)
        cls = _section_class(section, flat) if isinstance(flat, dict) else None
        if cls is None:
            continue
        try:
            read = member_keys(cls, flat)
        except ConfigError:
            continue
        dropped += [f"{section}.{k}" for k in flat if k not in read]
        out[section] = {k: v for k, v in flat.items() if k in read}
    return out, dropped


def without_member_keys(section: dict, member: Spec | None) -> dict:
    """``section`` (a flat mapping) without the keys of ``member`` (before naming another member in its slot)."""
    if member is None:
        return dict(section)
    return {k: v for k, v in section.items() if k == "name" or k not in type(member).model_fields}

