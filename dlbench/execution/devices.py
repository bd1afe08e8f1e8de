"""The devices a study trains on, from ``--device``, and how many workers fit on them."""

from __future__ import annotations

import os

import torch

from dlbench.errors import UserError


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks the first GPU when there is one; ``cpu``, ``cuda`` and ``cuda:N`` are checked."""
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: this machine has no usable CUDA GPU (torch {torch.__version__}, "
                            f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu or auto")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) here (cuda:0 to "
                            f"cuda:{torch.cuda.device_count() - 1})")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise UserError(f"--device {spec!r}: unsupported; use auto, cpu, cuda or cuda:N")
    return device


def resolve_devices(spec: str) -> list[torch.device]:
    """The devices a study runs on: ``auto`` and ``cuda`` mean every visible GPU (or the CPU
    for ``auto`` when there is none); ``cuda:N`` and ``cpu`` name one."""
    device = resolve_device(spec)
    if spec in ("auto", "cuda") and device.type == "cuda":
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [device]


def cluster_device(spec: str) -> torch.device:
    """The device a Ray cluster's tasks train on, as this process can tell before joining it
    (``auto``: the cluster decides, once joined)."""
    return torch.device("cuda" if spec.startswith("cuda") else "cpu")


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_jobs(device: torch.device, units: int, gpus: int = 1) -> int:
    """``--jobs auto``: one worker per core on a CPU (small trials gain more from cores than
    from torch's threads), two per GPU used (one trains while the other's host code runs)."""
    cores = cpu_cores()
    per_device = 2 * gpus if device.type == "cuda" else cores
    return max(1, min(per_device, cores, units))
