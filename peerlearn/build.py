"""``build(cfg) -> Built``: every part of a run, made from a validated config by its members' specs.

Any bad value that only shows once data or graphs exist (a disconnected graph, a partition that
leaves a node empty, a model that does not fit the data) raises :class:`ConfigError` naming its
field, before anything is run or written.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from peerlearn.attribution.base import Scorer, ScoreTools
from peerlearn.config import ExperimentConfig
from peerlearn.data.base import Dataset
from peerlearn.data.batching import NodeSampler
from peerlearn.device import compute_dtype, draw, from_host, to_device
from peerlearn.device import resolve as resolve_device
from peerlearn.device import scope as device_scope
from peerlearn.engines.comm import Threat
from peerlearn.models.functional import FlatModel, in_compute_dtype, make_grad_fn, make_loss_fn, make_probe_loss_fn
from peerlearn.rng import step_generator
from peerlearn.resources import GRAD_BUDGET, check_config_fits, check_model_fits, planned_memory_bytes
from peerlearn.spec import BuildContext, ConfigError, DataContext, GraphContext, config_error
from peerlearn.topology import directed, graphs
from peerlearn.topology.clique import as_csr
from peerlearn.types import Algorithm, AsyncAlgorithm, GradFn
from peerlearn.world.clock import Clock
from peerlearn.world.faults import FaultPlan

class Built(NamedTuple):
    """Everything a run needs, made from a config."""

    config: ExperimentConfig
    dataset: Dataset
    parts: list[np.ndarray]  # training indices of each node
    local_test_parts: list[np.ndarray] | None
    flat: FlatModel
    params_NP: torch.Tensor
    grad_fn: GradFn
    batches: NodeSampler
    algorithm: Algorithm | AsyncAlgorithm
    adjacency: sp.csr_array
    W: sp.csr_array
    schedule: Callable[[int], sp.csr_array] | None  # round -> W for a time-varying topology
    honest_N: torch.Tensor  # bool: False for Byzantine nodes (metrics count honest nodes only)
    threat: Threat | None  # model poisoning at the message boundary
    attack_test: tuple[torch.Tensor, torch.Tensor] | None  # (x, y) on which a data attack's success is measured
    faults: FaultPlan | None = None
    clock: Callable[[], Clock] | None = None  # a fresh simulated clock per run
    relay_N: np.ndarray | None = None  # bool mask of nodes that hold no data
    mixing: Callable[[sp.csr_array], sp.csr_array] | None = None  # the run's rule adjacency -> W
    eval_N: torch.Tensor | None = None  # bool: the seeded subset of nodes whose models are tested (None: all)
    device: torch.device = torch.device("cpu")  # where every tensor above lives (peerlearn.device)
    attribution: Scorer | None = None  # the attribution section's scorer (peerlearn.attribution)


def build_dataset(cfg: ExperimentConfig) -> Dataset:
    ctx = DataContext.of(cfg)
    ds = cfg.data.dataset.load(ctx)
    n_test = cfg.data.test_samples
    if n_test is not None and n_test < len(ds.y_test):
        keep = _seeded_subset(len(ds.y_test), n_test, ctx.seed("test_subset"))
        ds = ds._replace(x_test=ds.x_test[keep], y_test=ds.y_test[keep])
    n_train = cfg.data.train_samples
    if n_train is not None and n_train < len(ds.y_train):
        keep = _seeded_subset(len(ds.y_train), n_train, ctx.seed("train_subset"))
        ds = ds._replace(x_train=ds.x_train[keep], y_train=ds.y_train[keep],
                         groups=None if ds.groups is None else ds.groups[keep.numpy()],
                         local_groups=None if ds.local_groups is None else ds.local_groups[keep.numpy()])
    return ds


def _seeded_subset(total: int, k: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``k`` of ``total`` samples drawn without replacement from ``seed``."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def build_partition(cfg: ExperimentConfig, labels: np.ndarray, groups: np.ndarray | None = None,
                    relay_N: np.ndarray | None = None, local_groups: np.ndarray | None = None
                    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Training indices of each node (and of its local test set); ``groups`` are the dataset's natural
    groups and ``local_groups`` the groups' own test rows (LEAF users'); relay nodes (``relay_N``) get no data."""
    if relay_N is not None and relay_N.any():
        parts, local_test = build_partition(cfg.model_copy(update={"num_nodes": int((~relay_N).sum())}), labels,
                                            groups, local_groups=local_groups)
        it = iter(parts)
        return [np.empty(0, dtype=np.int64) if r else next(it) for r in relay_N], local_test
    d, ctx = cfg.data, DataContext.of(cfg)
    p = d.partition
    min_size = d.min_samples_per_node
    if d.local_test_fraction:  # hold out a part of each node's data; keep min_size for training
        min_size = max(min_size, math.ceil(min_size / (1 - d.local_test_fraction)) + 1)
    seed = ctx.seed("partition")
    held = int((groups >= 0).sum()) if groups is not None else len(labels)
    if cfg.num_nodes * min_size > held:  # refused before drawing: no split can give every node min_size
        raise config_error("num_nodes", f"{cfg.num_nodes} nodes x {min_size} samples each (data.min_samples_per_node"
                                        f"{', with the local test split' if d.local_test_fraction else ''}) is more "
                                        f"than the {held} training samples of {d.dataset.name}")
    if p.capabilities.needs_groups:
        if groups is None:
            raise config_error("data.partition", f"{p.name} needs a dataset with natural groups (shakespeare); "
                                                 f"{d.dataset.name} has none")
        parts = p.build(groups, cfg.num_nodes, seed, min_size)
    elif groups is not None:  # only samples that belong to a group may be held (e.g. no cross-role windows)
        usable = np.flatnonzero(groups >= 0)
        parts = [usable[q] for q in p.build(labels[usable], cfg.num_nodes, seed, min_size)]
    else:
        parts = p.build(labels, cfg.num_nodes, seed, min_size)
    if not d.local_test_fraction:
        if p.capabilities.needs_groups and local_groups is not None:  # each node's group's own test data
            return parts, [np.flatnonzero(local_groups == groups[q[0]]) for q in parts]
        return parts, None
    rng = np.random.default_rng(ctx.seed("local_test"))
    train, test = [], []
    for q in parts:
        q = rng.permutation(q)
        k = max(1, int(round(len(q) * d.local_test_fraction)))
        test.append(np.sort(q[:k]))
        train.append(np.sort(q[k:]))
    return train, test


def build_topology(cfg: ExperimentConfig) -> tuple[sp.csr_array, sp.csr_array]:
    """The static graph and its mixing matrix; the graph must be connected where it is used."""
    t, n = cfg.topology, cfg.num_nodes
    adj = t.graph.build(n, DataContext.of(cfg).seed("graph"))
    if n > 1 and t.schedule.uses_graph:
        if t.graph.capabilities.directed:
            if not directed.is_strongly_connected(adj):
                raise config_error("topology.graph", f"{t.graph.name} is not strongly connected")
        else:
            graphs.require_connected(adj, t.graph.name)
    return adj, t.mixing.build()(adj)


def build_relays(cfg: ExperimentConfig, adj: sp.csr_array) -> np.ndarray | None:
    """Mask of the nodes that hold no data and only relay (``data.relay_fraction``), or None."""
    from peerlearn.attacks.placement import PLACE_BY, place_nodes

    d, n = cfg.data, cfg.num_nodes
    count = int(round(d.relay_fraction * n))
    if count == 0:
        return None
    if count >= n:
        raise config_error("data.relay_fraction", f"leaves no node with data ({count} of {n} relay)")
    return place_nodes(adj, count, PLACE_BY[d.relay_placement], DataContext.of(cfg).seed("relays"))


def build_threat(cfg: ExperimentConfig, ctx: BuildContext):
    """(honest_N, Threat or None, poisoned-data mask or None): model attacks act on messages, data attacks on batches."""
    from peerlearn.attacks.placement import place_byzantine

    th, adjacency = cfg.threat, ctx.adjacency
    byz = place_byzantine(adjacency, cfg.num_byzantine, th.placement, ctx.seed("byzantine"))
    honest_N = from_host(~byz)
    if th.attack is None or not byz.any():
        return honest_N, None, None
    if th.poisons == "data":
        return honest_N, None, from_host(byz)
    seen = np.tile(~byz, (int(byz.sum()), 1)).astype(np.float64)
    if th.collusion == "neighbors":
        seen *= (as_csr(adjacency)[np.flatnonzero(byz)].toarray() > 0)
    seen /= np.maximum(seen.sum(1, keepdims=True), 1.0)
    threat = Threat(from_host(np.flatnonzero(byz)), th.attack.build(ctx), from_host(seen).float(),
                    th.sybil, torch.Generator().manual_seed(ctx.seed("threat")), {} if th.space == "update" else None)
    return honest_N, threat, None


def build_data_poisoning(cfg: ExperimentConfig, ctx: BuildContext):
    """(``poison(x, y, u) -> (x, y)``, attack test set ``(x, y)``) of a data attack, or (None, None)."""
    if cfg.threat.poisons != "data" or cfg.num_byzantine == 0:
        return None, None
    return cfg.threat.attack.build(ctx)


def choose_grad_strategy(cfg: ExperimentConfig, module: torch.nn.Module, activations_per_sample: int,
                         budget_bytes: int = GRAD_BUDGET) -> tuple[str, int | None]:
    """``(strategy, max_rows)`` for ``model.grad_strategy``: ``auto`` is ``dense`` for dense ReLU networks
    (logreg, mlp: the closed form, 1.2-3x vmap's speed on every shape measured, benchmarks/README.md) and
    ``vmap`` for every other module. ``max_rows`` bounds the float32 activations of forward + backward
    (~3x the forward's) to the budget by computing the nodes in chunks of rows (None: all at once)."""
    from peerlearn.models.dense import dense_layout

    strategy = cfg.model.grad_strategy
    if strategy == "auto":
        strategy = "dense" if dense_layout(module) is not None else "vmap"
    elif strategy == "dense" and dense_layout(module) is None:
        raise config_error("model.grad_strategy", f"dense computes stacks of Linear and ReLU layers (logreg, mlp); "
                                                  f"model {cfg.model.name} is not one (use auto, vmap or loop)")
    row_bytes = 3 * 4 * cfg.algorithm.batch_size * activations_per_sample
    rows = max(1, budget_bytes // max(row_bytes, 1))
    return strategy, (None if strategy == "loop" or rows >= cfg.num_nodes else int(rows))


def estimate_memory_bytes(cfg: ExperimentConfig) -> int:
    """:func:`~peerlearn.resources.run_memory_bytes` before building the run: the dataset is loaded, no node
    model is allocated (for planning many runs). A data problem is a ConfigError, as in :func:`build`."""
    try:
        check_config_fits(cfg)
        ds = build_dataset(cfg)
    except ValueError as err:
        raise _as_config_error(err) from None
    return planned_memory_bytes(cfg, ds)


def _as_config_error(err: ValueError) -> ConfigError:
    msg = str(err)
    return ConfigError(msg if msg.startswith("config error") else f"config error: {msg}")


def build(cfg: ExperimentConfig, dataset: Dataset | None = None) -> Built:
    """Make every part of a run; any bad value raises ConfigError naming its field.

    ``dataset`` reuses an already loaded dataset (e.g. across the runs of ``peerlearn matrix``).
    """
    try:
        device = resolve_device(cfg.device)
        check_config_fits(cfg)
        ds = build_dataset(cfg) if dataset is None else dataset
        if cfg.algorithm.batch_size > len(ds.y_train):
            raise config_error("algorithm.batch_size", f"{cfg.algorithm.batch_size} is more than the "
                                                       f"{len(ds.y_train)} training samples of {ds.name}")
        adj, W = build_topology(cfg)
        relay_N = build_relays(cfg, adj)
        parts, local_test = build_partition(cfg, ds.y_train.numpy(), ds.groups, relay_N, ds.local_groups)
        t = cfg.topology
        graph_ctx = DataContext.of(cfg).grow(GraphContext, dataset=ds, graph=t.graph, adjacency=adj,
                                             mixing=t.mixing.build(), relay_N=relay_N)
        schedule = t.schedule.build(graph_ctx)  # sequence files are read (and checked) here
        m = cfg.model
        tokens = not ds.x_train.is_floating_point()
        if m.capabilities.tokens != tokens:
            from peerlearn.models.base import MODELS

            fits = ", ".join(n for n, c in MODELS.items() if c.capabilities.tokens == tokens)
            raise config_error("model.name", (f"{m.name} takes token inputs; {ds.name} gives numbers" if not tokens
                                              else f"{m.name} takes numeric inputs; {ds.name} gives character tokens")
                               + f" (use {fits})")
        check_model_fits(cfg, ds, device)
        if cfg.data.augment != "none" and len(ds.input_shape) != 3:
            raise config_error("data.augment", f"{cfg.data.augment} transforms images (C, H, W); {ds.name} gives "
                                               f"inputs of shape {ds.input_shape} (use an image model such as cnn or "
                                               "resnet, or augment: none)")
        module = m.build(ds.input_shape, ds.num_classes)
    except ConfigError:
        raise
    except ValueError as err:
        raise _as_config_error(err) from None
    flat = FlatModel(module)
    strategy, max_rows = choose_grad_strategy(cfg, module, flat.activation_numel(ds.input_shape, ds.x_train.dtype))
    # the models are drawn on the host (the same numbers on every device), then everything moves to the device
    params_NP = flat.init_params(cfg.num_nodes, graph_ctx.seed("init"), m.same_init).to(device)
    module.to(device)  # its buffers (masks, running statistics) meet the device's parameters
    with device_scope(device):  # what the parts make from here on lives on the device
        if device.type != "cpu":
            ds = to_device(ds, device)
            graph_ctx = dataclasses.replace(graph_ctx, dataset=ds)
        ctx = graph_ctx.grow(BuildContext, data_sizes_N=torch.tensor([len(p) for p in parts], dtype=torch.float64),
                             module=module, layer_slices=flat.layer_slices(), reference_P=params_NP[0],
                             probe_loss_fn=make_probe_loss_fn(flat), same_init=m.same_init, privacy=cfg.privacy)
        try:
            algorithm = cfg.algorithm.make(ctx)
            honest_N, threat, poisoned_N = build_threat(cfg, ctx)
            poison, attack_test = build_data_poisoning(cfg, ctx)
        except ConfigError:
            raise
        except ValueError as err:
            raise _as_config_error(err) from None
        silent_N = None if relay_N is None else from_host(relay_N)
        return Built(
            config=cfg, dataset=ds, parts=parts, local_test_parts=local_test, flat=flat,
            params_NP=params_NP,
            grad_fn=in_compute_dtype(make_grad_fn(flat, strategy, max_rows), compute_dtype(cfg.dtype)),
            batches=NodeSampler(ds.x_train, ds.y_train, parts, cfg.algorithm.batch_size, ctx.seed("sampler"),
                                poisoned_N, poison, silent_N=silent_N,
                                crop_padding=cfg.data.crop_padding if cfg.data.augment == "crop_flip" else None),
            algorithm=algorithm, adjacency=adj, W=W,
            schedule=schedule, honest_N=honest_N, threat=threat, attack_test=attack_test,
            faults=cfg.faults.build(graph_ctx), relay_N=relay_N, clock=cfg.clock.build(graph_ctx),
            mixing=graph_ctx.mixing, eval_N=build_eval_nodes(cfg, ctx), device=device,
            attribution=build_attribution(cfg, ctx, flat, lambda: NodeSampler(
                ds.x_train, ds.y_train, parts, cfg.attribution.samples, 0, poisoned_N, poison, silent_N=silent_N)),
        )


def build_attribution(cfg: ExperimentConfig, ctx: BuildContext, flat: FlatModel,
                      make_probe: Callable[[], NodeSampler]) -> Scorer | None:
    """The attribution section's scorer (None when off). Its probe batches (``make_probe()``: a sampler of each
    node's own data, poisoned where the node's is) are a pure function of the round, drawn apart from training's."""
    spec = cfg.attribution
    if not spec.active:
        return None
    seed, probe = ctx.seed("attribution"), make_probe()

    def probe_batch(round_: int):
        probe.generator = step_generator(seed, round_)
        return probe.next()

    step = cfg.algorithm.lr * getattr(cfg.algorithm, "num_local_steps", 1)
    return spec.score.build(ctx, ScoreTools(probe_batch, make_loss_fn(flat), step))


def build_eval_nodes(cfg: ExperimentConfig, ctx: DataContext) -> torch.Tensor | None:
    """Mask of the ``eval_nodes`` nodes drawn (seeded, without replacement) for evaluation; None: every node."""
    k, n = cfg.eval_nodes, cfg.num_nodes
    if k is None or k >= n:
        return None
    mask = torch.zeros(n, dtype=torch.bool)
    mask[draw(torch.randperm, n, generator=torch.Generator().manual_seed(ctx.seed("eval_nodes")))[:k]] = True
    return mask
