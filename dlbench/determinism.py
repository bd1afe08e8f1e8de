"""Deterministic kernels: bit-identical re-runs on the same hardware and software. Set by the
process that trains: the study's own (one job) and each worker (local or Ray)."""

from __future__ import annotations

import os
import sys

import torch


def set_determinism(on: bool, device: torch.device) -> None:
    """Deterministic kernels (bit-identical re-runs on the same hardware and software)."""
    if on and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
    if "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(on)
    else:  # what it does, without importing torch._inductor for its flag: 1.6 s of every start (nothing compiles)
        torch._C._set_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = not on
