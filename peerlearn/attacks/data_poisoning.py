"""Data-poisoning attacks: Byzantine nodes train honestly on corrupted data and send the result.

Each attack is ``poison(x_RB..., y_RB, u_RB) -> (x, y)`` over the poisoned nodes' batches, with
``u_RB`` uniform draws from the batch sampler (so runs stay reproducible), and comes with the
test set on which its success is measured (``attack_test_set``).
"""

from __future__ import annotations

import math

import torch

from peerlearn.types import Tensor


def flip_labels(y: Tensor, num_classes: int) -> Tensor:
    """Untargeted label flipping ``y -> C - 1 - y``.

    References:
        Tolpegin et al., "Data Poisoning Attacks Against Federated Learning Systems", ESORICS 2020;
        Fung, Yoon & Beschastnikh, "The Limitations of Federated Learning in Sybil Settings", RAID 2020.
    """
    return num_classes - 1 - y


def add_trigger(x: Tensor, input_shape: tuple[int, ...], size: int = 3, value: float = 1.0) -> Tensor:
    """Stamp a ``size x size`` patch of ``value`` in the top-left corner of each input (a copy).

    Image inputs ``(C, H, W)`` get the patch in every channel; flat inputs whose length is a square
    (8x8 digits, 28x28 Fashion-MNIST) are treated as that image; other flat inputs get their first
    ``size**2`` features set.
    """
    x = x.clone()
    d = len(input_shape)
    if d == 3:
        x[..., :size, :size] = value
        return x
    side = math.isqrt(input_shape[0])
    if side * side == input_shape[0] and size <= side:
        idx = (torch.arange(size)[:, None] * side + torch.arange(size)[None, :]).reshape(-1)
    else:
        idx = torch.arange(min(size * size, input_shape[0]))
    x[..., idx] = value
    return x


def label_flip_poison(x: Tensor, y: Tensor, u: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Every sample of a poisoned node is relabelled ``C - 1 - y`` (see :func:`flip_labels`)."""
    return x, flip_labels(y, num_classes)


def backdoor_poison(x: Tensor, y: Tensor, u: Tensor, input_shape: tuple[int, ...], target_label: int,
                    fraction: float = 0.5, size: int = 3, value: float = 1.0) -> tuple[Tensor, Tensor]:
    """Backdoor: a ``fraction`` of each poisoned batch gets the trigger and the target label.

    The rest stays clean, so the poisoned model keeps its main-task accuracy (the attack hides).

    References:
        Gu, Dolan-Gavitt & Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning Model
        Supply Chain", 2017; Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020;
        the SybilWall experiments (3x3 patch of ones in the top-left corner).
    """
    hit = u < fraction
    stamped = add_trigger(x, input_shape, size, value)
    x = torch.where(hit.reshape(hit.shape + (1,) * (x.dim() - hit.dim())), stamped, x)
    return x, torch.where(hit, torch.full_like(y, target_label), y)


def attack_test_set(attack: str, x_test: Tensor, y_test: Tensor, num_classes: int, input_shape: tuple[int, ...],
                    target_label: int = 0, size: int = 3, value: float = 1.0) -> tuple[Tensor, Tensor]:
    """The inputs and attacker-chosen labels on which ``attack_success`` (accuracy = success) is measured.

    - ``label_flip``: the clean test set with flipped labels;
    - ``backdoor``: triggered test inputs whose true class is not the target, labelled with the target
      (the attack success rate of the backdoor literature).
    """
    if attack == "label_flip":
        return x_test, flip_labels(y_test, num_classes)
    if attack == "backdoor":
        keep = y_test != target_label
        x = add_trigger(x_test[keep], input_shape, size, value)
        return x, torch.full((len(x),), target_label, dtype=y_test.dtype)
    raise ValueError(f"no attack test set for {attack!r}")


# ---------------------------------------------------------------------------------------------
# Specs (threat.attack): build(dataset) -> (poison(x, y, u) -> (x, y), attack test set (x, y))
# ---------------------------------------------------------------------------------------------
import functools  # noqa: E402
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.attacks.base import ATTACKS, AttackSpec  # noqa: E402
from peerlearn.spec import Capabilities, config_error  # noqa: E402

_DATA = Capabilities(poisons="data")


@ATTACKS.register
class LabelFlipSpec(AttackSpec):
    """Byzantine nodes train on flipped labels y -> C - 1 - y (Tolpegin et al., ESORICS 2020)."""

    name: Literal["label_flip"] = "label_flip"
    capabilities: ClassVar = _DATA

    def build(self, ctx):
        ds = ctx.dataset
        poison = functools.partial(label_flip_poison, num_classes=ds.num_classes)
        return poison, attack_test_set(self.name, ds.x_test, ds.y_test, ds.num_classes, ds.input_shape)


@ATTACKS.register
class BackdoorSpec(AttackSpec):
    """A trigger patch relabelled to a target class (Gu et al., BadNets, 2017)."""

    name: Literal["backdoor"] = "backdoor"
    target_label: int = Field(0, ge=0, description="the class triggered inputs are pushed to")
    poison_fraction: float = Field(0.5, gt=0.0, le=1.0, description="fraction of each poisoned batch that carries "
                                                                     "the trigger")
    trigger_size: int = Field(3, ge=1, description="side of the square trigger patch (top-left corner)")
    capabilities: ClassVar = _DATA

    def build(self, ctx):
        ds = ctx.dataset
        if self.target_label >= ds.num_classes:
            raise config_error("threat.target_label", f"must be < {ds.num_classes} (the classes of {ds.name}), "
                                                      f"got {self.target_label}")
        trigger = {"size": self.trigger_size, "value": float(ds.x_train.max())}
        poison = functools.partial(backdoor_poison, input_shape=ds.input_shape, target_label=self.target_label,
                                   fraction=self.poison_fraction, **trigger)
        test = attack_test_set(self.name, ds.x_test, ds.y_test, ds.num_classes, ds.input_shape, self.target_label,
                               **trigger)
        return poison, test
