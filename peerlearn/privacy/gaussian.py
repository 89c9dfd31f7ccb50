"""Clipped Gaussian noise on shared messages: independent (local DP) or pairwise-cancelling (DECOR).

Every round a node trains, its update in gradient units ``u_i = (x_i - trained_i) / lr`` (for one SGD
step: its mini-batch gradient) is clipped to L2 norm ``C`` and perturbed before anything built from it
is shared:

- independent noise: ``u_i + N(0, sigma^2 C^2 I)``;
- pairwise-cancelling noise (DECOR): ``u_i + sum_{j in N(i)} v_ij + N(0, sigma^2 C^2 I)`` with
  ``v_ij = -v_ji ~ N(0, sigma_pair^2 C^2 I)`` drawn from a seed that neighbours ``i`` and ``j`` share.
  The ``v`` terms cancel in the network sum: with a doubly stochastic W the network average after a
  gossip step carries only the independent part, while every single message stays masked.

The node's message is then built from ``x_i - lr * u_i`` (D-SGD's ``trained_i``), so everything a node
ever shares is a post-processing of these releases. Across nodes the noise of a round is Gaussian with
covariance ``Sigma = sigma^2 I + sigma_pair^2 L`` (L the Laplacian of the round's graph), per
coordinate. Against an eavesdropper who sees every message but no pairwise secret, changing node i's
clipped update by at most ``C`` moves the observation's mean by ``C e_i``: the Renyi divergence is that
of a Gaussian mechanism with the effective noise multiplier ``([Sigma^-1]_ii)^(-1/2)``, which is what
the accountant (:mod:`peerlearn.privacy.accountant`, Opacus) composes. With ``sigma = 0`` and pairwise
noise only, the network sum is released noise-free and epsilon is infinite.

Sensitivity convention: ``C`` (one node's clipped update present or absent, as in DP-SGD accountants
and user-level DP-FedAvg); under "replace one node's data" the sensitivity is ``2C``, i.e. read the
guarantee at half the noise multiplier. A node is charged once per round it trains; a round in which
it is down costs nothing.

References:
    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016 (clipping + Gaussian noise);
    McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent Language Models",
    ICLR 2018 (clipping a participant's whole update);
    Allouah, Koloskova, El Firdoussi, Jaggi & Guerraoui, "The Privacy Power of Correlated Noise in
    Decentralized Learning", ICML 2024 (DECOR, SecLDP accounting with ``Sigma``).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg
from scipy.sparse.csgraph import laplacian
import torch

from peerlearn.device import draw, from_host, numpy
from peerlearn.privacy.accountant import epsilons, exact_epsilons, gaussian_rdp, orders
from peerlearn.rng import step_generator
from peerlearn.topology.clique import as_csr
from peerlearn.types import Tensor

_DENSE_MAX = 6000  # up to this many nodes (0.3 GB float64), diag(Sigma^-1) from a dense Cholesky factorisation
_EDGE_CHUNK = 4096  # pairwise noise is drawn this many edges at a time (bounded memory)


class PrivacyState(NamedTuple):
    calls: int  # rounds privatised so far (the noise generator's stream position)
    rdp_NA: Tensor  # float64: each node's Renyi divergence at each order, composed over its releases


def no_releases(params_NP: Tensor) -> PrivacyState:
    """Every node's privacy state before its first release (nothing spent): a mechanism's ``init``."""
    return PrivacyState(0, torch.zeros(params_NP.shape[0], len(orders()), dtype=torch.float64))


class MessagePrivacy(NamedTuple):
    """``init(params_NP) -> PrivacyState``; ``privatize(update_NP, state, comm) -> (update_NP, state)``;
    ``epsilon(state) -> epsilon_N`` (numpy) at the configured delta."""

    init: Callable[[Tensor], PrivacyState]
    privatize: Callable[[Tensor, PrivacyState, Any], tuple[Tensor, PrivacyState]]
    epsilon: Callable[[PrivacyState], np.ndarray]


def graph_edges(W) -> tuple[np.ndarray, np.ndarray]:
    """The undirected pairs ``(i, j)``, ``i < j``, linked in either direction by ``W``'s off-diagonal."""
    A = sp.csr_array(as_csr(W), copy=True)
    A.setdiag(0)
    A.eliminate_zeros()
    A = sp.triu((A != 0).astype(np.int8) + (A.T != 0).astype(np.int8), k=1).tocoo()
    return A.row.astype(np.int64), A.col.astype(np.int64)


def effective_multipliers(num_nodes: int, edges: tuple[np.ndarray, np.ndarray], noise_multiplier: float,
                          pairwise_multiplier: float) -> np.ndarray:
    """``([Sigma^-1]_ii)^(-1/2)`` for ``Sigma = sigma^2 I + sigma_pair^2 L`` over the graph ``edges``.

    Equal to ``sigma`` without pairwise noise, never below it with (the masks only add privacy), and 0
    for every node when ``sigma = 0`` (Sigma is singular: the network sum carries no noise).
    """
    if pairwise_multiplier == 0.0 or noise_multiplier == 0.0:
        return np.full(num_nodes, float(noise_multiplier))
    i, j = edges
    adj = sp.coo_array((np.ones(len(i)), (i, j)), shape=(num_nodes, num_nodes)).tocsr()
    L = laplacian(adj + adj.T)
    sigma = sp.csc_array(noise_multiplier ** 2 * sp.eye_array(num_nodes) + pairwise_multiplier ** 2 * L)
    if num_nodes <= _DENSE_MAX:
        factor = scipy.linalg.cho_factor(sigma.toarray())
        diag = np.diag(scipy.linalg.cho_solve(factor, np.eye(num_nodes)))
    else:  # sparse LU, solved against unit vectors a block at a time (only the diagonal is kept)
        lu = scipy.sparse.linalg.splu(sigma)
        diag = np.empty(num_nodes)
        for lo in range(0, num_nodes, 256):
            hi = min(num_nodes, lo + 256)
            rhs = np.zeros((num_nodes, hi - lo))
            rhs[np.arange(lo, hi), np.arange(hi - lo)] = 1.0
            diag[lo:hi] = lu.solve(rhs)[np.arange(lo, hi), np.arange(hi - lo)]
    return 1.0 / np.sqrt(diag)


def pairwise_noise(edges: tuple[np.ndarray, np.ndarray], num_nodes: int, num_params: int, std: float,
                   generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
    """``noise_NP`` with ``noise_i = sum_j v_ij``, ``v_ij = -v_ji ~ N(0, std^2 I)`` per linked pair: the rows
    sum to zero (to float rounding)."""
    i, j = (from_host(e) for e in edges)
    out = torch.zeros(num_nodes, num_params, dtype=dtype)
    for lo in range(0, len(i), _EDGE_CHUNK):
        v = draw(torch.randn, min(_EDGE_CHUNK, len(i) - lo), num_params, generator=generator, dtype=dtype) * std
        out.index_add_(0, i[lo:lo + _EDGE_CHUNK], v)
        out.index_add_(0, j[lo:lo + _EDGE_CHUNK], v, alpha=-1.0)
    return out


def gaussian_messages(clip: float, noise_multiplier: float, pairwise_multiplier: float = 0.0, lr: float = 1.0,
                      delta: float = 1e-5, seed: int = 0, accountant: str = "rdp") -> MessagePrivacy:
    """Clip each node's update (in units of ``lr``) to ``clip`` and add Gaussian noise of multiplier
    ``noise_multiplier`` (independent) and ``pairwise_multiplier`` (pairwise-cancelling, DECOR); epsilon by the
    RDP ``accountant`` or the ``exact`` one (:mod:`peerlearn.privacy.accountant`)."""
    if clip <= 0.0:
        raise ValueError(f"privacy.clip must be > 0, got {clip}")
    if noise_multiplier < 0.0 or pairwise_multiplier < 0.0:
        raise ValueError("privacy.noise_multiplier and privacy.pairwise_multiplier must be >= 0")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"privacy.delta must be in (0, 1), got {delta}")
    cache: dict[str, Any] = {"W": None}

    def round_graph(W, num_nodes):
        """(edges, RDP of this round's release per node), recomputed only when the topology changes."""
        if cache["W"] is not W:
            edges = graph_edges(W)
            sigma_N = effective_multipliers(num_nodes, edges, noise_multiplier, pairwise_multiplier)
            cache.update(W=W, edges=edges, rdp_NA=from_host(gaussian_rdp(sigma_N)))
        return cache["edges"], cache["rdp_NA"]

    def privatize(update_NP, state, comm):
        n, p = comm.num_global, update_NP.shape[1]
        edges, rdp_NA = round_graph(comm.W, n)
        mine = (lambda x: x) if comm.node_ids is None else (lambda x: x[comm.node_ids])  # noise for every node, ours kept
        g = step_generator(seed, state.calls)
        u = update_NP / lr
        u = u * (clip / u.norm(dim=1, keepdim=True).clamp_min(clip))  # norm min(||u||, C)
        if noise_multiplier:
            u = u + mine(draw(torch.randn, n, p, generator=g, dtype=u.dtype)) * (noise_multiplier * clip)
        if pairwise_multiplier:
            u = u + mine(pairwise_noise(edges, n, p, pairwise_multiplier * clip, g, u.dtype))
        return u * lr, PrivacyState(state.calls + 1, state.rdp_NA + mine(rdp_NA))

    def epsilon(state):
        return (exact_epsilons if accountant == "exact" else epsilons)(numpy(state.rdp_NA), delta)

    return MessagePrivacy(no_releases, privatize, epsilon)
