"""The simulator's whole round against this machine's roofs and against a hand-written batched round,
in one process (issue 16).

Roofs, measured here, interleaved with the rounds: the square ``torch.mm`` rate (1024^3, fp32); every
batched product of the round timed bare at its own shape (batch 16 makes them skinny: forward, weight
gradient and input gradient of each layer through MKL's batched GEMM); and memory bandwidth as an in-place
add over 256 MB (two reads and a write per element).

A round is D-SGD on a ring (Metropolis-Hastings), one local SGD step of batch 16 per node on synthetic
data, through :func:`peerlearn.engines.simulate` (the path ``peerlearn run`` takes, freed memory kept as
it keeps it). Its floor is the products' bare time plus the bytes its other passes must move (the SGD step
reads parameters and gradient and writes the parameters, the gossip reads and writes them, the batch is
gathered) at the measured bandwidth. The square-mm column holds the round's FLOPs (forward ``2 B sum(in*out)``,
backward twice that less the unneeded first input gradient, update and gossip) against the square rate. The *hand-written* round is the same arithmetic written directly against torch, with nothing of
peerlearn's: a sampled batch by one gather, ``baddbmm`` forward, the mean loss, softmax cross-entropy backward, ``bmm``
weight gradients into a preallocated tensor, an in-place SGD step and the ring's gossip as one sparse
``addmm`` into a kept buffer.

Usage: ``.venv/bin/python benchmarks/bench_roofline.py [--threads 1] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from _setup import set_threads
from peerlearn.build import build
from peerlearn.config import parse_config
from peerlearn.engines import simulate
from peerlearn.resources import keep_freed_memory
from peerlearn.topology import cycle_graph, metropolis_hastings_weights

BATCH = 16
CASES = [  # (label, model section, input width, classes, node counts)
    ("logreg 784-62", {"name": "logreg"}, 784, 62, [256, 1024]),
    ("mlp 64-64-10", {"name": "mlp", "hidden": [64]}, 64, 10, [64, 256, 1024, 4096]),
    ("mlp 64-256-256-10", {"name": "mlp", "hidden": [256, 256]}, 64, 10, [256]),
]


def best_time(fn, repeats: int, min_s: float = 0.3) -> float:
    """Best over ``repeats`` windows of the mean seconds per call (each window at least ``min_s``)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < min_s or calls == 0:
            fn()
            calls += 1
        best = min(best, elapsed / calls)
    return best


def layout_of(width: int, hidden: list[int], classes: int) -> list[tuple[int, int]]:
    dims = [width, *hidden, classes]
    return list(zip(dims[:-1], dims[1:]))


def round_flops(layout, n: int, degree: int = 2) -> float:
    """FLOPs of one round of ``n`` nodes: gradient (forward, weight and input gradients), update and gossip."""
    macs = sum(i * o for i, o in layout)
    p = macs + sum(o for _, o in layout)
    return n * BATCH * (6 * macs - 2 * layout[0][0] * layout[0][1]) + n * p * (2 + 2 * degree)


def elementwise_bytes(layout, n: int) -> float:
    """Bytes the round's passes outside the products must move at least once: the SGD step (read the
    parameters and the gradient, write the parameters), the gossip (read and write them) and the batch."""
    p = sum(i * o + o for i, o in layout)
    return 4 * n * p * (3 + 2) + 4 * n * BATCH * (layout[0][0] + 1) * 2


def product_floor(layout, n: int, repeats: int) -> float:
    """Seconds of the round's batched products alone, each timed bare at its own shape with a contiguous
    output (MKL's batched GEMM): forward ``h W^T``, weight gradient ``dz^T h`` and input gradient ``dz W``."""
    total = 0.0
    for k, (i, o) in enumerate(layout):
        h, w, dz = torch.randn(n, BATCH, i), torch.randn(n, o, i), torch.randn(n, BATCH, o)
        total += best_time(lambda: torch.bmm(h, w.transpose(1, 2)), repeats)
        total += best_time(lambda: torch.bmm(dz.transpose(1, 2), h), repeats)
        if k:
            total += best_time(lambda: torch.bmm(dz, w), repeats)
    return total


class EngineRound:
    """Rounds of ``peerlearn.engines.simulate`` on a built run, one call per round (the build is done once)."""

    def __init__(self, n: int, model: dict, width: int, classes: int):
        cfg = parse_config({"num_nodes": n, "num_rounds": 10 ** 6, "eval_every": 10 ** 6, "seed": 0,
                            "topology": {"graph": "ring"},
                            "data": {"dataset": "synthetic", "num_samples": max(4096, 32 * n),
                                     "num_features": width, "num_classes": classes, "test_samples": 16},
                            "model": model, "algorithm": {"name": "dsgd", "lr": 0.01, "batch_size": BATCH},
                            "divergence": {"enabled": False}})
        self.built = build(cfg)
        self.times: list[float] = []

    def seconds(self, repeats: int, rounds: int = 10) -> float:
        """Best mean round time over windows of ``rounds`` rounds, from one ``simulate`` call."""
        marks: list[float] = []

        class Stop(Exception):
            pass

        def on_round(round_, _row):
            marks.append(time.perf_counter())
            if len(marks) > rounds * repeats + 1:
                raise Stop

        try:
            simulate(self.built, on_round=on_round)
        except Stop:
            pass
        steps = np.diff(marks)
        return min(float(steps[i:i + rounds].mean()) for i in range(0, len(steps) - rounds + 1, rounds))


class HandRound:
    """The same round written directly against torch (the reference the engine is held to)."""

    def __init__(self, n: int, layout, classes: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.layout, self.n = layout, n
        self.sizes = [(o * i, o) for i, o in layout]
        p = sum(w + b for w, b in self.sizes)
        self.params = torch.randn(n, p, generator=g) * 0.05
        self.grads = torch.empty_like(self.params)
        self.out = torch.empty_like(self.params)
        per_node = 32
        self.x = torch.randn(n * per_node, layout[0][0], generator=g)
        self.y = torch.randint(0, classes, (n * per_node,), generator=g)
        self.base = (torch.arange(n) * per_node)[:, None]
        self.g = g
        W = sp.csr_array(metropolis_hastings_weights(cycle_graph(n)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.W = torch.sparse_csr_tensor(torch.from_numpy(W.indptr.astype(np.int64)),
                                             torch.from_numpy(W.indices.astype(np.int64)),
                                             torch.from_numpy(W.data.astype(np.float32)), size=W.shape)

    def __call__(self) -> None:
        n, params, grads = self.n, self.params, self.grads
        pick = self.base + torch.randint(0, 32, (n, BATCH), generator=self.g)
        h, y = self.x[pick], self.y[pick]
        views, inputs, start = [], [], 0
        for k, ((fan_in, fan_out), (nw, nb)) in enumerate(zip(self.layout, self.sizes)):
            w = params[:, start:start + nw].view(n, fan_out, fan_in)
            b = params[:, start + nw:start + nw + nb].view(n, 1, fan_out)
            views.append((start, nw, nb, w))
            inputs.append(h)
            h = torch.baddbmm(b, h, w.transpose(1, 2))
            if k < len(self.layout) - 1:
                h.clamp_(min=0)
            start += nw + nb
        lse = torch.logsumexp(h, -1, keepdim=True)
        self.loss = float((lse - h.gather(-1, y.unsqueeze(-1))).mean())  # the round's reported loss
        dz = h.sub_(lse).exp_()
        dz.scatter_add_(-1, y.unsqueeze(-1), torch.full((n, BATCH, 1), -1.0))
        dz.mul_(1.0 / BATCH)
        for k in range(len(self.layout) - 1, -1, -1):
            start, nw, nb, w = views[k]
            fan_in, fan_out = self.layout[k]
            torch.bmm(dz.transpose(1, 2), inputs[k], out=grads[:, start:start + nw].view(n, fan_out, fan_in))
            torch.sum(dz, 1, out=grads[:, start + nw:start + nw + nb])
            if k:
                dz = torch.bmm(dz, w).mul_(inputs[k] > 0)
        params.add_(grads, alpha=-0.01)
        torch.addmm(params, self.W, params, beta=0.0, out=self.out)
        self.params, self.out = self.out, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(set_threads(args.threads))
    keep_freed_memory(True)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    big_x, big_y = torch.randn(2 ** 26), torch.randn(2 ** 26)
    mm_rate = 2 * 1024 ** 3 / best_time(lambda: torch.mm(a, b), args.repeats)
    bandwidth = 3 * 4 * 2 ** 26 / best_time(lambda: big_x.add_(big_y), args.repeats)
    print(f"square mm roof {mm_rate / 1e9:.1f} GFLOP/s; in-place add {bandwidth / 1e9:.1f} GB/s")
    print("| model | N | engine ms | hand-written ms | engine / hand | products floor ms | memory floor ms | "
          "engine GFLOP/s | % of roof (products + memory) | % of square-mm roof |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, model, width, classes, counts in CASES:
        layout = layout_of(width, model.get("hidden", []), classes)
        for n in counts:
            engine, hand = EngineRound(n, model, width, classes), HandRound(n, layout, classes)
            t_engine, t_hand, t_products = [], [], []
            for _ in range(2):  # interleaved: each sees the same machine
                t_engine.append(engine.seconds(args.repeats))
                t_hand.append(best_time(hand, args.repeats))
                t_products.append(product_floor(layout, n, args.repeats))
            te, th, tp = min(t_engine), min(t_hand), min(t_products)
            tm = elementwise_bytes(layout, n) / bandwidth
            flops = round_flops(layout, n)
            print(f"| {label} | {n:,} | {te * 1e3:.2f} | {th * 1e3:.2f} | {te / th:.2f}x | {tp * 1e3:.2f} | "
                  f"{tm * 1e3:.2f} | {flops / te / 1e9:.1f} | {100 * (tp + tm) / te:.0f}% | "
                  f"{100 * flops / mm_rate / te:.0f}% |", flush=True)

if __name__ == "__main__":
    main()
