"""The model family: a spec per architecture, ``build(input_shape, num_classes) -> nn.Module``.

Any ``torch.nn.Module`` can be a member. What the simulator needs of it:

- ``forward(x)`` maps a batch of the dataset's inputs ``[B, *input_shape]`` (float32, or int64 tokens)
  to logits ``[B, num_classes]``; the loss is cross-entropy;
- its state is its parameters: no buffers that training changes (BatchNorm's running statistics
  are not carried; use GroupNorm or LayerNorm), no randomness in ``forward`` beyond what a fixed
  seed gives (dropout is not supported);
- it works under ``torch.func.functional_call`` and ``vmap`` (every standard layer does; ``nn.GRU``
  and ``nn.LSTM`` do not batch over node models: step a cell, as :class:`~peerlearn.models.nets.CharGRU`).

All nodes' parameters live in one flat ``[N, P]`` tensor; the module is only a template.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from peerlearn.spec import Registry, Spec


class ModelSpec(Spec):
    """A model architecture: ``build(input_shape, num_classes) -> nn.Module``."""

    same_init: bool = Field(True, description="all nodes start from the same model")
    grad_strategy: Literal["auto", "dense", "vmap", "loop"] = Field(
        "auto", description="gradients of all nodes: dense (closed form, dense ReLU networks), one vmap, or a loop "
                            "over nodes; auto = dense where it applies, else vmap, over chunks of nodes when the "
                            "activations would exceed 2 GiB")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        raise NotImplementedError


MODELS = Registry("model", ModelSpec, "model.name", "model architectures (any torch.nn.Module)")
