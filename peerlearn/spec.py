"""Specs and registries: every part of a run declares its config fields next to its factory.

A *family* (graphs, mixing rules, datasets, models, algorithms, aggregators, compressors, attacks, ...)
is a :class:`Registry` of :class:`Spec` subclasses, one per *member*. A member's spec is a pydantic
model whose ``name`` field (a ``Literal``) is its registry key and whose other fields are exactly the
config keys it reads, with defaults, bounds and descriptions. ``build`` turns a validated spec into the
plain function or object the engines use; factories themselves know nothing of specs.

A spec may hold *slots*: fields that name a member of another family (``algorithm.aggregator``,
``topology.graph``). A slot's member keeps its fields flat in the same config section::

    algorithm: {name: dsgd, aggregator: trimmed_mean, f: 2}     # f belongs to trimmed_mean
    algorithm: {name: dsgd, aggregator: {name: trimmed_mean, f: 2}}  # the same, nested

Registries are open: a user module registers its own member with ``@FAMILY.register`` and from then
on every config, ``--set``, ``peerlearn list`` and ``peerlearn matrix`` treat it as a built-in.
Rules between families read :class:`Capabilities`, never names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    import numpy as np
    import scipy.sparse as sp
    import torch

    # peerlearn.data.base.Dataset, peerlearn.topology.base.GraphSpec and peerlearn.privacy.spec.PrivacySpec
    # are named below as strings: their modules import this one


class ConfigError(ValueError):
    """A bad configuration value; ``str(err)`` is one line naming the field."""


def config_error(where: str, message: str) -> ConfigError:
    return ConfigError(f"config error: {where}: {message}")


def file_plugin_module(stem: str) -> str:
    """The name under which a plugin given as a ``.py`` file (``stem``: its name without ``.py``) is imported
    into ``sys.modules``."""
    return f"peerlearn_plugin_{stem}"


@dataclass(frozen=True)
class Capabilities:
    """What a member can do or needs, read by the rules between families (each family reads its own)."""

    engines: frozenset = frozenset({"simulator"})  # algorithms: simulator, async (event engine), distributed
    asynchronous: bool = False  # algorithms: run by the event engine on per-node timers
    global_model: bool = False  # algorithms: one global model (every node starts from the same one)
    attackable: bool = False  # algorithms: model-poisoning attacks can replace their gossip messages
    private: bool = False  # algorithms: clip and noise their messages (privacy.clip)
    static_topology: bool = False  # algorithms, aggregators: need the same W every round (no schedule, no faults)
    column_stochastic: bool = False  # algorithms: correct under column-stochastic W; mixing: produces such W
    directed: bool = False  # graphs: directed edges
    random: bool = False  # graphs: a seeded random draw (schedule resample draws a new one each round)
    time_varying: bool = False  # schedules: W changes between rounds
    regular_only: bool = False  # mixing: needs a regular graph
    poisons: str | None = None  # attacks: "messages" (model poisoning) or "data" (data poisoning)
    tokens: bool = False  # models: integer token inputs
    image: bool = False  # models: image-shaped inputs (C, H, W)
    needs_groups: bool = False  # partitions: the dataset's natural groups
    common_init: bool = False  # aggregators: need every node to start from the same model
    linear: bool = False  # aggregators: the linear gossip average W x
    stateful: bool = False  # aggregators: keep state across rounds and read neighbour ids (the simulator only)
    personalized: bool = False  # algorithms: a model per node for its own task (judged on its own held-out data)

    def flags(self) -> list[str]:
        """The non-default capabilities, for ``peerlearn list``."""
        out = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out.append(f"{f.name}={','.join(sorted(value))}" if isinstance(value, frozenset)
                           else f.name if value is True else f"{f.name}={value}")
        return out


class Spec(BaseModel):
    """Base of every member spec: extra keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    capabilities: ClassVar[Capabilities] = Capabilities()
    slots: ClassVar[dict[str, "Registry"]] = {}  # field -> the family whose member it names (inherited)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass declares only its own slots; those of its bases are merged in."""
        super().__pydantic_init_subclass__(**kwargs)
        merged: dict[str, Registry] = {}
        for base in reversed(cls.__mro__):
            merged.update(base.__dict__.get("slots", {}))
        cls.slots = merged

    @classmethod
    def family_label(cls) -> str:
        """The name of the family this spec is a member of ("spec" for a section)."""
        return next((reg.family for reg in REGISTRIES.values() if issubclass(cls, reg.base)), "spec")

    def kwargs(self) -> dict[str, Any]:
        """This member's own keys and values (no ``name``, no slots): the arguments of a factory that
        takes exactly its config keys."""
        return {k: getattr(self, k) for k in type(self).model_fields if k != "name" and k not in self.slots}

    def check(self, cfg: Any) -> None:
        """Rules about this member that need the rest of the config; raise :class:`ConfigError`."""

    def members(self) -> Iterator["Spec"]:
        """This spec and, recursively, the members in its slots."""
        yield self
        for slot in self.slots:
            child = getattr(self, slot)
            if child is not None:
                yield from child.members()


def member_name(cls: type[Spec]) -> str:
    name = cls.model_fields.get("name")
    if name is None or not isinstance(name.default, str):
        raise TypeError(f"{cls.__name__}: a member spec needs a field  name: Literal['...'] = '...'")
    return name.default


class Registry:
    """The members of one family, by name. ``where`` is the config key that names a member."""

    def __init__(self, family: str, base: type[Spec], where: str, doc: str = ""):
        self.family, self.base, self.where, self.doc = family, base, where, doc
        self._members: dict[str, type[Spec]] = {}
        REGISTRIES[family] = self

    def register(self, cls: type[Spec]) -> type[Spec]:
        """Class decorator: add ``cls`` (a subclass of this family's base spec) under its ``name``."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{self.family}: {getattr(cls, '__name__', cls)!r} must subclass {self.base.__name__}")
        name = member_name(cls)
        old = self._members.get(name)
        if old is not None and _origin(old) != _origin(cls):  # the same class imported twice replaces itself
            raise ValueError(f"{self.family} {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        self._members[name] = cls
        return cls

    def get(self, name: Any, where: str | None = None) -> type[Spec]:
        if isinstance(name, str) and name in self._members:
            return self._members[name]
        raise config_error(where or self.where, f"unknown {self.family} {name!r}; registered: {', '.join(self)}")

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def items(self):
        return self._members.items()

    def __repr__(self) -> str:
        return f"Registry({self.family}: {', '.join(self)})"


REGISTRIES: dict[str, Registry] = {}  # every family, in the order its registry was made


def _origin(cls: type) -> tuple[str, str]:
    """A member's identity: the same class from a re-imported module (same module name) replaces itself."""
    return cls.__module__, cls.__qualname__


def slot(registry: Registry, default: str | None, description: str) -> Any:
    """A field naming a member of ``registry`` (instantiated with its defaults unless given)."""
    if default is None:
        return Field(None, description=description)
    return Field(default_factory=lambda: registry.get(default)(), description=description)


# ---------------------------------------------------------------------------------------------
# Validation of a flat mapping into a spec tree, and the way back
# ---------------------------------------------------------------------------------------------
def _fields(cls: type[Spec]) -> list[str]:
    return [k for k in cls.model_fields if k != "name"]


def _takes(cls: type[Spec], children: dict[str, type[Spec] | None]) -> str:
    own = sorted(cls.model_fields, key=lambda k: k != "name")  # name first, then the fields in order
    keys = own + [k for c in children.values() if c is not None for k in _fields(c)]
    return ", ".join(keys) or "no keys"


def _label(cls: type[Spec], where: str, children: dict[str, type[Spec] | None]) -> str:
    if "name" in cls.model_fields:
        return f"{cls.family_label()} {member_name(cls)}"
    named = ", ".join(f"{k} {member_name(c)}" for k, c in children.items() if c is not None)
    return f"{where or 'the config'}" + (f" ({named})" if named else "")


def format_error(err: ValidationError, where: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in (where, *first["loc"]) if p != "")
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"config error: {loc}: {first['msg'].removeprefix('Value error, ')} (got {first.get('input')!r}){more}"


def validate(cls: type[Spec], raw: Any, where: str) -> Spec:
    """Validate the mapping ``raw`` (flat: slot members' fields beside the spec's own) into ``cls``."""
    if isinstance(raw, cls):
        return raw
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise config_error(where, f"expected a mapping of keys, got {type(raw).__name__}")
    raw = dict(raw)
    children: dict[str, type[Spec] | None] = {}
    nested: dict[str, dict] = {}
    given: dict[str, Spec] = {}
    for key, registry in cls.slots.items():
        here = f"{where}.{key}" if where else key
        value = raw.pop(key, _default_member(cls, key))
        if isinstance(value, Spec):
            given[key], children[key] = value, None
            continue
        if isinstance(value, dict):
            nested[key] = dict(value)
            value = nested[key].pop("name", _default_member(cls, key))
        if value is None:
            if cls.model_fields[key].default_factory is not None:
                raise config_error(here, f"needs one of: {', '.join(registry)}")
            children[key] = None
            continue
        children[key] = registry.get(value, here)
        nested.setdefault(key, {})
    own: dict[str, Any] = {}
    for key, value in raw.items():
        owners = [s for s, c in children.items() if c is not None and key in _fields(c)]
        if key in cls.model_fields:
            owners.append("")
        if not owners:
            raise config_error(f"{where}.{key}" if where else key,
                               f"not a key of {_label(cls, where, children)}; it takes: {_takes(cls, children)}")
        if len(owners) > 1:
            raise config_error(f"{where}.{key}" if where else key, f"ambiguous: read by {', '.join(o or 'the section' for o in owners)}")
        if owners[0]:
            if key in nested[owners[0]]:
                raise config_error(f"{where}.{key}" if where else key,
                                   f"given twice: beside {owners[0]} and inside it; keep one")
            nested[owners[0]][key] = value
        else:
            own[key] = value
    for key, child in children.items():
        if child is not None:
            given[key] = validate(child, nested[key], where)
        else:
            given.setdefault(key, None)
    try:
        return cls.model_validate({**own, **given})
    except ValidationError as err:
        raise ConfigError(format_error(err, where)) from None


def _default_member(cls: type[Spec], key: str) -> str | None:
    info = cls.model_fields[key]
    if info.default_factory is not None:
        return member_name(type(info.default_factory()))
    return info.default if isinstance(info.default, str) else None


def member_keys(cls: type[Spec], flat: dict) -> set[str]:
    """Every key ``cls`` reads from the flat mapping ``flat``: its fields and those of the members its
    slots name there (or by default)."""
    keys = set(cls.model_fields)
    for key, registry in cls.slots.items():
        value = flat.get(key, _default_member(cls, key))
        name = value.get("name", _default_member(cls, key)) if isinstance(value, dict) else value
        if isinstance(name, str) and name in registry:
            keys |= member_keys(registry.get(name), flat)
    return keys


def dump(spec: Spec) -> dict:
    """The flat mapping :func:`validate` reads back (slot members as their name plus their fields)."""
    out: dict[str, Any] = {}
    tail: dict[str, Any] = {}
    plain = spec.model_dump(mode="json", exclude=set(spec.slots))
    for key in sorted(type(spec).model_fields, key=lambda k: k != "name"):
        if key in spec.slots:
            child = getattr(spec, key)
            out[key] = None if child is None else child.name
            if child is not None:
                tail.update({k: v for k, v in dump(child).items() if k != "name"})
        else:
            out[key] = plain[key]
    return {**out, **tail}


# ---------------------------------------------------------------------------------------------
# Descriptions for `peerlearn list`
# ---------------------------------------------------------------------------------------------
_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "len >=", "max_length": "len <="}


@dataclass
class FieldInfo:
    key: str
    default: Any
    type: str
    bounds: str
    description: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _type_name(annotation: Any) -> str:
    """``int``, ``float | None``, ``'atc' | 'cta'`` (a Literal's values), ``list[int]``."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in args)}]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def describe_fields(cls: type[Spec], skip: tuple[str, ...] = ()) -> list[FieldInfo]:
    """``cls``'s keys (a slot as the name of its default member), without those in ``skip``."""
    out = []
    for key, info in cls.model_fields.items():
        if key == "name" or key in skip:
            continue
        if key in cls.slots:
            registry = cls.slots[key]
            out.append(FieldInfo(key, _default_member(cls, key), f"{registry.family} name", "",
                                 f"{info.description or ''} (a member of family {registry.family}: its keys go "
                                 f"beside this one)"))
            continue
        bounds = [f"{_BOUNDS[k]} {getattr(m, k)}" for m in info.metadata for k in _BOUNDS if hasattr(m, k)]
        default = info.default_factory() if info.default_factory is not None else info.default
        kind = _type_name(info.annotation)
        out.append(FieldInfo(key, default if not isinstance(default, BaseModel) else None, kind, ", ".join(bounds),
                             info.description or ""))
    return out


def summary_line(cls: type[Spec]) -> str:
    import inspect

    doc = inspect.getdoc(cls)
    if doc and doc != inspect.getdoc(cls.__mro__[1]):
        return doc.splitlines()[0]
    return "-"


@dataclass
class Described:
    family: str
    where: str
    name: str
    summary: str
    capabilities: list[str]
    fields: list[FieldInfo] = field(default_factory=list)
    module: str = ""

    def as_dict(self) -> dict:
        return {"family": self.family, "key": self.where, "name": self.name, "summary": self.summary,
                "capabilities": self.capabilities, "module": self.module,
                "fields": [f.as_dict() for f in self.fields]}


def describe(registry: Registry, own_only: bool = False) -> list[Described]:
    """Every member of ``registry``; ``own_only``: without the keys every member of the family has."""
    skip = tuple(registry.base.model_fields) if own_only else ()
    return [Described(registry.family, registry.where, name, summary_line(cls), cls.capabilities.flags(),
                      describe_fields(cls, skip), cls.__module__) for name, cls in registry.items()]



@dataclass(frozen=True)
class DataContext:
    """Stage 1 of a build, what a dataset's ``build(ctx)`` may read: the run's sizes and seed streams.

    The stages grow by construction (:meth:`grow`), never by assignment: :class:`GraphContext` adds the
    loaded data and the graph, :class:`BuildContext` the model; a member is handed the stage its family is
    built at (datasets this one; topology schedules, faults and clocks a :class:`GraphContext`; algorithms,
    aggregators, attacks and privacy a :class:`BuildContext`).
    """

    run_seed: int  # the config's seed; members draw from ``seed(stream)``, not from this
    num_nodes: int
    num_rounds: int
    num_byzantine: int = 0
    image_inputs: bool = False  # the model takes images (C, H, W): a dataset keeps its samples' shape
    test_samples: int | None = None  # data.test_samples: a loader may read only as many test samples

    @classmethod
    def of(cls, cfg) -> DataContext:
        """The first stage of the build of ``cfg`` (a validated ``ExperimentConfig``)."""
        return DataContext(cfg.seed, cfg.num_nodes, cfg.num_rounds, cfg.num_byzantine,
                           cfg.model.capabilities.image, cfg.data.test_samples)

    def seed(self, stream: int | str) -> int:
        """The run's seed of ``stream`` (see :data:`peerlearn.rng.STREAMS`; a plugin may use its own name)."""
        from peerlearn.rng import stream_seed

        return stream_seed(self.run_seed, stream)

    def grow(self, stage: type, **fields):
        """The next ``stage`` of this context: every field of this one and ``fields``."""
        return stage(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **fields)

    def __getattr__(self, name: str):
        if name == "config":  # what a member written for the earlier, mutable context read
            raise AttributeError(f"{type(self).__name__} has no .config: a member reads the fields its stage gives "
                                 f"({', '.join(f.name for f in dataclasses.fields(self))}) and ctx.seed(stream)")
        raise AttributeError(name)


@dataclass(frozen=True)
class GraphContext(DataContext):
    """Stage 2, what topology schedules, faults and clocks read: the data and the communication graph."""

    dataset: Dataset | None = None  # data.base.Dataset
    graph: GraphSpec | None = None  # topology.graph (a schedule may draw more graphs from it)
    adjacency: sp.csr_array | None = None  # the static graph
    mixing: Callable | None = None  # the run's rule adjacency -> W
    relay_N: np.ndarray | None = None  # bool mask of relay nodes (no data), or None


@dataclass(frozen=True)
class BuildContext(GraphContext):
    """Stage 3, what algorithms, aggregators, attacks and privacy read: the model and each node's data size."""

    data_sizes_N: torch.Tensor | None = None  # float64: training samples per node
    module: torch.nn.Module | None = None  # the run's model (one node's)
    layer_slices: list | None = None  # flat-parameter slices of the model's layers
    reference_P: torch.Tensor | None = None  # the common initial model
    probe_loss_fn: Callable | None = None  # (params_NP, batch) -> loss_N, for zeroth-order methods
    same_init: bool = True  # model.same_init: every node starts from one model
    privacy: PrivacySpec | None = None  # the privacy section; ``privacy.build(ctx, lr)`` noises messages
