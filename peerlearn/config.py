"""Typed, validated experiment configuration and ``build()``: the ONLY place names map to functions.

A config is YAML with canonical keys (``seed``, ``num_nodes``, ``topology.graph``, ``data.alpha``,
``algorithm.lr`` ...). :func:`load_config` validates it completely before any work starts and
raises :class:`ConfigError` with one line naming the field and what is allowed.
"""

from __future__ import annotations

import functools
import inspect
import math
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from peerlearn import aggregators, algorithms, attacks, compressors, optim
from peerlearn.data import datasets, partition, shakespeare
from peerlearn.aggregators.robust import MIN_INPUTS, min_inputs_error
from peerlearn.data.batching import NodeSampler
from peerlearn.engines.comm import SimComm, Threat
from peerlearn.models import nets
from peerlearn.topology import directed, graphs, mixing, random_graphs, schedules


class ConfigError(ValueError):
    """A bad configuration value; ``str(err)`` is one line naming the field."""


# ---------------------------------------------------------------------------------------------
# Registries: name -> (function, the config fields it uses). `peerlearn list` prints these.
# ---------------------------------------------------------------------------------------------
class Entry(NamedTuple):
    fn: Callable
    params: tuple[str, ...] = ()


GRAPHS = {
    "complete": Entry(graphs.complete_graph),
    "ring": Entry(graphs.cycle_graph),
    "cycle": Entry(graphs.cycle_graph),
    "path": Entry(graphs.path_graph),
    "star": Entry(graphs.star_graph),
    "torus": Entry(graphs.torus_graph, ("rows",)),
    "hypercube": Entry(graphs.hypercube_graph),
    "exponential": Entry(graphs.exponential_graph),
    "random_regular": Entry(random_graphs.random_regular_graph, ("degree",)),
    "erdos_renyi": Entry(random_graphs.erdos_renyi_graph, ("p",)),
    "watts_strogatz": Entry(random_graphs.watts_strogatz_graph, ("k", "p")),
    "barabasi_albert": Entry(random_graphs.barabasi_albert_graph, ("m",)),
    "file": Entry(random_graphs.from_edge_list, ("path",)),
    "directed_ring": Entry(directed.directed_cycle_graph),
    "directed_exponential": Entry(directed.directed_exponential_graph),
}
SCHEDULES = {
    "static": Entry(schedules.constant_schedule),
    "random_matching": Entry(schedules.random_matching_schedule),
    "one_peer_exponential": Entry(schedules.one_peer_exponential_schedule),
    "resample": Entry(schedules.resampled_schedule, ("graph",)),
    "sampled": Entry(schedules.sampled_clients_schedule, ("fraction",)),
    "sequence": Entry(schedules.sequence_schedule, ("sequence",)),
}
DIRECTED_GRAPHS = ("directed_ring", "directed_exponential")
RANDOM_GRAPHS = ("random_regular", "erdos_renyi", "watts_strogatz", "barabasi_albert")
MIXING = {
    "metropolis_hastings": Entry(mixing.metropolis_hastings_weights),
    "max_degree": Entry(mixing.max_degree_weights),
    "uniform": Entry(mixing.uniform_weights),
    "column_stochastic": Entry(directed.column_stochastic_weights),
}
DATASETS = {
    "digits": Entry(datasets.load_digits),
    "fashion_mnist": Entry(datasets.load_fashion_mnist, ("path",)),
    "mnist1d": Entry(datasets.load_mnist1d, ("num_samples",)),
    "synthetic": Entry(datasets.load_synthetic, ("num_samples", "num_features", "num_classes", "noise")),
    "npz": Entry(datasets.load_npz, ("path",)),
    "shakespeare": Entry(shakespeare.load_shakespeare, ("path", "seq_len")),
}
PARTITIONS = {
    "iid": Entry(partition.iid),
    "dirichlet": Entry(partition.dirichlet, ("alpha",)),
    "shards": Entry(partition.shards, ("classes_per_node",)),
    "quantity_skew": Entry(partition.quantity_skew, ("alpha",)),
    "natural": Entry(partition.natural),
}
MODELS = {
    "logreg": Entry(nets.LogisticRegression),
    "mlp": Entry(nets.MLP, ("hidden",)),
    "cnn": Entry(nets.CNN, ("channels",)),
    "gru": Entry(nets.CharGRU, ("hidden", "embed_dim")),
}
_COMMON_ALGO = ("lr", "num_local_steps", "batch_size", "optimizer", "momentum", "weight_decay")
_SERVER = ("server_period", "server_fraction", "server_broadcast")
ALGORITHMS = {
    "dsgd": Entry(algorithms.dsgd, _COMMON_ALGO + ("order", "gossip_steps", "sam_rho", "comm_every",
                                                  "comm_late_fraction", "variance_correction",
                                                  "share_fraction") + _SERVER),
    "gradient_tracking": Entry(algorithms.gradient_tracking, ("lr", "batch_size") + _SERVER),
    "push_sum": Entry(algorithms.push_sum, _COMMON_ALGO + _SERVER),
    "diloco": Entry(algorithms.diloco, _COMMON_ALGO + ("outer_lr", "outer_momentum", "combine", "compressor")),
    "local_sgd": Entry(algorithms.local_sgd, _COMMON_ALGO + ("compressor",)),
    "modest": Entry(algorithms.modest, _COMMON_ALGO + ("sample_size", "num_aggregators")),
    "fedavg": Entry(algorithms.fedavg, _COMMON_ALGO + ("fraction", "weighting")),
    "fedprox": Entry(optim.proximal, _COMMON_ALGO + ("fraction", "weighting", "prox_mu")),
    "centralized": Entry(algorithms.centralized, _COMMON_ALGO + ("weighting",)),
    "local": Entry(algorithms.local_only, _COMMON_ALGO),
    "choco": Entry(algorithms.choco, _COMMON_ALGO + ("compressor", "consensus_lr")),
    "spsa": Entry(algorithms.spsa, ("lr", "batch_size", "optimizer", "momentum", "weight_decay",
                                    "spsa_perturbations", "spsa_epsilon")),
    "gossip_learning": Entry(algorithms.gossip_learning, _COMMON_ALGO + ("period_s",)),
    "async_push_sum": Entry(algorithms.async_push_sum, _COMMON_ALGO + ("period_s",)),
    "async_local_sgd": Entry(algorithms.async_local_sgd, _COMMON_ALGO + ("outer_lr", "outer_momentum",
                                                                         "staleness_power", "period_s")),
}
ASYNC_ALGORITHMS = ("gossip_learning", "async_push_sum", "async_local_sgd")  # run by the event engine
SERVER_ALGORITHMS = ("fedavg", "fedprox", "centralized", "diloco", "local_sgd", "modest",
                     "async_local_sgd", "spsa")  # one global model
AGGREGATORS = {
    "gossip": Entry(SimComm.mix),
    "mean": Entry(aggregators.masked_mean),
    "median": Entry(aggregators.coordinate_median),
    "trimmed_mean": Entry(aggregators.trimmed_mean, ("f",)),
    "krum": Entry(aggregators.krum, ("f",)),
    "multi_krum": Entry(aggregators.multi_krum, ("f",)),
    "bulyan": Entry(aggregators.bulyan, ("f",)),
    "geometric_median": Entry(aggregators.geometric_median),
    "centered_clipping": Entry(aggregators.centered_clipping, ("tau",)),
    "nna": Entry(aggregators.nearest_neighbor_mean, ("f",)),
    "foolsgold": Entry(aggregators.foolsgold),
}
COMPRESSORS = {
    "none": Entry(compressors.identity),
    "top_k": Entry(compressors.top_k, ("compress_ratio",)),
    "random_k": Entry(compressors.random_k, ("compress_ratio",)),
    "sign": Entry(compressors.sign),
    "qsgd": Entry(compressors.qsgd, ("qsgd_levels",)),
    "int8": Entry(compressors.int8),
    "fp16": Entry(compressors.fp16),
}
ATTACKS = {
    "sign_flip": Entry(attacks.sign_flip),
    "gaussian": Entry(attacks.gaussian, ("sigma",)),
    "large_norm": Entry(attacks.large_norm, ("scale",)),
    "alie": Entry(attacks.alie, ("z",)),
    "ipm": Entry(attacks.ipm, ("epsilon",)),
    "dmpa": Entry(attacks.dmpa, ("z",)),
    "label_flip": Entry(attacks.label_flip_poison),
    "backdoor": Entry(attacks.backdoor_poison, ("target_label", "poison_fraction", "trigger_size")),
}
REGISTRIES = {"topology.graph": GRAPHS, "topology.mixing": MIXING,
              "topology.schedule": SCHEDULES, "data.dataset": DATASETS,
              "data.partition": PARTITIONS, "model.name": MODELS, "algorithm.name": ALGORITHMS,
              "algorithm.aggregator": AGGREGATORS, "algorithm.compressor": COMPRESSORS, "threat.attack": ATTACKS}


def _names(registry: dict) -> Any:
    return Literal[tuple(registry)]  # type: ignore[valid-type]


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TopologyConfig(_Section):
    graph: _names(GRAPHS) = Field("ring", description="communication graph")
    mixing: _names(MIXING) = Field("metropolis_hastings", description="rule turning the graph into weights W")
    degree: int = Field(4, ge=1, description="degree of random_regular")
    p: float = Field(0.1, ge=0.0, le=1.0, description="edge probability (erdos_renyi) or rewiring probability (watts_strogatz)")
    k: int = Field(4, ge=2, description="nearest neighbours in the watts_strogatz ring lattice")
    m: int = Field(2, ge=1, description="edges per new node in barabasi_albert")
    rows: int | None = Field(None, ge=2, description="rows of the torus (default: most square)")
    path: str | None = Field(None, description="edge-list file ('u v' per line) for graph=file")
    schedule: _names(SCHEDULES) = Field(
        "static", description="time-varying topology: static (the graph every round), random_matching, "
                              "one_peer_exponential, resample (a new random graph each round), sampled (a random "
                              "fraction averages together), sequence (edge-list files in turn)")
    fraction: float = Field(0.25, gt=0.0, le=1.0, description="schedule sampled: fraction of nodes averaging per round")
    sequence: list[str] = Field([], description="schedule sequence: edge-list files used in turn")


class DataConfig(_Section):
    dataset: _names(DATASETS) = Field("digits", description="dataset (all offline)")
    partition: _names(PARTITIONS) = Field("iid", description="how training data is split across nodes")
    alpha: float = Field(1.0, gt=0.0, description="Dirichlet concentration (dirichlet, quantity_skew); small = skewed")
    classes_per_node: int = Field(2, ge=1, description="classes per node for shards")
    min_samples_per_node: int = Field(2, ge=1, description="every node gets at least this many training samples")
    local_test_fraction: float = Field(0.0, ge=0.0, lt=1.0,
                                       description="fraction of each node's data held out as its local test set")
    path: str | None = Field(None, description="local folder (fashion_mnist IDX files, shakespeare plays) or "
                             ".npz file (npz)")
    seq_len: int = Field(80, ge=1, description="characters of context per sample (shakespeare)")
    relay_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of nodes that hold no data and only "
                                  "relay (they gossip but do not train)")
    relay_placement: Literal["hubs", "random"] = Field("hubs", description="which nodes relay: the highest-degree "
                                                       "ones, or random ones")
    test_samples: int | None = Field(None, ge=1, description="evaluate on a seeded subset of this many test samples "
                                     "(default: the whole test set)")
    num_samples: int | None = Field(None, ge=10, description="samples to generate (synthetic, mnist1d)")
    num_features: int = Field(20, ge=1, description="input dimension (synthetic)")
    num_classes: int = Field(4, ge=2, description="classes (synthetic)")
    noise: float = Field(0.5, gt=0.0, description="label noise temperature (synthetic)")


class ModelConfig(_Section):
    name: _names(MODELS) = Field("mlp", description="model architecture")
    hidden: list[int] = Field([64], description="hidden layer widths (mlp), GRU layer widths (gru)")
    embed_dim: int = Field(8, ge=1, description="character embedding size (gru)")
    channels: list[int] = Field([16, 32], min_length=2, max_length=2, description="conv channels (cnn)")
    same_init: bool = Field(True, description="all nodes start from the same model")
    grad_strategy: Literal["auto", "vmap", "loop"] = Field(
        "auto", description="gradients of all nodes: one vmap, or a loop over nodes; auto = vmap unless its "
                            "activations would exceed 2 GiB")


class AlgorithmConfig(_Section):
    name: _names(ALGORITHMS) = Field("dsgd", description="learning algorithm")
    lr: float = Field(0.1, gt=0.0, description="local learning rate")
    num_local_steps: int = Field(1, ge=1, description="local optimizer steps per round")
    batch_size: int = Field(16, ge=1, description="mini-batch size per node and step")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="local heavy-ball momentum")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 penalty (decoupled for adamw)")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="local (inner) optimizer")
    gossip_steps: int = Field(1, ge=1, description="dsgd: gossip rounds per training round (DFedSAM-MGS: Q)")
    sam_rho: float = Field(0.0, ge=0.0, description="dsgd: sharpness-aware local steps with this radius "
                           "(DFedSAM); 0 = plain SGD steps")
    comm_every: int = Field(1, ge=1, description="dsgd: gossip only every this many rounds")
    comm_late_fraction: float = Field(0.0, ge=0.0, le=1.0, description="dsgd: gossip every round during this last "
                                      "fraction of the run (communication spent late)")
    variance_correction: bool = Field(False, description="dsgd: restore each layer's variance after averaging")
    final_merge: bool = Field(False, description="after the last round, all nodes average once (one all-reduce)")
    outer_lr: float = Field(0.7, gt=0.0, description="diloco, async_local_sgd: outer learning rate")
    outer_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="diloco, async_local_sgd: outer Nesterov "
                                  "momentum (async: delayed Nesterov, one momentum step per num_nodes pushes)")
    staleness_power: float = Field(0.0, ge=0.0, description="async_local_sgd: weigh a push of staleness tau by "
                                   "(1 + tau)^-power (0: no weighting)")
    period_s: float | None = Field(None, gt=0.0, description="asynchronous algorithms: a node's timer period in "
                                   "simulated seconds (default: gossip_learning one round, the others as fast as "
                                   "each node's local steps and sends allow)")
    combine: Literal["all_reduce", "gossip"] = Field("all_reduce", description="diloco: average the trained models "
                                                     "with an all-reduce or one gossip step")
    sample_size: int = Field(10, ge=1, description="modest: nodes sampled per round (s)")
    num_aggregators: int = Field(1, ge=1, description="modest: aggregators per round (a), among the sampled")
    prox_mu: float = Field(0.01, ge=0.0, description="fedprox: weight of the proximal term")
    server_period: int = Field(0, ge=0, description="semi-decentralized: a server averages a sample every this "
                               "many rounds (0 = never)")
    server_fraction: float = Field(0.25, gt=0.0, le=1.0, description="semi-decentralized: fraction of nodes sampled")
    server_broadcast: Literal["sampled", "all"] = Field("sampled", description="semi-decentralized: the average goes "
                                                        "back to the sampled nodes (S2S) or to all (S2A)")
    order: Literal["atc", "cta"] = Field("atc", description="dsgd: adapt-then-combine or combine-then-adapt")
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="fedavg: fraction of clients sampled per round")
    weighting: Literal["data_size", "uniform"] = Field(
        "data_size", description="fedavg/centralized: weight nodes by their data size or equally")
    aggregator: _names(AGGREGATORS) = Field("gossip", description="dsgd: how a node combines its own and received models")
    f: int = Field(1, ge=0, description="Byzantine inputs each node's robust rule tolerates")
    tau: float = Field(1.0, gt=0.0, description="clipping radius (centered_clipping)")
    compressor: _names(COMPRESSORS) = Field("none", description="choco: how each message is compressed; diloco, "
                                            "local_sgd: how each pseudo-gradient is compressed, with error "
                                            "feedback (as contractions: random_k unscaled, qsgd scaled down)")
    compress_ratio: float = Field(0.01, gt=0.0, le=1.0, description="top_k, random_k: fraction of coordinates sent")
    qsgd_levels: int = Field(16, ge=1, description="qsgd: quantization levels s")
    consensus_lr: float = Field(1.0, gt=0.0, le=1.0, description="choco: consensus step size gamma (smaller for "
                                "harsher compression)")
    spsa_perturbations: int = Field(1, ge=1, description="spsa: random directions per node and round (one byte "
                                    "sent to every peer for each)")
    spsa_epsilon: float = Field(1e-3, gt=0.0, description="spsa: probe distance of the two-point estimate")
    share_fraction: float = Field(1.0, gt=0.0, le=1.0, description="dsgd: partial model sharing: gossip only this "
                                  "random fraction of the coordinates each round (the same at every node)")


class ThreatConfig(_Section):
    num_byzantine: int = Field(0, ge=0, description="number of Byzantine nodes")
    fraction: float | None = Field(None, ge=0.0, lt=1.0, description="fraction of Byzantine nodes (instead of num_byzantine)")
    placement: Literal[attacks.PLACEMENTS] = Field("random", description="where Byzantine nodes sit: random, "
                                                   "degree (hubs), cluster (a connected ball)")
    attack: _names(ATTACKS) | None = Field(None, description="what Byzantine nodes do (none: they behave honestly)")
    collusion: Literal["all", "neighbors"] = Field(
        "all", description="honest messages an attacker sees: everyone's, or its neighbours'")
    sybil: bool = Field(False, description="all Byzantine identities send one identical message (Sybil clones)")
    sigma: float = Field(1.0, gt=0.0, description="gaussian: noise standard deviation")
    scale: float = Field(100.0, description="large_norm: factor on the own model")
    z: float = Field(1.5, description="alie, dmpa: standard deviations below the honest mean")
    epsilon: float = Field(0.1, description="ipm: factor on the negated honest mean")
    target_label: int = Field(0, ge=0, description="backdoor: the class triggered inputs are pushed to")
    poison_fraction: float = Field(0.5, gt=0.0, le=1.0, description="backdoor: fraction of each poisoned batch "
                                   "that carries the trigger")
    trigger_size: int = Field(3, ge=1, description="backdoor: side of the square trigger patch (top-left corner)")


class FaultsConfig(_Section):
    crash_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of nodes that crash")
    crash_round: int = Field(1, ge=1, description="round at which they crash")
    recover_round: int | None = Field(None, ge=2, description="round at which crashed nodes come back (none: never)")
    crash_placement: Literal["random", "hubs"] = Field("random", description="which nodes crash: random, or the "
                                                       "highest-degree ones")
    crash_among: Literal["all", "data", "relays"] = Field("all", description="crash only nodes that hold data, or "
                                                          "only relay nodes (data.relay_fraction)")
    churn_leave: float = Field(0.0, ge=0.0, le=1.0, description="churn: probability that an up node leaves in a round")
    churn_join: float = Field(0.0, ge=0.0, le=1.0, description="churn: probability that a node that left comes back "
                              "in a round")
    late_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of nodes that join late")
    join_round: int = Field(1, ge=1, description="round at which late joiners join")
    rejoin: Literal["neighbour", "stale"] = Field("neighbour", description="a node that comes back starts from an "
                                                  "alive neighbour's model, or from its own stale one")
    link_failure: float = Field(0.0, ge=0.0, lt=1.0, description="probability that a link is down in a round")
    message_loss: float = Field(0.0, ge=0.0, lt=1.0, description="probability that one gossip message is lost")
    partition_groups: int = Field(1, ge=1, description="split the network into this many groups of consecutive "
                                  "ids (1: no partition)")
    partition_round: int = Field(1, ge=1, description="round at which the partition starts")
    heal_round: int | None = Field(None, ge=2, description="round at which the partition heals (none: never)")

    @property
    def active(self) -> bool:
        return bool(self.crash_fraction or self.churn_leave or self.late_fraction or self.link_failure
                    or self.message_loss or self.partition_groups > 1)


class ClockConfig(_Section):
    step_time_s: float = Field(0.05, ge=0.0, description="simulated seconds of one mini-batch step on a "
                               "reference node")
    bandwidth_mbps: float = Field(10.0, gt=0.0, description="each node's upload bandwidth, megabits per second")
    latency_ms: float = Field(50.0, ge=0.0, description="one-way message latency, milliseconds")
    speed_sigma: float = Field(0.0, ge=0.0, description="log-normal spread of per-node compute speed (0: equal)")
    straggler_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of nodes that are stragglers")
    straggler_slowdown: float = Field(10.0, ge=1.0, description="how many times slower a straggler computes")
    slowdowns: list[float] | None = Field(None, description="each node's compute time factor, one per node "
                                          "(instead of speed_sigma and stragglers)")
    slices_per_round: int = Field(4, ge=1, description="asynchronous algorithms: events in the same of this many "
                                  "slices of a round are batched together (more: finer timing, slower)")


class PrivacyConfig(_Section):
    clip: float | None = Field(None, gt=0.0, description="clip each node's round update, in gradient units "
                               "(update / lr), to this L2 norm before it is shared; enables privacy (dsgd)")
    noise_multiplier: float = Field(0.0, ge=0.0, description="independent Gaussian noise on each update, std "
                                    "noise_multiplier * clip")
    pairwise_multiplier: float = Field(0.0, ge=0.0, description="pairwise-cancelling noise (DECOR): each linked "
                                       "pair adds +v / -v, v ~ N(0, (pairwise_multiplier * clip)^2)")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="the delta at which epsilon is reported")

    @property
    def active(self) -> bool:
        return self.clip is not None


class ExperimentConfig(_Section):
    name: str | None = Field(None, description="run name (default: the config file's name)")
    seed: int = Field(0, ge=0, description="seed of every random choice in the run")
    num_nodes: int = Field(16, ge=1, le=1_000_000, description="number of nodes")
    num_rounds: int = Field(100, ge=1, description="communication rounds")
    eval_every: int = Field(10, ge=1, description="evaluate every this many rounds (and at the last round)")
    checkpoint_every: int = Field(0, ge=0, description="write checkpoint.pt (for --resume) at evaluated rounds at "
                                  "least this many rounds apart (0: at every evaluation; it holds every node's "
                                  "model, so large runs want fewer)")
    topology: TopologyConfig = TopologyConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    threat: ThreatConfig = ThreatConfig()
    faults: FaultsConfig = FaultsConfig()
    clock: ClockConfig = ClockConfig()
    privacy: PrivacyConfig = PrivacyConfig()

    @property
    def num_byzantine(self) -> int:
        t = self.threat
        return int(round(t.fraction * self.num_nodes)) if t.fraction is not None else t.num_byzantine


SECTIONS = {"topology": TopologyConfig, "data": DataConfig, "model": ModelConfig, "algorithm": AlgorithmConfig,
            "threat": ThreatConfig, "faults": FaultsConfig, "clock": ClockConfig,
            "privacy": PrivacyConfig}


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------
def _check_keys(data: Any, model: type[BaseModel], prefix: str = "") -> None:
    """Unknown keys are errors that list the allowed ones (pydantic only says 'extra input')."""
    if not isinstance(data, dict):
        raise ConfigError(f"config error: {prefix.rstrip('.') or 'config'}: expected a mapping of keys, "
                          f"got {type(data).__name__}")
    allowed = model.model_fields
    for key, value in data.items():
        if key not in allowed:
            raise ConfigError(f"config error: {prefix}{key}: unknown key; allowed: {', '.join(allowed)}")
        sub = allowed[key].annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            _check_keys(value if value is not None else {}, sub, f"{prefix}{key}.")


def _format(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    got = first.get("input")
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"config error: {loc}: {first['msg']} (got {got!r}){more}"


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"config error: --set {item!r}: expected key=value, e.g. --set algorithm.lr=0.05")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config error: {key}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def parse_config(data: dict | None, overrides: list[str] = ()) -> ExperimentConfig:
    data = apply_overrides(dict(data or {}), list(overrides))
    _check_keys(data, ExperimentConfig)
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err)) from None
    check_consistency(cfg)
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config error: file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config error: {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    cfg = parse_config(data, overrides)
    if cfg.name is None:
        cfg.name = path.stem
    return cfg


def check_consistency(cfg: ExperimentConfig) -> None:
    """Cross-field rules that pydantic's per-field checks cannot express."""
    t, n = cfg.topology, cfg.num_nodes
    if cfg.algorithm.name in SERVER_ALGORITHMS and not cfg.model.same_init:
        raise ConfigError(f"config error: model.same_init: algorithm {cfg.algorithm.name} trains one global "
                          "model, so it needs same_init: true")
    if t.graph == "file" and not t.path:
        raise ConfigError("config error: topology.path: graph 'file' needs the path of an edge-list file")
    if t.graph == "random_regular" and (t.degree >= n or (n * t.degree) % 2):
        raise ConfigError(f"config error: topology.degree: random_regular needs degree < num_nodes and "
                          f"num_nodes * degree even; got degree={t.degree}, num_nodes={n}")
    if t.graph == "watts_strogatz" and t.k >= n:
        raise ConfigError(f"config error: topology.k: must be < num_nodes={n}, got {t.k}")
    if t.graph == "barabasi_albert" and t.m >= n:
        raise ConfigError(f"config error: topology.m: must be < num_nodes={n}, got {t.m}")
    if t.graph == "hypercube" and n & (n - 1):
        raise ConfigError(f"config error: num_nodes: graph hypercube needs a power of 2, got {n}")
    if t.graph == "torus" and t.rows is not None and n % t.rows:
        raise ConfigError(f"config error: topology.rows: must divide num_nodes={n}, got {t.rows}")
    if any(h < 1 for h in cfg.model.hidden) or any(c < 1 for c in cfg.model.channels):
        raise ConfigError("config error: model.hidden/model.channels: every width must be >= 1")
    th, a = cfg.threat, cfg.algorithm
    if th.fraction is not None and "num_byzantine" in th.model_fields_set:
        raise ConfigError("config error: threat.fraction: give threat.num_byzantine or threat.fraction, not both")
    if cfg.num_byzantine >= n:
        raise ConfigError(f"config error: threat.num_byzantine: must be < num_nodes={n}, got {cfg.num_byzantine}")
    if th.attack is not None and cfg.num_byzantine == 0:
        raise ConfigError(f"config error: threat.attack: {th.attack} needs Byzantine nodes; set threat.num_byzantine")
    if th.attack in attacks.MODEL_ATTACKS and a.name != "dsgd":
        raise ConfigError(f"config error: threat.attack: model-poisoning attacks act on gossip messages; "
                          f"algorithm {a.name} is not supported yet (use dsgd, or a data attack: "
                          f"{', '.join(attacks.DATA_ATTACKS)})")
    if a.aggregator == "foolsgold" and not cfg.model.same_init:
        raise ConfigError("config error: model.same_init: foolsgold measures update histories from the common "
                          "initial model, so it needs same_init: true")
    if a.aggregator != "gossip" and a.name != "dsgd":
        raise ConfigError(f"config error: algorithm.aggregator: only dsgd takes an aggregator, not {a.name}")
    check_topology_algorithm(cfg)
    if cfg.data.dataset in ("npz",) and not cfg.data.path:
        raise ConfigError("config error: data.path: dataset 'npz' needs the path of a .npz file")
    check_faults(cfg)
    check_clock(cfg)
    check_privacy(cfg)


def check_privacy(cfg: ExperimentConfig) -> None:
    p, a = cfg.privacy, cfg.algorithm
    if not p.active:
        if p.noise_multiplier or p.pairwise_multiplier:
            raise ConfigError("config error: privacy.clip: the noise is calibrated to the clipping norm; set "
                              "privacy.clip (e.g. 1.0)")
        return
    if a.name != "dsgd":
        raise ConfigError(f"config error: privacy.clip: privacy noise applies to dsgd's messages, not {a.name}")
    if a.comm_every > 1 or a.comm_late_fraction:
        raise ConfigError("config error: privacy.clip: rounds without gossip would later share unnoised updates; "
                          "not combined with algorithm.comm_every or comm_late_fraction")


def check_clock(cfg: ExperimentConfig) -> None:
    c = cfg.clock
    if c.slowdowns is not None:
        if len(c.slowdowns) != cfg.num_nodes or min(c.slowdowns) <= 0:
            raise ConfigError(f"config error: clock.slowdowns: needs one positive factor per node "
                              f"({cfg.num_nodes}), got {len(c.slowdowns)} values")
        if c.speed_sigma or c.straggler_fraction:
            raise ConfigError("config error: clock.slowdowns: give per-node slowdowns or speed_sigma/"
                              "straggler_fraction, not both")


def check_faults(cfg: ExperimentConfig) -> None:
    f, d = cfg.faults, cfg.data
    if f.recover_round is not None and f.recover_round <= f.crash_round:
        raise ConfigError(f"config error: faults.recover_round: must be after crash_round={f.crash_round}, "
                          f"got {f.recover_round}")
    if f.heal_round is not None and f.heal_round <= f.partition_round:
        raise ConfigError(f"config error: faults.heal_round: must be after partition_round={f.partition_round}, "
                          f"got {f.heal_round}")
    if f.partition_groups > cfg.num_nodes:
        raise ConfigError(f"config error: faults.partition_groups: at most num_nodes={cfg.num_nodes}, "
                          f"got {f.partition_groups}")
    if f.churn_join and not f.churn_leave:
        raise ConfigError("config error: faults.churn_join: nodes only come back after leaving; set faults.churn_leave")
    if f.crash_among == "relays" and not d.relay_fraction:
        raise ConfigError("config error: faults.crash_among: relays needs relay nodes; set data.relay_fraction")
    if f.active and cfg.topology.mixing == "uniform":
        raise ConfigError("config error: topology.mixing: uniform weights need a regular graph, which faults break; "
                          "use metropolis_hastings or max_degree")
    if d.relay_fraction and d.local_test_fraction:
        raise ConfigError("config error: data.local_test_fraction: relay nodes hold no data to hold out; "
                          "not combined with data.relay_fraction")
    if d.relay_fraction and cfg.num_byzantine:
        raise ConfigError("config error: data.relay_fraction: relay nodes are not combined with Byzantine nodes yet")


def check_topology_algorithm(cfg: ExperimentConfig) -> None:
    """Directed graphs, schedules and the algorithms that can use them."""
    t, a, th = cfg.topology, cfg.algorithm, cfg.threat
    directed_graph = t.graph in DIRECTED_GRAPHS and t.schedule == "static"
    if directed_graph and t.mixing != "column_stochastic":
        raise ConfigError(f"config error: topology.mixing: the directed graph {t.graph} needs column_stochastic "
                          f"weights, got {t.mixing}")
    if t.mixing == "column_stochastic" and a.name not in ("push_sum", "async_push_sum"):
        raise ConfigError(f"config error: topology.mixing: column_stochastic weights do not preserve the average "
                          f"under {a.name}; use algorithm push_sum or async_push_sum (or a doubly stochastic "
                          f"mixing rule)")
    if a.compressor != "none" and a.name not in ("choco", "diloco", "local_sgd"):
        raise ConfigError(f"config error: algorithm.compressor: choco (messages), diloco and local_sgd "
                          f"(pseudo-gradients) compress, not {a.name}")
    if a.compressor != "none" and a.name == "diloco" and a.combine != "all_reduce":
        raise ConfigError("config error: algorithm.compressor: diloco compresses the pseudo-gradients of its "
                          "all-reduce; set algorithm.combine: all_reduce")
    if a.share_fraction < 1.0 and a.variance_correction:
        raise ConfigError("config error: algorithm.share_fraction: variance correction works on whole layers; "
                          "not combined with partial sharing")
    if a.name == "choco" and (t.schedule != "static" or cfg.faults.active):
        raise ConfigError("config error: algorithm.name: choco keeps running sums over a fixed W; it needs "
                          "topology.schedule static and no faults")
    if a.name in ASYNC_ALGORITHMS and a.final_merge:
        raise ConfigError(f"config error: algorithm.final_merge: not available for the asynchronous {a.name}")
    if t.schedule == "resample" and t.graph not in RANDOM_GRAPHS:
        raise ConfigError(f"config error: topology.graph: schedule resample draws a new random graph each round; "
                          f"use one of {', '.join(RANDOM_GRAPHS)}, got {t.graph}")
    if t.schedule == "sequence" and not t.sequence:
        raise ConfigError("config error: topology.sequence: schedule sequence needs a list of edge-list files")
    if t.schedule != "static" and a.aggregator != "gossip":
        raise ConfigError(f"config error: algorithm.aggregator: {a.aggregator} needs a static topology (its f is "
                          f"checked against the graph), got topology.schedule {t.schedule}")
    if t.schedule != "static" and th.attack is not None and th.collusion == "neighbors":
        raise ConfigError("config error: threat.collusion: 'neighbors' needs a static topology; use 'all'")
    if a.name == "modest" and not 1 <= a.num_aggregators <= min(a.sample_size, cfg.num_nodes):
        raise ConfigError(f"config error: algorithm.num_aggregators: must be in [1, sample_size={a.sample_size}] "
                          f"(and <= num_nodes), got {a.num_aggregators}")
    if a.name == "gradient_tracking" and a.num_local_steps != 1:
        raise ConfigError("config error: algorithm.num_local_steps: gradient_tracking takes one step per round, "
                          f"got {a.num_local_steps}")
    if a.server_period and a.name in SERVER_ALGORITHMS + ASYNC_ALGORITHMS + ("local",):
        raise ConfigError(f"config error: algorithm.server_period: {a.name} does not gossip; server rounds apply to "
                          f"dsgd, gradient_tracking and push_sum")
    if a.final_merge and th.attack in attacks.MODEL_ATTACKS:
        raise ConfigError("config error: algorithm.final_merge: the final merge is a trusted all-reduce; it cannot "
                          "run under a model-poisoning attack")
    if a.variance_correction and a.aggregator != "gossip":
        raise ConfigError("config error: algorithm.variance_correction: corrects linear gossip averaging; "
                          f"not combined with aggregator {a.aggregator}")


def unused_fields(cfg: ExperimentConfig) -> list[str]:
    """Fields the user set that the chosen components ignore (reported as a note, not an error)."""
    chosen = {"topology": (GRAPHS[cfg.topology.graph].params + SCHEDULES[cfg.topology.schedule].params,
                           ("graph", "mixing", "schedule")),
              "data": (DATASETS[cfg.data.dataset].params + PARTITIONS[cfg.data.partition].params,
                       ("dataset", "partition", "min_samples_per_node", "local_test_fraction", "test_samples",
                        "relay_fraction", "relay_placement")),
              "model": (MODELS[cfg.model.name].params, ("name", "same_init", "grad_strategy")),
              "algorithm": (ALGORITHMS[cfg.algorithm.name].params + AGGREGATORS[cfg.algorithm.aggregator].params
                            + COMPRESSORS[cfg.algorithm.compressor].params,
                            ("name", "aggregator", "final_merge")),
              "threat": ((ATTACKS[cfg.threat.attack].params if cfg.threat.attack else ()),
                         ("num_byzantine", "fraction", "placement", "attack", "collusion", "sybil"))}
    notes = []
    for section, (params, always) in chosen.items():
        for key in getattr(cfg, section).model_fields_set:
            if key not in params and key not in always:
                notes.append(f"{section}.{key}")
    return notes


def to_dict(cfg: ExperimentConfig) -> dict:
    return cfg.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------
# build(): config -> parts
# ---------------------------------------------------------------------------------------------
class Built(NamedTuple):
    """Everything a run needs, made from a config."""

    config: ExperimentConfig
    dataset: datasets.Dataset
    parts: list[np.ndarray]  # training indices of each node
    local_test_parts: list[np.ndarray] | None
    flat: Any  # models.FlatModel
    params_NP: torch.Tensor
    grad_fn: Any
    batches: NodeSampler
    algorithm: Any
    adjacency: Any
    W: Any
    schedule: Any  # round -> W for a time-varying topology, or None
    honest_N: torch.Tensor  # bool: False for Byzantine nodes (metrics count honest nodes only)
    threat: Any  # engines.comm.Threat or None
    attack_test: Any  # (x, y) on which a data attack's success is measured, or None
    faults: Any = None  # engines.faults.FaultPlan or None
    clock: Any = None  # () -> engines.clock.Clock (a fresh simulated clock per run)
    relay_N: Any = None  # bool numpy mask of nodes that hold no data, or None


def _seed(cfg: ExperimentConfig, stream: int) -> int:
    """Independent, reproducible seeds for each random part of a run."""
    return int(np.random.SeedSequence([cfg.seed, stream]).generate_state(1)[0])


def build_dataset(cfg: ExperimentConfig) -> datasets.Dataset:
    d = cfg.data
    kwargs: dict[str, Any] = {}
    if d.dataset in ("digits", "mnist1d", "synthetic", "npz"):
        kwargs["seed"] = cfg.seed
    if d.dataset in ("fashion_mnist", "npz", "shakespeare"):
        kwargs["path"] = d.path
    if d.dataset == "shakespeare":
        kwargs.update(seq_len=d.seq_len, seed=cfg.seed)
        if d.test_samples is not None:
            kwargs["test_samples"] = d.test_samples
    if d.dataset in ("digits", "fashion_mnist"):
        kwargs["image"] = cfg.model.name == "cnn"
    if d.num_samples is not None and d.dataset in ("mnist1d", "synthetic"):
        kwargs["num_samples"] = d.num_samples
    if d.dataset == "synthetic":
        kwargs.update(num_features=d.num_features, num_classes=d.num_classes, noise=d.noise)
    ds = datasets.load_dataset(d.dataset, **kwargs)
    if d.test_samples is not None and d.test_samples < len(ds.y_test):
        g = torch.Generator().manual_seed(_seed(cfg, 7))
        keep = torch.randperm(len(ds.y_test), generator=g)[: d.test_samples].sort().values
        ds = ds._replace(x_test=ds.x_test[keep], y_test=ds.y_test[keep])
    return ds


def build_partition(cfg: ExperimentConfig, labels: np.ndarray, groups: np.ndarray | None = None,
                    relay_N: np.ndarray | None = None) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Training indices of each node (and of its local test set); ``groups`` are the dataset's natural
    groups; relay nodes (``relay_N``) get no data."""
    if relay_N is not None and relay_N.any():
        parts, local_test = build_partition(cfg.model_copy(update={"num_nodes": int((~relay_N).sum())}), labels,
                                            groups)
        it = iter(parts)
        return [np.empty(0, dtype=np.int64) if r else next(it) for r in relay_N], local_test
    d = cfg.data
    kwargs: dict[str, Any] = {"seed": _seed(cfg, 1), "min_size": d.min_samples_per_node}
    kwargs.update({p: getattr(d, p) for p in PARTITIONS[d.partition].params})
    if d.local_test_fraction:  # hold out a part of each node's data; keep min_size for training
        kwargs["min_size"] = max(d.min_samples_per_node, math.ceil(d.min_samples_per_node / (1 - d.local_test_fraction)) + 1)
    if d.partition == "natural":
        if groups is None:
            raise ConfigError(f"config error: data.partition: natural needs a dataset with natural groups "
                              f"(shakespeare); {d.dataset} has none")
        parts = PARTITIONS[d.partition].fn(groups, cfg.num_nodes, **kwargs)
    elif groups is not None:  # only samples that belong to a group may be held (e.g. no cross-role windows)
        usable = np.flatnonzero(groups >= 0)
        parts = [usable[p] for p in PARTITIONS[d.partition].fn(labels[usable], cfg.num_nodes, **kwargs)]
    else:
        parts = PARTITIONS[d.partition].fn(labels, cfg.num_nodes, **kwargs)
    if not d.local_test_fraction:
        return parts, None
    rng = np.random.default_rng(_seed(cfg, 2))
    train, test = [], []
    for p in parts:
        p = rng.permutation(p)
        k = max(1, int(round(len(p) * d.local_test_fraction)))
        test.append(np.sort(p[:k]))
        train.append(np.sort(p[k:]))
    return train, test


def _read_edge_list(path: str, num_nodes: int, field: str):
    """An edge-list file's adjacency, which must have exactly ``num_nodes`` nodes."""
    adj = random_graphs.from_edge_list(path, num_nodes=num_nodes)
    if adj.shape[0] != num_nodes:
        raise ConfigError(f"config error: {field}: the edge list {path} has {adj.shape[0]} nodes, "
                          f"num_nodes={num_nodes}")
    return adj


def build_topology(cfg: ExperimentConfig):
    t, n = cfg.topology, cfg.num_nodes
    entry = GRAPHS[t.graph]
    kwargs = {p: getattr(t, p) for p in entry.params}
    if "seed" in inspect.signature(entry.fn).parameters:
        kwargs["seed"] = _seed(cfg, 3)
    adj = _read_edge_list(t.path, n, "topology.path") if t.graph == "file" else entry.fn(n, **kwargs)
    if n > 1 and t.schedule in ("static", "resample"):
        if t.graph in DIRECTED_GRAPHS:
            if not directed.is_strongly_connected(adj):
                raise ConfigError(f"config error: topology.graph: {t.graph} is not strongly connected")
        else:
            graphs.require_connected(adj, t.graph)
    return adj, MIXING[t.mixing].fn(adj)


def build_schedule(cfg: ExperimentConfig):
    """``schedule(round) -> W`` for a time-varying topology, or None for a static one."""
    t, n = cfg.topology, cfg.num_nodes
    if t.schedule == "static":
        return None
    seed = _seed(cfg, 10)
    if t.schedule == "random_matching":
        return schedules.random_matching_schedule(n, seed)
    if t.schedule == "one_peer_exponential":
        return schedules.one_peer_exponential_schedule(n)
    if t.schedule == "sampled":
        return schedules.sampled_clients_schedule(n, t.fraction, seed)
    if t.schedule == "resample":
        entry = GRAPHS[t.graph]
        kwargs = {p: getattr(t, p) for p in entry.params}
        return schedules.resampled_schedule(lambda s: entry.fn(n, seed=s, **kwargs), MIXING[t.mixing].fn, seed)
    return schedules.sequence_schedule([MIXING[t.mixing].fn(_read_edge_list(path, n, "topology.sequence"))
                                        for path in t.sequence])


_PLACE = {"hubs": "degree", "random": "random"}  # config words -> attacks.place_nodes


def build_relays(cfg: ExperimentConfig, adj) -> np.ndarray | None:
    """Mask of the nodes that hold no data and only relay (``data.relay_fraction``), or None."""
    d, n = cfg.data, cfg.num_nodes
    count = int(round(d.relay_fraction * n))
    if count == 0:
        return None
    if count >= n:
        raise ConfigError(f"config error: data.relay_fraction: leaves no node with data ({count} of {n} relay)")
    return attacks.place_nodes(adj, count, _PLACE[d.relay_placement], _seed(cfg, 14))


def build_faults(cfg: ExperimentConfig, adj, relay_N: np.ndarray | None):
    """The run's :class:`~peerlearn.engines.faults.FaultPlan`, or None without faults."""
    from peerlearn.engines import faults

    f, n = cfg.faults, cfg.num_nodes
    if not f.active:
        return None
    relay = np.zeros(n, dtype=bool) if relay_N is None else relay_N
    pool = {"all": np.ones(n, dtype=bool), "data": ~relay, "relays": relay}[f.crash_among]
    crash = attacks.place_nodes(adj, int(round(f.crash_fraction * pool.sum())), _PLACE[f.crash_placement],
                                _seed(cfg, 15), pool_N=pool)
    late = attacks.place_nodes(adj, int(round(f.late_fraction * n)), "random", _seed(cfg, 16))
    alive = faults.alive_timeline(n, cfg.num_rounds, crash_N=crash, crash_round=f.crash_round,
                                  recover_round=f.recover_round, churn_leave=f.churn_leave, churn_join=f.churn_join,
                                  late_N=late, join_round=f.join_round, seed=_seed(cfg, 17))
    groups = faults.contiguous_groups(n, f.partition_groups) if f.partition_groups > 1 else None
    heal = f.heal_round if f.heal_round is not None else cfg.num_rounds + 1
    return faults.FaultPlan(alive, MIXING[cfg.topology.mixing].fn, link_failure=f.link_failure,
                            message_loss=f.message_loss, groups_N=groups, partition_rounds=(f.partition_round, heal),
                            rejoin=f.rejoin, seed=_seed(cfg, 18))


def build_clock(cfg: ExperimentConfig):
    """A factory of the run's simulated clock (per-node speeds drawn once, seeded)."""
    from peerlearn.engines.clock import Clock, node_slowdowns

    c = cfg.clock
    if c.slowdowns is not None:
        slowdown = np.asarray(c.slowdowns, dtype=np.float64)
    else:
        slowdown = node_slowdowns(cfg.num_nodes, c.speed_sigma, c.straggler_fraction, c.straggler_slowdown,
                                  seed=_seed(cfg, 19))
    return functools.partial(Clock, slowdown, step_time_s=c.step_time_s, bandwidth_Bps=c.bandwidth_mbps * 1e6 / 8,
                             latency_s=c.latency_ms / 1e3)


_COMPRESSOR_ARGS = {"compress_ratio": "ratio", "qsgd_levels": "levels"}  # config field -> compressor argument


def build_compressor(cfg: ExperimentConfig) -> compressors.Compressor:
    a = cfg.algorithm
    entry = COMPRESSORS[a.compressor]
    kwargs = {_COMPRESSOR_ARGS[p]: getattr(a, p) for p in entry.params}
    params = inspect.signature(entry.fn).parameters
    if "seed" in params:
        kwargs["seed"] = _seed(cfg, 21)
    # CHOCO needs contractions (E||C(x) - x||^2 <= (1 - delta) ||x||^2): random-k unscaled, QSGD scaled down
    kwargs.update({"rescale": False} if "rescale" in params else {"contract": True} if "contract" in params else {})
    return entry.fn(**kwargs)


def build_pseudo_gradient_compressor(cfg: ExperimentConfig) -> compressors.Compressor | None:
    """diloco, local_sgd: the pseudo-gradients' compressor with error feedback, or None (dense)."""
    return None if cfg.algorithm.compressor == "none" else compressors.error_feedback(build_compressor(cfg))


def build_privacy(cfg: ExperimentConfig):
    """dsgd: clipping and Gaussian noise on each node's update (peerlearn.privacy), or None."""
    p = cfg.privacy
    if not p.active:
        return None
    from peerlearn.privacy import gaussian_messages

    return gaussian_messages(p.clip, p.noise_multiplier, p.pairwise_multiplier, cfg.algorithm.lr, p.delta,
                             seed=_seed(cfg, 23))


def build_optimizer(a: AlgorithmConfig):
    if a.optimizer == "adamw":
        return optim.adamw(a.lr, weight_decay=a.weight_decay)
    opt = optim.sgd(a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
    return optim.proximal(opt, a.prox_mu) if a.name == "fedprox" else opt


def build_aggregator(cfg: ExperimentConfig, adjacency, reference_P: torch.Tensor):
    """The dsgd combine rule (None = linear gossip), with f checked against the graph's degrees."""
    a = cfg.algorithm
    if a.aggregator == "gossip":
        return None
    entry = AGGREGATORS[a.aggregator]
    if entry.fn.__name__ in MIN_INPUTS:
        error = min_inputs_error(entry.fn.__name__, a.f, int(graphs.degrees(adjacency).min()) + 1,
                                 label=a.aggregator, where=f"on this {cfg.topology.graph} ")
        if error:
            raise ConfigError(f"config error: {error}")
    hyper = {p: getattr(a, p) for p in entry.params}
    if a.aggregator == "foolsgold":  # histories telescope to x_j - x_0 from the common initial model
        hyper["reference_P"] = reference_P
    return functools.partial(entry.fn, **hyper)


def build_threat(cfg: ExperimentConfig, adjacency):
    """(honest_N, Threat or None, poisoned-data mask or None): model attacks act on messages, data attacks on batches."""
    th = cfg.threat
    byz = attacks.place_byzantine(adjacency, cfg.num_byzantine, th.placement, _seed(cfg, 8))
    honest_N = torch.from_numpy(~byz)
    if th.attack is None or not byz.any():
        return honest_N, None, None
    if th.attack in attacks.DATA_ATTACKS:
        return honest_N, None, torch.from_numpy(byz)
    seen = np.tile(~byz, (int(byz.sum()), 1)).astype(np.float64)
    if th.collusion == "neighbors":
        seen *= (adjacency[np.flatnonzero(byz)].toarray() > 0)
    seen /= np.maximum(seen.sum(1, keepdims=True), 1.0)
    entry = ATTACKS[th.attack]
    fn = functools.partial(entry.fn, **{p: getattr(th, p) for p in entry.params})
    threat = Threat(torch.from_numpy(np.flatnonzero(byz)), fn, torch.from_numpy(seen).float(), th.sybil,
                    torch.Generator().manual_seed(_seed(cfg, 9)))
    return honest_N, threat, None


def build_data_poisoning(cfg: ExperimentConfig, ds: datasets.Dataset):
    """(``poison(x, y, u) -> (x, y)``, attack test set ``(x, y)``) of a data attack, or (None, None)."""
    th = cfg.threat
    if th.attack not in attacks.DATA_ATTACKS or cfg.num_byzantine == 0:
        return None, None
    if th.attack == "backdoor" and th.target_label >= ds.num_classes:
        raise ConfigError(f"config error: threat.target_label: must be < {ds.num_classes} (the classes of "
                          f"{ds.name}), got {th.target_label}")
    trigger = {"size": th.trigger_size, "value": float(ds.x_train.max())}
    if th.attack == "label_flip":
        poison = functools.partial(attacks.label_flip_poison, num_classes=ds.num_classes)
    else:
        poison = functools.partial(attacks.backdoor_poison, input_shape=ds.input_shape, target_label=th.target_label,
                                   fraction=th.poison_fraction, **trigger)
    test = attacks.attack_test_set(th.attack, ds.x_test, ds.y_test, ds.num_classes, ds.input_shape,
                                   th.target_label, **trigger)
    return poison, test


def build_algorithm(cfg: ExperimentConfig, data_sizes_N: torch.Tensor, aggregator=None, layer_slices=None,
                    relay_N: np.ndarray | None = None, probe_loss_fn=None):
    a = cfg.algorithm
    opt = build_optimizer(a)
    weights = data_sizes_N if a.weighting == "data_size" else None
    if a.name == "dsgd":
        combine = algorithms.gossip_combine(aggregator, a.gossip_steps)
        if a.variance_correction:
            combine = aggregators.variance_corrected(combine, layer_slices)
        communicate = None
        if a.comm_every > 1 or a.comm_late_fraction:
            communicate = algorithms.communication_schedule(cfg.num_rounds, a.comm_every, a.comm_late_fraction)
        algo = algorithms.dsgd(opt, a.num_local_steps, a.order, sam_rho=a.sam_rho, communicate=communicate,
                               combine=combine, share_fraction=a.share_fraction, share_seed=_seed(cfg, 22),
                               privacy=build_privacy(cfg))
    elif a.name == "gradient_tracking":
        algo = algorithms.gradient_tracking(a.lr)
    elif a.name == "push_sum":
        algo = algorithms.push_sum(opt, a.num_local_steps)
    elif a.name == "diloco":
        algo = algorithms.diloco(opt, a.num_local_steps, a.outer_lr, a.outer_momentum, combine=a.combine,
                                 compressor=build_pseudo_gradient_compressor(cfg))
    elif a.name == "modest":
        algo = algorithms.modest(opt, a.num_local_steps, a.sample_size, a.num_aggregators, seed=_seed(cfg, 12))
    elif a.name == "local_sgd":
        algo = algorithms.local_sgd(opt, a.num_local_steps, compressor=build_pseudo_gradient_compressor(cfg))
    elif a.name in ("fedavg", "fedprox"):
        algo = algorithms.fedavg(opt, a.num_local_steps, a.fraction, weights, seed=_seed(cfg, 4))
    elif a.name == "centralized":
        algo = algorithms.centralized(opt, a.num_local_steps, weights)
    elif a.name == "local":
        algo = algorithms.local_only(opt, a.num_local_steps)
    elif a.name == "choco":
        algo = algorithms.choco(opt, a.num_local_steps, build_compressor(cfg), a.consensus_lr, cfg.model.same_init)
    elif a.name == "spsa":
        algo = algorithms.spsa(opt, probe_loss_fn, a.spsa_perturbations, a.spsa_epsilon, seed=_seed(cfg, 24))
    elif a.name == "gossip_learning":
        algo = algorithms.gossip_learning(opt, a.num_local_steps, a.batch_size, None if relay_N is None
                                          else torch.from_numpy(~relay_N))
    elif a.name == "async_push_sum":
        algo = algorithms.async_push_sum(opt, a.num_local_steps)
    elif a.name == "async_local_sgd":
        algo = algorithms.async_local_sgd(opt, a.num_local_steps, a.outer_lr, a.outer_momentum, a.staleness_power)
    else:
        raise AssertionError(a.name)  # unreachable: the schema lists the names
    if a.server_period:
        algo = algorithms.with_server_rounds(algo, a.server_period, a.server_fraction, a.server_broadcast,
                                             seed=_seed(cfg, 11))
    return algo


def choose_grad_strategy(cfg: ExperimentConfig, activations_per_sample: int, budget_bytes: int = 2 * 2**30) -> str:
    """``model.grad_strategy``, with ``auto`` resolved: vmap (faster wherever measured, see
    benchmarks/README.md) unless its float32 activations for forward + backward (~3x) exceed the budget."""
    if cfg.model.grad_strategy != "auto":
        return cfg.model.grad_strategy
    vmap_bytes = 3 * 4 * cfg.num_nodes * cfg.algorithm.batch_size * activations_per_sample
    return "vmap" if vmap_bytes <= budget_bytes else "loop"


def build(cfg: ExperimentConfig, dataset: datasets.Dataset | None = None) -> Built:
    """Make every part of a run; any bad value raises ConfigError naming its field.

    ``dataset`` reuses an already loaded dataset (e.g. across the runs of ``peerlearn matrix``).
    """
    from peerlearn.models.functional import FlatModel, make_grad_fn, make_probe_loss_fn

    try:
        ds = build_dataset(cfg) if dataset is None else dataset
        adj, W = build_topology(cfg)
        relay_N = build_relays(cfg, adj)
        parts, local_test = build_partition(cfg, ds.y_train.numpy(), ds.groups, relay_N)
        schedule = build_schedule(cfg)  # sequence files are read (and checked) before anything runs
        m = cfg.model
        kwargs = {p: tuple(v) if isinstance(v := getattr(m, p), list) else v for p in MODELS[m.name].params}
        tokens = not ds.x_train.is_floating_point()
        if getattr(nets.MODELS[m.name], "tokens", False) != tokens:
            raise ConfigError(f"config error: model.name: {m.name} " + (
                f"takes token inputs; {ds.name} gives numbers (use logreg, mlp or cnn)" if not tokens else
                f"takes numeric inputs; {ds.name} gives character tokens (use gru)"))
        module = nets.build_model(m.name, ds.input_shape, ds.num_classes, **kwargs)
    except ConfigError:
        raise
    except ValueError as err:
        msg = str(err)
        raise ConfigError(msg if msg.startswith("config error") else f"config error: {msg}") from None
    flat = FlatModel(module)
    strategy = choose_grad_strategy(cfg, flat.activation_numel(ds.input_shape, ds.x_train.dtype))
    sizes = torch.tensor([len(p) for p in parts], dtype=torch.float64)
    params_NP = flat.init_params(cfg.num_nodes, _seed(cfg, 5), m.same_init)
    aggregator = build_aggregator(cfg, adj, params_NP[0])
    honest_N, threat, poisoned_N = build_threat(cfg, adj)
    poison, attack_test = build_data_poisoning(cfg, ds)
    return Built(
        config=cfg, dataset=ds, parts=parts, local_test_parts=local_test, flat=flat,
        params_NP=params_NP,
        grad_fn=make_grad_fn(flat, strategy),
        batches=NodeSampler(ds.x_train, ds.y_train, parts, cfg.algorithm.batch_size, _seed(cfg, 6),
                            poisoned_N, poison, silent_N=None if relay_N is None else torch.from_numpy(relay_N)),
        algorithm=build_algorithm(cfg, sizes, aggregator, flat.layer_slices(), relay_N, make_probe_loss_fn(flat)),
        adjacency=adj, W=W,
        schedule=schedule, honest_N=honest_N, threat=threat, attack_test=attack_test,
        faults=build_faults(cfg, adj, relay_N), relay_N=relay_N, clock=build_clock(cfg),
    )
