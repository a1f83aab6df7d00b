"""Config errors in words: "did you mean" suggestions, the key checks, and pydantic's validation errors
rewritten as one line per bad key with its fix (``write it without quotes: -p batch_size 64``)."""

from __future__ import annotations

import difflib
import keyword
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from ..core.io import ConfigError

__all__ = ["check_key", "did_you_mean"]


def _schema_extra(field: FieldInfo | None) -> dict[str, Any]:
    """A field's ``json_schema_extra`` (``example``, ``lineage``), ``{}`` for a key without one."""
    extra = field.json_schema_extra if field is not None else None
    return extra if isinstance(extra, dict) else {}


# ---------------------------------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------------------------------


def did_you_mean(word: str, choices: Sequence[str] | set[str] | frozenset[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    pool = sorted(set(choices))
    forms = {word, word.replace("-", "_").replace(" ", "_").lower(), word.strip("_ ").lower()}
    for form in forms:
        if form in pool and form != word:
            return f" (did you mean {form!r}?)"
    close = difflib.get_close_matches(word.replace("-", "_").lower(), pool, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_key(key: Any, where: str, known: Sequence[str] | frozenset[str]) -> None:
    """A key must be a Python identifier (papermill injects it as code) and one that is read somewhere."""
    if not isinstance(key, str):
        raise ConfigError(f"{where}: key {key!r} is not a name; keys are parameter names such as `batch_size`")
    if not key.isidentifier() or keyword.iskeyword(key):
        raise ConfigError(
            f"{where}: key {key!r} is not a valid parameter name (stage parameters are Python identifiers: letters, "
            f"digits and '_'; papermill injects keys as code){did_you_mean(key, known) or '; rename it'}"
        )
    if key not in known:
        raise ConfigError(
            f"{where}: unknown key {key!r}{did_you_mean(key, known)}; no stage reads it "
            "(`python -m helpers.book.pipeline keys` lists every key and the stages that read it)"
        )


# ---------------------------------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------------------------------


def _got(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 80 else text[:77] + '...'}"


def _looks_number(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return math.isfinite(float(value.replace("_", "")))
    except ValueError:
        return False


def _hint(kind: str, value: Any, key: str, example: str, cli: bool) -> str:
    show = (lambda v: f"-p {key} {v}") if cli else (lambda v: f"`{key}: {v}`")
    if kind in ("int_type", "int_parsing", "int_from_float"):
        if _looks_number(value) and float(value) == int(float(value)):
            return f"write it without quotes: {show(int(float(value)))}"
        return f"give a whole number, e.g. {example if not cli else show(example.split(': ', 1)[-1])}"
    if kind in ("float_type", "float_parsing"):
        if _looks_number(value):
            return f"write it without quotes: {show(value)}"
        return f"give a number (0.005 and 5e-3 both work), e.g. {example}"
    if kind == "bool_type":
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return f"write true or false without quotes: {show('false')} or {show('true')}"
        return f"give true or false, e.g. {example}"
    if kind == "string_type":
        return f"quote it: {show(repr(str(value)))}" if "[" not in key else f"quote it: {str(value)!r}"
    if kind in ("list_type", "too_short"):
        return f"give a list, e.g. {example}"
    if kind in ("dict_type", "model_type"):
        return f"give a mapping, e.g. {example}"
    if kind == "finite_number":
        return f"give a finite number, e.g. {example}"
    return f"e.g. {example}"


def _what(kind: str, msg: str, ctx: Mapping[str, Any] | None, value: Any) -> str:
    ctx = dict(ctx or {})
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"must be one of {allowed}{did_you_mean(str(value), allowed)}"
    if kind == "value_error":
        return str(ctx.get("error", msg)).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        return "may use letters, digits, spaces, '.', '_', '+' and '-' only, and may not start with '.'"
    names = {"int_type": "must be a whole number", "int_parsing": "must be a whole number",
             "int_from_float": "must be a whole number", "float_type": "must be a number",
             "float_parsing": "must be a number", "bool_type": "must be true or false",
             "string_type": "must be a string", "list_type": "must be a list", "dict_type": "must be a mapping",
             "finite_number": "must be a finite number",
             "invalid-json-value": "must be plain data (text, numbers, lists)",
             "extra_forbidden": "is not a known key"}  # fmt: skip
    if kind in names:
        return names[kind]
    return msg[0].lower() + msg[1:] if msg else kind


_RANGES = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_UNION_TAGS = ("str", "int", "float", "bool", "list", "dict", "none")


def _clean_loc(loc: Sequence[Any]) -> tuple[str, ...]:
    """The path into the value, without pydantic's names of union members (``str``, ``dict[str,...]``)."""
    return tuple(str(x) for x in loc if not any(ch in str(x) for ch in "[]()") and str(x) not in _UNION_TAGS)


def _format(exc: ValidationError, origin: Mapping[str, str], model: type[BaseModel]) -> str:
    errors = exc.errors(include_url=False)
    kinds: dict[tuple[str, ...], list[str]] = {}
    for err in errors:  # a union (a string or a mapping) fails once per member: one line says both
        kinds.setdefault(_clean_loc(err["loc"]), []).append(err["type"])
    lines: list[str] = []
    for err in errors:
        loc = _clean_loc(err["loc"])
        key = loc[0] if loc else "?"
        field = model.model_fields.get(key)
        extra = _schema_extra(field)
        example = str(extra.get("example", f"{key}: ..."))
        desc = (field.description if field is not None else None) or ""
        path = key + "".join(f"[{x}]" for x in loc[1:])
        where = origin.get(key, "config")
        cli = where.startswith("-p")
        prefix = f"-p {path}" if cli else f"{where}: `{path}`"
        kind, value, ctx = err["type"], err.get("input"), dict(err.get("ctx") or {})
        if kind == "value_error":
            line = f"{prefix}: {str(ctx.get('error', err['msg'])).removeprefix('Value error, ')}"
        elif kind in _RANGES:
            limit = next(iter(ctx.values()), "?")
            limit = int(limit) if isinstance(limit, float) and limit.is_integer() else limit
            line = (f"{prefix} must be {_RANGES[kind]} {limit}, got {_got(value)}"
                    f"{f' ({desc})' if desc else ''}; e.g. {example}")
        elif kind == "string_pattern_mismatch" and key == "run_name":
            line = (f"{prefix} must be a folder name of letters, digits, '.', '_' and '-' (not starting with '.'), "
                    f"got {_got(value)}; e.g. {example}")
        elif len(set(kinds[loc])) > 1:
            options = " or ".join(dict.fromkeys(_what(k, "", {}, value).removeprefix("must be ") for k in kinds[loc]))
            line = f"{prefix} must be {options}, got {_got(value)}; e.g. {example}"
        else:
            line = f"{prefix} {_what(kind, err['msg'], ctx, value)}, got {_got(value)}"
            if kind != "literal_error":
                line += f"; {_hint(kind, value, key if len(loc) == 1 else path, example, cli)}"
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)
