"""One typed loader for every config: YAML mappings onto dataclasses, with the field types checked.

Plain dataclasses rather than pydantic: the field comments already are the reference docs, the configs are small,
and a ~80-line checker gives errors in our own format (dotted key, expected type, exit 2) with no new dependency.

    cfg = build(RunConfig, data, "configs/demo.yaml")     # wrong type -> UserError naming `train.steps`
    data = apply_overrides(data, ["train.weights.behavior_kl=0"])  # --set reaches nested keys
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

import yaml

from .errors import UserError


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str, where: str) -> Any:
    """`value` checked against the annotation `tp` (ints are accepted for floats); nested dataclasses are built."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(arg, value, key, where)
            except UserError:
                continue
        raise _wrong(tp, value, key, where)
    if tp is type(None):
        if value is None:
            return None
        raise _wrong(tp, value, key, where)
    if origin is Literal:  # a closed set of values, checked where the field is defined
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        raise _wrong(tp, value, key, where)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, prefix=f"{key}.")
    if origin is list:
        if not isinstance(value, list):
            raise _wrong(tp, value, key, where)
        (arg,) = typing.get_args(tp) or (Any,)
        return [_coerce(arg, v, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(tp, value, key, where)
        return dict(value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _wrong(tp, value, key, where)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _wrong(tp, value, key, where)
    if tp in (str, bool):
        if isinstance(value, tp):
            return value
        raise _wrong(tp, value, key, where)
    raise TypeError(f"typed config: unsupported annotation {tp!r} for {key}")


def _wrong(tp: Any, value: Any, key: str, where: str) -> UserError:
    return UserError(f"{where}: config key {key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def build(cls: type, data: Any, where: str, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from a mapping: unknown keys, missing required keys and wrong types are
    UserErrors naming the dotted key (e.g. `train.weights.behavior_kl`) and `where` (the file or flag)."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise UserError(f"{where}: config key {prefix.rstrip('.') or '(top level)'} must be a mapping, "
                        f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown config key {prefix}{unknown[0]}; known keys"
                        f"{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(fields)}")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{where}: missing required config key {prefix}{missing[0]}")
    return cls(**{name: _coerce(hints[name], value, f"{prefix}{name}", where) for name, value in data.items()})


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def parse_assignment(item: str, flag: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE read as YAML (so 0 is a number, [1, 2] a list); a malformed item names the flag."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"{flag} takes KEY=VALUE, got {item!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        return key.strip(), value


def apply_overrides(data: dict[str, Any], items: list[str], flag: str = "--set") -> dict[str, Any]:
    """`--set a.b.c=VALUE` items merged into a nested mapping (a copy); the typed build checks the result."""
    out = _deep_copy(data)
    for item in items:
        key, value = parse_assignment(item, flag)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise UserError(f"{flag} {item}: config key {p} is not a mapping, so it has no key {parts[-1]}")
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}
