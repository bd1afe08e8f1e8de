"""The plugin authors' guide (docs/plugins.md) and the hook reference (docs/hooks.md): every
example of the guide passes the plugin contract, and the reference is what dlbench/hookspecs.py
generates."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from dlbench import docs, hookspecs
from dlbench.contract import FAIL, check
from dlbench.plugins import KINDS, load_plugins

GUIDE = REPO / "docs" / "plugins.md"
REFERENCE = REPO / "docs" / "hooks.md"
EXAMPLE = re.compile(r"```python\n# plugins/(?P<file>\w+\.py)\n(?P<code>.*?)```", re.DOTALL)


def examples() -> list[tuple[str, str]]:
    """The plugin files of the guide and of the README (each ``# plugins/<file>.py`` block)."""
    return [(m["file"], m["code"]) for page in (GUIDE, REPO / "README.md")
            for m in EXAMPLE.finditer(page.read_text(encoding="utf-8"))]


def test_the_guide_has_an_example_of_every_kind(tmp_path):
    kinds = set()
    for file, code in examples():
        (tmp_path / file).write_text(code, encoding="utf-8")
        registry = load_plugins(None, autoload=False, files=(tmp_path / file,)).registry
        kinds |= {c.kind for c in registry if c.origin == f"local ({tmp_path / file})"}
    assert kinds == set(KINDS.values())


@pytest.mark.parametrize("file, code", examples(), ids=[file for file, _ in examples()])
def test_every_example_of_the_guide_passes_the_contract(tmp_path, file, code):
    path = tmp_path / file
    path.write_text(code, encoding="utf-8")
    registry = load_plugins(None, autoload=False, files=(path,)).registry
    components = [c for c in registry if c.origin == f"local ({path})"]
    assert components, f"{file} registers nothing"
    for component in components:
        outcomes = check(component, registry)
        assert not [o for o in outcomes if o.status == FAIL], "\n".join(map(str, outcomes))


def test_the_hook_reference_is_generated_from_hookspecs():
    assert REFERENCE.read_text(encoding="utf-8") == docs.hook_reference(), \
        "docs/hooks.md is stale: run `python -m dlbench.docs > docs/hooks.md`"


def test_every_hook_has_an_entry_in_the_reference():
    text = REFERENCE.read_text(encoding="utf-8")
    names = [hook.__name__ for hook in docs.hooks()]
    assert len(names) >= 14 and all(name.startswith("dlbench_") for name in names)
    missing = [name for name in names if f"### `{name}(" not in text]
    assert not missing, f"docs/hooks.md has no entry for {missing}: run `python -m dlbench.docs > docs/hooks.md`"


def test_a_hook_without_a_docstring_is_refused(monkeypatch):
    def dlbench_register_nothing(register) -> None:
        pass

    monkeypatch.setattr(hookspecs, "dlbench_register_nothing", dlbench_register_nothing, raising=False)
    with pytest.raises(ValueError, match="hook dlbench_register_nothing has no docstring"):
        docs.hook_reference()


def test_every_relative_link_of_the_readme_and_the_docs_points_at_a_file():
    """README.md, docs/*.md and the reference reports (docs/reference/<study>/index.md, whose
    figures are relative to them): a link to a moved or removed file fails here."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "docs" / "reference").glob("*/index.md"))]
    assert (REPO / "docs" / "reference" / "dropout" / "index.md") in pages
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL, or an anchor of the page itself
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, broken
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "](docs/reference/dropout/index.md)" in readme and "](reports/" not in readme


def documented_imports() -> list[tuple[str, str, str]]:
    """(file, module, name) of every ``from dlbench... import ...`` in the guide, the hook
    reference and the README."""
    found = []
    for path in (REPO / "docs" / "plugins.md", REPO / "docs" / "hooks.md", REPO / "README.md"):
        for module, names in re.findall(r"^\s*from (dlbench[\w.]*) import ([\w, ]+)$", path.read_text(encoding="utf-8"), re.M):
            found += [(path.name, module, name.strip()) for name in names.split(",") if name.strip()]
    return found


def test_plugin_authors_import_everything_from_dlbench():
    imports = documented_imports()
    assert len(imports) > 20  # the guide's examples are read
    assert [i for i in imports if i[1] != "dlbench"] == []  # one public namespace
    import dlbench

    for _, _, name in imports:
        assert name in dlbench.__all__ and getattr(dlbench, name) is not None, name


def test_the_public_names_are_the_objects_of_the_modules_plugins_already_import_from():
    import importlib

    import dlbench

    for name, module in [("StackedOptimizer", "dlbench.stacking"), ("Slot", "dlbench.slots"),
                         ("Regularizer", "dlbench.regularizer"), ("Preprocessor", "dlbench.preprocessing"),
                         ("Dataset", "dlbench.data"), ("accepts", "dlbench.shapes"), ("Range", "dlbench.schema"),
                         ("Trial", "dlbench.study"), ("TrialResult", "dlbench.train")]:
        assert getattr(importlib.import_module(module), name) is getattr(dlbench, name), name
