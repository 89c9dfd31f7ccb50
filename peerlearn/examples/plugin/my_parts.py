"""A peerlearn plugin: a user's own aggregator, algorithm, model and dataset, registered by name.

Name this module in a config (``plugins: [my_parts.py]``), in ``PEERLEARN_PLUGINS``, or as an
entry point of the group ``peerlearn.plugins`` of an installed package; from then on YAML, ``--set``,
``peerlearn list``, ``run``, ``matrix`` and ``compare`` treat these parts as built-ins.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch
from pydantic import Field, SerializeAsAny
from torch import nn

from peerlearn.aggregators import AGGREGATORS, AggregatorSpec
from peerlearn.algorithms import ALGORITHMS
from peerlearn.algorithms.base import LocalSteps, Synchronous
from peerlearn.data import DATASETS, DatasetSpec
from peerlearn.models import MODELS, ModelSpec
from peerlearn.spec import Capabilities, slot
from peerlearn.types import Algorithm


# --- an aggregator: rule(x_NKP, valid_NK, **fields) -> x_NP; column 0 is the node's own model ---------
def distance_filter(x_NKP: torch.Tensor, valid_NK: torch.Tensor, drop: int = 1) -> torch.Tensor:
    """Average the own model and the received ones, without the ``drop`` farthest from the own model."""
    dist_NK = (x_NKP - x_NKP[:, :1]).norm(dim=2).masked_fill(~valid_NK, float("inf"))
    far = dist_NK.topk(drop, dim=1).indices if drop else dist_NK[:, :0].long()
    keep_NK = valid_NK.clone()
    keep_NK.scatter_(1, far, False)
    keep_NK[:, 0] = True
    w_NK = keep_NK.to(x_NKP.dtype)
    return (w_NK[:, :, None] * x_NKP).sum(1) / w_NK.sum(1, keepdim=True)


@AGGREGATORS.register
class DistanceFilterSpec(AggregatorSpec):
    """Drop the inputs farthest from the own model, average the rest (a distance-based defence)."""

    name: Literal["distance_filter"] = "distance_filter"
    drop: int = Field(1, ge=0, description="received models dropped per node")
    factory: ClassVar = staticmethod(distance_filter)


# --- an algorithm: Algorithm(init, step); step returns (params_NP, state, metrics) ---------------------
class ClippedState(NamedTuple):
    opt_state: Any


def clipped_dsgd(optimizer, num_local_steps: int, clip: float, aggregator=None) -> Algorithm:
    """D-SGD whose gradients are clipped per node to norm ``clip``; reports the fraction clipped.
    ``aggregator``: a rule over each node's own and received models (None: linear gossip W x)."""

    def init(params_NP):
        return ClippedState(optimizer.init(params_NP))

    def step(state, params_NP, batches, grad_fn, comm):
        opt_state, clipped, losses = state.opt_state, [], []
        params_NP = params_NP.clone()
        for _ in range(num_local_steps):
            loss_N, grads_NP = grad_fn(params_NP, batches.next())
            norm_N = grads_NP.norm(dim=1, keepdim=True)
            grads_NP = grads_NP * (clip / norm_N).clamp(max=1.0)
            updates_NP, opt_state = optimizer.update(grads_NP, opt_state, params_NP)
            params_NP += updates_NP
            clipped.append(float((norm_N > clip).double().mean()))
            losses.append(float(loss_N.mean()))
        if aggregator is None:  # gossip with the round's W (faults and schedules included)
            params_NP = comm.mix(params_NP)
        else:  # each node's own model (column 0) and its neighbours' messages, padded
            params_NP = aggregator(*comm.gather(params_NP, include_self=True))
        # every key besides "loss" becomes a column of metrics.csv (<key>_mean)
        return params_NP, ClippedState(opt_state), {"loss": float(np.mean(losses)),
                                                     "clipped": float(np.mean(clipped))}

    return Algorithm(init, step)


@ALGORITHMS.register
class ClippedDsgdSpec(LocalSteps, Synchronous):
    """D-SGD with per-node gradient clipping and any aggregator (a user's algorithm)."""

    name: Literal["clipped_dsgd"] = "clipped_dsgd"
    clip: float = Field(1.0, gt=0.0, description="gradient norm bound per node and step")
    # a slot: names a member of the aggregator family, whose keys go beside it
    aggregator: SerializeAsAny[AggregatorSpec] = slot(AGGREGATORS, "gossip", "how a node combines models")
    slots: ClassVar = {"aggregator": AGGREGATORS}  # the optimizer slot comes from LocalSteps
    capabilities: ClassVar = Capabilities(engines=frozenset({"simulator", "distributed"}), attackable=True)

    def build(self, ctx):
        return clipped_dsgd(self.transform(), self.num_local_steps, self.clip, self.aggregator.build(ctx))


# --- a model: any nn.Module mapping [B, *input_shape] to logits [B, num_classes] ------------------------
class ResidualMLP(nn.Module):
    """An MLP with one residual block and LayerNorm (no buffers, no dropout: see models/base.py)."""

    def __init__(self, in_features: int, width: int, num_classes: int):
        super().__init__()
        self.inp = nn.Linear(in_features, width)
        self.block = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU())
        self.out = nn.Linear(width, num_classes)

    def forward(self, x):
        h = torch.relu(self.inp(x.flatten(1)))
        return self.out(h + self.block(h))


@MODELS.register
class ResidualMLPSpec(ModelSpec):
    """MLP with a residual block (a user's nn.Module)."""

    name: Literal["residual_mlp"] = "residual_mlp"
    width: int = Field(32, ge=1, description="hidden width")

    def build(self, input_shape, num_classes):
        return ResidualMLP(int(np.prod(input_shape)), self.width, num_classes)


# --- a dataset: build(ctx) may return plain arrays (x_train, y_train, x_test, y_test) -------------------
@DATASETS.register
class MoonsSpec(DatasetSpec):
    """Two interleaved half-moons (scikit-learn's make_moons), generated."""

    name: Literal["moons"] = "moons"
    num_samples: int = Field(1000, ge=20, description="samples to generate")
    noise: float = Field(0.15, ge=0.0, description="standard deviation of the Gaussian noise")

    def build(self, ctx):
        from sklearn.datasets import make_moons

        x, y = make_moons(self.num_samples, noise=self.noise, random_state=ctx.run_seed)
        cut = int(0.8 * len(y))
        return x[:cut].astype(np.float32), y[:cut], x[cut:].astype(np.float32), y[cut:]
