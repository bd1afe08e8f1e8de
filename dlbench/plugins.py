"""The plugin manager: built-ins, entry points and a local plugins folder, one registry.

Loading order: built-ins, then the ``dlbench`` entry-point group (skipped when
``DLBENCH_DISABLE_PLUGIN_AUTOLOAD`` is set), then every ``*.py`` module of the local plugins
folder. A name registered twice within one kind is an error naming both origins.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pluggy

from dlbench import hookspecs
from dlbench.errors import PluginError, UserError, choose_one_of
from dlbench.schema import Option, options_of, unchecked

AUTOLOAD_ENV = "DLBENCH_DISABLE_PLUGIN_AUTOLOAD"
ENTRY_POINT_GROUP = "dlbench"

# plural hook suffix -> singular kind name used in study files and messages
KINDS = {
    "datasets": "dataset",
    "architectures": "architecture",
    "activations": "activation",
    "initializers": "initializer",
    "optimizers": "optimizer",
    "schedules": "schedule",
    "regularizers": "regularizer",
    "preprocessing": "preprocessing",
}

BUILTIN_MODULES = [
    "dlbench.builtin.datasets",
    "dlbench.builtin.vision",
    "dlbench.builtin.files",
    "dlbench.builtin.architectures",
    "dlbench.builtin.convnets",
    "dlbench.builtin.recurrent",
    "dlbench.builtin.activations",
    "dlbench.builtin.initializers",
    "dlbench.builtin.pretraining",
    "dlbench.builtin.rbm",
    "dlbench.builtin.optimizers",
    "dlbench.builtin.schedules",
    "dlbench.builtin.regularizers",
    "dlbench.builtin.dropouts",
    "dlbench.builtin.normalization",
    "dlbench.builtin.augmentation",
    "dlbench.builtin.preprocessing",
]


@dataclass(frozen=True)
class Component:
    """One registered factory: what it is, where it came from, what options it takes."""

    kind: str
    name: str
    factory: object
    origin: str
    options: dict[str, Option] = field(compare=False)

    @property
    def description(self) -> str:
        """The docstring's first paragraph on one line (a first line may stop mid-sentence)."""
        doc = (inspect.getdoc(self.factory) or "").strip()
        return " ".join(doc.split("\n\n")[0].split())


class Registry:
    """Components by kind and name."""

    def __init__(self) -> None:
        self._components: dict[str, dict[str, Component]] = {k: {} for k in KINDS.values()}

    def add(self, kind: str, name: str, factory, origin: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"{origin}: a {kind} was registered with an invalid name {name!r}")
        if not callable(factory):
            raise PluginError(f"{origin}: {kind} {name!r} was registered with a non-callable factory")
        existing = self._components[kind].get(name)
        if existing is not None:
            raise PluginError(
                f"{kind} {name!r} is registered twice: by {existing.origin} and by {origin}. "
                "Rename one of them, or uninstall/remove the plugin you do not want."
            )
        options = options_of(factory)
        for option in options.values():
            problem = unchecked(option)
            if problem:
                raise PluginError(f"{origin}: {kind} {name!r} ({_where(factory)}): {problem}")
        self._components[kind][name] = Component(kind, name, factory, origin, options)

    def get(self, kind: str, name: str) -> Component:
        try:
            return self._components[kind][name]
        except KeyError:
            raise UserError(f"unknown {kind} {name!r}: {choose_one_of(name, self.names(kind))}") from None

    def lookup(self, text: str) -> Component:
        """The component ``text`` names: ``NAME`` when one kind has it, else ``KIND:NAME``."""
        kind, _, name = text.rpartition(":")
        if kind:
            if kind not in self._components:
                raise UserError(f"{text!r}: unknown kind {kind!r}; {choose_one_of(kind, self._components)}")
            return self.get(kind, name)
        found = [c for c in self if c.name == name]
        if len(found) > 1:
            raise UserError(f"{name!r} is the name of several components; name one as KIND:NAME: "
                            f"{', '.join(f'{c.kind}:{c.name}' for c in found)}")
        if not found:
            everything = sorted({c.name for c in self})
            raise UserError(f"no component is named {name!r}: {choose_one_of(name, everything)}")
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return name in self._components[kind]

    def names(self, kind: str) -> list[str]:
        return sorted(self._components[kind])

    def __iter__(self) -> Iterator[Component]:
        for kind in self._components.values():
            yield from (kind[n] for n in sorted(kind))


def _where(factory) -> str:
    """``module.qualname`` of a factory, for the plugin author."""
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', type(factory).__name__)}"


@dataclass
class Plugins:
    """The loaded plugin manager and the registry it filled."""

    pm: pluggy.PluginManager
    registry: Registry
    origins: dict[str, str]  # plugin name -> origin
    # how they were loaded, so a worker process loads the same ones
    plugins_dir: Path | None = None
    autoload: bool = True
    required_dir: bool = False

    @property
    def hook(self):
        return self.pm.hook


def make_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("dlbench")
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(plugins_dir: Path | None = None, *, autoload: bool | None = None,
                 required_dir: bool = False, files: tuple[Path, ...] = ()) -> Plugins:
    """Load every plugin and fill the registry. A missing ``plugins_dir`` is skipped, unless
    ``required_dir`` (the user named it with --plugins-dir). ``files``: local plugin modules
    named one by one (``dlbench plugins check PATH``), loaded after the folder's."""
    pm = make_manager()
    origins: dict[str, str] = {}

    for modname in BUILTIN_MODULES:
        module = importlib.import_module(modname)
        pm.register(module, name=modname)
        origins[modname] = "built-in"

    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    if autoload:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken third-party package must not hide which one it is
            raise PluginError(f"a plugin in the {ENTRY_POINT_GROUP!r} entry-point group failed to load: {exc!r}. "
                              f"Set {AUTOLOAD_ENV}=1 to skip entry points.") from exc
        for plugin, dist in pm.list_plugin_distinfo():
            origins[pm.get_name(plugin)] = f"entry point ({dist.project_name} {dist.version})"

    if plugins_dir is not None and required_dir and not Path(plugins_dir).is_dir():
        raise PluginError(f"--plugins-dir {plugins_dir}: no such directory")
    local = []
    if plugins_dir is not None and Path(plugins_dir).is_dir():
        local = sorted(p for p in Path(plugins_dir).glob("*.py") if not p.name.startswith("_"))
    local += [Path(f) for f in files if Path(f).resolve() not in {p.resolve() for p in local}]
    for path in local:
        module = _import_local(path)
        name = f"local:{path}"
        origins[name] = f"local ({path})"
        _register(pm, module, name, origins[name])

    try:
        pm.check_pending()  # a hook name no spec declares: most likely a typo
    except pluggy.PluginValidationError as exc:
        origin = origins.get(pm.get_name(exc.plugin), "a plugin")
        raise PluginError(f"{origin}: {exc}. The hooks are listed in dlbench/hookspecs.py "
                          "(e.g. dlbench_register_activations(register)).") from None
    registry = fill_registry(pm, origins)
    return Plugins(pm, registry, origins, plugins_dir, autoload, required_dir)


def _register(pm: pluggy.PluginManager, module, name: str, origin: str) -> None:
    """Register a plugin module; a hook with the wrong arguments is the plugin author's error."""
    try:
        pm.register(module, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{origin}: {exc}. See dlbench/hookspecs.py for each hook's arguments.") from None


def _import_local(path: Path):
    modname = f"dlbench_local_plugins.{path.stem}"
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[modname]
        raise PluginError(f"local plugin {path} failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def fill_registry(pm: pluggy.PluginManager, origins: dict[str, str]) -> Registry:
    registry = Registry()
    for plural, kind in KINDS.items():
        caller = getattr(pm.hook, f"dlbench_register_{plural}")
        # call implementations one by one so each registration carries its plugin's origin
        for impl in caller.get_hookimpls():  # registration order: built-ins first
            origin = origins.get(impl.plugin_name, impl.plugin_name)

            def register(name, factory, _kind=kind, _origin=origin):
                registry.add(_kind, name, factory, _origin)

            try:
                impl.function(register=register)
            except UserError:
                raise
            except Exception as exc:
                raise PluginError(f"{origin}: dlbench_register_{plural} raised {type(exc).__name__}: {exc}") from exc
    return registry
