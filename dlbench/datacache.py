"""Datasets built once per process and kept on the device across the trials of a study: arrays
from ``data/`` or a dataset plugin (``data.py``), on the device, with each trial config's
preprocessing steps fitted and applied (``preprocessing.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dlbench.build import make
from dlbench.data import Dataset, DeviceData, check_dataset, load_dataset, options_key, to_device
from dlbench.preprocessing import apply


class DataCache:
    """Datasets built once per process and kept on the device across the trials of a study.

    A dataset asked for with its default options is read from ``data_dir/<name>/`` when it was
    prepared there (``dlbench data prepare``: the DVC-tracked copy); otherwise its plugin makes it.
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = data_dir
        self._arrays: dict[str, tuple[Dataset, str]] = {}
        self._device: dict[tuple, DeviceData] = {}
        self._prepared: dict[tuple, DeviceData] = {}

    def for_config(self, cfg: dict, registry, device: torch.device) -> DeviceData:
        """A trial config's dataset on ``device``, its ``preprocessing`` steps fitted on the
        training split and applied to every split, once per dataset + steps + device."""
        dataset = registry.get("dataset", cfg["dataset"]["name"])
        options = {k: v for k, v in cfg["dataset"].items() if k != "name"}
        data = self.get(dataset, options, cfg["val_fraction"], device)
        steps = cfg.get("preprocessing", [])
        if not steps:
            return data
        key = (options_key(dataset.name, options), cfg["val_fraction"], str(device), json.dumps(steps, sort_keys=True))
        if key not in self._prepared:
            for spec in steps:
                data = apply(make(registry, "preprocessing", spec), spec["name"], data)
            self._prepared[key] = data
        return self._prepared[key]

    def get(self, component, options: dict, val_fraction: float, device: torch.device) -> DeviceData:
        key = options_key(component.name, options)
        if key not in self._arrays:
            self._arrays[key] = self._load(component, options)
        dkey = (key, val_fraction, str(device))
        if dkey not in self._device:
            ds, source = self._arrays[key]
            self._device[dkey] = to_device(ds, val_fraction, device, source)
        return self._device[dkey]

    def _load(self, component, options: dict) -> tuple[Dataset, str]:
        defaults = {o.name: o.default for o in component.options.values()}
        if self.data_dir is not None and options == defaults:
            prepared = load_dataset(self.data_dir, component.name)
            if prepared is not None:
                return prepared, str((self.data_dir / component.name).resolve())
        ds = component.factory(**options)
        check_dataset(component.name, ds)
        return ds, "generated"
