"""Model-poisoning attacks: ``attack(own_BP, seen, generator, **hyper) -> msg_BP``.

``own_BP`` is what each Byzantine node would send if honest; ``seen`` (:class:`HonestView`) is
what each of them knows about the honest messages: all honest nodes', or its honest
neighbours' (``threat.collusion``). Statistics are computed only when an attack asks for them.
"""

from __future__ import annotations

import functools
import math

import torch

from peerlearn.device import draw
from peerlearn.types import Tensor


class HonestView:
    """The honest messages each Byzantine node sees: ``x_NP`` weighted by ``view_BN`` (rows sum to 1)."""

    def __init__(self, x_NP: Tensor, view_BN: Tensor):
        self.x_NP, self.view_BN = x_NP, view_BN.to(x_NP.dtype)

    @functools.cached_property
    def mean(self) -> Tensor:
        """Coordinate-wise mean ``mu_BP``."""
        return self.view_BN @ self.x_NP

    @functools.cached_property
    def std(self) -> Tensor:
        """Coordinate-wise standard deviation ``sigma_BP``."""
        return (self.view_BN @ self.x_NP.square() - self.mean.square()).clamp_min(0).sqrt()

    def principal(self, num_iters: int = 30) -> tuple[Tensor, Tensor]:
        """Top eigenvector ``u_BP`` (unit norm) and eigenvalue ``lambda_B`` of each view's covariance.

        Power iteration on ``C v = sum_j w_j (x_j - mu) <x_j - mu, v>``, never forming the P x P matrix.
        The sign is fixed so that ``<u, mu> >= 0``.
        """
        x, w, mu = self.x_NP, self.view_BN, self.mean
        v = draw(torch.randn, mu.shape[1], generator=torch.Generator().manual_seed(0), dtype=mu.dtype).expand_as(mu)
        for _ in range(num_iters):
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
            c = w * (v @ x.T - (mu * v).sum(1, keepdim=True))  # [B, N]: w_j <x_j - mu, v>
            v = c @ x - c.sum(1, keepdim=True) * mu
        lam = v.norm(dim=1)
        u = v / lam[:, None].clamp_min(1e-30)
        u = u * torch.where((u * mu).sum(1, keepdim=True) < 0, -1.0, 1.0).to(u.dtype)
        return u, lam


def sign_flip(own_BP: Tensor, seen: HonestView, generator: torch.Generator) -> Tensor:
    """Send the negated honest mean.

    References:
        Allouah et al., "Fixing by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity",
        AISTATS 2023 (byzfl's SignFlipping).
    """
    return -seen.mean


def gaussian(own_BP: Tensor, seen: HonestView, generator: torch.Generator, sigma: float = 1.0) -> Tensor:
    """Send the honest mean plus isotropic Gaussian noise of standard deviation ``sigma``.

    References:
        Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
    """
    return seen.mean + sigma * draw(torch.randn, seen.mean.shape, generator=generator, dtype=seen.mean.dtype)


def large_norm(own_BP: Tensor, seen: HonestView, generator: torch.Generator, scale: float = 100.0) -> Tensor:
    """Send the own model scaled by ``scale`` (a sanity attack that breaks plain averaging).

    References:
        Blanchard et al., NeurIPS 2017 (one Byzantine input controls the average).
    """
    return scale * own_BP


def alie(own_BP: Tensor, seen: HonestView, generator: torch.Generator, z: float = 1.5) -> Tensor:
    """"A Little Is Enough": send ``mean - z * std``, inside the honest spread, so outlier filters keep it.

    References:
        Baruch, Baruch & Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed Learning",
        NeurIPS 2019 (z = 1.5 as byzfl's default).
    """
    return seen.mean - z * seen.std


def ipm(own_BP: Tensor, seen: HonestView, generator: torch.Generator, epsilon: float = 0.1) -> Tensor:
    """Inner-product manipulation: send ``-epsilon * mean`` so the aggregate turns against the honest direction.

    References:
        Xie, Koyejo & Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
        Manipulation", UAI 2019.
    """
    return -epsilon * seen.mean


def dmpa(own_BP: Tensor, seen: HonestView, generator: torch.Generator, z: float = 1.5) -> Tensor:
    """Collusive principal-direction attack in the spirit of DMPA: ``mean - z * sqrt(lambda_1) * u_1``.

    The colluders estimate the direction in which honest models already disagree most (top
    eigenvector ``u_1`` of their covariance, eigenvalue ``lambda_1``) and all push the same way
    along it by ``z`` standard deviations of that direction. Unlike ALIE, which moves every
    coordinate by its own spread, the whole deviation is spent on one coherent direction, which
    is where distance- and coordinate-based filters are most tolerant. With ``collusion: all``
    every colluder sends the identical vector.

    This is a reconstruction: the DMPA paper's equations were not available (../shared/ALGORITHMS.md
    §5.2), only its description (colluders derive an angular deviation from the top
    eigenvalue/eigenvector of the correlation of their updates and apply it to their models).

    References:
        Feng et al., "DMPA: Model Poisoning Attacks on Decentralized Federated Learning for Model
        Differences", 2025.
    """
    u, lam = seen.principal()
    return seen.mean - z * lam.sqrt()[:, None] * u


# ---------------------------------------------------------------------------------------------
# Specs (threat.attack): build(ctx) -> craft(own_BP, seen, generator)
# ---------------------------------------------------------------------------------------------
import functools  # noqa: E402
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.attacks.base import ATTACKS, AttackSpec  # noqa: E402
from peerlearn.spec import Capabilities  # noqa: E402


class ModelAttackSpec(AttackSpec):
    """A model-poisoning attack: ``factory(own_BP, seen, generator, **fields)``."""

    factory: ClassVar
    capabilities: ClassVar = Capabilities(poisons="messages")

    def build(self, ctx):
        """The attack with its keys bound (keys derived from the run read ``ctx.num_nodes``, ``ctx.num_byzantine``)."""
        return functools.partial(type(self).factory, **self.kwargs())


@ATTACKS.register
class SignFlipSpec(ModelAttackSpec):
    """Send the negated honest mean (Allen-Zhu et al., ICLR 2021)."""

    name: Literal["sign_flip"] = "sign_flip"
    factory: ClassVar = staticmethod(sign_flip)


@ATTACKS.register
class GaussianSpec(ModelAttackSpec):
    """Send Gaussian noise around the own model (Blanchard et al., NeurIPS 2017)."""

    name: Literal["gaussian"] = "gaussian"
    sigma: float = Field(1.0, gt=0.0, description="noise standard deviation")
    factory: ClassVar = staticmethod(gaussian)


@ATTACKS.register
class LargeNormSpec(ModelAttackSpec):
    """Send the own model scaled by a large factor."""

    name: Literal["large_norm"] = "large_norm"
    scale: float = Field(100.0, description="factor on the own model")
    factory: ClassVar = staticmethod(large_norm)


@ATTACKS.register
class AlieSpec(ModelAttackSpec):
    """A little is enough: mean - z * std of the honest models (Baruch et al., NeurIPS 2019)."""

    name: Literal["alie"] = "alie"
    z: float | Literal["auto"] = Field(1.5, description="standard deviations below the honest mean; auto: the "
                                       "paper's largest z that a majority still accepts, from n and f")
    factory: ClassVar = staticmethod(alie)

    def build(self, ctx):
        if self.z != "auto":
            return super().build(ctx)
        return functools.partial(alie, z=alie_z(ctx.num_nodes, ctx.num_byzantine))


def alie_z(n: int, f: int) -> float:
    """ALIE's ``z_max``: with ``s = floor(n / 2 + 1) - f`` honest workers the attackers need on their side,
    ``z = Phi^{-1}((n - s) / n)`` (Baruch et al., NeurIPS 2019, Algorithm 3); 0.36 for n = 64, f = 10."""
    from scipy.stats import norm

    s = math.floor(n / 2 + 1) - f
    return float(norm.ppf((n - s) / n))


@ATTACKS.register
class IpmSpec(ModelAttackSpec):
    """Inner-product manipulation: -epsilon * honest mean (Xie et al., UAI 2019)."""

    name: Literal["ipm"] = "ipm"
    epsilon: float = Field(0.1, description="factor on the negated honest mean")
    factory: ClassVar = staticmethod(ipm)


@ATTACKS.register
class DmpaSpec(ModelAttackSpec):
    """Decentralized model poisoning along the honest models' principal direction (He et al., 2023)."""

    name: Literal["dmpa"] = "dmpa"
    z: float = Field(1.5, description="standard deviations below the honest mean")
    factory: ClassVar = staticmethod(dmpa)
