"""The field's larger models, through the same batched flat-parameter path as the small ones:
ResNet-8/20/32 in the CIFAR layout with GroupNorm, a small VGG-11, and a small decoder-only transformer
over character tokens.

Normalisation is GroupNorm (or LayerNorm): BatchNorm's running statistics are state outside the
parameters and do not survive averaging models (Hsieh et al. 2020); GroupNorm has none.

References:
    He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (ResNet; CIFAR
    layout: 3 stages of 16/32/64 channels, depth 6n + 2).
    Wu & He, "Group Normalization", ECCV 2018.
    Hsieh, Phanishayee, Mutlu & Gibbons, "The Non-IID Data Quagmire of Decentralized Machine Learning",
    ICML 2020 (GroupNorm instead of BatchNorm for decentralized training).
    Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015
    (VGG-11, configuration A).
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017; Radford et al., "Language Models are
    Unsupervised Multitask Learners", 2019 (pre-norm decoder-only blocks).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from peerlearn.models.base import MODELS, ModelSpec
from peerlearn.spec import Capabilities


def _image_shape(input_shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"model.name={name} needs image-shaped inputs (C, H, W); this dataset gives {input_shape}")
    return input_shape  # type: ignore[return-value]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a residual connection (a 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _norm(cout, groups)
        self.shortcut = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout, groups))

    def forward(self, x):
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for small images: a 3x3 stem, three stages of n blocks (width, 2 width, 4 width
    channels, stride 2 between stages), global average pooling, a linear classifier."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, depth: int = 20, width: int = 16,
                 groups: int = 2):
        super().__init__()
        c, _, _ = _image_shape(input_shape, "resnet")
        if (depth - 2) % 6:
            raise ValueError(f"model.depth: a CIFAR ResNet has depth 6n + 2 (8, 14, 20, 32, ...), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, 1, 1, bias=False), _norm(width, groups), nn.ReLU())
        blocks, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for k in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and k == 0 else 1, groups))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


VGG11 = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")  # configuration A, in units of `width` channels


class VGG11Small(nn.Sequential):
    """VGG-11 (configuration A) with ``width`` channels in the first layer instead of 64 (16: a sixteenth of
    the weights of each conv), GroupNorm after each conv, and a single linear classifier. A max-pool that
    would shrink the image below 1x1 is skipped, so small images (8x8 digits) work too."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16, groups: int = 2):
        c, h, w = _image_shape(input_shape, "vgg11")
        layers: list[nn.Module] = []
        for item in VGG11:
            if item == "M":
                if min(h, w) >= 2:
                    layers.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
            else:
                cout = item * width
                layers += [nn.Conv2d(c, cout, 3, padding=1), _norm(cout, groups), nn.ReLU()]
                c = cout
        super().__init__(*layers, nn.Flatten(), nn.Linear(c * h * w, num_classes))


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask, written with matmuls so that ``vmap`` batches it."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        attn = torch.softmax(scores.masked_fill(mask, float("-inf")), -1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PositionEmbedding(nn.Module):
    """A learned vector per position, added to the token embeddings (its own module, so that seeded
    re-initialisation of every layer covers it)."""

    def __init__(self, length: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(length, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, h):
        return h + self.weight


class CharTransformer(nn.Module):
    """A small decoder-only transformer over token windows ``[B, T]``: token and learned position
    embeddings, ``layers`` pre-norm blocks, a final LayerNorm and next-token logits from the last position
    (the task of the character GRU; the vocabulary is ``num_classes``)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, d_model: int = 64, layers: int = 2,
                 heads: int = 4, mlp_ratio: int = 4):
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(f"model.name=transformer needs sequences of tokens; this dataset gives {input_shape}")
        if d_model % heads:
            raise ValueError(f"model.d_model: {d_model} is not divisible by model.heads={heads}")
        self.embed = nn.Embedding(num_classes, d_model)
        self.position = PositionEmbedding(input_shape[0], d_model)
        self.blocks = nn.Sequential(*(Block(d_model, heads, mlp_ratio) for _ in range(layers)))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x):
        h = self.blocks(self.position(self.embed(x)))
        return self.head(self.ln(h[:, -1]))


@MODELS.register
class ResNetSpec(ModelSpec):
    """ResNet in the CIFAR layout (He et al. 2016) with GroupNorm (Wu & He 2018): depth 8, 14, 20, 32 ..."""

    name: Literal["resnet"] = "resnet"
    depth: int = Field(20, ge=8, le=110, description="6n + 2 layers: 8, 14, 20, 32, 44, 56, 110")
    width: PositiveInt = Field(16, le=256, description="channels of the first stage (then 2x and 4x)")
    norm_groups: PositiveInt = Field(2, le=65_536, description="GroupNorm groups (a divisor of each layer's channels is used)")
    capabilities: ClassVar = Capabilities(image=True)

    def build(self, input_shape, num_classes):
        return ResNetCifar(input_shape, num_classes, self.depth, self.width, self.norm_groups)


@MODELS.register
class VGG11Spec(ModelSpec):
    """VGG-11 (Simonyan & Zisserman 2015, configuration A), narrow: ``width`` channels first, GroupNorm."""

    name: Literal["vgg11"] = "vgg11"
    width: PositiveInt = Field(16, le=64, description="channels of the first conv (64 in the paper)")
    norm_groups: PositiveInt = Field(2, le=65_536, description="GroupNorm groups")
    capabilities: ClassVar = Capabilities(image=True)

    def build(self, input_shape, num_classes):
        return VGG11Small(input_shape, num_classes, self.width, self.norm_groups)


@MODELS.register
class TransformerSpec(ModelSpec):
    """A small decoder-only transformer over character tokens (Vaswani et al. 2017; pre-norm as in GPT-2)."""

    name: Literal["transformer"] = "transformer"
    d_model: PositiveInt = Field(64, le=4096, description="embedding width")
    layers: PositiveInt = Field(2, le=48, description="transformer blocks")
    heads: PositiveInt = Field(4, le=64, description="attention heads (must divide d_model)")
    mlp_ratio: PositiveInt = Field(4, le=16, description="MLP width as a multiple of d_model")
    capabilities: ClassVar = Capabilities(tokens=True)

    def build(self, input_shape, num_classes):
        return CharTransformer(input_shape, num_classes, self.d_model, self.layers, self.heads, self.mlp_ratio)
