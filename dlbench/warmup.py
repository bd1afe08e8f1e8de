"""Linear warm-up in front of any schedule: the core setting ``warmup_fraction``.

Goyal et al. 2017 ("Accurate, Large Minibatch SGD", sec. 2.2, gradual warm-up): the learning
rate ramps up linearly over the first steps. Here it multiplies whatever the trial's schedule
(built-in or third-party) sets: the rate of optimizer step k (0-based) is

    eps_k = min(1, (k + 1) / W) * s_k,    W = max(1, round(warmup_fraction * total steps)),

where s_k is the schedule's own rate at step k; from step W on the schedule alone sets it. The
schedule's clock is not delayed (``cosine``'s own ``warmup_fraction`` option is another thing:
it starts the cosine after its warm-up).
"""

from __future__ import annotations


class Warmup:
    """Wraps a trial's schedule object; the loop steps it (and tells it epoch ends) as the schedule.

    The schedule keeps seeing its own rate in the optimizer's parameter groups when it steps
    (a chainable scheduler multiplies the current rate), and the ramp is applied on top after.
    """

    def __init__(self, schedule, optimizer, steps: int):
        self.schedule, self.optimizer, self.steps = schedule, optimizer, steps
        self.k = 0  # optimizer steps taken
        self.own = [group["lr"] for group in optimizer.param_groups]  # the schedule's rates
        self._ramp()

    def _ramp(self) -> None:
        factor = min(1.0, (self.k + 1) / self.steps)
        for group, lr in zip(self.optimizer.param_groups, self.own):
            group["lr"] = lr * factor

    def _as_schedule(self, call) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.own):
            group["lr"] = lr
        call()
        self.own = [group["lr"] for group in self.optimizer.param_groups]
        self._ramp()

    def step(self) -> None:
        self.k += 1
        self._as_schedule(self.schedule.step)

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if hasattr(self.schedule, "epoch_end"):
            self._as_schedule(lambda: self.schedule.epoch_end(epoch, metrics))

    def state_dict(self) -> dict:
        return {"schedule": self.schedule.state_dict(), "k": self.k, "own": self.own}

    def load_state_dict(self, state: dict) -> None:
        self.schedule.load_state_dict(state["schedule"])
        self.k, self.own = state["k"], state["own"]
        self._ramp()


def warmup_steps(fraction: float, total_steps: int) -> int:
    """W for ``warmup_fraction`` = ``fraction`` (0: no warm-up)."""
    return max(1, round(fraction * total_steps)) if fraction > 0 else 0
