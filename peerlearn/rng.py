"""Reproducible random streams: a fresh generator per (seed, step), so a draw depends only on the run's
seed and the round (or call) it belongs to, never on what was drawn before; a resumed run and every
rank of a distributed run draw the same numbers without carrying generator state."""

from __future__ import annotations

import torch


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of draw ``step`` in the stream ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


# Seed streams of a run: one fixed id per random part, so moving code never changes numbers.
STREAMS = {"partition": 1, "local_test": 2, "graph": 3, "fedavg": 4, "init": 5, "sampler": 6, "test_subset": 7,
           "byzantine": 8, "threat": 9, "schedule": 10, "server": 11, "modest": 12, "relays": 14, "crash": 15,
           "late": 16, "churn": 17, "faults": 18, "clock": 19, "async_net": 20, "compressor": 21, "share": 22, "privacy": 23,
           "spsa": 24, "eval_nodes": 25, "anarchic": 26, "anarchic_rounds": 27, "dimat": 28, "loss_delta": 29,
           "attribution": 30, "dice": 31, "attribution_loss_delta": 32, "sybilwall": 33, "bristle": 34, "bristle_explore": 35, "scool": 36, "distillation": 37, "distillation_rounds": 38,
           "eval_train": 39}


def stream_seed(seed: int, stream: int | str) -> int:
    """The seed of ``stream`` (an id of :data:`STREAMS`, or any other name: a plugin's own stream) of a run."""
    import zlib

    import numpy as np

    if isinstance(stream, str):
        stream = STREAMS.get(stream, 1000 + zlib.crc32(stream.encode()) % 1_000_000)
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])
