"""The typed configuration: every config key and stage parameter, checked before any kernel starts.

A run is described by a YAML file (``configs/*.yml``) plus ``-p name value`` overrides; papermill injects them
into a stage notebook's ``parameters`` cell *as Python code*. So before anything runs,
:func:`~helpers.book.resolution.resolve`

* refuses keys that are not Python identifiers (a key is code once injected) or that no stage reads, with a
  "did you mean" suggestion (``labels_`` -> ``labels``, ``batch-size`` -> ``batch_size``);
* checks every value against :class:`Config` (pydantic, strict): ``batch_size: "64"`` is an error that says to
  drop the quotes, booleans are only ``true``/``false`` (the *string* ``"false"`` is refused, never truthy),
  ``5e-3`` is a number (see :func:`helpers.core.io.yaml_load`), ranges and allowed values are enforced;
* passes a stage only the parameters it reads: the names in its ``parameters`` cell, parsed from the notebook at
  run time (so a parameter added to a notebook is known at once, typed by its default), plus
  :data:`SUBJECT_KEYS` for stages that call :func:`helpers.subjects.subject_loading.config_params`.

Keys shared by several stages are typed here, once; a notebook parameter without an entry in :class:`Config` is
typed by its default value (``int`` default: whole numbers only, and so on).
:func:`~helpers.book.resolution.describe` lists every key with its type and the stages that read it
(``python -m helpers.book.pipeline keys``).

This module is the schema (:class:`Config`, the allowed values, the key lists); the stage notebooks' parameters
are read by :mod:`helpers.book.stage_params`, configs resolved by :mod:`helpers.book.resolution`, errors worded
by :mod:`helpers.book.config_messages`, lineage compared by :mod:`helpers.book.lineage`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, StrictBool, StrictInt, StrictStr

from .config_messages import did_you_mean

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
