"""Dropout variants beside the inverted ``dropout``: DropConnect, dropout with test-time weight
scaling, and Monte Carlo dropout."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from dlbench import Range, hookimpl
from dlbench.regularizer import Regularizer, StackedRegularizer
from dlbench.slots import hidden_blocks, slots

Probability = Annotated[float, Range(ge=0, lt=1)]  # of dropping: 1 would drop everything
MC_EVAL_SEED = 0  # MC-dropout's evaluation masks: a fixed stream, apart from the trial's


@hookimpl
def dlbench_register_regularizers(register):
    register("dropconnect", DropConnect)
    register("dropout_test_scaling", DropoutTestScaling)
    register("mc_dropout", MCDropout)


def _fill_dropout_slots(name: str, model: nn.Module, p_input: float, p_hidden: float, layer) -> None:
    """Put ``layer(p)`` in the input slot (p_input) and every hidden slot (p_hidden)."""
    hidden, inputs = slots(model, "hidden"), slots(model, "input")
    if not hidden and not inputs:
        raise ValueError(f"{name}: {type(model).__name__} exposes no slots (dlbench.slots.Slot) to put dropout in")
    for s in inputs if p_input else []:
        s.fill(layer(p_input))
    for s in hidden if p_hidden else []:
        s.fill(layer(p_hidden))


# -- DropConnect ----------------------------------------------------------------------------------


class DropConnectLinear(nn.Linear):
    """An ``nn.Linear`` whose weights are dropped, each with probability ``p`` (a buffer, so a
    stack's members may differ), in training: y = x (M * W / (1-p))^T + b with M_ij ~
    Bernoulli(1-p), one mask per batch. At evaluation the full weights: y = x W^T + b."""

    def __init__(self, in_features: int, out_features: int, bias: bool, p: float):
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("p", torch.tensor(float(p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        mask = torch.rand_like(self.weight) >= self.p
        return F.linear(x, self.weight * mask / (1.0 - self.p), self.bias)

    def extra_repr(self) -> str:
        p = f"{self.p.item():g}" if self.p.device.type != "meta" else "?"
        return f"{super().extra_repr()}, drop_p={p}"


class DropConnect(Regularizer):
    """DropConnect (Wan et al. 2013, "Regularization of Neural Networks using DropConnect"; the
    course material: "could also drop edges"): drop individual weights, not units.

    Every ``nn.Linear`` inside the architecture's ``hidden_blocks`` becomes a
    :class:`DropConnectLinear` (still an ``nn.Linear``, so initializers find it): in training
    each weight is kept with probability 1-p, ``W~ = M * W / (1 - p)``, M_ij ~ Bernoulli(1-p),
    one mask per batch drawn from the global RNG. The scaling by 1/(1-p) at training time is the
    inverted scheme (as inverted dropout): E[W~] = W, so evaluation uses the full weights W. (The
    paper's own inference, a Gaussian moment-matching of the masked sums, is not used.) The output
    layer is left alone. Options: ``p`` (default 0.5, the paper's). Stacks: p is a buffer per
    member, each member draws its own masks.
    """

    def __init__(self, *, p: Probability = 0.5):
        self.p = p

    def wrap_model(self, model: nn.Module) -> nn.Module:
        blocks = hidden_blocks(model)
        targets = {id(m) for block in blocks or [] for m in block.modules() if type(m) is nn.Linear}
        if not targets:
            raise ValueError(f"dropconnect: {type(model).__name__} has no nn.Linear layer in its hidden_blocks "
                             "to drop weights of (DropConnect acts on fully connected hidden layers)")
        replaced: dict[int, DropConnectLinear] = {}
        for parent in list(model.modules()):  # every holder of a target (a block and any list of it)
            for name, child in list(parent.named_children()):
                if id(child) in targets:
                    if id(child) not in replaced:
                        replaced[id(child)] = DropConnectLinear(child.in_features, child.out_features,
                                                                child.bias is not None, self.p)
                    setattr(parent, name, replaced[id(child)])
        return model

    @classmethod
    def stacked(cls, members):
        return StackedRegularizer(members)  # the layers are in the model, p a buffer per member


# -- dropout with test-time weight scaling ----------------------------------------------------------


class ScaledDropout(nn.Module):
    """Non-inverted dropout: in training x * r with r ~ Bernoulli(1-p) (no rescaling); at
    evaluation x * (1-p), the expected training output. ``p`` is a buffer (stacks per member)."""

    def __init__(self, p: float):
        super().__init__()
        self.register_buffer("p", torch.tensor(float(p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x * (1.0 - self.p)
        return x * (torch.rand_like(x) >= self.p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():g}" if self.p.device.type != "meta" else "p=?"


class DropoutTestScaling(Regularizer):
    """Dropout with test-time weight scaling (Hinton et al. 2012; Srivastava et al. 2014, the
    original scheme; the course material's ``predict``: "scale the activations" by p_keep).

    Training: y~ = y * r, r ~ Bernoulli(1 - p) (units dropped with probability p, the rest left
    unscaled). Evaluation: y * (1 - p), so that for each unit the output at test time equals
    its expected output at training time. Equivalent in expectation to ``dropout`` (inverted:
    scaled by 1/(1-p) at training instead); the two differ in the learning dynamics the
    scale gives (a step sees activations 1/(1-p) smaller here). ``p_input`` (default 0.2) acts
    on the input slot, ``p_hidden`` (default 0.5) on every hidden slot. Stacks as ``dropout``.
    """

    def __init__(self, *, p_input: Probability = 0.2, p_hidden: Probability = 0.5):
        self.p_input, self.p_hidden = p_input, p_hidden

    def wrap_model(self, model: nn.Module) -> nn.Module:
        _fill_dropout_slots("dropout_test_scaling", model, self.p_input, self.p_hidden, ScaledDropout)
        return model

    def stack_key(self) -> object:
        return (self.p_input > 0, self.p_hidden > 0)  # which slots hold a dropout layer

    @classmethod
    def stacked(cls, members):
        return StackedRegularizer(members)  # p is a buffer per member


# -- Monte Carlo dropout ----------------------------------------------------------------------------


class MCDropoutModel(nn.Module):
    """A model whose evaluation averages ``samples`` stochastic forward passes.

    Training: the wrapped model as it is (dropout on). Evaluation: logits = log((1/T) sum_t
    softmax(f_t(x))), f_t with fresh dropout masks and everything else in eval mode (batch
    normalization uses its running statistics). The masks are drawn from a fork of the global
    RNG seeded with ``MC_EVAL_SEED``: evaluating twice gives the same result, and the trial's
    own random stream is left where it was (resume and reproduce are unchanged by evaluation).
    """

    def __init__(self, model: nn.Module, samples: int):
        super().__init__()
        self.model, self.samples = model, samples

    @property
    def hidden_blocks(self):  # for layer-wise initializers, as the wrapped architecture has them
        return self.model.hidden_blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.model(x)
        dropouts = [m for m in self.model.modules() if isinstance(m, nn.Dropout)]
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=x.device.type):
            if x.device.type == "cuda":
                with torch.cuda.device(x.device):
                    torch.cuda.manual_seed(MC_EVAL_SEED)
            else:
                torch.default_generator.manual_seed(MC_EVAL_SEED)
            for m in dropouts:
                m.train()
            try:
                log_probs = torch.stack([F.log_softmax(self.model(x), dim=-1) for _ in range(self.samples)])
            finally:
                for m in dropouts:
                    m.eval()
        return torch.logsumexp(log_probs, dim=0) - math.log(self.samples)


class MCDropout(Regularizer):
    """Monte Carlo dropout (Gal & Ghahramani 2016, "Dropout as a Bayesian Approximation"; the
    course material: "do many forward passes with different dropout masks, average all
    predictions").

    Training as ``dropout`` (inverted: units zeroed with probability p, the rest scaled by
    1/(1-p); ``p_input`` default 0.2 on the input slot, ``p_hidden`` default 0.5 on every
    hidden slot). Evaluation keeps dropout on and predicts p(y|x) = (1/T) sum_t softmax(f_t(x))
    over T = ``samples`` (default 20) masks; the model returns log p(y|x) as its logits, so the
    cross-entropy and the accuracy are those of the averaged prediction. The evaluation masks
    come from a fixed seed (``MC_EVAL_SEED``), apart from the trial's random stream:
    evaluation is deterministic (the masks an example gets depend on its place in the evaluated
    batch, as with any fixed stream: the same data evaluated in the same chunks gives the same
    metrics). Does not stack (the evaluation's own random stream).
    """

    def __init__(self, *, p_input: Probability = 0.2, p_hidden: Probability = 0.5,
                 samples: Annotated[int, Range(ge=1)] = 20):
        self.p_input, self.p_hidden, self.samples = p_input, p_hidden, samples

    def wrap_model(self, model: nn.Module) -> nn.Module:
        _fill_dropout_slots("mc_dropout", model, self.p_input, self.p_hidden, nn.Dropout)
        return MCDropoutModel(model, self.samples)
