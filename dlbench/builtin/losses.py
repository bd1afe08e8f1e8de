"""Built-in losses: the training objective, per example (``dlbench_register_losses``).

Each factory takes the task's class count and returns ``loss(logits [B, C], y [B]) -> [B]``,
the per-example losses (no reduction): the loop takes their mean to train and their sum to report
``<split>_loss``.
"""

from __future__ import annotations

from typing import Annotated

from dlbench import Range, hookimpl
from dlbench.build import CrossEntropy
from dlbench.stacking import stackable


@hookimpl
def dlbench_register_losses(register):
    register("cross_entropy", stackable(cross_entropy))  # tensor work alone: stacks, graph-safe


def cross_entropy(num_classes: int, *, label_smoothing: Annotated[float, Range(ge=0, lt=1)] = 0.0):
    """Cross-entropy of the softmax of the logits, the default loss; with label smoothing eps
    (Szegedy et al. 2016) the target is (1 - eps) one-hot + eps / C (torch's ``F.cross_entropy``).

    ``label_smoothing = 0`` is plain cross-entropy, the loss of a study that sets none.
    """
    return CrossEntropy(label_smoothing)
