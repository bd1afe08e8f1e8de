"""A stack's training step, eagerly or replayed from a CUDA graph (``dlbench run --cuda-graphs``).

A step of a small stacked model is a few hundred tiny kernel launches, and on a GPU the Python
and launch overhead of issuing them costs more than the kernels. A CUDA graph records the
launches of one step once and replays them as one: the same kernels on the same memory, so a
replayed step computes what the eager step computes, bit for bit (random draws included: they
come from torch's default generator, whose state a replay advances as the eager step would).

What a step does is two functions of static inputs: ``grads(idx)`` (the batch gather, the
forward pass, the loss and the backward pass) and ``update(lr)`` (the optimizer and the
regularizers' steps). :class:`GraphedStep` runs them eagerly for the first steps after the stack
is (re)built: they create the optimizer's state and warm up the autograd engine, which a
capture must not do. Then it captures one graph per batch shape (the last batch of an epoch is
smaller) and replays it, copying the step's batch indices and learning rates into the graph's
input tensors. A step whose gradients an observer reads (diagnostics) runs eagerly, so the
observer sees them before the update, as without graphs. When the stack changes (a member
leaves) the graphs are dropped and captured again.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Callable

import torch

from dlbench.regularizer import StackedRegularizer, overrides

WARMUP = 3  # eager steps after a (re)build before a capture; PyTorch's docs use 3 on a side stream
CUDA_GRAPHS = ("auto", "on", "off")
# `--cuda-graphs auto`: graphs where they are possible (a CUDA device, graph-safe components).
# Measured on an H100 (benchmarks/stacking.py on a GPU times the stack both ways; README,
# "Measured figures"): 5.8x faster for a stack of 8 default MLPs, 2.8x for 50, bit-identical.
AUTO_ON_CUDA = True


def graphs_wanted(setting: str, device: torch.device) -> bool:
    """Whether ``--cuda-graphs setting`` asks for graphs on ``device`` (before the components'
    say: :func:`why_not_graphed`)."""
    if setting not in CUDA_GRAPHS:
        raise ValueError(f"cuda_graphs must be one of {', '.join(CUDA_GRAPHS)}, not {setting!r}")
    return device.type == "cuda" and (setting == "on" or (setting == "auto" and AUTO_ON_CUDA))


def why_not_graphed(optimizer, regularizers) -> str:
    """Why a stack's step cannot be captured ("" when it can): a component that did not
    declare itself graph-safe runs Python in its step that a replay would skip."""
    if not getattr(type(optimizer), "graph_safe", False):
        return f"its stacked optimizer {type(optimizer).__name__} does not declare graph_safe = True"
    for reg in regularizers:
        if not regularizer_graph_safe(reg):
            return f"its stacked regularizer {type(reg).__name__} does not declare graph_safe = True"
    return ""


def regularizer_graph_safe(reg) -> bool:
    """Whether a stacked regularizer's step may be captured: declared graph-safe, or doing
    nothing inside a step (acting between epochs only)."""
    in_step = ("transform_batch", "penalty", "before_step", "after_step")
    return getattr(type(reg), "graph_safe", False) or not overrides(type(reg), StackedRegularizer, *in_step)


class GraphedStep:
    """Runs ``grads(idx)`` then ``update(lr)`` for each training step of a stack: eagerly, or
    replayed from a CUDA graph captured per batch shape when ``enabled``.

    ``capture`` makes a graph from a function (a test on a CPU passes one that records the
    function and calls it on replay, to check what is copied in and when graphs are dropped).
    """

    def __init__(self, grads: Callable[[torch.Tensor], None], update: Callable[[torch.Tensor], None],
                 enabled: bool, capture: Callable | None = None):
        self.grads, self.update, self.enabled = grads, update, enabled
        self.capture = capture or _cuda_capture
        self.replays = self.captures = 0
        self.reset()

    def reset(self) -> None:
        """The stack changed (members left, weights reloaded): capture again after a warm-up."""
        self.graphs: dict[tuple, tuple] = {}
        self.eager = 0

    def __call__(self, idx: torch.Tensor, lr: torch.Tensor, observe: Callable[[], None] | None = None) -> None:
        shape = tuple(idx.shape)
        if observe is not None or not self.enabled or (shape not in self.graphs and self.eager < WARMUP):
            self._eager(idx, lr, observe)
            return
        if shape not in self.graphs:
            static_idx, static_lr = idx.clone(), lr.clone()
            try:
                graph = self.capture(lambda: (self.grads(static_idx), self.update(static_lr)))
            except Exception as exc:  # a component broke its graph-safe promise: run eagerly from now on
                warnings.warn(f"CUDA graphs turned off for this stack: the capture failed ({exc})", stacklevel=2)
                self.enabled = False
                self._eager(idx, lr, observe)
                return
            self.graphs[shape] = (graph, static_idx, static_lr)
            self.captures += 1
        graph, static_idx, static_lr = self.graphs[shape]
        static_idx.copy_(idx)
        static_lr.copy_(lr)
        graph.replay()
        self.replays += 1

    def _eager(self, idx, lr, observe) -> None:
        stream = _side_stream(idx) if self.enabled and self.eager < WARMUP else None
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            self.grads(idx)
            if observe is not None:
                observe()
            self.update(lr)
        if stream is not None:
            torch.cuda.current_stream(idx.device).wait_stream(stream)
        self.eager += 1


def _cuda_capture(step: Callable[[], object]):
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def _side_stream(like: torch.Tensor):
    """The warm-up's stream, as PyTorch's whole-network capture example has it (none off CUDA)."""
    if like.device.type != "cuda":
        return None
    stream = torch.cuda.Stream(like.device)
    stream.wait_stream(torch.cuda.current_stream(like.device))
    return stream

