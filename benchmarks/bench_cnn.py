"""A FEMNIST-sized CNN (1.69M parameters): the simulator's batched round against a per-node ``nn.Module`` loop.

The model is decentralizepy's FEMNIST CNN (conv 5x5 1->32, max-pool, conv 5x5 32->64, max-pool, linear
3136->512, ReLU, linear 512->62) on 28x28 single-channel inputs, 62 classes. One round is one local SGD
step of batch 16 per node and Metropolis-Hastings gossip on a ring:

- *batched*: peerlearn's parts (``FlatModel`` parameters ``[N, P]``, the gradient path ``auto`` picks for a
  user's module, :class:`~peerlearn.engines.comm.SimComm` gossip), as a simulated run does them;
- *loop*: N ``nn.Module`` objects, each with its own ``torch.optim.SGD``, forward/backward/step one after
  the other, then gossip over their flattened parameters (what one-process-per-node frameworks pay per
  round, minus their messaging).

CPU seconds per round (``time.process_time``, best of three windows) with one intra-op thread, the two
interleaved in one process. The batched gradient is ``vmap`` (what ``auto`` picks for a user's module;
its activations fit the budget unchunked at these sizes).

Usage: ``.venv/bin/python benchmarks/bench_cnn.py [--nodes 16,64]``
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from _setup import set_threads
from peerlearn.engines.comm import SimComm
from peerlearn.models.functional import FlatModel, make_grad_fn
from peerlearn.resources import keep_freed_memory
from peerlearn.topology import cycle_graph, metropolis_hastings_weights

BATCH, CLASSES = 16, 62


def femnist_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * 7 * 7, 512), nn.ReLU(), nn.Linear(512, CLASSES))


def cpu_seconds(fn, repeats: int = 3, calls: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - start) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="16,64")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(set_threads(args.threads))
    keep_freed_memory(True)
    flat = FlatModel(femnist_cnn())
    print(f"parameters: {flat.num_params:,}")
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    mm_rate = 2 * 1024 ** 3 / cpu_seconds(lambda: torch.mm(a, b), calls=20)
    print(f"square mm roof {mm_rate / 1e9:.1f} GFLOP/s")
    print("| N | batched CPU s/round | loop CPU s/round | batched / loop | batched GFLOP/s | loop GFLOP/s | "
          "loop % of mm roof |")
    print("|---|---|---|---|---|---|---|")
    conv1 = 28 * 28 * 32 * 25
    macs = conv1 + 14 * 14 * 64 * 32 * 25 + 3136 * 512 + 512 * CLASSES
    flops_per_sample = 2 * (3 * macs - conv1)  # forward, weight and input gradients (none for the image)
    for n in (int(v) for v in args.nodes.split(",")):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, BATCH, 1, 28, 28, generator=g)
        y = torch.randint(0, CLASSES, (n, BATCH), generator=g)
        W = metropolis_hastings_weights(cycle_graph(n))
        comm = SimComm(W)
        grad_fn = make_grad_fn(flat, "vmap")
        params = [flat.init_params(n, seed=0, same_init=False)]

        def batched():
            _, grads = grad_fn(params[0], (x, y))
            params[0] = comm.mix(torch.add(params[0], grads, alpha=-0.05))

        modules = [femnist_cnn() for _ in range(n)]
        opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in modules]
        loss_fn = nn.CrossEntropyLoss()

        def loop():
            for i, (m, opt) in enumerate(zip(modules, opts)):
                opt.zero_grad()
                loss_fn(m(x[i]), y[i]).backward()
                opt.step()
            with torch.no_grad():
                mixed = comm.mix(torch.stack([flat.ravel(m) for m in modules]))
                for m, row in zip(modules, mixed):
                    torch.nn.utils.vector_to_parameters(row, m.parameters())

        t_batched, t_loop = [], []
        for _ in range(2):
            t_batched.append(cpu_seconds(batched))
            t_loop.append(cpu_seconds(loop))
        tb, tl = min(t_batched), min(t_loop)
        flops = n * BATCH * flops_per_sample
        print(f"| {n} | {tb:.3f} | {tl:.3f} | {tb / tl:.2f}x | {flops / tb / 1e9:.1f} | {flops / tl / 1e9:.1f} | "
              f"{100 * flops / tl / mm_rate:.0f}% |", flush=True)


if __name__ == "__main__":
    main()
