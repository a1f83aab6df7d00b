"""Resolution: a config file plus ``-p`` overrides -> what one stage gets (:func:`resolve`), validated against
:class:`~helpers.book.config.Config` extended by the notebooks' own parameters; the parsing of ``-p`` values and
the reference table of every key (:func:`describe`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, JsonValue, StrictBool, StrictInt, StrictStr, ValidationError, create_model

from ..core.io import ConfigError
from .config import PIPELINE_KEYS, Config, Number, _known_models
from .config_messages import _format, _schema_extra, check_key, did_you_mean
from .stage_params import _NONLITERAL, StageInfo, stage_infos

__all__ = ["Resolved", "describe", "known_keys", "parse_override", "resolve"]

# ---------------------------------------------------------------------------------------------------------------------
# The model used for validation: Config plus notebook parameters it does not type
# ---------------------------------------------------------------------------------------------------------------------


def _inferred(default: Any) -> Any:
    if default is _NONLITERAL or default is None:
        return JsonValue
    if isinstance(default, bool):
        return StrictBool
    if isinstance(default, int):
        return StrictInt
    if isinstance(default, float):
        return Number
    if isinstance(default, str):
        return StrictStr
    if isinstance(default, (list, tuple)):
        return list[JsonValue]
    if isinstance(default, dict):
        return dict[StrictStr, JsonValue]
    return JsonValue


def _model(infos: Mapping[str, StageInfo]) -> type[BaseModel]:
    extra: dict[str, Any] = {}
    for info in infos.values():
        for name, default in info.defaults.items():
            if name not in Config.model_fields and name not in extra:
                extra[name] = (_inferred(default), Field(None, json_schema_extra={"example": f"{name}: {default!r}"}))
    return create_model("StageParameters", __base__=Config, **extra)


def _plain(value: Any) -> Any:
    """Tuples as lists (papermill and JSON know lists), recursively."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _valid(model: type[BaseModel], key: str, value: Any) -> bool:
    try:
        model.model_validate({key: value})
    except ValidationError:
        return False
    return True


def parse_override(key: str, text: str, notebooks: str | Path) -> Any:
    """A ``-p name value`` value: YAML (``5e-3`` is a number, ``[a, b]`` a list); text for string parameters.

    When YAML's reading does not fit the parameter but the text itself does (a ``question`` or ``context_format``
    such as ``Transcript: {text}``, which YAML reads as a mapping), the text is kept as typed.
    """
    from ..core.io import yaml_load

    model = _model(stage_infos(notebooks))
    try:
        value = yaml_load(text)
    except Exception:  # noqa: BLE001 - not YAML: the text itself
        value = text
    if not isinstance(value, str) and key in model.model_fields and not _valid(model, key, value) \
            and _valid(model, key, text):
        return text  # e.g. a question containing ': ' that YAML reads as a mapping
    return value


# ---------------------------------------------------------------------------------------------------------------------
# Resolution: config + overrides -> what one stage gets
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """A validated configuration as one stage sees it."""

    stage: str
    #: What papermill injects: only the keys the stage reads (no run_dir; the pipeline adds it).
    params: dict[str, Any]
    #: The notebook's defaults overlaid with ``params``: what the stage runs with (recorded in stage.json).
    effective: dict[str, Any]
    #: Keys set by the config or overrides.
    explicit: tuple[str, ...]
    #: The whole validated config with the overrides applied (written to the run's config.yml).
    merged: dict[str, Any]
    #: The validated overrides (name the run folder).
    overrides: dict[str, Any]


def known_keys(infos: Mapping[str, StageInfo]) -> frozenset[str]:
    """Every key some stage (or the pipeline) reads."""
    keys: set[str] = set(PIPELINE_KEYS)
    for info in infos.values():
        keys |= info.reads
    return frozenset(keys)


def resolve(stage: str, config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, *,
            notebooks: str | Path, source: str = "config") -> Resolved:
    """Validate ``config`` (a whole config file) and ``overrides`` (``-p``) for ``stage``; raise
    :class:`~helpers.core.io.ConfigError` naming every bad key or value and its fix."""
    infos = stage_infos(notebooks)
    if stage not in infos:
        raise ConfigError(f"stage {stage!r} has no notebook source in {notebooks}")
    info = infos[stage]
    known = known_keys(infos)
    overrides = dict(overrides or {})
    for key in config:
        check_key(key, f"config {source}", known)
        if key == "run_dir":
            raise ConfigError(f"config {source}: `run_dir` is not a config key; set `run_name: <name>` (results go "
                              "to runs/<name>/) or pass -p run_dir <folder>")
    stage_keys = info.reads | {"run_dir"}
    for key in overrides:
        check_key(key, f"-p {key}", known)
        if key not in stage_keys:
            readers = sorted(s for s, i in infos.items() if key in i.reads)
            raise ConfigError(
                f"-p {key}: stage {stage} does not read `{key}`{did_you_mean(key, stage_keys)} (read by "
                f"{readers or 'the pipeline only'}); its parameters are {sorted(stage_keys)}"
            )
    data = {k: _plain(v) for k, v in {**config, **overrides}.items()}
    origin = {k: f"config {source}" for k in config} | {k: f"-p {k}" for k in overrides}
    model = _model(infos)
    try:
        checked = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, origin, model)) from None
    merged = {k: _plain(getattr(checked, k)) for k in data}
    _cross_checks(merged, origin, info)
    if "dataset" in merged and "datasets" in merged:  # stages identify on the first dataset: put `dataset` first
        ds = merged["datasets"]
        merged["datasets"] = {merged["dataset"]: ds[merged["dataset"]], **ds}
    params = {k: v for k, v in merged.items() if k in info.reads}
    defaults = {k: v for k, v in info.defaults.items() if v is not _NONLITERAL and k != "run_dir"}
    effective = {**defaults, **params}
    return Resolved(stage, params, effective, tuple(sorted(k for k in data if k != "run_dir")),
                    {k: v for k, v in merged.items() if k != "run_dir"},
                    {k: merged[k] for k in overrides})


def _cross_checks(merged: Mapping[str, Any], origin: Mapping[str, str], info: StageInfo) -> None:
    if "dataset" in merged and "datasets" in merged and merged["dataset"] not in merged["datasets"]:
        names = list(merged["datasets"])
        raise ConfigError(
            f"{origin['dataset']}: `dataset: {merged['dataset']}` is not one of the config's datasets {names}"
            f"{did_you_mean(merged['dataset'], names)}; set `dataset` to one of them or add it to `datasets`"
        )
    if "model_path" in merged and "model" not in merged and "model" in info.reads:
        guess = ""
        try:
            from ..core.families import get_adapter

            guess = get_adapter(str(merged["model_path"])).name
        except Exception:  # noqa: BLE001 - no family recognisable from the path
            guess = ""
        known = ", ".join(_known_models())
        fix = f"add `model: {guess}`" if guess and guess != "generic" else "add `model: <family>`"
        raise ConfigError(
            f"{origin['model_path']} sets `model_path: {merged['model_path']}` but not `model`, so the stage would "
            f"load it as the organism; {fix} to the config (known models: {known})"
        )


# ---------------------------------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------------------------------


def describe(notebooks: str | Path) -> list[dict[str, Any]]:
    """Every key: its type, which stages read it, what it means, an example (the reference table)."""
    infos = stage_infos(notebooks)
    model = _model(infos)
    rows = []
    for key in sorted(known_keys(infos)):
        field = model.model_fields.get(key)
        extra = _schema_extra(field)
        readers = [s for s, i in infos.items() if key in i.reads] or ["pipeline"]
        rows.append({
            "key": key,
            "type": str(field.annotation) if field is not None else "any",
            "stages": readers,
            "description": (field.description if field is not None else None) or "(notebook parameter)",
            "example": extra.get("example"),
            "lineage": extra.get("lineage"),
        })  # fmt: skip
    return rows
