"""Model-poisoning attacks: ``attack(own_BP, mean_BP, std_BP, generator, **hyper) -> msg_BP``.

``own_BP`` is what each Byzantine node would send if honest; ``mean_BP`` and ``std_BP`` are the
coordinate-wise mean and standard deviation of the honest messages it sees (all honest nodes,
or its honest neighbours: ``threat.collusion``).
"""

from __future__ import annotations

import torch

from peerlearn.types import Tensor


def sign_flip(own_BP: Tensor, mean_BP: Tensor, std_BP: Tensor, generator: torch.Generator) -> Tensor:
    """Send the negated honest mean.

    References:
        Allouah et al., "Fixing by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity",
        AISTATS 2023 (byzfl's SignFlipping).
    """
    return -mean_BP


def gaussian(own_BP: Tensor, mean_BP: Tensor, std_BP: Tensor, generator: torch.Generator,
             sigma: float = 1.0) -> Tensor:
    """Send the honest mean plus isotropic Gaussian noise of standard deviation ``sigma``.

    References:
        Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
    """
    return mean_BP + sigma * torch.randn(mean_BP.shape, generator=generator, dtype=mean_BP.dtype)


def large_norm(own_BP: Tensor, mean_BP: Tensor, std_BP: Tensor, generator: torch.Generator,
               scale: float = 100.0) -> Tensor:
    """Send the own model scaled by ``scale`` (a sanity attack that breaks plain averaging).

    References:
        Blanchard et al., NeurIPS 2017 (one Byzantine input controls the average).
    """
    return scale * own_BP


def alie(own_BP: Tensor, mean_BP: Tensor, std_BP: Tensor, generator: torch.Generator, z: float = 1.5) -> Tensor:
    """"A Little Is Enough": send ``mean - z * std``, inside the honest spread, so outlier filters keep it.

    References:
        Baruch, Baruch & Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed Learning",
        NeurIPS 2019 (z = 1.5 as byzfl's default).
    """
    return mean_BP - z * std_BP


def ipm(own_BP: Tensor, mean_BP: Tensor, std_BP: Tensor, generator: torch.Generator,
        epsilon: float = 0.1) -> Tensor:
    """Inner-product manipulation: send ``-epsilon * mean`` so the aggregate turns against the honest direction.

    References:
        Xie, Koyejo & Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
        Manipulation", UAI 2019.
    """
    return -epsilon * mean_BP


MODEL_ATTACKS = {"sign_flip": sign_flip, "gaussian": gaussian, "large_norm": large_norm, "alie": alie, "ipm": ipm}
