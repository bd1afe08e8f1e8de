"""What a process that trains units of work needs: the plugins, the data cache, the device.

The parent builds a :class:`WorkerSetup` once (:func:`worker_setup`); each worker, local or a
Ray task's, rebuilds the parent's world from it (:func:`load_world`) and warms it up
(:func:`warm_up`) while the parent opens the tracking store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dlbench.datacache import DataCache
from dlbench.determinism import set_determinism
from dlbench.diagnostics import Diagnostics
from dlbench.plugins import Plugins, load_plugins
from dlbench.trial import Trial, canonical_json


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to rebuild the parent's world: plugins, data, determinism, checkpoints."""

    plugins_dir: str | None
    plugins_dir_required: bool
    autoload: bool
    data_dir: str | None
    deterministic: bool
    threads: int
    checkpoint_dir: str | None
    checkpoint_every: float
    cuda_graphs: str = "auto"

    @property
    def checkpoints(self) -> Path | None:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else None


def worker_setup(plugins: Plugins, options, threads: int) -> WorkerSetup:
    """The setup for workers of a run with ``options`` (:class:`dlbench.settings.RunOptions`),
    with absolute paths (a Ray worker does not start in this directory)."""
    def absolute(path) -> str | None:
        return str(Path(path).resolve()) if path else None

    return WorkerSetup(plugins_dir=absolute(plugins.plugins_dir), plugins_dir_required=plugins.required_dir,
                       autoload=plugins.autoload, data_dir=absolute(options.data_dir),
                       deterministic=options.deterministic, threads=threads,
                       checkpoint_dir=absolute(options.checkpoint_dir), checkpoint_every=options.checkpoint_every,
                       cuda_graphs=options.cuda_graphs)


def load_world(setup: WorkerSetup, device: torch.device) -> tuple[Plugins, DataCache]:
    """A worker's plugins (the training diagnostics registered) and data cache, with ``setup``'s
    threads and determinism on ``device``: built once by every worker, local or a Ray task's."""
    torch.set_num_threads(setup.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    set_determinism(setup.deterministic, device)
    plugins = load_plugins(Path(setup.plugins_dir) if setup.plugins_dir else None, autoload=setup.autoload,
                           required_dir=setup.plugins_dir_required, quiet=True)  # the parent warned already
    plugins.pm.register(Diagnostics(plugins.hook, plugins.registry), name="dlbench.diagnostics")
    return plugins, DataCache(Path(setup.data_dir) if setup.data_dir else None)


def warm_up(plugins: Plugins, cache: DataCache, device: torch.device, configs: list[dict]) -> None:
    """What a worker's first unit would otherwise wait for, done while the parent goes on (the
    preflight, the tracking store): the study's datasets on ``device``, torch's optimizer imports
    and, on a GPU, the CUDA context, cuBLAS and the autograd engine's device thread."""
    for config in configs:
        cache.for_config(config, plugins.registry, device)
    w = torch.zeros(8, 8, device=device, requires_grad=True)
    (w @ w).sum().backward()
    torch.optim.SGD([w]).step()  # a first optimizer imports torch._dynamo (1-2 s)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_configs(trials: list[Trial]) -> list[dict]:
    """One trial config for each distinct dataset (with its split and preprocessing) of ``trials``."""
    by_data = {}
    for trial in trials:
        cfg = trial.config
        key = canonical_json({k: cfg.get(k) for k in ("dataset", "val_fraction", "preprocessing")})
        by_data.setdefault(key, cfg)
    return list(by_data.values())
