"""The plugin manager: built-ins, entry points and a local plugins folder, one registry.

Loading order: built-ins, then the ``dlbench`` entry-point group (skipped when
``DLBENCH_DISABLE_PLUGIN_AUTOLOAD`` is set), then every ``*.py`` module of the local plugins
folder. A name registered twice within one kind is an error naming both origins.

A local plugin file that fails to load (an exception at import or in its registration hook) is
skipped with a warning naming its file and line: studies that use none of its components still
run, and a study that names one is told that the file failed. A file named one by one
(``dlbench plugins check PATH``) fails hard instead. A component that cannot be found is reported
with where components come from (:class:`Sources`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pluggy

from dlbench import hookspecs
from dlbench.errors import PluginError, UserError, choose_one_of
from dlbench.schema import Option, misplaced_options, options_of, unchecked

AUTOLOAD_ENV = "DLBENCH_DISABLE_PLUGIN_AUTOLOAD"
_WARNED: set[str] = set()  # the load failures this process has warned about
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
    "losses": "loss",
}

# the positional arguments dlbench calls each kind's factory with (hookspecs.py); the options follow
# as keyword-only parameters
CONTRACTS: dict[str, tuple[str, ...]] = {
    "dataset": (),
    "architecture": ("input_shape", "num_classes", "activation"),
    "activation": (),
    "initializer": ("model", "data"),
    "optimizer": ("params",),
    "schedule": ("optimizer", "total_steps"),
    "regularizer": (),
    "preprocessing": (),
    "loss": ("num_classes",),
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
    "dlbench.builtin.losses",
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


@dataclass(frozen=True)
class LoadFailure:
    """A local plugin file that failed to load: where (the line in that file), and why."""

    path: Path
    line: int | None
    error: str  # "ModuleNotFoundError: No module named 'x'", "dlbench_register_optimizers raised ..."

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}" if self.line else str(self.path)

    def __str__(self) -> str:  # plugins/qhm.py:3: ImportError: cannot import name 'x'
        return f"{self.location}: {self.error}"


@dataclass(frozen=True)
class Sources:
    """Where the components of a registry came from, for the message of one that is not there."""

    folder: Path | None = None  # the local plugins folder searched, or looked for
    given: bool = False  # named with --plugins-dir
    default: str = ""  # which default folder ``folder`` is: "plugins/ next to the study file"
    files: tuple[Path, ...] = ()  # the local plugin files loaded
    autoload: bool = True
    packages: tuple[str, ...] = ()  # the entry-point distributions loaded: "dlbench-example 0.1.0"
    failures: tuple[LoadFailure, ...] = ()

    def describe(self) -> str:
        """One paragraph's sentences: the three places components come from, as searched here."""
        if not self.autoload:
            packages = f"not searched, as {AUTOLOAD_ENV} is set"
        elif self.packages:
            packages = f"loaded: {', '.join(self.packages)}"
        else:
            packages = "none installed"
        return (f"Components come from dlbench's built-ins; from installed packages, through the "
                f"{ENTRY_POINT_GROUP!r} entry-point group ({packages}); and from the local plugin files (*.py) of a "
                f"plugins folder: {self._folder()}.{self.failed()}")

    def _folder(self) -> str:
        if self.folder is None:
            return ("none was searched (dlbench looks in plugins/ next to the study file, or in the folder given "
                    "with --plugins-dir DIR)")
        where = str(Path(self.folder).resolve())
        loaded = f"loaded: {', '.join(p.name for p in self.files)}" if self.files else "no file loaded"
        if not self.files and not self.failures:
            loaded = "no plugin file in it"
        elif self.failures:
            loaded += f"; {len(self.failures)} failed, below"
        if self.given:
            return f"the folder given with --plugins-dir, {where}, was searched ({loaded})"
        if Path(self.folder).is_dir():
            return f"{where} ({self.default}) was searched ({loaded})"
        return (f"none was searched: dlbench looked for {where} ({self.default}), which does not exist; "
                "put the plugin files there, or name their folder with --plugins-dir DIR")

    def failed(self) -> str:
        """The sentence on the local files that failed to load ("" when none did)."""
        if not self.failures:
            return ""
        each = "; ".join(f"{f.path} failed to load ({f})" for f in self.failures)
        return (f" Skipped: {each}; what {'it registers is' if len(self.failures) == 1 else 'they register is'} "
                "unavailable until fixed.")

    def failed_again(self) -> str:
        """A short reminder of :meth:`failed`, for a message after one that said it."""
        if not self.failures:
            return ""
        return f" Failed to load (see above): {', '.join(str(f.path) for f in self.failures)}."


class Registry:
    """Components by kind and name."""

    def __init__(self, sources: Sources | None = None) -> None:
        self._components: dict[str, dict[str, Component]] = {k: {} for k in KINDS.values()}
        self.sources = sources

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
        misplaced = misplaced_options(factory, CONTRACTS[kind], kind)
        if misplaced:
            raise PluginError(f"{origin}: {kind} {name!r} ({_where(factory)}): {misplaced}")
        options = options_of(factory)
        for option in options.values():
            problem = unchecked(option)
            if problem:
                raise PluginError(f"{origin}: {kind} {name!r} ({_where(factory)}): {problem}")
        self._components[kind][name] = Component(kind, name, factory, origin, options)

    def discard(self, origin: str) -> None:
        """Forget every component registered by ``origin`` (a plugin file that failed half-way)."""
        for components in self._components.values():
            for name in [n for n, c in components.items() if c.origin == origin]:
                del components[name]

    def get(self, kind: str, name: str) -> Component:
        try:
            return self._components[kind][name]
        except KeyError:
            raise UserError(f"unknown {kind} {name!r}: {self.not_found(kind, name)}") from None

    def not_found(self, kind: str, name: str, *, full: bool = True) -> str:
        """The tail of the message for an unknown ``kind`` ``name``: the nearest names, the kinds
        that have that name, and where components come from (not ``full``: only the local files
        that failed to load, for a message that follows one that said it all)."""
        tail = choose_one_of(name, self.names(kind)) + self._elsewhere(name, exclude=kind)
        if full:
            return tail + self.where_from()
        failed = self.sources.failed_again() if self.sources is not None else ""
        return f"{tail}.{failed}" if failed else tail

    def where_from(self) -> str:
        """``. Components come from ...`` (where this registry's components were looked for)."""
        return f". {self.sources.describe()}" if self.sources is not None else ""

    def _elsewhere(self, name: str, exclude: str) -> str:
        kinds = [k for k, components in self._components.items() if k != exclude and name in components]
        return f" ({name!r} is {' and '.join(_a(k) for k in kinds)}, not {_a(exclude)})" if kinds else ""

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
            raise UserError(f"no component is named {name!r}: {choose_one_of(name, everything)}{self.where_from()}")
        return found[0]

    @property
    def kinds(self) -> list[str]:
        return list(self._components)

    def has(self, kind: str, name: str) -> bool:
        return name in self._components[kind]

    def names(self, kind: str) -> list[str]:
        return sorted(self._components[kind])

    def __iter__(self) -> Iterator[Component]:
        for kind in self._components.values():
            yield from (kind[n] for n in sorted(kind))


def _a(kind: str) -> str:
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"


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

    @property
    def local_files(self) -> dict[str, Path]:
        """The local plugin files loaded (a plugins folder's ``*.py``), by file name."""
        sources = self.registry.sources
        return {path.name: path for path in (sources.files if sources is not None else ())}

    def local_digests(self) -> dict[str, str]:
        """The SHA-256 of each local plugin file, by file name: what a study run records of them."""
        return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in self.local_files.items()}


LOCAL_ORIGIN = re.compile(r"^(?P<name>.*) \[local \((?P<path>.*)\)\]$")  # "swish [local (plugins/swish.py)]"


def by_file_name(tag: str) -> str:
    """A ``name [origin]`` tag (``dlbench.plugin.*``) with a local plugin's path cut to its file
    name: the same file in another folder (a reproduction elsewhere, the folder named another way)
    is the same plugin; what it holds is compared by its SHA-256 (``Plugins.local_digests``)."""
    match = LOCAL_ORIGIN.match(tag)
    return f"{match['name']} [local ({Path(match['path']).name})]" if match else tag


def make_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("dlbench")
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(plugins_dir: Path | None = None, *, autoload: bool | None = None,
                 required_dir: bool = False, files: tuple[Path, ...] = (), default: str = "",
                 quiet: bool = False) -> Plugins:
    """Load every plugin and fill the registry. A missing ``plugins_dir`` is skipped, unless
    ``required_dir`` (the user named it with --plugins-dir); ``default`` says which default folder
    it is otherwise ("plugins/ next to the study file"), for the message of a missing component.
    ``files``: local plugin modules named one by one (``dlbench plugins check PATH``), loaded
    after the folder's. A file of the folder that fails to load is skipped with a warning on
    stderr (none when ``quiet``); a file of ``files`` that fails is a :class:`PluginError`."""
    pm = make_manager()
    origins: dict[str, str] = {}

    for modname in BUILTIN_MODULES:
        module = importlib.import_module(modname)
        pm.register(module, name=modname)
        origins[modname] = "built-in"

    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    packages: list[str] = []
    if autoload:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken third-party package must not hide which one it is
            raise PluginError(f"a plugin in the {ENTRY_POINT_GROUP!r} entry-point group failed to load: {exc!r}. "
                              f"Set {AUTOLOAD_ENV}=1 to skip entry points.") from exc
        for plugin, dist in pm.list_plugin_distinfo():
            origins[pm.get_name(plugin)] = f"entry point ({dist.project_name} {dist.version})"
            packages.append(f"{dist.project_name} {dist.version}")

    if plugins_dir is not None and required_dir and not Path(plugins_dir).is_dir():
        raise PluginError(f"--plugins-dir {plugins_dir}: no such directory")
    local = []
    if plugins_dir is not None and Path(plugins_dir).is_dir():
        local = sorted(p for p in Path(plugins_dir).glob("*.py") if not p.name.startswith("_"))
    named = {Path(f).resolve() for f in files}
    local += [Path(f) for f in files if Path(f).resolve() not in {p.resolve() for p in local}]
    failures: list[LoadFailure] = []
    loaded: list[Path] = []
    for path in local:
        module = _import_local(path, failures, strict=path.resolve() in named)
        if module is None:
            continue
        name = f"local:{path}"
        origins[name] = f"local ({path})"
        _register(pm, module, name, origins[name])
        loaded.append(path)

    try:
        pm.check_pending()  # a hook name no spec declares: most likely a typo
    except pluggy.PluginValidationError as exc:
        origin = origins.get(pm.get_name(exc.plugin), "a plugin")
        raise PluginError(f"{origin}: {exc}. The hooks are listed in dlbench/hookspecs.py "
                          "(e.g. dlbench_register_activations(register)).") from None
    registry = fill_registry(pm, origins, failures, named)
    failed = {f.path for f in failures}
    registry.sources = Sources(Path(plugins_dir) if plugins_dir is not None else None, required_dir,
                               default or "the default local folder", tuple(p for p in loaded if p not in failed),
                               autoload, tuple(packages), tuple(failures))
    if not quiet:
        for failure in failures:
            if str(failure) in _WARNED:  # once a process (a forked worker inherits its parent's)
                continue
            _WARNED.add(str(failure))
            sys.stderr.write(f"dlbench: warning: skipped the local plugin file {failure.path}, which failed to load: "
                             f"{failure}. The components it registers are unavailable: a study that names one "
                             "fails, the others run.\n")
    return Plugins(pm, registry, origins, plugins_dir, autoload, required_dir)


def _register(pm: pluggy.PluginManager, module, name: str, origin: str) -> None:
    """Register a plugin module; a hook with the wrong arguments is the plugin author's error."""
    try:
        pm.register(module, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{origin}: {exc}. See dlbench/hookspecs.py for each hook's arguments.") from None


def _import_local(path: Path, failures: list[LoadFailure], strict: bool):
    """The module of local plugin file ``path``; None when it failed to import (the failure added
    to ``failures``), or a :class:`PluginError` when ``strict`` (the user named the file)."""
    modname = f"dlbench_local_plugins.{path.stem}"
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[modname]
        text = exc.msg if isinstance(exc, SyntaxError) and exc.msg else exc  # its line comes with the file
        failure = failure_of(path, exc, f"{type(exc).__name__}: {text}")
        if strict:
            raise PluginError(f"local plugin {path} failed to import: {failure.error} ({failure.location})") from exc
        failures.append(failure)
        return None
    return module


def failure_of(path: Path, exc: BaseException, error: str) -> LoadFailure:
    """``exc`` raised while loading local plugin file ``path``, placed at its line in that file:
    a SyntaxError's own, else the last traceback frame inside the file (None if there is none)."""
    target = os.path.realpath(path)

    def same(filename) -> bool:
        return bool(filename) and os.path.realpath(filename) == target

    if isinstance(exc, SyntaxError) and same(exc.filename) and exc.lineno:
        return LoadFailure(path, exc.lineno, error)
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if same(frame.filename)]
    return LoadFailure(path, lines[-1] if lines else None, error)


def fill_registry(pm: pluggy.PluginManager, origins: dict[str, str], failures: list[LoadFailure] | None = None,
                  strict: set[Path] = frozenset()) -> Registry:
    """The registry the registration hooks fill. A local plugin whose hook raises is dropped
    (its components forgotten, its hooks unregistered) and added to ``failures``, unless its file
    is in ``strict`` (named by the user) or ``failures`` is None: then it is a PluginError."""
    registry = Registry()
    dropped: dict[str, str] = {}  # plugin name -> origin
    for plural, kind in KINDS.items():
        caller = getattr(pm.hook, f"dlbench_register_{plural}")
        # call implementations one by one so each registration carries its plugin's origin
        for impl in caller.get_hookimpls():  # registration order: built-ins first
            if impl.plugin_name in dropped:
                continue
            origin = origins.get(impl.plugin_name, impl.plugin_name)

            def register(name, factory, _kind=kind, _origin=origin):
                registry.add(_kind, name, factory, _origin)

            try:
                impl.function(register=register)
            except UserError:
                raise
            except Exception as exc:
                error = f"dlbench_register_{plural} raised {type(exc).__name__}: {exc}"
                path = Path(impl.plugin_name.removeprefix("local:"))
                local = impl.plugin_name.startswith("local:")
                if not local:
                    raise PluginError(f"{origin}: {error}") from exc
                if failures is None or path.resolve() in strict:
                    raise PluginError(f"local plugin {path} failed to load: {error} "
                                      f"({failure_of(path, exc, error).location})") from exc
                failures.append(failure_of(path, exc, error))
                dropped[impl.plugin_name] = origin
    for name, origin in dropped.items():
        registry.discard(origin)
        pm.unregister(name=name)
    return registry
