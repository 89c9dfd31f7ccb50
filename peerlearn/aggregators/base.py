"""The aggregator family: how a node combines its own model and its neighbours' messages
(``algorithm.aggregator`` of dsgd): ``build(ctx) -> rule(x_NKP, valid_NK) -> x_NP``, or None for
linear gossip ``W x``."""

from __future__ import annotations

import functools
from typing import Callable, ClassVar

import torch

from peerlearn.device import draw
from peerlearn.spec import BuildContext, Registry, Spec, config_error


class AggregatorSpec(Spec):
    """A combine rule; ``factory(x_NKP, valid_NK, **fields)``; robust rules name their ``min_inputs`` rule."""

    factory: ClassVar[Callable | None] = None
    min_inputs: ClassVar[str | None] = None  # key of aggregators.robust.MIN_INPUTS: checked against the graph

    def build(self, ctx: BuildContext) -> Callable | None:
        self.check_inputs(ctx)
        return self.rule()

    def check_inputs(self, ctx: BuildContext) -> None:
        """Every node of the graph gives this rule enough inputs to tolerate its f (robust rules)."""
        if self.min_inputs is not None:
            from peerlearn.topology.graphs import degrees

            error = min_inputs_error(self.min_inputs, self.f, int(degrees(ctx.adjacency).min()) + 1, label=self.name,
                                     where=f"on this {ctx.graph.name} ")
            if error:
                field, _, message = error.partition(": ")
                raise config_error(field, message)

    def rule(self, **extra) -> Callable:
        """``rule(x_NKP, valid_NK)`` with this spec's fields (and ``extra``) bound."""
        return functools.partial(type(self).factory, **self.kwargs(), **extra)


def probe_rule(spec: AggregatorSpec, rule: Callable, ctx: BuildContext) -> None:
    """Run a plugin's rule once on two nodes' worth of the run's own shapes (each node receiving as many models
    as the best-connected node of the graph, the initial model plus small noise) and refuse, with one line
    naming the member, an error or a result that is not ``[N, P]`` floats: found at build time, not as a
    reshape error deep in a round. peerlearn's own rules are tested instead, and are not run here."""
    from peerlearn.topology.graphs import degrees

    if type(spec).__module__.startswith("peerlearn.") or rule is None or ctx.reference_P is None:
        return
    num_params, inputs = int(ctx.reference_P.numel()), int(degrees(ctx.adjacency).max()) + 1
    with torch.random.fork_rng(devices=[]):  # the run's random streams stay as they were
        torch.manual_seed(0)
        x = ctx.reference_P.reshape(1, 1, -1).expand(2, inputs, num_params) + 0.01 * torch.randn(2, inputs, num_params)
        valid = torch.ones(2, inputs, dtype=torch.bool)
        try:
            out = rule(x.contiguous(), valid)
        except Exception as err:
            detail = str(err).splitlines()[0] if str(err) else ""
            raise config_error("algorithm.aggregator", f"{spec.name} failed on a probe of 2 nodes x {inputs} models x "
                               f"{num_params} parameters: {type(err).__name__}{': ' + detail if detail else ''}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_params) or not out.is_floating_point():
        got = f"shape {tuple(out.shape)} ({out.dtype})" if isinstance(out, torch.Tensor) else type(out).__name__
        raise config_error("algorithm.aggregator", f"{spec.name} must return [N, P] floats (here [2, {num_params}]) "
                           f"from x_NKP [2, {inputs}, {num_params}]; it returned {got} (docs/howto/plugins.md)")


def training_sample(ctx: BuildContext, stream: str, count: int):
    """``(x, y)``: a seeded sample of ``count`` training samples (at most all), the same at every node: the batch
    rules score or align models on instead of each node's own data."""
    x, y = ctx.dataset.x_train, ctx.dataset.y_train
    idx = draw(torch.randperm, len(x), generator=torch.Generator().manual_seed(ctx.seed(stream)))[:count]
    return x[idx], y[idx]


# fewest inputs (own model included) each rule needs to tolerate f Byzantine ones
MIN_INPUTS = {"trimmed_mean": lambda f: 2 * f + 1, "krum": lambda f: 2 * f + 3,
              "multi_krum": lambda f: 2 * f + 3, "bulyan": lambda f: 4 * f + 3,
              "nearest_neighbor_mean": lambda f: f + 1}


def min_inputs_error(rule: str, f: int, k_min: int, label: str | None = None, where: str = "") -> str | None:
    """The ``algorithm.f`` error if a node receiving ``k_min`` models cannot run ``rule`` with ``f``, else None.

    ``label`` names the rule as the user wrote it; ``where`` (e.g. "on this ring ") places the node.
    """
    need = MIN_INPUTS[rule](f)
    if k_min >= need:
        return None
    return (f"algorithm.f: {label or rule} with f={f} needs every node to receive at least {need} models "
            f"(itself included); {where}the least connected node receives {k_min}")


AGGREGATORS = Registry("aggregator", AggregatorSpec, "algorithm.aggregator",
                       "how a dsgd node combines its own and received models")
