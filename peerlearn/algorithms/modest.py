"""MoDeST: decentralized sampling. Each round a small pseudo-random sample trains, and a few of the
next round's sampled nodes aggregate and forward, so no node talks to everyone.

Round k (synchronous form of the protocol, no faults):

1. the sample ``S_k`` (``sample_size`` nodes, a pure function of the seed and k, as MoDeST's
   hash ordering makes it for every node with the same view) holds the model it received and
   trains ``num_local_steps`` steps;
2. each participant sends its model to the ``num_aggregators`` aggregators of round k+1 (the
   first nodes of ``S_{k+1}``), which average what they receive;
3. the aggregators send the average to every member of ``S_{k+1}``.

Other nodes keep the last model they held: every row is what that node actually has, so
``acc_mean`` is the accuracy of a random node's model and ``acc_max`` tracks the fresh aggregate.
About ``2 * a * s`` model transfers per round, independent of N.

References:
    de Vos, Dhasade, Kermarrec, Lavoie, Pouwelse & Sharma, "MoDeST: Bridging the Gap between Federated
    and Decentralized Learning with Decentralized Sampling", 2023 (later "Decentralized Learning Made
    Practical with Client Sampling", arXiv:2302.13837; defaults s = 10, a = 1, 5 local steps).
"""

from __future__ import annotations

from typing import NamedTuple

from peerlearn.algorithms.fedavg import round_permutation
from peerlearn.algorithms.local import local_steps
from peerlearn.types import Algorithm, Tensor, Transform


class ModestState(NamedTuple):
    round: int


def modest_sample(num_nodes: int, sample_size: int, seed: int, round_: int) -> Tensor:
    """``S_k`` in MoDeST's order (aggregators first): a pure function of (seed, round)."""
    return round_permutation(num_nodes, seed, round_)[:sample_size]


def modest(optimizer: Transform, num_local_steps: int = 5, sample_size: int = 10, num_aggregators: int = 1,
           seed: int = 0) -> Algorithm:
    """MoDeST with ``sample_size`` (s) participants and ``num_aggregators`` (a) aggregators per round."""
    if not 1 <= num_aggregators <= sample_size:
        raise ValueError(f"algorithm.num_aggregators must be in [1, sample_size={sample_size}], got {num_aggregators}")

    def init(params_NP):
        return ModestState(0)

    def step(state, params_NP, batches, grad_fn, comm):
        n, k = comm.num_global, state.round + 1
        size = min(sample_size, n)
        at, rows = comm.mine(modest_sample(n, size, seed, k))  # the participants held here (all in the simulator)
        nxt = modest_sample(n, size, seed, k + 1)
        trained, _, loss = local_steps(params_NP[at], optimizer.init(params_NP[at]), optimizer, batches,
                                       grad_fn, num_local_steps, at)
        aggregators = nxt[:num_aggregators]
        average = comm.multicast_mean(trained, rows, aggregators)
        params_NP = params_NP.clone()
        if average is not None:  # None: every sampled node was down, nothing reached the aggregators
            senders = comm.mine(aggregators)[1]
            forwarded = comm.multicast_mean(average.expand(len(senders), -1), senders, nxt)
            if forwarded is not None:  # None: every aggregator was down; the next sample keeps its models
                params_NP[comm.mine(nxt)[0]] = forwarded
        return params_NP, ModestState(k), {"loss": comm.node_mean(loss)}

    return Algorithm(init, step)



# ---------------------------------------------------------------------------------------------
# Spec (algorithm.name: modest)
# ---------------------------------------------------------------------------------------------
from typing import ClassVar, Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from peerlearn.algorithms.base import ALGORITHMS, SYNC, Capabilities, LocalSteps, Synchronous, config_error  # noqa: E402


@ALGORITHMS.register
class ModestSpec(LocalSteps, Synchronous):
    """MoDeST: a sample of nodes trains, aggregators average and pass the model on (de Vos et al., 2023)."""

    name: Literal["modest"] = "modest"
    why_not: ClassVar = {  # why model attacks and privacy noise do not act on its messages
        "attack": "its participants multicast to aggregators; Byzantine participants are not modelled yet",
        "privacy": "noise on MoDeST's multicasts is not built yet"}
    sample_size: int = Field(10, ge=1, description="nodes sampled per round (s)")
    num_aggregators: int = Field(1, ge=1, description="aggregators per round (a), among the sampled")
    capabilities: ClassVar = Capabilities(engines=SYNC | {"p2p"}, global_model=True)  # multicasts: on a swarm too

    def check(self, cfg) -> None:
        super().check(cfg)
        if not 1 <= self.num_aggregators <= min(self.sample_size, cfg.num_nodes):
            raise config_error("algorithm.num_aggregators", f"must be in [1, sample_size={self.sample_size}] (and <= "
                                                            f"num_nodes), got {self.num_aggregators}")

    def build(self, ctx):
        return modest(self.transform(), self.num_local_steps, self.sample_size, self.num_aggregators,
                      seed=ctx.seed("modest"))
