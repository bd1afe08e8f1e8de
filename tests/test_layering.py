"""The package's layering holds: no import cycle among dlbench modules (an import inside a
function counts: it hides a cycle, it does not remove it), and ``import dlbench`` stays light
(a plugin file or ``dlbench --help`` pays for neither torch nor mlflow)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "dlbench"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_from(node: ast.ImportFrom, package: str) -> str:
    """The absolute name of the module a ``from ... import`` in ``package`` names (relative
    imports resolved: ``from .. import c`` in ``pkg.sub`` is ``pkg``)."""
    base = node.module or ""
    if node.level:
        parent = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parent + ([base] if base else []))
    return base


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module of ``package`` -> the modules of it that it imports, anywhere in its body. ``from
    pkg import mod`` imports the module ``pkg.mod``; ``from pkg import name`` imports ``pkg``."""
    modules = {module_name(p, package.parent): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = imported_from(node, package)
                subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            component.append(v)
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_dlbench_modules():
    graph = import_graph()
    found = cycles(graph)
    described = ["; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in found]
    assert found == [], "import cycles (move what both sides need into a module of its own):\n" + "\n".join(described)


def test_the_cycle_check_finds_a_cycle_hidden_in_a_function(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def late():\n    from .. import c\n")  # relative, in a function
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg import a\n")  # imports the cycle, is not in it
    assert cycles(import_graph(package)) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_import_dlbench_loads_neither_torch_nor_mlflow():
    code = "import sys, dlbench; print(sorted(m for m in ('torch', 'mlflow', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def private_names_used_across_modules(roots=(PACKAGE, REPO / "tests", REPO / "benchmarks")) -> list[str]:
    """``from dlbench.x import _name`` and ``x._name`` (x a dlbench module) outside module x."""
    found = []
    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            modules = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dlbench"):
                    found += [f"{path.relative_to(REPO)}:{node.lineno}: from {node.module} import {a.name}"
                              for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                    modules |= {a.asname or a.name for a in node.names}
                elif isinstance(node, ast.Import):
                    modules |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("dlbench")}
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                        and node.attr.startswith("_") and not node.attr.startswith("__")):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_private_name_is_used_outside_its_module():
    assert private_names_used_across_modules() == []


def test_the_private_name_check_finds_both_spellings(tmp_path, monkeypatch):
    (tmp_path / "uses.py").write_text("from dlbench.cli import _hidden\nimport dlbench.runner as r\nr._inner()\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert private_names_used_across_modules([tmp_path]) == ["uses.py:1: from dlbench.cli import _hidden",
                                                            "uses.py:3: r._inner"]


# Libraries heavy enough that a module may import them inside the function that needs them (or
# import, inside a function, the dlbench module that brings them), so that ``import dlbench``,
# ``dlbench --help`` and a worker that never draws a figure do not pay for them.
HEAVY = {"torch", "torchvision", "mlflow", "matplotlib", "seaborn", "pandas", "scipy", "ray", "optuna", "sklearn",
         "mnist1d", "PIL"}


def module_imports(path: Path, name: str, modules: set[str]) -> tuple[set[str], list[tuple[int, str]]]:
    """(what ``path``'s module imports at its top level, [(line, target)] of the imports inside
    its functions); a target is a dlbench module's name, or a third party's top-level name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    top, deferred = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = imported_from(node, package)
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            targets = subs or [base]
        else:
            continue
        named = []
        for target in targets:
            while target not in modules and "." in target and target.startswith("dlbench"):
                target = target.rpartition(".")[0]
            named.append(target if target in modules else target.split(".")[0])
        if id(node) in inside:
            deferred += [(node.lineno, t) for t in named]
        else:
            top |= set(named)
    return top, deferred


def heavy_loads(package: Path = PACKAGE) -> tuple[dict[str, set[str]], dict[str, list[tuple[int, str]]]]:
    """For each dlbench module, the heavy libraries importing it loads (its top-level imports,
    followed through dlbench modules and the packages above them); and its deferred imports."""
    paths = {module_name(p, package.parent): p for p in package.rglob("*.py")}
    parsed = {name: module_imports(path, name, set(paths)) for name, path in paths.items()}
    memo: dict[str, set[str]] = {}

    def loads(name: str, seen: frozenset = frozenset()) -> set[str]:
        if name in memo:
            return memo[name]
        found: set[str] = set()
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        for target in [*parsed[name][0], *parents]:
            if target in parsed and target not in seen and target != name:
                found |= loads(target, seen | {name})
            elif target in HEAVY:
                found.add(target)
        if not seen:
            memo[name] = found
        return found

    return {name: loads(name) for name in parsed}, {name: parsed[name][1] for name in parsed}


def needless_deferred_imports(package: Path = PACKAGE) -> list[str]:
    heavy, deferred = heavy_loads(package)
    found = []
    for name, imports in deferred.items():
        for line, target in imports:
            if target in HEAVY or heavy.get(target, set()) - heavy[name]:
                continue  # it spares the importer a heavy library until the function needs it
            found.append(f"{name}:{line}: {target}")
    return found


def test_imports_inside_functions_only_defer_heavy_libraries():
    """An import inside a function is for a heavy library (or the dlbench module that brings one)
    that its module does not load already; any other belongs at the top of the module."""
    assert needless_deferred_imports() == []


def test_the_deferred_import_check_tells_heavy_from_light(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "light.py").write_text("import json\n")
    (package / "heavy.py").write_text("import mlflow\n")
    (package / "user.py").write_text("def f():\n    import json\n    from pkg import light\n    from pkg import heavy\n"
                                     "    import torch\n")
    (package / "has_mlflow.py").write_text("import mlflow\ndef f():\n    from pkg import heavy\n")
    assert sorted(needless_deferred_imports(package)) == ["pkg.has_mlflow:3: pkg.heavy", "pkg.user:2: json",
                                                          "pkg.user:3: pkg.light"]


MOST_PARAMETERS = 8


def long_signatures(package: Path = PACKAGE) -> list[str]:
    """Functions of the run path with more than MOST_PARAMETERS parameters (``self`` not counted).
    Plugin factories (``builtin/``) are left out: their parameters are the options a study file
    sets. The report package is not on the run path."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if {"builtin", "report"} & set(path.relative_to(package).parts[:-1]):
            continue
        for f in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = f.args
                n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
                n -= bool(a.args and a.args[0].arg in ("self", "cls"))
                if n > MOST_PARAMETERS:
                    found.append(f"{path.relative_to(package.parent)}:{f.lineno}: {f.name} ({n} parameters)")
    return found


def test_no_function_on_the_run_path_takes_more_than_eight_parameters():
    """Settings travel as one object (``dlbench.settings.RunOptions``), not spread over positions."""
    assert long_signatures() == []


# Each of these libraries has one place in the package: the tracking store, the report's figures,
# the command line, the terminal's live view, the Ray pool, the samplers. Anywhere else, it would
# be a second place to change when the library does.
ONE_PLACE = {"mlflow": "dlbench/tracking/", "seaborn": "dlbench/report/", "matplotlib": "dlbench/report/",
             "click": "dlbench/cli.py", "rich": "dlbench/progress.py", "ray": "dlbench/execution/ray_pool.py",
             "optuna": "dlbench/tuning/samplers.py"}


def imports_out_of_place(package: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        where = path.relative_to(package.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                place = ONE_PLACE.get(name.split(".")[0])
                if place is not None and not where.startswith(place):
                    found.append(f"{where}:{node.lineno}: {name} (its place: {place})")
    return found


def test_each_library_with_one_place_is_imported_only_there():
    assert imports_out_of_place() == []


def test_the_one_place_check_finds_a_stray_import(tmp_path):
    package = tmp_path / "dlbench"
    (package / "tracking").mkdir(parents=True)
    (package / "tracking" / "store.py").write_text("import mlflow\n")
    (package / "runner.py").write_text("def f():\n    from mlflow.tracking import MlflowClient\n")
    (package / "view.py").write_text("from rich.live import Live\n")
    assert imports_out_of_place(package) == [
        "dlbench/runner.py:2: mlflow.tracking (its place: dlbench/tracking/)",
        "dlbench/view.py:1: rich.live (its place: dlbench/progress.py)"]
