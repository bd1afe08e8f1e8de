"""A plugin's options, read from its factory's signature, and checks of values against them.

A factory's keyword-only parameters are its options: the annotation is the type, the default
makes it optional, and ``typing.Annotated`` constraints give the domain::

    def sgd(params, *, lr: Annotated[float, Range(gt=0)] = 0.1,
            momentum: Annotated[float, Range(ge=0, lt=1)] = 0.0): ...

This keeps plugins plain functions (no schema classes to learn) while giving the user precise
errors: the key, the expected type, the allowed values. The option types are those a study file
can hold and dlbench can check (see ``ALLOWED``); TOML has no null, so ``None`` can only be a
default. A factory with any other option type is refused when it registers (:func:`unchecked`).
"""

from __future__ import annotations

import inspect
import math
import sys
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

MISSING = inspect.Parameter.empty
TOML_SCALARS = (bool, int, float, str)
ALLOWED = ("bool, int, float, str, Literal[...] of those, list[X], unions such as X | None, "
           "Annotated[X, Range(...)] or Annotated[X, Length(...)] of those, or no annotation (any value)")


# -- constraints --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """The domain of an int or float option: ``Annotated[float, Range(ge=0, lt=1)]`` is 0 <= x < 1.

    At most one lower bound (``gt``: >, ``ge``: >=) and one upper bound (``lt``: <, ``le``: <=).
    NaN and the infinities are in no range.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def __post_init__(self):
        if (self.gt is not None and self.ge is not None) or (self.lt is not None and self.le is not None):
            raise TypeError(f"{self!r}: give at most one lower bound (gt or ge) and one upper bound (lt or le)")
        if self.gt is None and self.ge is None and self.lt is None and self.le is None:
            raise TypeError("Range(): give a bound, e.g. Range(gt=0) or Range(ge=0, lt=1)")

    def fits(self, base) -> bool:
        return base in (int, float)

    def admits(self, value) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))

    def __str__(self) -> str:  # "> 0", ">= 0 and < 1"
        bounds = [(">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le)]
        return " and ".join(f"{op} {_number(bound)}" for op, bound in bounds if bound is not None)


@dataclass(frozen=True)
class Length:
    """The length of a list or str option: ``Annotated[list[int], Length(min=1)]`` is a non-empty list."""

    min: int = 0
    max: int | None = None

    def fits(self, base) -> bool:
        return base is str or typing.get_origin(base) is list

    def admits(self, value) -> bool:
        return self.min <= len(value) and (self.max is None or len(value) <= self.max)

    def __str__(self) -> str:
        if self.max is None:
            return f"of length >= {self.min}"
        return f"of length {self.min}" if self.min == self.max else f"of length {self.min} to {self.max}"


CONSTRAINTS = (Range, Length)


def _number(x) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else repr(x)


# -- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unresolved:
    """An annotation string that could not be evaluated (a name imported only for type checkers)."""

    text: str
    error: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Option:
    name: str
    annotation: Any
    default: Any = MISSING

    @property
    def required(self) -> bool:
        return self.default is MISSING


def options_of(factory) -> dict[str, Option]:
    """The keyword-only parameters of ``factory`` (a function or a class) as options."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    return {p.name: Option(p.name, _evaluated(p.annotation, target), p.default)
            for p in inspect.signature(target).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def misplaced_options(factory, contract: tuple[str, ...], kind: str = "component") -> str | None:
    """Why parameters of ``factory`` (a function, or a class's ``__init__``) that follow the
    ``contract``'s positional arguments could never be set by a study (None: there are none);
    ``kind`` names the component's kind in the message.

    dlbench calls a factory with the contract's arguments by position and the options by
    keyword, and reads only the keyword-only parameters as options: a positional-or-keyword
    ``width=64`` after them is no option (``plugins show`` would say "options: none")."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to say
        return None
    params = list(signature.parameters.values())
    own = params[1:] if inspect.isclass(factory) and params else params  # self
    positional = [p for p in own if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                               inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    extra = positional[len(contract):]
    if not extra:
        return None
    names = ", ".join(repr(p.name) for p in extra)
    one = len(extra) == 1
    subject = f"parameter{'' if one else 's'} {names}"
    verb = "is" if one else "are"
    if contract:
        where = (f"{subject} come{'s' if one else ''} after the contract's arguments ({', '.join(contract)}) "
                 f"but {verb} not keyword-only")
    else:
        article = "an" if kind[:1] in "aeiou" else "a"
        where = (f"{subject} {verb} not keyword-only, and {article} {kind}'s factory is called with no "
                 "positional arguments (only options)")
    return (f"{where}, so a study could never set {'it' if one else 'them'}; write "
            f"{'it' if one else 'them'} after a `*`: {_keyword_only_form(factory, params, extra)}")


def _keyword_only_form(factory, params: list[inspect.Parameter], extra: list[inspect.Parameter]) -> str:
    """The factory's ``def`` line with the ``extra`` parameters made keyword-only."""
    class Text(str):  # a string annotation shown as written, without quotes
        def __repr__(self) -> str:
            return str(self)

    def shown(p: inspect.Parameter, kind=None) -> inspect.Parameter:
        annotation = Text(p.annotation) if isinstance(p.annotation, str) else p.annotation
        return p.replace(kind=kind or p.kind, annotation=annotation)

    moved = {p.name for p in extra}
    kinds = inspect.Parameter
    head = [shown(p) for p in params if p.name not in moved and p.kind in (kinds.POSITIONAL_ONLY,
                                                                              kinds.POSITIONAL_OR_KEYWORD)]
    keyword = [shown(p, kinds.KEYWORD_ONLY) for p in extra]
    keyword += [shown(p) for p in params if p.kind is kinds.KEYWORD_ONLY]
    tail = [shown(p) for p in params if p.kind is kinds.VAR_KEYWORD]
    text = f"def {getattr(factory, '__name__', 'factory') if not inspect.isclass(factory) else '__init__'}" \
           f"{inspect.Signature(head + keyword + tail)}"
    return f"class {factory.__name__}: {text}" if inspect.isclass(factory) else text


def _evaluated(annotation, target):
    """A string annotation (``from __future__ import annotations``) evaluated as typing.get_type_hints
    would, in the globals of the factory's module; one that fails is kept as :class:`Unresolved`."""
    if not isinstance(annotation, str):
        return annotation
    module = sys.modules.get(getattr(target, "__module__", None) or "")
    namespace = getattr(inspect.unwrap(target), "__globals__", None) or (vars(module) if module else {})
    try:
        return eval(annotation, namespace)  # noqa: S307 - the plugin's own annotation, as typing does
    except Exception as exc:
        return Unresolved(annotation, f"{type(exc).__name__}: {exc}")


def unchecked(option: Option) -> str | None:
    """Why a study file could not set ``option`` with a checked value (None: it can): a type TOML
    cannot give or dlbench cannot check, a misplaced constraint, or a default outside the type."""
    why = _unsupported(option.annotation)
    if why:
        return (f"option {option.name!r} has type {_type_name(option.annotation)}, which dlbench cannot check "
                f"({why}); option types may be {ALLOWED}")
    if option.required:
        return None
    problem = check(option.default, option.annotation, f"the default of option {option.name!r}")
    if problem and option.default is None:
        problem += f"; annotate it {_type_name(option.annotation)} | None"
    return problem


def _unsupported(annotation) -> str | None:
    if annotation is MISSING or annotation is Any or annotation in TOML_SCALARS or annotation is type(None):
        return None
    if isinstance(annotation, Unresolved):
        return f"the annotation cannot be evaluated: {annotation.error}; import the names it uses at run time"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        bad = [a for a in args if type(a) not in TOML_SCALARS]
        return f"a Literal value must be a bool, int, float or str, not {bad[0]!r}" if bad else None
    if origin in (Union, types.UnionType):
        return next((why for why in map(_unsupported, args) if why), None)
    if origin is list and args:
        return _unsupported(args[0])
    if annotation is list:
        return "say what its items are, e.g. list[float]"
    if annotation is tuple or origin is tuple:
        return "TOML arrays arrive as lists: use list[X]"
    if origin is Annotated:
        base, *metadata = args
        for m in metadata:
            if not isinstance(m, CONSTRAINTS):
                return f"{m!r} is not a dlbench constraint: use dlbench.Range or dlbench.Length"
            if not m.fits(base):
                return f"{type(m).__name__} does not apply to {describe(base)}: Range bounds an int or float, " \
                       "Length a list or str"
        return _unsupported(base)
    return f"a study file cannot give a {_type_name(annotation)}"


def _type_name(annotation) -> str:
    return str(annotation) if isinstance(annotation, Unresolved) else inspect.formatannotation(annotation)


# -- values -------------------------------------------------------------------------------------


def describe(annotation) -> str:
    """A human name for a type annotation: ``int``, ``one of 'a', 'b'``, ``float > 0 or none``."""
    if annotation is MISSING or annotation is Any:
        return "any value"
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *metadata = typing.get_args(annotation)
        return " ".join([describe(base), *(str(m) for m in metadata if isinstance(m, CONSTRAINTS))])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"a list of {describe(typing.get_args(annotation)[0])}"
    if annotation is list:
        return "a list"
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


def check(value, annotation, path: str) -> str | None:
    """What is wrong with ``value`` given at key ``path`` for an option of type ``annotation``
    (None: nothing). The wrong type: ``<path>: expected float > 0, got string 'fast'``; outside
    the domain: ``<path>: must be > 0, got -1.0``; a list item: ``<path>[2]: must be ...``."""
    if not _fits(value, annotation):
        return f"{path}: expected {describe(annotation)}, got {show(value)}"
    return _violation(value, annotation, path)


def _fits(value, annotation) -> bool:
    """The type alone (ints are accepted where floats are)."""
    if annotation is MISSING or annotation is Any:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _fits(value, args[0])
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in args)  # True is not 1
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is list or annotation is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value if args)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _violation(value, annotation, path: str) -> str | None:
    """The first constraint a value of the right type breaks, with the key path of the item."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        base, *metadata = args
        inner = _violation(value, base, path)
        if inner:
            return inner
        broken = next((m for m in metadata if isinstance(m, CONSTRAINTS) and not m.admits(value)), None)
        infinite = isinstance(value, float) and not math.isfinite(value)
        return f"{path}: must be {broken}, got {value!r}{' (not a finite number)' if infinite else ''}" if broken else None
    if origin in (Union, types.UnionType):
        found = [_violation(value, a, path) for a in args if _fits(value, a)]
        return None if None in found else found[0]
    if origin is list and args:
        return next((msg for i, v in enumerate(value) if (msg := _violation(v, args[0], f"{path}[{i}]"))), None)
    return None


def coerce(value, annotation):
    """Normalize a conforming value: ints given for floats become floats (stable hashes)."""
    base = _base(annotation)
    if _is_int(value) and (base is float or _union_takes_float_not_int(base)):
        return float(value)
    if typing.get_origin(base) is list and isinstance(value, list):
        return [coerce(v, typing.get_args(base)[0]) for v in value]
    return value


def _base(annotation):
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation


def _union_takes_float_not_int(annotation) -> bool:
    if typing.get_origin(annotation) not in (Union, types.UnionType):
        return False
    members = [_base(a) for a in typing.get_args(annotation)]
    return float in members and int not in members


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def show(value) -> str:
    """A value as the user wrote it, with its TOML kind: ``string 'fast'``, ``integer 3``."""
    if value is None:
        return "none"
    kind = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    return f"{kind.get(type(value), type(value).__name__)} {value!r}"
