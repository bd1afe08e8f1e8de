"""Where a run came from: code version, software and hardware. No MLflow here (tracking logs it)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import torch

import dlbench


def git_commit(where: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git work tree containing ``where``, or (None, None) outside one."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, bool(status)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def environment(device: torch.device) -> dict[str, str]:
    """Software and hardware versions worth a tag on every run."""
    env = {
        "dlbench.version": dlbench.__version__,
        "dlbench.torch_version": torch.__version__,
        "dlbench.python_version": platform.python_version(),
        "dlbench.platform": platform.platform(),
        "dlbench.device": str(device),
        "dlbench.device_name": device_name(device),
        "dlbench.torch_threads": str(torch.get_num_threads()),  # CPU reductions can depend on it
    }
    if device.type == "cuda":
        env["dlbench.cuda_version"] = str(torch.version.cuda)
        env["dlbench.cudnn_version"] = str(torch.backends.cudnn.version())
    return env


def git_diff(where: Path) -> str:
    """The uncommitted changes to tracked files (what a dirty flag hides)."""
    try:
        out = subprocess.run(["git", "diff", "HEAD"], cwd=where, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def installed_packages() -> str:
    """``name==version`` of every installed distribution, like ``pip freeze`` but without a subprocess."""
    from importlib.metadata import distributions

    seen = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(sorted(seen.values(), key=str.lower)) + "\n"


def components_used(trial, registry) -> list[tuple[str, str, str]]:
    """(kind, name, origin) of every plugin component a trial's config names."""
    from dlbench.config import COMPONENTS

    used = [(kind, trial.config[key]["name"]) for key, kind in COMPONENTS.items()]
    used += [("regularizer", r["name"]) for r in trial.config["regularizers"]]
    out = []
    for kind, name in used:
        component = registry.get(kind, name)
        origin = component.origin
        if origin == "built-in":
            origin = f"built-in {dlbench.__version__}"
        out.append((kind if kind != "regularizer" else f"regularizer.{name}", name, origin))
    return out


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
