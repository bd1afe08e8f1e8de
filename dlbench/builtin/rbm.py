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

import inspect
from typing import Annotated, Literal

import torch
from torch import nn

from dlbench import Range, hookimpl, stackable
from dlbench.builtin import initializers
from dlbench.slots import hidden_blocks


@hookimpl
def dlbench_register_initializers(register):
    register("greedy_rbm", greedy_rbm)


def greedy_rbm_stacked(models, data, streams, **options) -> None:
    """:func:`greedy_rbm` for several members of a stack at once: at each depth the members'
    RBMs are one RBM with a member axis (weights [N, hidden, visible], batched products), each
    member drawing from its own stream what it draws alone, in the same order (its ``then``
    initialization, each epoch's data order, each Gibbs step's hidden states). A member ends
    where it would alone, up to the rounding of batched matrix products."""
    bound = inspect.signature(greedy_rbm).bind(None, None, **options)  # its options, checked as alone
    bound.apply_defaults()
    options = bound.arguments
    layers = []
    for i, model in enumerate(models):
        layers.append(_linear_layers(model))
        with streams.member(i):
            initializers.__dict__[options["then"]](model, data)
    device = data.x_train.device
    codes = data.x_train.flatten(1)  # the first RBM's inputs: one tensor for every member

    def sample(p):  # [N, B, H]: member i's hidden states from its own stream
        return torch.stack([torch.bernoulli(p[i], generator=streams.generator(i, device)) for i in range(len(models))])

    for depth in range(len(layers[0])):
        depth_layers = [member_layers[depth] for member_layers in layers]
        _check_feeds(depth_layers[0], codes.shape[-1], depth)
        rbm = RBM.stacked(depth_layers, gaussian=options["visible"] == "gaussian" and depth == 0)
        for _ in range(options["epochs"]):
            for batch in streams.epoch_batches(codes, options["batch_size"], per_member=depth > 0):  # [N, B, visible]
                rbm.contrastive_divergence(batch, options["k"], options["lr"], sample)
        rbm.write_back(depth_layers)
        codes = rbm.hidden_probabilities(codes)  # [N, n, H]: each member's own codes from here on


@stackable(stacked=greedy_rbm_stacked)
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
    layers = _linear_layers(model)
    initializers.__dict__[then](model, data)
    codes = data.x_train.flatten(1)
    for i, layer in enumerate(layers):
        _check_feeds(layer, codes.shape[1], i)
        rbm = RBM(layer, gaussian=visible == "gaussian" and i == 0)
        for _ in range(epochs):
            for idx in torch.randperm(len(codes), device=codes.device).split(batch_size):
                rbm.contrastive_divergence(codes[idx], k, lr)
        rbm.write_back(layer)
        codes = rbm.hidden_probabilities(codes)


def _linear_layers(model: nn.Module) -> list[nn.Linear]:
    blocks = hidden_blocks(model)
    if blocks is None:
        raise ValueError(f"greedy_rbm needs an architecture that exposes hidden_blocks; {type(model).__name__} does not")
    return [_first_linear(block, i) for i, block in enumerate(blocks)]


def _check_feeds(layer: nn.Linear, inputs: int, i: int) -> None:
    if layer.in_features != inputs:
        raise ValueError(f"greedy_rbm: hidden block {i} takes {layer.in_features} inputs, but the previous "
                         f"RBM gives {inputs}: the blocks must feed each other (mlp, highway_mlp)")


def _first_linear(block: nn.Module, i: int) -> nn.Linear:
    for m in block.modules():
        if isinstance(m, nn.Linear):
            return m
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.RNNBase)):
            break
    raise ValueError(f"greedy_rbm: hidden block {i} does not start with a Linear layer "
                     f"({type(block).__name__}); RBMs pretrain fully connected layers (mlp, highway_mlp)")


class RBM:
    """A restricted Boltzmann machine whose weights start as a Linear layer's (W: [hidden, visible]),
    or several members' RBMs at once (:meth:`stacked`: W [N, hidden, visible], batches [N, B, visible])."""

    def __init__(self, layer: nn.Linear, gaussian: bool):
        with torch.no_grad():
            self.w = layer.weight.detach().clone()
            self.c = (layer.bias.detach().clone() if layer.bias is not None
                      else torch.zeros(layer.out_features, device=self.w.device))
        self.b = torch.zeros(layer.in_features, device=self.w.device)
        self.gaussian = gaussian

    @classmethod
    def stacked(cls, layers: list[nn.Linear], gaussian: bool) -> "RBM":
        rbms = [cls(layer, gaussian) for layer in layers]
        rbm = cls.__new__(cls)
        rbm.w, rbm.b, rbm.c = (torch.stack([getattr(r, name) for r in rbms]) for name in "wbc")
        rbm.gaussian = gaussian
        return rbm

    def hidden_probabilities(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(v @ self.w.mT + self.c.unsqueeze(-2))

    def visible_mean(self, h: torch.Tensor) -> torch.Tensor:
        mean = h @ self.w + self.b.unsqueeze(-2)
        return mean if self.gaussian else torch.sigmoid(mean)

    @torch.no_grad()
    def contrastive_divergence(self, v0: torch.Tensor, k: int, lr: float, sample=torch.bernoulli) -> None:
        """One CD-k update on the batch ``v0``, hidden states drawn by ``sample`` (nothing is read
        back from the device)."""
        p0 = self.hidden_probabilities(v0)
        h, vk, pk = sample(p0), v0, p0
        for _ in range(k):
            vk = self.visible_mean(h)
            pk = self.hidden_probabilities(vk)
            h = sample(pk)
        n = v0.shape[-2]
        self.w += lr * (p0.mT @ v0 - pk.mT @ vk) / n
        self.b += lr * (v0 - vk).mean(-2)
        self.c += lr * (p0 - pk).mean(-2)

    @torch.no_grad()
    def reconstruction_error(self, v: torch.Tensor) -> float:
        """Mean squared error of v against the mean reconstruction through the hidden probabilities."""
        return float(((self.visible_mean(self.hidden_probabilities(v)) - v) ** 2).mean())

    @torch.no_grad()
    def write_back(self, layers: nn.Linear | list[nn.Linear]) -> None:
        """Copy W and c into the layer (a stacked RBM: member i's into ``layers[i]``)."""
        if isinstance(layers, nn.Linear):
            layers, w, c = [layers], self.w[None], self.c[None]
        else:
            w, c = self.w, self.c
        for layer, wi, ci in zip(layers, w, c):
            layer.weight.copy_(wi)
            if layer.bias is not None:
                layer.bias.copy_(ci)
