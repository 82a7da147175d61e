"""The declaration mechanism behind node.yaml and peers.yaml (node.config): a section is a dataclass whose
fields are declared with `setting(default, doc, ...)`, and the same declarations validate a YAML mapping
(`parse_section`: one line naming the key for a wrong value) and write the documented template
(`render_template`). What the sections are lives in node.config; how any section is read and written, here.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from typing import Any, Callable, Literal, Mapping

import yaml

class ConfigError(ValueError):
    """A configuration problem, already phrased as the one line the admin will read."""


# --------------------------------------------------------------------------------------------------
# The shared mechanism: declarations, validation, template
# --------------------------------------------------------------------------------------------------

def setting(default: Any, doc: str, *, min: float | None = None, max: float | None = None,
            check: Callable[[Any], str | None] | None = None, example: Any = None) -> Any:
    """Declare one key: its default, the comment written above it, and optional bounds / a check that
    returns an error message (or None when the value is fine)."""
    meta = {"doc": doc, "min": min, "max": max, "check": check, "example": example}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str) -> Any:
    """Declare a nested section (a dataclass of settings)."""
    return field(default_factory=cls, metadata={"doc": doc, "section": True})


def describe(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if not isinstance(value, (dict, list)) else yaml.safe_dump(value, default_flow_style=True).strip()


def _coerce(value: Any, tp: Any, key: str, meta: Mapping[str, Any]) -> Any:
    """Check `value` against the annotated type `tp`; return the value (ints widened to float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return _coerce(value, rest[0] if len(rest) == 1 else typing.Union[tuple(rest)], key, meta)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, args))}, got {describe(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be a list, got {describe(value)}")
        return [_coerce(item, args[0], f"{key}[{i}]", {}) for i, item in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {describe(value)}")
        return value
    lo, hi = meta.get("min"), meta.get("max")
    if tp in (int, float):
        ok = isinstance(value, int if tp is int else (int, float)) and not isinstance(value, bool)
        ok = ok and (lo is None or value >= lo) and (hi is None or value <= hi)
        if not ok:
            kind = "an integer" if tp is int else "a number"
            if lo is not None and hi is not None:
                bounds = f" in [{lo:g}, {hi:g}]"
            elif lo is not None:
                bounds = f" >= {lo:g}"
            elif hi is not None:
                bounds = f" <= {hi:g}"
            else:
                bounds = ""
            raise ConfigError(f"{key}: must be {kind}{bounds}, got {describe(value)}")
        return float(value) if tp is float else value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {describe(value)}")
        return value
    raise TypeError(f"unsupported setting type {tp!r} for {key}")  # a programming error, not a config one


def parse_section(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a YAML mapping, refusing unknown keys (typos silently ignored are worse)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'top level'}: must be a mapping of keys, got {describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in raw:
        if name not in fields:
            where = f"{prefix}.{name}" if prefix else str(name)
            known = ", ".join(fields)
            raise ConfigError(f"{where}: unknown key (known here: {known})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        key = f"{prefix}.{name}" if prefix else name
        if f.metadata.get("section"):
            values[name] = parse_section(hints[name], raw[name], key)
            continue
        value = _coerce(raw[name], hints[name], key, f.metadata)
        check = f.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise ConfigError(f"{key}: {problem}, got {describe(value)}")
        values[name] = value
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate:
        problem = validate()
        if problem:
            raise ConfigError(f"{prefix}.{problem}" if prefix else problem)
    return obj


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1_000).strip().removesuffix("\n...").strip()


def render_template(cls: type, obj: Any = None, indent: int = 0) -> str:
    """The documented YAML for a section: every key with a comment and its (default) value."""
    obj = obj if obj is not None else cls()
    pad = " " * indent
    out: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        doc = f.metadata.get("doc", "")
        for line in doc.splitlines():
            out.append(f"{pad}# {line}".rstrip())
        value = getattr(obj, f.name)
        if f.metadata.get("section"):
            out.append(f"{pad}{f.name}:")
            out.append(render_template(hints[f.name], value, indent + 2))
        else:
            out.append(f"{pad}{f.name}: {_yaml_scalar(value)}")
        if indent == 0:
            out.append("")
    return "\n".join(out).rstrip("\n") + ("\n" if indent == 0 else "")
