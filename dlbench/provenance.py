"""Where a run came from: code version, software and hardware. No MLflow here (tracking logs it)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import distributions
from pathlib import Path

import torch

import dlbench
from dlbench.config import COMPONENTS
from dlbench.paths import PLUGINS_RECORD


@dataclass(frozen=True)
class CodeVersion:
    """The git commit the code ran at, or why there is none (a source archive has no ``.git``)."""

    commit: str | None
    dirty: bool | None
    why_none: str = ""

    def tags(self) -> dict[str, str]:
        """Provenance tags: ``dlbench.git_commit`` is the commit, or ``none (why)``."""
        if self.commit is None:
            return {"dlbench.git_commit": f"none ({self.why_none})"}
        return {"mlflow.source.git.commit": self.commit, "dlbench.git_commit": self.commit,
                "dlbench.git_dirty": str(self.dirty).lower()}


def code_version(where: Path) -> CodeVersion:
    """The commit and dirty flag of the git work tree containing ``where``, or why there is none."""
    def git(*args: str) -> tuple[str | None, str]:
        try:
            out = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10,
                                 env={**os.environ, "LC_ALL": "C"})  # messages in English, to tell them apart
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"git cannot run here ({exc})"
        return (out.stdout.strip(), "") if out.returncode == 0 else (None, out.stderr.strip())

    commit, error = git("rev-parse", "--verify", "HEAD")
    if commit is None:
        if "not a git repository" in error:
            why = f"no git repository: {Path(where).resolve()} is not in a git work tree, as in a source archive"
        elif "Needed a single revision" in error:
            why = "the git repository has no commit yet"
        else:
            why = (error.splitlines() or ["git failed"])[0]
        return CodeVersion(None, None, why)
    status, _ = git("status", "--porcelain", "--untracked-files=no")
    return CodeVersion(commit, bool(status))


def git_commit(where: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git work tree containing ``where``, or (None, None) outside one."""
    version = code_version(where)
    return version.commit, version.dirty


def device_name(device: torch.device) -> str:
    if device.type == "cuda":  # (a Ray driver may have none: its tasks' runs name their own)
        return torch.cuda.get_device_name(device) if torch.cuda.is_available() else "a GPU of the workers"
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
    seen = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(sorted(seen.values(), key=str.lower)) + "\n"


def components_used(trial, registry) -> list[tuple[str, str, str]]:
    """(kind, name, origin) of every plugin component a trial's config names."""
    used = [(kind, trial.config[key]["name"]) for key, kind in COMPONENTS.items()]
    used += [("regularizer", r["name"]) for r in trial.config["regularizers"]]
    used += [("preprocessing", p["name"]) for p in trial.config.get("preprocessing", [])]
    used += [("loss", trial.config["loss"]["name"])] if "loss" in trial.config else []  # absent at the default
    out = []
    for kind, name in used:
        component = registry.get(kind, name)
        origin = component.origin
        if origin == "built-in":
            origin = f"built-in {dlbench.__version__}"
        out.append((kind if kind not in ("regularizer", "preprocessing") else f"{kind}.{name}", name, origin))
    return out


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def option_tags(options, jobs: int) -> dict[str, str]:
    """The options of a study run (a ``RunOptions``) that change a trial's bits (its threads follow
    from the jobs on a CPU, its stack from the stack size and CUDA graphs), as the study run's tags:
    what ``dlbench reproduce --study`` runs it again with."""
    return {"dlbench.option.jobs": str(jobs), "dlbench.option.stack_size": str(options.stack_size or "auto"),
            "dlbench.option.cuda_graphs": options.cuda_graphs, "dlbench.option.device": options.device,
            "dlbench.option.deterministic": str(options.deterministic).lower(),
            "dlbench.option.executor": "ray" if options.ray else "local"}


def plugin_artifacts(plugins) -> dict[str, str]:
    """The local plugin files a study run loaded (of a ``Plugins``), as its artifacts
    ``plugins/<file>``, and ``plugins.json``: the folder they came from and each file's sha256."""
    files = plugins.local_files
    folder = str(Path(plugins.plugins_dir).resolve()) if plugins.plugins_dir is not None else None
    record = {"folder": folder, "files": plugins.local_digests()}
    texts = {f"plugins/{name}": path.read_bytes().decode("utf-8", errors="replace") for name, path in files.items()}
    return texts | {PLUGINS_RECORD: json.dumps(record, indent=2)}
