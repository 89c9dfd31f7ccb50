"""Per-node mini-batch sampling into stacked tensors ``[R, B, ...]``."""

from __future__ import annotations

import numpy as np
import torch

from peerlearn.device import draw, from_host
from peerlearn.types import Batch, Tensor


class NodeSampler:
    """Draws each node's mini-batch uniformly with replacement from that node's own samples.

    All nodes are sampled in one vectorised gather, so a step for 4,096 nodes costs one
    indexing op. With-replacement sampling is the i.i.d. setting of D-SGD analyses.
    """

    def __init__(self, x: Tensor, y: Tensor, parts: list[np.ndarray], batch_size: int, seed: int,
                 poisoned_N: Tensor | None = None, poison=None, silent_N: Tensor | None = None,
                 crop_padding: int | None = None):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.crop_padding = crop_padding  # None: no augmentation; else random crop with this padding + flip
        self.sizes = torch.tensor([len(p) for p in parts], dtype=torch.float64)
        self.offsets = torch.tensor(np.concatenate([[0], np.cumsum([len(p) for p in parts])[:-1]]))
        self._sizes_N1, self._offsets_N1 = self.sizes[:, None], self.offsets[:, None]
        self.flat = from_host(np.concatenate(parts).astype(np.int64))
        self.generator = torch.Generator().manual_seed(seed)  # on the host: every device draws the same batches
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
        u = draw(torch.rand, self.num_nodes, self.batch_size, generator=self.generator, dtype=torch.float64)
        if rows is None:
            sizes, offsets = self._sizes_N1, self._offsets_N1
        else:  # draw for all nodes, keep some: the stream does not depend on `rows`
            sizes, offsets, u = self._sizes_N1[rows], self._offsets_N1[rows], u[rows]
        pick = self.flat[u.mul_(sizes).long().add_(offsets).clamp_(max=len(self.flat) - 1)]
        x, y = self.x[pick], self.y[pick]
        if self.crop_padding is not None:
            x = self._crop_flip(x, rows)
        if self.silent_N is not None:
            silent = self.silent_N if rows is None else self.silent_N[rows]
            y[silent] = -1
        if self.poisoned_N is not None:
            u_poison = draw(torch.rand, self.num_nodes, self.batch_size, generator=self.generator, dtype=torch.float64)
            bad = self.poisoned_N
            if rows is not None:
                u_poison, bad = u_poison[rows], bad[rows]
            if bool(bad.any()):
                x[bad], y[bad] = self.poison(x[bad], y[bad], u_poison[bad])
        return x, y

    def _crop_flip(self, x: Tensor, rows: Tensor | None) -> Tensor:
        """Random crop (zero padding ``crop_padding`` on each side, then an H x W window) and a horizontal flip
        with probability 1/2, drawn per sample from the sampler's generator for every node (so the stream
        does not depend on ``rows``, and a checkpoint restores it): the standard CIFAR augmentation
        (He et al. 2016), batched over all nodes in one gather."""
        p, (h, w) = self.crop_padding, x.shape[-2:]
        shifts = draw(torch.randint, 0, 2 * p + 1, (self.num_nodes, self.batch_size, 2), generator=self.generator)
        flips = draw(torch.rand, self.num_nodes, self.batch_size, generator=self.generator) < 0.5
        if rows is not None:
            shifts, flips = shifts[rows], flips[rows]
        lead, c = x.shape[:2], x.shape[2]
        padded = torch.nn.functional.pad(x.reshape(-1, c, h, w), (p, p, p, p))
        m = padded.shape[0]
        iy = shifts.reshape(m, 2)[:, 0, None] + torch.arange(h)
        ix = shifts.reshape(m, 2)[:, 1, None] + torch.arange(w)
        ix = torch.where(flips.reshape(m, 1), ix.flip(-1), ix)
        out = padded[torch.arange(m)[:, None, None, None], torch.arange(c)[None, :, None, None], iy[:, None, :, None],
                     ix[:, None, None, :]]
        return out.reshape(*lead, c, h, w)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
