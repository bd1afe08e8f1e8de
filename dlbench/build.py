"""A trial's parts from its config: the plugin components made, the model built and
initialized, the optimizer and its schedule (with warm-up). Shared by the training loop
(``train.py``), stacks (``train_stack.py``), the preflight and the plugin contract."""

from __future__ import annotations

import math
import random
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from dlbench.config import DEFAULT_LOSS
from dlbench.data import DeviceData
from dlbench.trial import Trial
from dlbench.warmup import Warmup, warmup_steps


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds the CPU and every CUDA device



def make(registry, kind: str, spec: dict, *args):
    """Call the factory registered as ``spec["name"]`` with the contract args and the options."""
    component = registry.get(kind, spec["name"])
    return component.factory(*args, **{k: v for k, v in spec.items() if k != "name"})


class CrossEntropy:
    """Cross-entropy of the softmax of the logits, per example; with ``label_smoothing`` eps the
    target is (1 - eps) one-hot + eps / C. Its :meth:`mean` and :meth:`sum` reduce inside torch's
    kernel, as the training loop always did: a trial of the default loss computes what it computed
    before losses were plugins, bit for bit (a mean of the per-example vector rounds differently)."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, reduction="none", label_smoothing=self.label_smoothing)

    def mean(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def sum(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, reduction="sum", label_smoothing=self.label_smoothing)


def mean_loss(loss, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The batch mean of ``loss``: its own ``mean`` when it has one, else the per-example mean."""
    reduce = getattr(loss, "mean", None)
    return reduce(logits, y) if callable(reduce) else loss(logits, y).mean()


def sum_loss(loss, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The sum of ``loss`` over a batch: its own ``sum`` when it has one, else the per-example sum."""
    reduce = getattr(loss, "sum", None)
    return reduce(logits, y) if callable(reduce) else loss(logits, y).sum()


def build_loss(config: dict, registry, num_classes: int):
    """The trial's loss, ``loss(logits [B, C], y [B]) -> [B]`` per-example losses: the config's
    ``loss`` (plain cross-entropy when it has none, as it has none at the default)."""
    return make(registry, "loss", config.get("loss", DEFAULT_LOSS), num_classes)


def build(trial: Trial, registry, data: DeviceData, device: torch.device, blame=lambda *keys: nullcontext()):
    """Model (regularizers applied, initialized, on the device), regularizers, optimizer, schedule.

    ``blame(key)`` wraps each component's part of the build (``key``: the config key that set the
    component up, such as ``optimizer`` or ``regularizers[0]``); the preflight passes one that
    attributes an exception to its key (see ``preflight.py``).
    """
    model, regularizers = build_model(trial, registry, data, device, blame)
    with blame("initializer"):
        make(registry, "initializer", trial.config["initializer"], model, data)
    return model, regularizers, *build_optimizer(trial, registry, model, data, blame)


def build_model(trial: Trial, registry, data: DeviceData, device: torch.device, blame=lambda *keys: nullcontext()):
    """The first part of :func:`build`: the model (regularizers applied, on the device, not yet
    initialized by the trial's initializer) and the regularizers."""
    cfg = trial.config

    def activation():
        with blame("activation"):
            return make(registry, "activation", cfg["activation"])

    with blame("architecture"):
        model = make(registry, "architecture", cfg["architecture"], data.input_shape, data.num_classes, activation)
    regularizers = []
    for i, spec in enumerate(cfg["regularizers"]):
        with blame(f"regularizers[{i}]"):
            regularizers.append(make(registry, "regularizer", spec))
    for i, reg in enumerate(regularizers):
        with blame(f"regularizers[{i}]"):
            model = reg.wrap_model(model)
    with blame("architecture"):
        model.to(device)
    return model, regularizers


def build_optimizer(trial: Trial, registry, model, data: DeviceData, blame=lambda *keys: nullcontext()):
    """The last part of :func:`build`, after the initializer: the optimizer and the schedule."""
    cfg = trial.config
    with blame("optimizer"):
        optimizer = make(registry, "optimizer", cfg["optimizer"], model.parameters())
    steps = cfg["epochs"] * math.ceil(len(data.y_train) / cfg["batch_size"])
    with blame("schedule"):
        schedule = make(registry, "schedule", cfg["schedule"], optimizer, steps)
        warm = warmup_steps(cfg.get("warmup_fraction", 0.0), steps)  # a core setting, absent when 0
        if warm:
            schedule = Warmup(schedule, optimizer, warm)
    return optimizer, schedule
