"""What every engine shares: the metric columns, the evaluator, evaluation rows, the evaluation-round
rule, restoring a snapshot and the round's network (schedule and faults)."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from peerlearn.device import from_host, numpy, to_device
from peerlearn.divergence import DivergenceWatch
from peerlearn.metrics import consensus_distance, summarize
from peerlearn.models.functional import FlatModel, accuracy_and_loss, predicted_matches
from peerlearn.types import Tensor
from peerlearn.world.faults import FaultPlan, RoundFaults

# Columns of metrics.csv, in order (a stable contract: later issues add columns at the end).
COLUMNS = ["round", "acc_mean", "acc_min", "acc_max", "acc_std", "acc_avg_model", "acc_local_mean",
           "loss_mean", "consensus_distance", "bytes_sent_total", "bytes_sent_per_node", "wall_time_s",
           "attack_success", "acc_alive_mean", "alive_nodes", "sim_time_s", "sim_compute_s", "sim_comm_s",
           "sim_wait_s", "staleness_mean", "epsilon", "eval_time_s", "acc_local_min", "acc_local_std",
           "acc_local_worst10"]
LOCAL_COLUMNS = ("acc_local_mean", "acc_local_min", "acc_local_std", "acc_local_worst10")
# with ``eval_train`` only (after the columns above, in this order): the generalization columns
GENERALIZATION_COLUMNS = ("train_acc_mean", "train_eval_loss_mean", "test_loss_mean", "gap_acc_mean", "gap_loss_mean",
                          "train_acc_avg_model", "train_eval_loss_avg_model", "test_loss_avg_model")
# measured, not computed: the only columns that differ between two runs with the same seed
TIMINGS = ("wall_time_s", "eval_time_s")


class Evaluator:
    """Test accuracy of the honest nodes' models, of their average, and on each node's local test split.

    ``honest_N`` masks out Byzantine nodes; ``attack_test = (x, y)`` (data attacks) adds
    ``attack_success``: the fraction of honest predictions on ``x`` equal to the attacker's labels ``y``
    (flipped labels; the target class on triggered inputs). ``train_probe = (x, y)`` (``eval_train``) adds
    the :data:`GENERALIZATION_COLUMNS`: accuracy and cross-entropy on those training samples and the test
    cross-entropy, for the nodes' models (mean) and the averaged model, and the gaps between train and test.
    """

    def __init__(self, flat: FlatModel, x_test: Tensor, y_test: Tensor,
                 x_train: Tensor | None = None, y_train: Tensor | None = None,
                 local_test_parts: list[np.ndarray] | None = None, honest_N: Tensor | None = None,
                 attack_test: tuple[Tensor, Tensor] | None = None, nodes_N: Tensor | None = None,
                 train_probe: tuple[Tensor, Tensor] | None = None):
        self.flat, self.x_test, self.y_test, self.train_probe = flat, x_test, y_test, train_probe
        if honest_N is not None and bool(honest_N.all()):
            honest_N = None  # nobody is Byzantine: no copy of every honest row at each evaluation
        self.honest_N, self.attack_test = honest_N, attack_test
        # the nodes whose models are tested: the honest ones, within the seeded subset ``nodes_N`` when given
        self.measured_N = honest_N
        if nodes_N is not None:
            self.measured_N = nodes_N if honest_N is None else nodes_N & honest_N
        self.local = None
        if local_test_parts is not None:  # pad each node's local test indices to a rectangle + mask
            width = max(len(p) for p in local_test_parts)
            idx = np.zeros((len(local_test_parts), width), dtype=np.int64)
            mask = np.zeros_like(idx, dtype=bool)
            for i, p in enumerate(local_test_parts):
                idx[i, :len(p)], mask[i, :len(p)] = p, True
            idx_t = torch.from_numpy(idx).to(x_train.device)
            self.local = (x_train[idx_t], y_train[idx_t], torch.from_numpy(mask).to(x_train.device))

    @torch.no_grad()
    def __call__(self, params_NP: Tensor, alive_N: Tensor | None = None) -> dict[str, float]:
        """Metrics over all (honest) nodes, or the seeded subset of them; ``acc_alive_mean`` over those that
        are up. The averaged model and ``alive_nodes`` always count every honest node."""
        alive_N = torch.ones(params_NP.shape[0], dtype=torch.bool) if alive_N is None else alive_N
        honest = params_NP if self.honest_N is None else params_NP[self.honest_N]
        alive_nodes = int(alive_N.sum() if self.honest_N is None else alive_N[self.honest_N].sum())
        avg = honest.mean(0, keepdim=True)
        if self.measured_N is not self.honest_N:
            params_NP, alive_N = params_NP[self.measured_N], alive_N[self.measured_N]
        else:
            params_NP, alive_N = honest, (alive_N if self.honest_N is None else alive_N[self.honest_N])
        x_att, y_att = self.attack_test if self.attack_test is not None else (None, None)
        shared = x_att is self.x_test  # label flip measures on the clean test inputs: one forward pass for both
        matches = predicted_matches(self.flat, params_NP, self.x_test, [self.y_test, y_att] if shared else [self.y_test])
        acc_N = matches[0]
        out = summarize(acc_N, "acc")
        out["acc_alive_mean"] = float(acc_N[alive_N].double().mean()) if bool(alive_N.any()) else float("nan")
        out["alive_nodes"] = alive_nodes
        out["attack_success"] = float("nan")
        if x_att is not None:
            success_N = matches[1] if shared else predicted_matches(self.flat, params_NP, x_att, [y_att])[0]
            out["attack_success"] = float(success_N.mean())
        out["acc_avg_model"] = float(predicted_matches(self.flat, avg, self.x_test, [self.y_test])[0][0])
        out.update(self._local_accuracy(params_NP) if self.local is not None else dict.fromkeys(LOCAL_COLUMNS, math.nan))
        if self.train_probe is not None:
            out.update(self._generalization(params_NP, avg, out["acc_mean"]))
        return out

    def _generalization(self, params_NP: Tensor, avg_1P: Tensor, acc_mean: float) -> dict[str, float]:
        """Train accuracy and cross-entropy of the tested nodes' models (means) and of the averaged model, their
        test cross-entropy, and the gaps: train minus test accuracy (``acc_mean``, measured already), test minus
        training loss (a model that memorises its data has large ones; Zhu et al., ICML 2023 compare D-SGD's with
        centralized SGD's)."""
        rows = torch.cat([params_NP, avg_1P])
        train_acc, train_loss = accuracy_and_loss(self.flat, rows, *self.train_probe)
        _, test_loss = accuracy_and_loss(self.flat, rows, self.x_test, self.y_test)
        out = {"train_acc_mean": float(train_acc[:-1].mean()), "train_eval_loss_mean": float(train_loss[:-1].mean()),
               "test_loss_mean": float(test_loss[:-1].mean())}
        out["gap_acc_mean"] = out["train_acc_mean"] - acc_mean
        out["gap_loss_mean"] = out["test_loss_mean"] - out["train_eval_loss_mean"]
        out.update(train_acc_avg_model=float(train_acc[-1]), train_eval_loss_avg_model=float(train_loss[-1]),
                   test_loss_avg_model=float(test_loss[-1]))
        return out

    def _local_accuracy(self, params_NP: Tensor) -> dict[str, float]:
        """Each node's accuracy on its own held-out split (personalization): mean, min, population std and the
        mean of the worst 10% of nodes (at least one)."""
        from torch.func import functional_call, vmap

        x, y, mask = self.local
        if self.measured_N is not None:
            x, y, mask = x[self.measured_N], y[self.measured_N], mask[self.measured_N]
        forward = vmap(lambda p, xb: functional_call(self.flat.module, self.flat.unravel(p), (xb,)))
        correct = (forward(params_NP, x).argmax(-1) == y) & mask
        acc_N = (correct.sum(1) / mask.sum(1)).double()
        worst = acc_N.sort().values[:max(1, len(acc_N) // 10)]
        return {"acc_local_mean": float(acc_N.mean()), "acc_local_min": float(acc_N.min()),
                "acc_local_std": float(acc_N.std(unbiased=False)), "acc_local_worst10": float(worst.mean())}


def make_evaluator(built) -> Evaluator:
    """The run's :class:`Evaluator` (every engine): test data, local splits, honest nodes, the data attack's
    test set and the seeded subset of evaluated nodes (``eval_nodes``)."""
    ds = built.dataset
    return Evaluator(built.flat, ds.x_test, ds.y_test, ds.x_train, ds.y_train, built.local_test_parts,
                     built.honest_N, built.attack_test, nodes_N=built.eval_N, train_probe=train_probe(built))


def train_probe(built) -> tuple[Tensor, Tensor] | None:
    """The ``eval_train`` samples (:func:`train_probe_indices`) with their true labels (a data attack poisons
    batches as they are drawn), None when off."""
    held = train_probe_indices(built)
    if held is None:
        return None
    idx = torch.from_numpy(held).to(built.dataset.x_train.device)
    return built.dataset.x_train[idx], built.dataset.y_train[idx]


def train_probe_indices(built) -> np.ndarray | None:
    """Sorted indices into the training set of ``eval_train`` samples drawn (seeded, without replacement) from the
    union of the nodes' training indices (never a node's local test split); all of them when fewer."""
    k = built.config.eval_train
    if not k:
        return None
    from peerlearn.rng import stream_seed

    held = np.unique(np.concatenate([np.asarray(p, dtype=np.int64) for p in built.parts]))
    if k < len(held):
        pick = np.random.default_rng(stream_seed(built.config.seed, "eval_train")).choice(len(held), k, replace=False)
        held = np.sort(held[pick])
    return held


def is_evaluation_round(cfg, round_: int) -> bool:
    """Rows are evaluated at round 0, every ``eval_every`` rounds and at the last round (every engine)."""
    return round_ % cfg.eval_every == 0 or round_ == cfg.num_rounds


def evaluation_row(round_: int, evaluate: Evaluator, params_NP: Tensor, alive_N: Tensor | None, losses: list[float],
                   honest_N: Tensor, bytes_total: float, num_nodes: int, wall_time_s: float, clock_metrics: dict,
                   watch: DivergenceWatch) -> dict:
    """One metrics row (every engine): evaluation, the mean of ``losses`` since the last row, bytes, time;
    ``watch`` applies the divergence rule to the models first."""
    started = time.perf_counter()
    consensus = consensus_distance(params_NP if bool(honest_N.all()) else params_NP[honest_N])
    watch.row(round_, params_NP, consensus)
    evaluated = evaluate(params_NP, alive_N)
    return {"round": round_, **evaluated,
            "loss_mean": float(np.nanmean(losses)) if losses and not np.isnan(losses).all() else math.nan,
            "consensus_distance": consensus,
            "bytes_sent_total": bytes_total, "bytes_sent_per_node": bytes_total / num_nodes,
            "wall_time_s": wall_time_s, "staleness_mean": math.nan, "epsilon": math.nan, **clock_metrics,
            "eval_time_s": time.perf_counter() - started}


def restore(built, resume: dict) -> tuple[int, Tensor, object, list[dict], Tensor | None]:
    """What both engines take back from a snapshot: (first round to run, params_NP, algorithm state,
    rows so far, alive_N); the sampler's generator is restored in place."""
    built.batches.load_state_dict(resume["sampler"])
    device = built.params_NP.device
    alive_N = None if built.faults is None else from_host(built.faults.alive(resume["round"]).copy())
    return (resume["round"] + 1, resume["params_NP"].to(device, copy=True), to_device(resume["state"], device),
            list(resume["rows"]), alive_N)


def round_network(built, round_: int, faults: FaultPlan | None = None) -> tuple[object, RoundFaults | None, tuple]:
    """The round's mixing matrix after the schedule and ``faults`` (default the run's; None: unchanged),
    the round's faults (None without any), and the models that nodes coming back copy from an alive
    neighbour (``faults.rejoin``) as index arrays ``(dst, src)`` (:func:`rejoin`). Every engine's one
    network builder: the distributed engine passes the run's faults with the departed ranks' nodes down."""
    faults = built.faults if faults is None else faults
    base_W = built.schedule(round_) if built.schedule is not None else None
    if faults is None:
        return base_W, None, ()
    rf = faults.at(round_, base_W if base_W is not None else built.W)
    return rf.W, rf, faults.rejoin_sources(rf.joined, built.adjacency, numpy(rf.alive_N), round_)


def rejoin(params_NP: Tensor, copies: tuple) -> Tensor:
    """``params_NP`` with each returning node ``dst`` holding its neighbour ``src``'s model (a copy)."""
    if not copies or not len(copies[0]):
        return params_NP
    dst, src = (torch.from_numpy(c).to(params_NP.device) for c in copies)
    params_NP = params_NP.clone()
    params_NP[dst] = params_NP[src]
    return params_NP


def departed_faults(built, departure_N: np.ndarray) -> FaultPlan | None:
    """The run's faults with each node down from its ``departure_N`` round on (its rank left a distributed
    run), as a crash in the simulator's fault model: its links are removed and the weights recomputed
    with the run's rule (Metropolis-Hastings when the rule needs a regular graph, which a departure breaks)."""
    from peerlearn.topology.mixing import metropolis_hastings_weights

    rounds = np.arange(built.config.num_rounds + 1)[:, None]
    gone_TN = rounds >= departure_N[None, :]
    if not gone_TN.any():
        return built.faults
    if built.faults is not None:
        return built.faults.with_departures(gone_TN)
    regular = built.config.topology.mixing.capabilities.regular_only
    return FaultPlan(~gone_TN, metropolis_hastings_weights if regular else built.mixing)


def refuse_simulator_only(cfg, engine: str) -> None:
    """What only the simulator runs, refused in one line for ``--engine <engine>``: a combine step that keeps a
    view of each neighbour across rounds, and attribution scores (both need every node's model each round)."""
    from peerlearn.spec import ConfigError

    agg = getattr(cfg.algorithm, "aggregator", None)
    if agg is not None and agg.capabilities.stateful:
        raise ConfigError(f"config error: algorithm.aggregator: {agg.name} keeps a view of each neighbour across "
                          f"rounds, which the simulator runs; use another aggregator for --engine {engine}")
    if cfg.attribution.active:
        raise ConfigError("config error: attribution.score: scores are computed by the simulator (it sees every "
                          f"node's model each round); remove the attribution section for --engine {engine}")


def _clone(x):
    return x.clone() if isinstance(x, Tensor) else x


def step_means(extra: dict[str, list[float]]) -> dict[str, float]:
    """Every metric an algorithm's steps returned besides ``loss``, as ``<key>_mean`` over the rounds (or
    events) since the last row: each becomes a column of ``metrics.csv``."""
    return {f"{key}_mean": float(np.nanmean(values)) if len(values) and not np.isnan(values).all() else math.nan
            for key, values in extra.items()}
