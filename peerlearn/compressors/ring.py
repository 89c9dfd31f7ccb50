"""A ring all-reduce of quantized messages: every hop decodes, adds its own chunk and encodes again.

Compressed rows cannot be summed on the way by a plain ring all-reduce, so peerlearn all-gathers them
(:meth:`~peerlearn.engines.comm.SimComm.all_reduce_mean`): ``N - 1`` encoded messages per node, which only pays
for ratios far below ``2 / N``. A quantizer can instead ride the ring itself, as INTELLECT-1 does with int8
pseudo-gradients: the vector is cut into ``N`` chunks; in the reduce-scatter phase each node, ``N - 1`` times,
encodes the partial sum of one chunk, sends it to the next node on the ring, which decodes it and adds its own
chunk; in the all-gather phase the node that holds a chunk's full sum encodes it once and it is forwarded
around the ring unchanged. Each node sends ``2 (N - 1)`` messages of ``P / N`` quantized coordinates, the dense
ring's ``2 (N - 1) / N`` rows at the quantizer's width, and every node ends with the same decoded sum. The price
is the quantization error of every hop, which is simulated here exactly, hop by hop; no error feedback applies
(the error is made on partial sums, not on any one node's message).

References:
    Jaghouar et al., "INTELLECT-1 Technical Report", 2024 (int8 ring all-reduce of DiLoCo's pseudo-gradients);
    Patarasuk & Yuan, "Bandwidth Optimal All-reduce Algorithms for Clusters of Workstations", JPDC 2009 (the
    ring all-reduce).
"""

from __future__ import annotations

from typing import Any

import torch

from peerlearn.compressors.base import Compressor
from peerlearn.types import Tensor


def ring_all_reduce(rows_KP: Tensor, compressor: Compressor, state: Any) -> tuple[Tensor, Tensor, Any]:
    """The mean of the ``K`` rows as every node holds it after a ring all-reduce of encoded chunks (module doc),
    the bytes each row's node sent, and the compressor's next state. Node ``k`` sends to node ``k + 1 mod K``."""
    k, p = rows_KP.shape
    if k == 1:
        return rows_KP[0].clone(), torch.zeros(1, dtype=torch.float64), state
    size = -(-p // k)  # chunk length; the last chunks are padded with zeros (not sent)
    chunks = torch.zeros(k, k * size, dtype=rows_KP.dtype)
    chunks[:, :p] = rows_KP
    chunks = chunks.view(k, k, size)  # [node, chunk, coordinate]
    lengths = (p - size * torch.arange(k)).clamp(0, size)  # real coordinates in each chunk
    nodes = torch.arange(k)
    sent = torch.zeros(k, dtype=torch.float64)
    partial = chunks[nodes, nodes]  # node i starts with its own chunk i
    for step in range(k - 1):  # reduce-scatter: node i sends its partial of chunk (i - step) mod k
        held = (nodes - step) % k
        decoded, nbytes, state = compressor.update(partial, state)
        sent += _scaled(nbytes, lengths[held], size)
        partial = decoded.roll(1, 0) + chunks[nodes, (nodes - step - 1) % k]
    # node i now holds chunk (i + 1) mod k's sum; all-gather: encoded once, forwarded k - 1 times unchanged
    decoded, nbytes, state = compressor.update(partial, state)
    sent += (k - 1) * _scaled(nbytes, lengths[(nodes + 1) % k], size)
    total = torch.empty(k, size, dtype=rows_KP.dtype)
    total[(nodes + 1) % k] = decoded
    return total.reshape(-1)[:p] / k, sent, state


def _scaled(nbytes_K: Tensor, length_K: Tensor, size: int) -> Tensor:
    """Bytes of each message, its padding not counted (a padded chunk's encoding scaled to its real length)."""
    return nbytes_K.double() * length_K.double() / size if int(length_K.min()) < size else nbytes_K.double()


def ring_all_reduce_mean(comm, x_NP: Tensor, compressor: Compressor, state: Any) -> tuple[Tensor, Any]:
    """:func:`ring_all_reduce` over every live node's row on any engine: the rows travel by the engine's
    all-gather (counted here as the ring's messages, not as an all-gather) and every rank or peer computes the
    same ring; ``x_P`` and the compressor's next state."""
    rows, ids = comm.all_gather(x_NP, message_bytes=torch.zeros(x_NP.shape[0], dtype=torch.float64))
    if hasattr(comm, "latency_hops"):  # the all-gather counted N - 1 steps; a ring all-reduce takes 2 (N - 1)
        comm.latency_hops += max(len(ids) - 1, 0)
    mean, sent_K, state = ring_all_reduce(rows, compressor, state)
    mine = torch.arange(x_NP.shape[0]) if comm.node_ids is None else torch.as_tensor(comm.node_ids)
    pos = torch.searchsorted(ids, mine).clamp(max=len(ids) - 1)
    here = ids[pos] == mine
    comm.bytes_sent_N[here] += sent_K[pos[here]].to(comm.bytes_sent_N.dtype)
    return mean, state
