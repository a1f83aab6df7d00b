"""The typed configuration: every config key and stage parameter, checked before any kernel starts.

A run is described by a YAML file (``configs/*.yml``) plus ``-p name value`` overrides; papermill injects them
into a stage notebook's ``parameters`` cell *as Python code*. So before anything runs, :func:`resolve`

* refuses keys that are not Python identifiers (a key is code once injected) or that no stage reads, with a
  "did you mean" suggestion (``labels_`` -> ``labels``, ``batch-size`` -> ``batch_size``);
* checks every value against :class:`Config` (pydantic, strict): ``batch_size: "64"`` is an error that says to
  drop the quotes, booleans are only ``true``/``false`` (the *string* ``"false"`` is refused, never truthy),
  ``5e-3`` is a number (see :func:`helpers.core.io.yaml_load`), ranges and allowed values are enforced;
* passes a stage only the parameters it reads: the names in its ``parameters`` cell, parsed from the notebook at
  run time (so a parameter added to a notebook is known at once, typed by its default), plus
  :data:`SUBJECT_KEYS` for stages that call :func:`helpers.subjects.subject_loading.config_params`.

Keys shared by several stages are typed here, once; a notebook parameter without an entry in :class:`Config` is
typed by its default value (``int`` default: whole numbers only, and so on). :func:`describe` lists every key with
its type and the stages that read it (``python -m helpers.book.pipeline keys``).
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import keyword
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
)
from pydantic.fields import FieldInfo

from ..core.io import STAGES, ConfigError

__all__ = [
    "Config",
    "DTYPES",
    "PIPELINE_KEYS",
    "POSITION_KINDS",
    "PROMPT_STYLES",
    "RUN_NAME",
    "SELECTOR_METHODS",
    "SPLITS",
    "STAGE_NAME",
    "SUBJECT_KEYS",
    "Resolved",
    "StageInfo",
    "check_key",
    "describe",
    "did_you_mean",
    "lineage_mismatches",
    "params_hash",
    "parse_override",
    "resolve",
    "stage_info",
    "stage_infos",
]

# Allowed values, kept here so validating a config imports neither torch nor the model code; tests check that they
# equal helpers.log.activation_log.POSITION_KINDS, helpers.identify.selection.METHODS,
# helpers.subjects.item_prompts.PROMPT_STYLES, ...
# (written as Literal types, which the schema below uses and a type checker can read, and as tuples of the same values)
PositionKind = Literal["all", "audio", "text", "last"]
SelectorMethod = Literal["lap", "lape", "mad", "cas", "aape", "random"]
PromptStyle = Literal["multiple_choice", "label_words"]
Split = Literal["train", "identify", "evaluate"]
DType = Literal["auto", "float32", "fp32", "float16", "fp16", "bfloat16", "bf16"]
POSITION_KINDS: tuple[str, ...] = get_args(PositionKind)
SELECTOR_METHODS: tuple[str, ...] = get_args(SelectorMethod)
PROMPT_STYLES: tuple[str, ...] = get_args(PromptStyle)
SPLITS: tuple[str, ...] = get_args(Split)
DTYPES: tuple[str, ...] = get_args(DType)

#: Every config key :func:`helpers.subjects.subject_loading.load_subject` and
#: :func:`helpers.subjects.run_items.load_items`
#: read; a stage that calls ``config_params(globals())`` receives those present in the config without naming them
#: itself.
SUBJECT_KEYS: tuple[str, ...] = (
    "model", "model_path", "labels", "dtype", "device", "device_map", "trust_remote_code", "allow_hub",
    "prompt_style", "question", "system_prompt", "context_format", "seed", "datasets", "dataset",
)  # fmt: skip
#: Keys the pipeline itself reads (not passed to any notebook as such).
PIPELINE_KEYS: tuple[str, ...] = ("run_name", "run_dir")

#: Stage names: two digits, underscore, lower-case words (checked before anything is created).
STAGE_NAME = re.compile(r"^[0-9]{2}_[a-z][a-z0-9_]{0,40}$")
#: Run names become folder names under runs/: no separators, no leading dot.
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: Dataset and label names end up in file names (``stats_<dataset>.safetensors``): no separators, no leading dot.
_NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,99}$"


# ---------------------------------------------------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------------------------------------------------


def _distinct(values: list[Any]) -> list[Any]:
    dup = sorted({str(v) for v in values if values.count(v) > 1})
    if dup:
        raise ValueError(f"must list each name once; {dup} appear(s) more than once")
    return values


def _known_model(value: str) -> str:
    known = _known_models()
    if value.lower() not in known:
        raise ValueError(f"unknown model {value!r}{did_you_mean(value.lower(), known)}; known models: {known}")
    return value


def _known_models() -> list[str]:
    from ..core.families import ADAPTERS  # imports torch: only for configs of real models

    return sorted({"organism", *ADAPTERS})


def _no_double_dot(value: str) -> str:
    if ".." in value:
        raise ValueError("may not contain '..'")
    return value


Int0 = Annotated[StrictInt, Field(ge=0)]
Int1 = Annotated[StrictInt, Field(ge=1)]
Seed = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
Number = Annotated[float, Field(allow_inf_nan=False)]
Share = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Unit = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
#: Steering strengths: gates are scaled by (1 + alpha); beyond +-1000 float activations overflow.
Strength = Annotated[float, Field(ge=-1000, le=1000, allow_inf_nan=False)]
Name = Annotated[StrictStr, Field(pattern=_NAME), AfterValidator(_no_double_dot)]
Selector = SelectorMethod
Labels = Annotated[list[Name], Field(min_length=2), AfterValidator(_distinct)]
DatasetEntry = StrictStr | dict[StrictStr, JsonValue]
Datasets = Annotated[dict[Name, DatasetEntry], Field(min_length=1)]
Selectors = Annotated[list[Selector], Field(min_length=1), AfterValidator(_distinct)]
ModelName = Annotated[StrictStr, AfterValidator(_known_model)]
RunName = Annotated[StrictStr, Field(pattern=RUN_NAME.pattern), AfterValidator(_no_double_dot)]
NonEmpty = Annotated[StrictStr, Field(min_length=1)]


def _key(description: str, example: str, *, lineage: str | None = None) -> Any:
    """A :class:`Config` field: ``description`` and ``example`` feed the error messages; ``lineage`` says how the
    value must agree between a stage and the stages whose outputs it reads ("equal", "subset"; None: need not)."""
    return Field(None, description=description, json_schema_extra={"example": example, "lineage": lineage})


def _schema_extra(field: FieldInfo | None) -> dict[str, Any]:
    """A field's ``json_schema_extra`` (``example``, ``lineage``), ``{}`` for a key without one."""
    extra = field.json_schema_extra if field is not None else None
    return extra if isinstance(extra, dict) else {}


class Config(BaseModel):
    """Every configuration key and the stage parameters shared by several stages: types, ranges, allowed values.

    Defaults are not here: they are the values in each notebook's ``parameters`` cell (the reader sees them where
    they are used). A key absent from a config keeps the notebook's default; a key present is validated strictly.
    """

    model_config = ConfigDict(strict=True, extra="forbid", validate_default=False, arbitrary_types_allowed=False)

    # --- the run
    run_name: RunName = _key("results go to runs/<run_name>/<stage>/ (letters, digits, '.', '_', '-')",
                             "run_name: organism")
    run_dir: StrictStr = _key("the run folder itself; give it with -p run_dir <folder>, not in a config file",
                              "-p run_dir /tmp/my-run")
    # --- the subject (helpers.subjects.subject_loading.load_subject)
    model: ModelName = _key("adapter family (helpers.core.families.ADAPTERS) or 'organism'", "model: qwen2-audio",
                            lineage="equal")
    model_path: NonEmpty = _key("local checkpoint folder or hub id", "model_path: models/organism", lineage="equal")
    trust_remote_code: StrictBool = _key("run Python code shipped with the checkpoint (only `true` opts in)",
                                         "trust_remote_code: false")
    allow_hub: StrictBool = _key("let transformers / datasets download from the Hugging Face Hub",
                                 "allow_hub: false")
    dtype: DType = _key("weights and audio-feature dtype", "dtype: bfloat16", lineage="equal")
    device: StrictStr | None = _key("torch device for the whole model", "device: cuda")
    device_map: StrictStr | dict[StrictStr, JsonValue] | None = _key(
        "transformers device_map ('auto' spreads layers over GPUs)", "device_map: null")
    prompt_style: PromptStyle = _key("how the answer is asked for", "prompt_style: multiple_choice",
                                     lineage="equal")
    question: NonEmpty = _key("the question put to the model", "question: What emotion does the speaker express?",
                              lineage="equal")
    system_prompt: StrictStr | None = _key("system prompt (null: the family's default)", "system_prompt: null",
                                           lineage="equal")
    context_format: StrictStr | None = _key("text put before the question, with {text} for the row's text",
                                            "context_format: 'Transcript: {text}\\n'", lineage="equal")
    seed: Seed = _key("letter shuffles, speaker-disjoint splits, random masks", "seed: 0", lineage="equal")
    # --- data
    datasets: Datasets = _key("name -> corpus folder or {loader, root[, hub_id, options]}",
                              "datasets: {A: data/corpus/A}", lineage="subset")
    dataset: Name = _key("the dataset neurons are identified and evaluated on (one of `datasets`)", "dataset: A")
    labels: Labels = _key("the emotions, in order (at least two)", "labels: [neutral, happy, angry, sad]",
                          lineage="equal")
    split: Split = _key("which split of the items a stage uses", "split: evaluate")
    batch_size: Int1 = _key("items per forward pass", "batch_size: 64")
    limit_per_class: Int0 = _key("> 0: at most this many items per emotion (quick runs); 0: all",
                                 "limit_per_class: 50")
    eval_limit: Int0 = _key("> 0: evaluate on only this many items per corpus", "eval_limit: 0")
    max_pairs: Int0 = _key("> 0: at most this many audio and text pairs (chapter 06)", "max_pairs: 400")
    # --- logging
    positions: PositionKind = _key("token positions counted when logging", "positions: last", lineage="equal")
    only_correct: StrictBool = _key("log only items the model answers correctly", "only_correct: true",
                                    lineage="equal")
    # --- identification
    selectors: Selectors = _key("selector families", "selectors: [lap, lape, mad, cas]", lineage="subset")
    dose_selectors: Selectors = _key("selectors of the dose-response sweep", "dose_selectors: [lap, mad, cas]")
    selector: Selector = _key("the selector whose neuron sets a stage uses", "selector: mad")
    steer_selector: Selector = _key("the selector whose sets are steered in the transfer stage",
                                    "steer_selector: mad")
    fraction: Share = _key("neurons per emotion as a share of all decoder neurons (0 < f <= 1)",
                           "fraction: 0.005", lineage="equal")
    lape_fraction: Unit = _key("LAPE budget as a share of all neurons; 0: fraction x number of emotions",
                               "lape_fraction: 0", lineage="equal")
    lape_bar_quantile: Unit = _key("LAPE: p must exceed this quantile of all p", "lape_bar_quantile: 0.95",
                                   lineage="equal")
    aape_options: dict[Annotated[StrictStr, Field(pattern=r"^[a-z_]+$")], Number] = _key(
        "AAPE rates (drop_rate, entropy_rate, class_rate)", "aape_options: {class_rate: 0.01}", lineage="equal")
    # --- intervention
    ks: Annotated[list[Int1], Field(min_length=1)] = _key("dose-response: neurons per emotion", "ks: [8, 32, 154]")
    random_seeds: Annotated[list[Seed], Field(min_length=1)] = _key(
        "seeds of the random neuron sets of equal size (one draw each)", "random_seeds: [0, 1, 2, 3, 4]")
    alpha: Strength = _key("steering strength: gates scaled by (1 + alpha)", "alpha: 0.5")
    alphas: Annotated[list[Strength], Field(min_length=1)] = _key("steering strengths swept",
                                                                  "alphas: [-1.0, 0.5, 2.0]")
    n_boot: Int1 = _key("bootstrap resamples for confidence intervals", "n_boot: 1000")
    # --- display / other
    n_examples: Int0 = _key("audio players / spectrograms shown", "n_examples: 4")
    n_profiles: Int0 = _key("top neurons per emotion whose profiles are plotted", "n_profiles: 3")
    probe_epochs: Int1 = _key("epochs of the linear probe on the encoder output", "probe_epochs: 300")
    n_clusters: Int1 = _key("layer clusters (early / middle / late)", "n_clusters: 3")
    audio_min: Unit = _key("grounding coefficient at least this: audio-grounded", "audio_min: 0.7")
    text_max: Unit = _key("grounding coefficient at most this: text-grounded", "text_max: 0.3")


# ---------------------------------------------------------------------------------------------------------------------
# Stage notebooks: their parameters, read at run time
# ---------------------------------------------------------------------------------------------------------------------

_NONLITERAL = object()
_STAGE_LITERAL = re.compile(r"""["']([0-9]{2}_[a-z][a-z0-9_]*)["']""")


@dataclass(frozen=True)
class StageInfo:
    """What a stage notebook reads: its ``parameters`` cell (names and literal defaults), whether it takes the
    :data:`SUBJECT_KEYS` through ``config_params``, and the stages whose outputs it opens."""

    name: str
    defaults: Mapping[str, Any]
    subject_keys: bool
    upstream: tuple[str, ...]

    @property
    def reads(self) -> frozenset[str]:
        return frozenset(self.defaults) | (frozenset(SUBJECT_KEYS) if self.subject_keys else frozenset())


_CACHE: dict[tuple[str, int], StageInfo] = {}


def _parameters(source: str, where: str) -> dict[str, Any]:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ConfigError(f"{where}: the parameters cell is not valid Python ({exc})") from exc
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value = node.target.id, node.value
        else:
            continue
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError):
            out[name] = _NONLITERAL
    return out


def stage_info(stage: str, notebooks: str | Path) -> StageInfo:
    """Parse ``notebooks/<stage>.md`` (cached while the file is unchanged)."""
    import jupytext

    path = Path(notebooks) / f"{stage}.md"
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key in _CACHE:
        return _CACHE[key]
    nb = jupytext.read(path)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in cells if "parameters" in (c.metadata.get("tags") or [])]
    defaults = _parameters(tagged[0].source, str(path)) if tagged else {}
    code = "\n".join(c.source for c in cells if c not in tagged)
    upstream = tuple(s for s in STAGES if s != stage and s in set(_STAGE_LITERAL.findall(code)))
    info = StageInfo(stage, defaults, "config_params(" in code, upstream)
    _CACHE[key] = info
    return info


def stage_infos(notebooks: str | Path) -> dict[str, StageInfo]:
    """Every stage that has a notebook source."""
    return {s: stage_info(s, notebooks) for s in STAGES if (Path(notebooks) / f"{s}.md").is_file()}


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
# Parameter records (stage.json) and lineage
# ---------------------------------------------------------------------------------------------------------------------


def params_hash(params: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``params`` (key order does not matter)."""
    text = json.dumps(_plain(dict(params)), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _lineage_rule(key: str) -> str | None:
    return _schema_extra(Config.model_fields.get(key)).get("lineage")


def lineage_mismatches(current: Mapping[str, Any], upstream: Mapping[str, Any]) -> list[str]:
    """Keys whose value in ``current`` cannot use outputs produced with ``upstream`` (each with both values).

    Only keys both read and that :class:`Config` marks as lineage keys are compared: ``equal`` ones (labels,
    seed, model, ...) must match; ``subset`` ones (``selectors``, ``datasets``) may be a part of what was produced.
    Stage-local knobs (``batch_size``, ``split``, ``limit_per_class``, ``n_boot``, ...) need not agree.
    """
    out = []
    for key in sorted(set(current) & set(upstream)):
        rule = _lineage_rule(key)
        cur, up = _plain(current[key]), _plain(upstream[key])
        if rule == "equal" and cur != up:
            out.append(f"{key}: {up!r} there, {cur!r} here")
        elif rule == "subset":
            bad: Any
            if isinstance(cur, dict) and isinstance(up, dict):
                bad = {k: v for k, v in cur.items() if up.get(k, object()) != v}
            elif isinstance(cur, list) and isinstance(up, list):
                bad = [v for v in cur if v not in up]
            else:
                bad = cur if cur != up else None
            if bad:
                out.append(f"{key}: {up!r} there, {cur!r} here ({bad!r} not produced)")
    return out


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
