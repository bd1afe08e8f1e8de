"""Built-in convolutional architectures: a LeNet-like CNN and a small ResNet, 1-D or 2-D by the input.

A 1-D signal ``(L,)`` is read as one channel of length L (1-D convolutions), a grayscale image
``(H, W)`` as one channel (2-D convolutions), a ``(C, H, W)`` image as C channels. A convolution
(course notes, "Convolution Layer") slides C_out filters of C_in x K (x K) over the input; each
output is w^T x + b over one K (x K) window through all C_in channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Literal

import torch
from torch import nn

from dlbench import Length, Range, hookimpl
from dlbench.builtin.architectures import hidden_layer
from dlbench.shapes import accepts
from dlbench.slots import Slot
from dlbench.stacking import stackable

CONV = {1: nn.Conv1d, 2: nn.Conv2d}
POOL = {"max": {1: nn.MaxPool1d, 2: nn.MaxPool2d}, "avg": {1: nn.AvgPool1d, 2: nn.AvgPool2d}}
Channels = Annotated[list[Annotated[int, Range(ge=1)]], Length(min=1)]


@hookimpl
def dlbench_register_architectures(register):
    register("cnn", cnn)
    register("resnet", resnet)


def channels_and_size(input_shape) -> tuple[int, tuple[int, ...]]:
    """(input channels, spatial size): ``(L,)`` -> (1, (L,)), ``(H, W)`` -> (1, (H, W)),
    ``(C, H, W)`` -> (C, (H, W))."""
    shape = tuple(input_shape)
    return (shape[0], shape[1:]) if len(shape) == 3 else (1, shape)


class ToChannels(nn.Module):
    """[B, L] -> [B, 1, L] and [B, H, W] -> [B, 1, H, W]; [B, C, H, W] unchanged."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.rank == 3 else x.unsqueeze(1)


def without_dropout(block: nn.Sequential) -> list[nn.Module]:
    return [m for m in block if not (isinstance(m, Slot) and m.role == "hidden")]


class CNN(nn.Module):
    """[conv -> norm slot -> activation -> dropout slot -> pooling] per entry of ``channels``,
    flatten, an optional dense hidden layer, a linear layer to the logits."""

    def __init__(self, input_shape, num_classes: int, activation: Callable[[], nn.Module], channels: list[int],
                 kernel_size: int, pooling: str, pool_size: int, width: int, bias: bool):
        super().__init__()
        c_in, size = channels_and_size(input_shape)
        dims = len(size)
        self.input_slot = Slot("input")
        self.to_channels = ToChannels(len(input_shape))
        self.stages = nn.ModuleList()
        sizes = [size]
        for i, c in enumerate(channels):
            stage = [CONV[dims](c_in, c, kernel_size, padding="same", bias=bias), Slot("norm", c, dims), activation(),
                     Slot("hidden", c, dims)]
            if pooling != "none":
                if min(size) < pool_size:
                    raise ValueError(_too_many_stages(input_shape, sizes, i, len(channels), pool_size))
                stage.append(POOL[pooling][dims](pool_size))
                size = tuple(s // pool_size for s in size)
                sizes.append(size)
            self.stages.append(nn.Sequential(*stage))
            c_in = c
        features = c_in * math.prod(size)
        self.dense = hidden_layer(features, width, activation, bias) if width else None
        self.head = nn.Linear(width or features, num_classes, bias=bias)

    @property
    def hidden_blocks(self) -> list[nn.Module]:
        """Each stage (the first reshaping the input batch to channels), then the dense layer,
        without their dropout slots."""
        blocks = [nn.Sequential(*([self.to_channels] if i == 0 else []), *without_dropout(stage))
                  for i, stage in enumerate(self.stages)]
        if self.dense is not None:
            blocks.append(nn.Sequential(nn.Flatten(), *self.dense[:3]))
        return blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.to_channels(self.input_slot(x))
        for stage in self.stages:
            x = stage(x)
        x = x.flatten(1)
        if self.dense is not None:
            x = self.dense(x)
        return self.head(x)


def _too_many_stages(input_shape, sizes, stage: int, stages: int, pool_size: int) -> str:
    path = " -> ".join(str(s if len(s) > 1 else s[0]) for s in sizes)
    return (f"{stages} pooling stages of size {pool_size} do not fit an input of shape {tuple(input_shape)}: "
            f"its size goes {path}, and stage {stage + 1} cannot pool a map of size {sizes[-1]}; give at most "
            f"{stage} entries in channels, a smaller pool_size, or pooling = \"none\"")


@stackable  # convolutions, pooling and elementwise activations: vmap batches them
@accepts(ranks=(1, 2, 3))
def cnn(input_shape, num_classes, activation, *, channels: Channels = [16, 32],
        kernel_size: Annotated[int, Range(ge=1)] = 5, pooling: Literal["max", "avg", "none"] = "max",
        pool_size: Annotated[int, Range(ge=2)] = 2, width: Annotated[int, Range(ge=0)] = 64,
        bias: bool = True) -> nn.Module:
    """Convolutional network, LeNet-like (LeCun et al. 1998, "Gradient-Based Learning Applied to Document Recognition").

    One stage per entry of ``channels``: a convolution with that many filters of ``kernel_size``
    (zero-padded to keep the size: "same"), a norm slot, the activation, a dropout slot, then
    ``pooling`` ("max", "avg" or "none") over windows of ``pool_size``; then the maps are
    flattened into a dense hidden layer of ``width`` units (0: none) and a linear layer to the
    logits. 1-D convolutions for ``(L,)`` signals, 2-D for ``(H, W)`` and ``(C, H, W)`` images.

    Options: ``channels`` [16, 32], ``kernel_size`` 5, ``pooling`` "max", ``pool_size`` 2,
    ``width`` 64, ``bias`` true. More stages than the input can be pooled for is an error before
    training. Hidden blocks: each stage, then the dense layer.
    """
    return CNN(input_shape, num_classes, activation, channels, kernel_size, pooling, pool_size, width, bias)


class BasicBlock(nn.Module):
    """He et al.'s basic block: y = act(norm(conv3x3(drop(act(norm(conv3x3(x)))))) + shortcut(x)),
    a dropout slot after each activation; the shortcut is the identity, or a strided 1x1
    convolution (with a norm slot) where the block halves the size or changes the channels."""

    def __init__(self, c_in: int, c_out: int, stride: int, dims: int, activation: Callable[[], nn.Module],
                 bias: bool):
        super().__init__()
        self.branch = nn.Sequential(
            CONV[dims](c_in, c_out, 3, stride=stride, padding=1, bias=bias), Slot("norm", c_out, dims), activation(),
            Slot("hidden", c_out, dims), CONV[dims](c_out, c_out, 3, padding=1, bias=bias), Slot("norm", c_out, dims))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            CONV[dims](c_in, c_out, 1, stride=stride, bias=bias), Slot("norm", c_out, dims))
        self.out = nn.Sequential(activation(), Slot("hidden", c_out, dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.branch(x) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv3x3 -> basic blocks by stage (each later stage halves the size) -> global average
    pooling -> linear layer to the logits."""

    def __init__(self, input_shape, num_classes: int, activation: Callable[[], nn.Module], channels: list[int],
                 blocks: int, bias: bool):
        super().__init__()
        c_in, size = channels_and_size(input_shape)
        dims = len(size)
        self.input_slot = Slot("input")
        self.to_channels = ToChannels(len(input_shape))
        self.stem = nn.Sequential(CONV[dims](c_in, channels[0], 3, padding=1, bias=bias), Slot("norm", channels[0], dims),
                                  activation(), Slot("hidden", channels[0], dims))
        self.blocks = nn.ModuleList()
        c_in = channels[0]
        for i, c in enumerate(channels):
            stride = 1 if i == 0 else 2
            if stride == 2 and min(size) < 2:
                raise ValueError(f"{len(channels)} stages do not fit an input of shape {tuple(input_shape)}: each "
                                 f"stage after the first halves its size, and stage {i + 1} cannot halve a map of "
                                 f"size {size}; give at most {i} entries in channels")
            size = tuple((s - 1) // stride + 1 for s in size)
            for j in range(blocks):
                self.blocks.append(BasicBlock(c_in, c, stride if j == 0 else 1, dims, activation, bias))
                c_in = c
        self.head = nn.Linear(c_in, num_classes, bias=bias)

    @property
    def hidden_blocks(self) -> list[nn.Module]:
        """The stem (reshaping the input batch to channels, without its dropout slot), then every
        basic block whole."""
        return [nn.Sequential(self.to_channels, *self.stem[:3]), *self.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.to_channels(self.input_slot(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x.flatten(2).mean(2))  # global average pooling


@stackable  # convolutions, additions and a mean: vmap batches them
@accepts(ranks=(1, 2, 3))
def resnet(input_shape, num_classes, activation, *, channels: Channels = [16, 32, 64],
           blocks: Annotated[int, Range(ge=1)] = 1, bias: bool = True) -> nn.Module:
    """Small residual network with basic blocks (He et al. 2016, "Deep Residual Learning for Image Recognition").

    A 3x3 convolution to ``channels[0]`` (norm slot, activation, dropout slot), then per entry
    of ``channels`` a stage of ``blocks`` basic blocks y = act(F(x) + shortcut(x)), F two 3x3
    convolutions with a norm slot after each and the activation (and a dropout slot) between;
    every stage after the first starts with stride 2 (half the size) and a 1x1 projection
    shortcut, the others keep the identity shortcut; then global average pooling and a linear
    layer to the logits. 1-D convolutions for ``(L,)`` signals, 2-D for images.

    Options: ``channels`` per stage [16, 32, 64], ``blocks`` per stage 1 (3 stages of 3 blocks
    is the paper's ResNet-20), ``bias`` of the convolutions and the head true (the paper has
    none beside batch normalization). Hidden blocks: the stem, then each basic block.
    """
    return ResNet(input_shape, num_classes, activation, channels, blocks, bias)
