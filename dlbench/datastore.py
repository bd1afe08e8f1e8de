"""Prepared datasets (``data/``, in the format of ``data.py``) and their versioning with DVC
(``data.dvc``).

``data.dvc`` is a real ``dvc add data`` pointer, committed with ``.dvc/``; ``data/`` is
git-ignored. DVC is driven through its command line (``python -m dvc``), as a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dlbench.data import load_dataset, save_dataset
from dlbench.errors import UserError
from dlbench.paths import cannot_write

DEFAULT_DATA_DIR = Path("data")


def prepare(registry, data_dir: Path, names: list[str]) -> list[tuple[str, Path, str]]:
    """Generate each named dataset with its default options into ``data_dir``."""
    written = []
    for name in names:
        component = registry.get("dataset", name)
        missing = [o.name for o in component.options.values() if o.required]
        if missing:
            raise UserError(f"dataset {name!r} has required options ({', '.join(missing)}) and cannot be "
                            "prepared with defaults")
        ds = component.factory()
        folder = save_dataset(ds, data_dir, {o.name: o.default for o in component.options.values()})
        written.append((name, folder, ds.content_hash()))
    return written


# -- DVC ------------------------------------------------------------------------------------------


DVC_CHECK = "dvc data status"


@dataclass(frozen=True)
class DataStatus:
    pointer: Path  # the .dvc file
    md5: str | None  # what data.dvc records for the folder
    modified: list[str]  # paths DVC reports as different from data.dvc
    missing: bool  # the data folder does not exist
    check: str = DVC_CHECK  # how it was compared: DVC, or the recorded dataset hashes (and why)

    @property
    def matches(self) -> bool:
        return not self.missing and not self.modified


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True,
                             timeout=300)
    except subprocess.TimeoutExpired:
        raise UserError(f"`dvc {' '.join(args)}` in {root} did not finish in 300 s") from None
    if check and out.returncode != 0:
        raise UserError(f"`dvc {' '.join(args)}` failed in {root}: {(out.stderr or out.stdout).strip()}")
    return out


def pointer_for(data_dir: Path) -> Path:
    return data_dir.parent / f"{data_dir.name}.dvc"


def recorded_md5(pointer: Path) -> str | None:
    """The folder hash recorded in a .dvc file (``outs[0].md5``)."""
    for line in pointer.read_text(encoding="utf-8").splitlines():
        line = line.strip().lstrip("- ")
        if line.startswith("md5:"):
            return line.split(":", 1)[1].strip()
    return None


def status(data_dir: Path) -> DataStatus:
    """Compare ``data_dir`` with its ``.dvc`` pointer through ``dvc data status``; where DVC
    cannot run (outside a git repository, a read-only ``.dvc/``), through the content hashes of
    the datasets that ``data.dvc`` records."""
    data_dir = Path(data_dir)
    pointer = pointer_for(data_dir)
    if not pointer.is_file():
        raise UserError(f"{pointer}: no DVC pointer for {data_dir}; run `dlbench data prepare` to create the data "
                        "and track it with DVC")
    md5 = recorded_md5(pointer)
    why_not_dvc = dvc_unavailable(data_dir.resolve().parent)
    check = DVC_CHECK if why_not_dvc is None else hash_check(why_not_dvc)
    if not data_dir.is_dir():
        return DataStatus(pointer, md5, [], missing=True, check=check)
    if why_not_dvc is not None:
        return DataStatus(pointer, md5, differing_datasets(data_dir, pointer), missing=False, check=check)
    out = dvc(data_dir.parent, "data", "status", "--granular", "--json")
    report = json.loads(out.stdout or "{}")
    modified = []
    for group in ("uncommitted", "committed"):
        section = report.get(group, {})
        if isinstance(section, dict):
            modified += section.get("modified", []) + (section.get("deleted", []) if group == "uncommitted" else [])
    # without a DVC cache (a fresh clone), DVC can only say that the folder as a whole differs
    modified = sorted(set(modified))
    if len(modified) > 1:
        modified = [m for m in modified if not m.endswith("/")]
    elif modified == [f"{data_dir.name}/"]:  # no cache to compare files with: compare datasets
        modified = differing_datasets(data_dir, pointer) or modified
    return DataStatus(pointer, md5, modified, missing=False)


def hash_check(why_not_dvc: str) -> str:
    return f"recorded dataset hashes ({why_not_dvc})"


def dvc_unavailable(root: Path) -> str | None:
    """Why ``dvc data status`` cannot run in ``root``, or None when it can: it needs a git
    repository (a source archive has none) and writes its lock files into ``.dvc/``."""
    if _git_toplevel(root) is None:
        return "no git repository here, and dvc data status needs one"
    if (root / ".dvc").is_dir() and cannot_write(root / ".dvc"):
        return ".dvc/ is read-only here, and dvc writes its lock files there"
    return None


def _git_toplevel(where: Path) -> Path | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=where, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip()) if out.returncode == 0 else None


def has_remote(root: Path) -> bool:
    return bool(dvc(root, "remote", "list", check=False).stdout.strip())


def track(data_dir: Path) -> Path:
    """``dvc add`` the data folder (running ``dvc init`` first where needed); returns the pointer."""
    root = data_dir.resolve().parent
    if not (root / ".dvc").is_dir():
        toplevel = _git_toplevel(root)
        if toplevel is None:
            dvc(root, "init", "--no-scm", "-q")
        elif toplevel.resolve() == root:
            dvc(root, "init", "-q")
        else:
            dvc(root, "init", "--subdir", "-q")
    dvc(root, "add", data_dir.name, "-q")
    pointer = pointer_for(data_dir)
    record_datasets(pointer, {p.name: json.loads((p / "meta.json").read_text(encoding="utf-8"))["sha256"]
                              for p in sorted(data_dir.iterdir()) if (p / "meta.json").is_file()})
    return pointer


# data.dvc's out carries a `meta` table (DVC keeps it across `dvc add`): the prepared datasets and
# their content hashes, so a fresh clone knows what to regenerate and which dataset differs.
META_KEY = "dlbench_datasets"


def record_datasets(pointer: Path, datasets: dict[str, str]) -> None:
    lines = [line for line in _without_meta(pointer.read_text(encoding="utf-8").splitlines())]
    block = ["  meta:", f"    {META_KEY}:", *[f"      {name}: {digest}" for name, digest in datasets.items()]]
    pointer.write_text("\n".join(lines + block) + "\n", encoding="utf-8")


def recorded_datasets(pointer: Path) -> dict[str, str]:
    out, inside = {}, False
    for line in pointer.read_text(encoding="utf-8").splitlines():
        if line.strip() == f"{META_KEY}:":
            inside = True
        elif inside and line.startswith("      ") and ":" in line:
            name, digest = line.strip().split(":", 1)
            out[name.strip()] = digest.strip()
        elif inside:
            inside = False
    return out


def _without_meta(lines: list[str]) -> list[str]:
    out, skipping = [], False
    for line in lines:
        if line == "  meta:":
            skipping = True
            continue
        if skipping and line.startswith("    "):
            continue
        skipping = False
        out.append(line)
    return out


def differing_datasets(data_dir: Path, pointer: Path) -> list[str]:
    """Dataset folders whose arrays no longer have the recorded content hash (works without a
    DVC cache, where DVC itself can only say that the folder as a whole differs, and without
    DVC). A pointer that records no hashes cannot vouch for anything: the whole folder differs."""
    recorded = recorded_datasets(pointer)
    if not recorded:
        return [f"{data_dir.name}/ ({pointer.name} records no dataset hashes; prepare the data again with "
                "`dlbench data prepare` in a git checkout)"]
    differ = []
    for name, digest in recorded.items():
        try:
            ds = load_dataset(data_dir, name)
        except UserError:
            ds = None
        if ds is None or ds.content_hash() != digest:
            differ.append(f"{data_dir.name}/{name}/")
    return differ


BUILTIN_PREPARED = ["mnist1d", "digits"]  # what `dlbench data prepare` writes by default


def check_data(data_dir: Path, registry, *, allow_mismatch: bool, stream) -> dict[str, str]:
    """Before a run: make ``data_dir`` match ``data.dvc`` (pull or regenerate it when missing)
    and refuse to go on when it does not, unless ``allow_mismatch``. Returns the run's data tags.

    Without a ``.dvc`` pointer next to the folder there is nothing to check: datasets are read
    from the folder when prepared, generated otherwise. Where DVC cannot run (see ``status``)
    the datasets are compared with the hashes ``data.dvc`` records, and the output says so. A
    missing folder in a read-only place is not written: its datasets are generated in memory
    (as every run then does) and checked against those hashes.
    """
    data_dir = Path(data_dir)
    pointer = pointer_for(data_dir)
    if not pointer.is_file():
        return {"dlbench.data_dvc": "none"}
    st = status(data_dir)
    if st.missing:
        root = data_dir.resolve().parent
        names = list(recorded_datasets(pointer)) or BUILTIN_PREPARED
        read_only = cannot_write(data_dir)
        if read_only:
            stream.write(f"{data_dir} is missing and cannot be written ({read_only}): generating the datasets in "
                         f"memory, as every trial will, and checking them against {pointer}\n")
            check = f"recorded dataset hashes, of datasets generated in memory ({data_dir} is missing, read-only)"
            st = DataStatus(pointer, st.md5, generated_differing(registry, pointer), missing=False, check=check)
        elif st.check == DVC_CHECK and has_remote(root):
            stream.write(f"{data_dir} is missing: pulling it from the DVC remote\n")
            dvc(root, "pull", pointer.name)
        else:
            no_remote = "no DVC remote is configured" if st.check == DVC_CHECK else "DVC cannot run here"
            stream.write(f"{data_dir} is missing and {no_remote}: regenerating it\n")
            prepare(registry, data_dir, names)
        if not read_only:
            st = status(data_dir)
            if st.matches and st.check == DVC_CHECK:
                track(data_dir)  # fills the local DVC cache; the pointer is unchanged
    if st.check != DVC_CHECK:
        stream.write(f"data check: {data_dir} compared with {st.pointer} by its {st.check}\n")
    tags = {"dlbench.data_dvc": str(st.pointer), "dlbench.data_dvc_md5": st.md5 or "",
            "dlbench.data_matches_dvc": str(st.matches).lower(), "dlbench.data_check": st.check}
    if not st.matches:
        differ = ", ".join(st.modified) or str(data_dir)
        if not allow_mismatch:
            raise UserError(
                f"{data_dir} does not match {st.pointer} (md5 {st.md5}, checked by {st.check}); differing: {differ}. "
                "A run on data other than the recorded version cannot be traced. Restore it (`dvc checkout`, "
                f"`dvc pull`, or delete {data_dir} to regenerate it), record the new version (`dvc add {data_dir}` "
                f"and commit {st.pointer}), or pass --allow-data-mismatch to run anyway (the runs are tagged as such).")
        stream.write(f"warning: {data_dir} does not match {st.pointer} ({differ}); running anyway as asked\n")
    return tags


def generated_differing(registry, pointer: Path) -> list[str]:
    """The recorded datasets that, generated in memory with their default options, do not have
    the hash ``pointer`` records."""
    recorded = recorded_datasets(pointer)
    if not recorded:
        return [f"{pointer.name} records no dataset hashes"]
    return [f"{name} (generated)" for name, digest in recorded.items()
            if registry.get("dataset", name).factory().content_hash() != digest]
