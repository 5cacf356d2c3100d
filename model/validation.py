"""Checks of user input before any work starts; every error names the offending key, value or frame.

Torch-free, so that the labeller and the AiiDA plugin can use it cheaply.
"""

from __future__ import annotations

import math
from dataclasses import fields
from types import UnionType
from typing import Any, Callable, Mapping, Union, get_args, get_origin, get_type_hints

#: A range rule of a setting: (test, what the test requires, for the message).
Rule = tuple[Callable[[Any], bool], str]


def at_least(low: float) -> Rule:
    return (lambda value: value >= low, f">= {low}")


def greater_than(low: float) -> Rule:
    return (lambda value: value > low, f"> {low}")


def within(low: float, high: float) -> Rule:
    """``low <= value < high``."""
    return (lambda value: low <= value < high, f"in [{low}, {high})")


def one_of(*choices: str) -> Rule:
    return (lambda value: value in choices, "one of " + ", ".join(repr(c) for c in choices))


def each_at_least(low: int) -> Rule:
    return (lambda values: all(v >= low for v in values), f"a list of integers >= {low}")


NON_EMPTY: Rule = (lambda value: value != "", "a non-empty string")


def matches_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as read from YAML or JSON) fits the type hint; NaN is no number, bool no int.

    A list fits a tuple hint and vice versa (YAML and JSON have only lists).
    """
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return any(matches_type(value, arg) for arg in args)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if origin in (list, tuple):
        item = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(matches_type(v, item) for v in value)
    if origin is dict:
        key, item = args
        return isinstance(value, dict) and all(matches_type(k, key) and matches_type(v, item) for k, v in value.items())
    return isinstance(value, origin or hint)


def describe_type(hint: Any) -> str:
    """``int | None`` -> ``an integer or null``."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return " or ".join(describe_type(arg) for arg in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
             dict: "a mapping", list: "a list"}
    if hint in names:
        return names[hint]
    if origin in (list, tuple):
        return f"a list of {describe_type(args[0]).split(' ', 1)[-1]}s" if args else "a list"
    if origin is dict:
        return f"a mapping of {describe_type(args[0]).split(' ', 1)[-1]} to {describe_type(args[1]).split(' ', 1)[-1]}"
    return f"a {getattr(hint, '__name__', hint)}"


def check_settings(values: Mapping[str, Any], hints: Mapping[str, Any], rules: Mapping[str, Rule], what: str) -> None:
    """Type and range of every value; ``what`` names the kind (``training setting``) in the message."""
    for name, value in values.items():
        if not matches_type(value, hints[name]):
            raise ValueError(f"{what} {name}: {value!r} is not {describe_type(hints[name])}")
        if value is not None and name in rules and not rules[name][0](value):
            raise ValueError(f"{what} {name}={value!r} must be {rules[name][1]}")


def check_dataclass(instance: Any, rules: Mapping[str, Rule], what: str) -> None:
    """:func:`check_settings` on every field of a dataclass instance."""
    values = {f.name: getattr(instance, f.name) for f in fields(instance)}
    check_settings(values, get_type_hints(type(instance)), rules, what)
