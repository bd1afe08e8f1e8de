"""docs/plugins.md's example plugin exponential.py as it stood before the reshape (commit 8934433),
verbatim: it imports from the module paths of that time."""
from typing import Annotated

from torch.optim.lr_scheduler import LambdaLR

from dlbench import Range, hookimpl, stackable


@stackable  # the rate is a function of the step alone
def exponential(optimizer, total_steps, *,
                final_fraction: Annotated[float, Range(gt=0, le=1)] = 0.01) -> LambdaLR:
    """Exponential decay eps_k = eps_0 * f^(k / total_steps) (a continuous step decay).

    final_fraction (0 < f <= 1, default 0.01): the rate at the end of training, relative to eps_0.
    """
    return LambdaLR(optimizer, lambda k: final_fraction ** (k / max(1, total_steps)))


@hookimpl
def dlbench_register_schedules(register):
    register("exponential", exponential)
