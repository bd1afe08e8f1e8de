"""Greedy layer-wise pretraining with restricted Boltzmann machines, as an initializer.

Hinton, Osindero & Teh 2006, "A Fast Learning Algorithm for Deep Belief Nets"; contrastive
divergence from Hinton 2002, "Training Products of Experts by Minimizing Contrastive
Divergence"; Gaussian visible units from Hinton & Salakhutdinov 2006. Each hidden Linear layer in
turn is the weight matrix of an RBM trained, unsupervised, on the previous RBM's hidden
probabilities (the first on the training inputs); supervised training then fine-tunes the
whole network. The course material names greedy layer-wise pretraining among the initializers;
``greedy_autoencoder`` (pretraining.py) is its autoencoder variant.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch import nn

from dlbench import Range, hookimpl
from dlbench.builtin import initializers


@hookimpl
def dlbench_register_initializers(register):
    register("greedy_rbm", greedy_rbm)


def greedy_rbm(
    model, data, *,
    epochs: Annotated[int, Range(ge=0)] = 5,
    lr: Annotated[float, Range(gt=0)] = 0.01,
    batch_size: Annotated[int, Range(ge=1)] = 64,
    k: Annotated[int, Range(ge=1)] = 1,
    visible: Literal["gaussian", "bernoulli"] = "gaussian",
    then: Literal["default", "xavier", "kaiming"] = "default",
) -> None:
    """Greedy layer-wise pretraining with RBMs and contrastive divergence CD-k (Hinton et al. 2006).

    ``then`` initializes the model first (the output layer keeps it). Each hidden block's first
    Linear layer (weight W, bias c) is then trained as an RBM for ``epochs`` over the training
    split in batches of ``batch_size``: with v0 a batch, p(h=1|v) = sigmoid(W v + c), the chain
    v0 -> h0 -> v1 -> ... -> vk (``k`` Gibbs steps, hidden states sampled, visible units at their
    mean), and the updates W += lr (p(h|v0)^T v0 - p(h|vk)^T vk) / B, b += lr mean(v0 - vk),
    c += lr mean(p(h|v0) - p(h|vk)). ``visible``: the first RBM's visible units are Gaussian
    (mean W^T h + b, unit variance: for real-valued, roughly standardized inputs such as MNIST-1D;
    the default) or Bernoulli (mean sigmoid(W^T h + b): inputs in [0, 1] such as pixels); later
    RBMs are Bernoulli-Bernoulli on the previous hidden probabilities. The RBM's visible bias b is
    then dropped; W and c become the layer's weight and bias. Suited to sigmoid networks (the RBM's
    hidden units are sigmoid units); every hidden block must start with a Linear layer fed by the
    previous block (mlp, highway_mlp).
    """
    blocks = getattr(model, "hidden_blocks", None)
    if blocks is None:
        raise ValueError(f"greedy_rbm needs an architecture that exposes hidden_blocks; {type(model).__name__} does not")
    layers = [_first_linear(block, i) for i, block in enumerate(blocks)]
    initializers.__dict__[then](model, data)
    codes = data.x_train.flatten(1)
    for i, layer in enumerate(layers):
        if layer.in_features != codes.shape[1]:
            raise ValueError(f"greedy_rbm: hidden block {i} takes {layer.in_features} inputs, but the previous "
                             f"RBM gives {codes.shape[1]}: the blocks must feed each other (mlp, highway_mlp)")
        rbm = RBM(layer, gaussian=visible == "gaussian" and i == 0)
        for _ in range(epochs):
            for idx in torch.randperm(len(codes), device=codes.device).split(batch_size):
                rbm.contrastive_divergence(codes[idx], k, lr)
        rbm.write_back(layer)
        codes = rbm.hidden_probabilities(codes)


def _first_linear(block: nn.Module, i: int) -> nn.Linear:
    for m in block.modules():
        if isinstance(m, nn.Linear):
            return m
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.RNNBase)):
            break
    raise ValueError(f"greedy_rbm: hidden block {i} does not start with a Linear layer "
                     f"({type(block).__name__}); RBMs pretrain fully connected layers (mlp, highway_mlp)")


class RBM:
    """A restricted Boltzmann machine whose weights start as a Linear layer's (W: [hidden, visible])."""

    def __init__(self, layer: nn.Linear, gaussian: bool):
        with torch.no_grad():
            self.w = layer.weight.detach().clone()
            self.c = (layer.bias.detach().clone() if layer.bias is not None
                      else torch.zeros(layer.out_features, device=self.w.device))
        self.b = torch.zeros(layer.in_features, device=self.w.device)
        self.gaussian = gaussian

    def hidden_probabilities(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(v @ self.w.T + self.c)

    def visible_mean(self, h: torch.Tensor) -> torch.Tensor:
        mean = h @ self.w + self.b
        return mean if self.gaussian else torch.sigmoid(mean)

    @torch.no_grad()
    def contrastive_divergence(self, v0: torch.Tensor, k: int, lr: float) -> float:
        """One CD-k update on the batch ``v0``; returns the squared reconstruction error of v1."""
        p0 = self.hidden_probabilities(v0)
        h, vk, pk = torch.bernoulli(p0), v0, p0
        error = None
        for step in range(k):
            vk = self.visible_mean(h)
            if step == 0:
                error = float(((vk - v0) ** 2).mean())
            pk = self.hidden_probabilities(vk)
            h = torch.bernoulli(pk)
        n = len(v0)
        self.w += lr * (p0.T @ v0 - pk.T @ vk) / n
        self.b += lr * (v0 - vk).mean(0)
        self.c += lr * (p0 - pk).mean(0)
        return error

    @torch.no_grad()
    def reconstruction_error(self, v: torch.Tensor) -> float:
        """Mean squared error of v against the mean reconstruction through the hidden probabilities."""
        return float(((self.visible_mean(self.hidden_probabilities(v)) - v) ** 2).mean())

    @torch.no_grad()
    def write_back(self, layer: nn.Linear) -> None:
        layer.weight.copy_(self.w)
        if layer.bias is not None:
            layer.bias.copy_(self.c)
