"""msgspec's validation messages, said in words a client's author can act on.

msgspec reports ``Expected `int | null`, got `str` `` or ``Expected `str` matching regex
'^[A-Za-z0-9]…'``: library vocabulary and raw regexes. :func:`explain` turns such a message into
what is wrong and what is accepted, resolving the field's declared type to list the valid values
of an enum or the known fields of an object.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import msgspec.inspect as mi

# Patterns declared in schemas, described in words (registered next to their declaration).
_PATTERN_WORDS: dict[str, str] = {}


def describe_pattern(pattern: str, words: str) -> str:
    """Register how a ``Meta(pattern=...)`` is explained to clients; returns the pattern."""
    _PATTERN_WORDS[pattern] = words
    return pattern


_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "str": "a string", "bool": "true or false", "null": "null",
    "array": "an array", "object": "an object", "datetime": "an RFC 3339 date-time",
    "uuid": "a UUID", "date": "a date", "bytes": "base64 text",
}
_EXPECTED = re.compile(r"^Expected `([^`]*)`, got `([^`]*)`$")
_LENGTH = re.compile(r"^Expected `(str|array|object)` of length (<=|>=) (\d+)$")
_BOUND = re.compile(r"^Expected `(int|float)` (<=|>=|<|>) (-?[\d.e+]+)$")
_REGEX = re.compile(r"^Expected `str` matching regex '(.*)'$", re.S)
_ENUM = re.compile(r"^Invalid enum value (.*)$")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]*)`$")
_SEGMENT = re.compile(r"\[(\d+)\]|([^.\[\]]+)")
DATETIME_HINT = "an RFC 3339 date-time with an offset, e.g. 2026-01-31T12:00:00Z or 2026-01-31T14:00:00+02:00"


def _words(types: str) -> str:
    names = [_TYPE_WORDS.get(t.strip(), t.strip()) for t in types.split("|")]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _strip(t: mi.Type) -> mi.Type:
    while isinstance(t, mi.Metadata):
        t = t.type
    return t


def resolve(root: Any, path: str | None) -> mi.Type | None:
    """The declared type at ``path`` (``results[3].status``) of ``root``, or None if unknown."""
    t: mi.Type | None = mi.type_info(root)
    for index, name in _SEGMENT.findall(path or ""):
        t = _strip(t)
        if isinstance(t, mi.UnionType):  # `X | None`: follow the one navigable member
            members = [_strip(m) for m in t.types if not isinstance(_strip(m), mi.NoneType)]
            t = members[0] if len(members) == 1 else None
        if index and isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
            t = t.item_type
        elif name and isinstance(t, (mi.StructType, mi.DataclassType)):
            t = next((f.type for f in t.fields if f.encode_name == name), None)
        elif name and isinstance(t, mi.DictType):
            t = t.value_type
        else:
            return None
        if t is None:
            return None
    return _strip(t) if t is not None else None


def _literals(t: mi.Type | None) -> list[Any] | None:
    if isinstance(t, mi.UnionType):
        values = [v for m in t.types for v in (_literals(_strip(m)) or [])]
        return values or None
    if isinstance(t, mi.LiteralType):
        return list(t.values)
    if isinstance(t, mi.EnumType):
        return [e.value for e in t.cls]
    return None


def field_names(t: mi.Type | None) -> list[str] | None:
    if isinstance(t, (mi.StructType, mi.DataclassType)):
        return [f.encode_name for f in t.fields]
    return None


def explain(reason: str, root: Any, path: str | None, *, noun: str = "field") -> tuple[str, str | None]:
    """(message, field path) for a msgspec validation ``reason`` at ``path`` of type ``root``."""
    where = (f"`{path}`" if noun == "field" else f"{noun} `{path}`") if path else "the body"
    if m := _UNKNOWN.match(reason):
        field = f"{path}.{m.group(1)}" if path else m.group(1)
        known = field_names(resolve(root, path))
        accepted = f"; accepted: {', '.join(known)}" if known else ""
        return f"unknown {noun} `{field}`{accepted}", field
    if _MISSING.match(reason):  # validation_field already moved the path to the missing field
        return f"{noun} `{path}` is required", path
    if m := _ENUM.match(reason):
        values = _literals(resolve(root, path))
        accepted = f"; valid values: {', '.join(map(str, values))}" if values else ""
        return f"{where} has the invalid value {m.group(1)}{accepted}", path
    if m := _REGEX.match(reason):
        # msgspec quotes the pattern with its backslashes doubled
        words = _PATTERN_WORDS.get(m.group(1).replace("\\\\", "\\"), "a value of another form")
        return f"{where} is not valid: expected {words}", path
    if m := _LENGTH.match(reason):
        kind, op, n = m.groups()
        unit = {"str": "characters", "array": "items", "object": "keys"}[kind]
        if op == ">=" and n == "1" and kind == "str":
            return f"{where} must not be empty", path
        return f"{where} must hold {'at most' if op == '<=' else 'at least'} {n} {unit}", path
    if m := _BOUND.match(reason):
        op, n = m.group(2), m.group(3)
        words = {"<=": "at most", ">=": "at least", "<": "less than", ">": "more than"}[op]
        return f"{where} must be {words} {n}", path
    if m := _EXPECTED.match(reason):
        expected, got = m.groups()
        return f"{where} must be {_words(expected)}, got {_words(got)}", path
    if reason.startswith("Invalid RFC3339") or "datetime" in reason:
        if "timezone" in reason:
            return f"{where} must carry a timezone offset: {DATETIME_HINT}", path
        return f"{where} must be {DATETIME_HINT}", path
    if reason.startswith("Invalid UUID"):
        return f"{where} must be a UUID such as 1b4e28ba-2fa1-11d2-883f-0016d3cca427", path
    return f"{reason} at {where}" if path else reason, path


def struct_fields(type_: type) -> list[str]:
    """The encoded field names of a Struct (the accepted query parameters of a handler)."""
    return [f.encode_name for f in msgspec.structs.fields(type_)]
