"""Per-node mini-batch sampling into stacked tensors ``[R, B, ...]``."""

from __future__ import annotations

import numpy as np
import torch

from peerlearn.types import Batch, Tensor


class NodeSampler:
    """Draws each node's mini-batch uniformly with replacement from that node's own samples.

    All nodes are sampled in one vectorised gather, so a step for 4,096 nodes costs one
    indexing op. With-replacement sampling is the i.i.d. setting of D-SGD analyses.
    """

    def __init__(self, x: Tensor, y: Tensor, parts: list[np.ndarray], batch_size: int, seed: int,
                 poisoned_N: Tensor | None = None, poison=None, silent_N: Tensor | None = None):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.sizes = torch.tensor([len(p) for p in parts], dtype=torch.float64)
        self.offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(p) for p in parts])[:-1]]))
        self.flat = torch.from_numpy(np.concatenate(parts).astype(np.int64))
        self.generator = torch.Generator().manual_seed(seed)
        self.num_nodes = len(parts)
        self.drawn_N = torch.zeros(self.num_nodes, dtype=torch.int64)  # mini-batches drawn per node (the clock's compute)
        # data poisoning: poison(x, y, u) -> (x, y) rewrites the batches of the nodes in poisoned_N
        self.poisoned_N, self.poison = poisoned_N, poison
        # nodes without data (relays): their batches carry label -1, which the loss weighs by zero
        self.silent_N = silent_N if silent_N is not None and bool(silent_N.any()) else None

    def next(self, rows: Tensor | None = None) -> Batch:
        if rows is None:
            self.drawn_N += 1
        else:
            self.drawn_N.index_add_(0, rows, torch.ones(len(rows), dtype=torch.int64))
        sizes = self.sizes if rows is None else self.sizes[rows]
        offsets = self.offsets if rows is None else self.offsets[rows]
        u = torch.rand(self.num_nodes, self.batch_size, generator=self.generator, dtype=torch.float64)
        if rows is not None:  # draw for all nodes, keep some: the stream does not depend on `rows`
            u = u[rows]
        pick = self.flat[(offsets[:, None] + (u * sizes[:, None]).long()).clamp(max=len(self.flat) - 1)]
        x, y = self.x[pick], self.y[pick]
        if self.silent_N is not None:
            silent = self.silent_N if rows is None else self.silent_N[rows]
            y[silent] = -1
        if self.poisoned_N is not None:
            u_poison = torch.rand(self.num_nodes, self.batch_size, generator=self.generator, dtype=torch.float64)
            bad = self.poisoned_N
            if rows is not None:
                u_poison, bad = u_poison[rows], bad[rows]
            if bool(bad.any()):
                x[bad], y[bad] = self.poison(x[bad], y[bad], u_poison[bad])
        return x, y

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
