"""Documentation dlbench writes about plugins: a component's page (``dlbench plugins show``) and
the hook reference generated from ``dlbench/hookspecs.py``::

    python -m dlbench.docs > docs/hooks.md

``tests/test_docs.py`` fails when ``docs/hooks.md`` is not what this prints, or a hook has no
docstring.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import textwrap

from dlbench import hookspecs
from dlbench.plugins import KINDS
from dlbench.schema import MISSING, describe
from dlbench.stacking import component_stacks

# the study-file key a component of each kind is set with; the list kinds take several
STUDY_KEYS = {"dataset": "dataset", "architecture": "architecture", "activation": "activation",
              "initializer": "initializer", "optimizer": "optimizer", "schedule": "schedule",
              "regularizer": "regularizers", "preprocessing": "preprocessing",
              "loss": "loss"}
LISTS = {"regularizer", "preprocessing"}


# -- a component's page -------------------------------------------------------------------------


def component_page(component) -> str:
    """What ``dlbench plugins show`` prints: the docstring, where it comes from, its options with
    type, domain and default, whether it stacks, and a line for a study file."""
    doc = inspect.getdoc(component.factory) or "(no docstring)"
    options = [f"  {o.name}: {describe(o.annotation)}, {'required' if o.required else f'default {o.default!r}'}"
               for o in component.options.values()]
    stacks = {True: "yes: trials using it may train stacked (see dlbench/stacking.py)",
              False: "no: trials using it train alone (it does not declare how to stack)",
              None: f"does not apply (a {component.kind} never stands in the way of a stack)"}
    return "\n".join([
        f"{component.kind} {component.name!r}  [{component.origin}]",
        f"source: {source_line(component.factory)}",
        "",
        doc,
        "",
        "options:" if options else "options: none",
        *options,
        f"stacks: {stacks[component_stacks(component)]}",
        "in a study file:",
        f"  {toml_example(component)}",
    ])


def plugin_listing(registry, kind: str | None = None) -> list[tuple[str, list[str]]]:
    """What ``dlbench plugins list`` prints: for each kind (or ``kind`` alone), its heading and one
    line per component (origin, description, whether it stacks) with a line per option."""
    plurals = {k: plural for plural, k in KINDS.items()}
    sections = []
    for k in list(KINDS.values()) if kind is None else [kind]:
        lines = []
        for c in (c for c in registry if c.kind == k):
            stacks = {True: "  (stacks)", False: "  (trains alone)", None: ""}[component_stacks(c)]
            lines.append(f"  {c.name:<20} [{c.origin}]  {c.description}{stacks}")
            for opt in c.options.values():
                default = "required" if opt.default is MISSING else f"default {opt.default!r}"
                lines.append(f"  {'':<20}   {opt.name}: {describe(opt.annotation)}, {default}")
        sections.append((plurals[k], lines))
    return sections


def source_line(factory) -> str:
    """``path:line`` of a factory's definition, relative to the working directory when below it."""
    target = inspect.unwrap(factory)
    try:
        path, line = inspect.getsourcefile(target), inspect.getsourcelines(target)[1]
    except (TypeError, OSError):
        return "unknown"
    relative = os.path.relpath(path)
    return f"{path if relative.startswith('..') else relative}:{line}"


def toml_example(component) -> str:
    """A study-file line setting the component with every option at its default (a required
    option shows its type in angle brackets, to fill in; an option whose default is None, which
    TOML cannot write, is left out)."""
    values = {o.name: (f"<{describe(o.annotation)}>" if o.required else toml_value(o.default))
              for o in component.options.values() if o.default is not None}
    key = STUDY_KEYS.get(component.kind, component.kind)
    if values:
        table = "{ " + ", ".join([f"name = {toml_value(component.name)}", *(f"{k} = {v}" for k, v in values.items())]) + " }"
    else:
        table = toml_value(component.name)
    return f"{key} = [{table}]" if component.kind in LISTS else f"{key} = {table}"


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


# -- the hook reference -------------------------------------------------------------------------


def hooks() -> list:
    """Every hook specification of ``dlbench/hookspecs.py``, in the order of the file."""
    return [f for name, f in vars(hookspecs).items() if name.startswith("dlbench_") and callable(f)]


def hook_reference() -> str:
    """``docs/hooks.md``: the module's contract text, then every hook with its signature and
    docstring. Raises ValueError for a hook without a docstring."""
    sections = {"Registration hooks": [], "Lifecycle hooks": []}
    for hook in hooks():
        doc = inspect.getdoc(hook)
        if not doc:
            raise ValueError(f"dlbench/hookspecs.py: hook {hook.__name__} has no docstring: say what it is called "
                             "with and what an implementation does")
        part = "Registration hooks" if hook.__name__.startswith("dlbench_register_") else "Lifecycle hooks"
        signature = str(inspect.signature(hook)).replace("'", "")  # annotations are strings (PEP 563)
        sections[part].append(f"### `{hook.__name__}{signature}`\n\n{_markdown(doc)}\n")
    intro = _markdown(inspect.getdoc(hookspecs))
    body = "\n".join(f"## {title}\n\n" + "\n".join(entries) for title, entries in sections.items())
    return (f"# Hook reference\n\n<!-- generated from dlbench/hookspecs.py by `python -m dlbench.docs > "
            f"docs/hooks.md`; do not edit -->\n\n{intro}\n\n{body}")


def _markdown(doc: str) -> str:
    """A docstring as Markdown: a paragraph ending in ``::`` introduces a code block (indented
    by 4, as Markdown's are), ``x`` stays code."""
    text = re.sub(r"::$", ":", textwrap.dedent(doc), flags=re.MULTILINE)
    return text.strip()


if __name__ == "__main__":
    print(hook_reference(), end="")
