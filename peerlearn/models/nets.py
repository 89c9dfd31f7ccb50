"""Model definitions: logistic regression, MLP and a small CNN. Plain modules, no state beyond weights."""

from __future__ import annotations

import math

from torch import nn


class LogisticRegression(nn.Sequential):
    """Multinomial logistic regression: one linear layer on the flattened input."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


class MLP(nn.Sequential):
    """Fully connected ReLU network on the flattened input."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] = (64,)):
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        super().__init__(*layers, nn.Linear(width, num_classes))


class CNN(nn.Sequential):
    """Two 3x3 conv + ReLU + 2x2 max-pool blocks, then a linear classifier (LeNet-like)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: tuple[int, int] = (16, 32)):
        if len(input_shape) != 3:
            raise ValueError(f"model.name=cnn needs image-shaped inputs (C, H, W); this dataset gives {input_shape}")
        c, h, w = input_shape
        if min(h, w) < 4:
            raise ValueError(f"model.name=cnn needs images of at least 4x4, got {h}x{w}")
        super().__init__(
            nn.Conv2d(c, channels[0], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(channels[1] * (h // 4) * (w // 4), num_classes),
        )


MODELS = {"logreg": LogisticRegression, "mlp": MLP, "cnn": CNN}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"model.name: unknown model {name!r}; allowed: {', '.join(MODELS)}")
    return MODELS[name](input_shape, num_classes, **kwargs)
