"""What every table of the daemon's config shares (edge/daemon/config.py): a pydantic model that takes
TOML's types as they are (no "10" for 10, no 1 for true), refuses NaN, infinity and unknown keys,
and turns pydantic's report into one line naming the key (`source.fps: expected a number, got str
'fast'`): the first error only, worded for the person editing the file."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from edge.errors import EdgeError


class ConfigError(EdgeError):
    """The daemon configuration is invalid; the message names the key."""

    exit_code = 2


class Section(BaseModel):
    """One table of the config file. Strict: TOML already has integers, floats, booleans, strings,
    lists and tables, so a value of another type is a mistake, not something to coerce."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True)
class Hint:
    """Field metadata: what the error says instead of the bare bounds, where they would not say what
    the value means (`expected [width, height]`)."""

    text: str


def invalid(message: str, key: str = "") -> PydanticCustomError:
    """A validator's error; `key` names the field it is about, relative to the table checked."""
    return PydanticCustomError("config", "{message}", {"message": message, "key": key})


def describe(value) -> str:
    return f"{type(value).__name__} {value!r}"


def _strip(tp):
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _model(tp) -> type[BaseModel] | None:
    tp = _strip(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def locate(root: type[BaseModel], loc) -> tuple[Any, list]:
    """The declared type at `loc` (("source", "fps") or ("differential", "alerts", 0)) and its
    constraints (annotated_types bounds, lengths, Hint)."""
    tp, metadata = root, []
    for part in loc:
        if isinstance(part, int):  # an item of a list: its Annotated[...] carries the item's bounds
            args = typing.get_args(_strip(tp))
            tp = args[0] if args else Any
            metadata = [
                m for a in typing.get_args(tp)[1:] for m in (a.metadata if isinstance(a, FieldInfo) else [a])
            ]
            continue
        model = _model(tp)
        info = model.model_fields.get(part) if model else None
        if info is None:
            return Any, []
        tp, metadata = info.annotation, list(info.metadata)
    return tp, metadata


def bounds(metadata) -> dict:
    """{"ge": 0, "le": 64, ...} of a field's metadata (pydantic's annotated_types Ge, Gt, Le, Lt)."""
    return {
        name: getattr(m, name)
        for m in metadata
        for name in ("ge", "gt", "le", "lt")
        if getattr(m, name, None) is not None
    }


def number(x) -> str:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    return f"{x:,}" if isinstance(x, int) and abs(x) >= 10_000 else str(x)


def range_text(b: dict, integer: bool) -> str:
    lo, hi = b.get("ge", b.get("gt")), b.get("le", b.get("lt"))
    if lo is not None and hi is not None:
        if integer and "ge" in b and "le" in b:
            return f"between {number(lo)} and {number(hi)}"
        return f"in {'[' if 'ge' in b else '('}{number(lo)}, {number(hi)}{']' if 'le' in b else ')'}"
    if lo is not None:
        return f"{'>=' if 'ge' in b else '>'} {number(lo)}"
    return f"{'<=' if 'le' in b else '<'} {number(hi)}"


def choices(tp) -> tuple:
    """The values a Literal[...] field takes."""
    tp = _strip(tp)
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else ()


def _or(items) -> str:
    items = [str(i) for i in items]
    return ", ".join(items[:-1]) + f" or {items[-1]}" if len(items) > 1 else "".join(items)


_EXPECTED = {
    "model_type": "a table",
    "dict_type": "a table",
    "list_type": "a list",
    "bool_type": "true or false",
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
}
_RANGE = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
_SHAPE = ("too_short", "too_long", "string_too_short", "string_too_long", "string_pattern_mismatch")


def _message(err: dict, root: type[BaseModel]) -> str:
    kind, value, loc = err["type"], err.get("input"), err["loc"]
    if kind == "config":
        return err["ctx"]["message"]
    if kind == "missing":  # the config has a default for every key; a request body may lack one
        return "required"
    if kind == "extra_forbidden":
        model = _model(locate(root, loc[:-1])[0])
        return f"unknown key (known: {', '.join(sorted(model.model_fields))})" if model else "unknown key"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {describe(value)}"
    if kind == "finite_number":  # TOML has nan and inf: no setting here means either
        return f"expected a finite number, got {value}"
    tp, metadata = locate(root, loc)
    if kind == "literal_error":
        got = repr(value) if isinstance(value, str) else describe(value)
        return f"expected {_or(choices(tp))}, got {got}"
    got = number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
    hint = next((m.text for m in metadata if isinstance(m, Hint)), None)
    if hint and kind in _RANGE + _SHAPE:
        return f"{hint}, got {got}"
    if kind in _RANGE:
        return f"must be {range_text(bounds(metadata), _strip(tp) is int)}, got {got}"
    if kind in _SHAPE:
        return f"has the wrong form ({err['msg'].lower()}), got {got}"
    return err["msg"]  # a type of error this table does not produce: pydantic's own words


def key_path(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def error_line(exc: ValidationError, root: type[BaseModel]) -> str:
    """`source.fps: expected a number, got str 'fast'`: the first error, one line."""
    err = exc.errors()[0]
    loc = err["loc"]
    if err["type"] == "config" and err["ctx"].get("key"):
        loc = (*loc, *err["ctx"]["key"].split("."))
    return f"{key_path(loc)}: {_message(err, root)}"
