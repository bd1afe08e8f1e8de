"""A plugin's options, read from its factory's signature, and checks of values against them.

A factory's keyword-only parameters are its options: the annotation is the type, the default
makes it optional. This keeps plugins plain functions (no schema classes to learn) while giving
the user precise errors: the key, the expected type, the allowed values.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

MISSING = inspect.Parameter.empty


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
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: fall back to the raw ones
        hints = {}
    options = {}
    for p in inspect.signature(target).parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            options[p.name] = Option(p.name, hints.get(p.name, p.annotation), p.default)
    return options


def describe(annotation) -> str:
    """A human name for a type annotation: ``int``, ``one of 'a', 'b'``, ``float or none``."""
    if annotation is MISSING or annotation is Any:
        return "any value"
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(annotation))
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return f"a list of {describe(args[0])}" if args else "a list"
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


def conforms(value, annotation) -> bool:
    """Whether a TOML value fits the annotation (ints are accepted where floats are)."""
    if annotation is MISSING or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(conforms(value, a) for a in typing.get_args(annotation))
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return isinstance(value, list) and all(conforms(v, args[0]) for v in value if args)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def coerce(value, annotation):
    """Normalize a conforming value: ints given for floats become floats (stable hashes)."""
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    origin = typing.get_origin(annotation)
    if origin in (list, tuple) and isinstance(value, list) and typing.get_args(annotation):
        return [coerce(v, typing.get_args(annotation)[0]) for v in value]
    if origin in (Union, types.UnionType) and float in typing.get_args(annotation):
        if isinstance(value, int) and not isinstance(value, bool) and int not in typing.get_args(annotation):
            return float(value)
    return value
