"""Engines own the round loop: the batched simulator (synchronous rounds), the event engine
(asynchronous algorithms) and the distributed engine (torch.distributed ranks).

:func:`simulate` runs a built run on this machine with the engine its algorithm needs.
"""

from __future__ import annotations


def simulate(built, on_eval=None, on_round=None, on_finish=None, on_checkpoint=None, resume=None,
             on_scores=None, on_artifacts=None) -> list[dict]:
    """Run ``built`` (from :func:`peerlearn.build.build`) in this process to the end; returns the evaluated
    rows. Asynchronous algorithms (``capabilities.asynchronous``) run on the event engine, the others
    on the batched simulator; both take the same callbacks (see :func:`peerlearn.engines.simulator.simulate`).
    The run happens on ``built.device`` (:func:`peerlearn.device.scope`), deterministically with
    ``deterministic: true``."""
    from peerlearn.device import scope
    from peerlearn.engines import async_engine, simulator

    with scope(built.device, built.config.deterministic):
        if built.config.algorithm.capabilities.asynchronous:
            return async_engine.simulate_async(built, on_eval, on_round, on_finish, on_checkpoint, resume)
        return simulator.simulate(built, on_eval=on_eval, on_round=on_round, on_finish=on_finish,
                                  on_checkpoint=on_checkpoint, resume=resume, on_scores=on_scores,
                                  on_artifacts=on_artifacts)
