"""The units of work one after another in this process (``--jobs 1``): the dataset is built
once and stays on the device for all of them."""

from __future__ import annotations

import torch

from dlbench.datacache import DataCache
from dlbench.diagnostics import Diagnostics
from dlbench.execution.pool import Pool
from dlbench.execution.unit import execute
from dlbench.planning import Work
from dlbench.plugins import Plugins


class InlinePool(Pool):
    """Trains in this process, on ``device``, with ``options``' data folder, checkpoints and
    CUDA graphs (:class:`dlbench.settings.RunOptions`)."""

    in_process = True

    def __init__(self, plugins: Plugins, device: torch.device, options):
        self.plugins, self.device, self.options = plugins, device, options
        self.cache = DataCache(options.data_dir)

    @property
    def description(self) -> str:
        return ""

    def prestart(self, works: list[Work]) -> list[Work]:
        return []  # this process trains only once the study run is open

    def run(self, queue, observers: list, on_result, claim=lambda work: work, stop=lambda: False) -> None:
        """See :meth:`Pool.run`. The observers and the training diagnostics are registered as
        plugins while it runs (in a worker, the diagnostics run next to the model, then the
        events go to the observers: the same order here)."""
        pm, options = self.plugins.pm, self.options
        names = [f"dlbench.observer.{i}" for i in range(len(observers))]
        pm.register(Diagnostics(self.plugins.hook, self.plugins.registry), name="dlbench.diagnostics")
        for name, observer in reversed(list(zip(names, observers))):  # pluggy calls the last registered first
            pm.register(observer, name=name)
        try:
            while (work := queue.next()) is not None:
                if (work := claim(work)) is None:
                    continue
                for trial, result in execute(work, self.plugins.registry, self.plugins.hook, self.cache, self.device,
                                             options.checkpoint_dir, options.checkpoint_every, options.cuda_graphs):
                    on_result(trial, result)
                if stop():
                    break
        finally:
            for name in [*names, "dlbench.diagnostics"]:
                pm.unregister(name=name)

    def close(self, now: bool = False) -> None:
        pass  # nothing of its own runs
