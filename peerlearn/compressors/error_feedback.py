"""Error feedback: compress the message plus what earlier compressions dropped, and keep the rest.

``c_t = C(e_t + v_t)``; ``e_{t+1} = e_t + v_t - c_t``. Whatever a biased compressor (top-k, sign)
drops is sent later instead of being lost.

References:
    Seide et al., "1-Bit Stochastic Gradient Descent and its Application to Data-Parallel
    Distributed Training of Speech DNNs", Interspeech 2014; Karimireddy et al., "Error Feedback Fixes
    SignSGD and other Gradient Compression Schemes", ICML 2019; Stich et al., "Sparsified SGD with
    Memory", NeurIPS 2018.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from peerlearn.compressors.base import Compressor
from peerlearn.types import Tensor


class ErrorFeedbackState(NamedTuple):
    residual_NP: Tensor
    inner: Any


def error_feedback(compressor: Compressor) -> Compressor:
    """Wrap ``compressor`` with a per-node residual memory."""

    def init(x_NP):
        return ErrorFeedbackState(torch.zeros_like(x_NP), compressor.init(x_NP))

    def update(x_NP, state):
        corrected = x_NP + state.residual_NP
        decoded, nbytes, inner = compressor.update(corrected, state.inner)
        return decoded, nbytes, ErrorFeedbackState(corrected - decoded, inner)

    return Compressor(init, update, unbiased=False)
