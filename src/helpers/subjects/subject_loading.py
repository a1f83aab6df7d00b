""":func:`load_subject`: the subject a run's config names (the organism or a real model), checked before any
weights load."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..book.config import SUBJECT_KEYS as _CONFIG_SUBJECT_KEYS
from ..core.families import ADAPTERS, RemoteCodeNotAllowedError, UnknownAdapterError, resolve_source
from ..core.io import ConfigError
from ..core.models import forward_model
from .adapters import AdapterSubject, InputsFn
from .item_prompts import DEFAULT_QUESTION, _check_style

# ---------------------------------------------------------------------------------------------------------------------
# Config -> subject
# ---------------------------------------------------------------------------------------------------------------------

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}  # fmt: skip


def known_models() -> list[str]:
    """Every value the config key ``model`` accepts."""
    return sorted({"organism", *ADAPTERS})


#: Every config key :func:`load_subject` and :func:`~helpers.subjects.run_items.load_items` read (defined with their
#: types in helpers.book.config).
SUBJECT_KEYS: tuple[str, ...] = _CONFIG_SUBJECT_KEYS


def config_params(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`SUBJECT_KEYS` present in ``namespace``, e.g. a notebook's ``globals()`` after papermill injected a
    config: a stage then passes a real model's dtype, device and opt-ins on without naming each in its parameters."""
    return {k: namespace[k] for k in SUBJECT_KEYS if k in namespace}


def _dtype(value: Any) -> Any:
    if value is None or value == "auto" or isinstance(value, torch.dtype):
        return "auto" if value is None else value
    key = str(value).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(f"dtype {value!r} is not one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[key]


def _require(params: Mapping[str, Any], key: str) -> Any:
    if params.get(key) in (None, ""):
        raise ConfigError(f"config lacks the key {key!r}; add `{key}: ...` (see configs/organism.yml)")
    return params[key]


def _flag(params: Mapping[str, Any], key: str) -> bool:
    """A boolean config key, strictly: only ``true`` / ``false`` (the *string* ``"false"`` is refused, not truthy)."""
    value = params.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(
            f"config key `{key}` must be true or false, written without quotes, got {value!r} "
            f"({type(value).__name__}); e.g. `{key}: false`"
        )
    return value


#: Checkpoint files whose ``auto_map`` points transformers at Python code shipped with the weights.
_CODE_MAPS = ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json",
              "feature_extractor_config.json", "video_preprocessor_config.json")  # fmt: skip


def remote_code_files(source: str, is_local: bool) -> list[str]:
    """Files of a checkpoint that make transformers import its own Python: ``auto_map`` entries (and then the
    folder's ``*.py``, which they import).

    Read as JSON / listed only, before any processor, tokenizer or config class is built.
    """
    import json

    found: list[str] = []
    for name in _CODE_MAPS:
        if is_local:
            path: str | None = str(Path(source) / name)
        else:
            from huggingface_hub import try_to_load_from_cache

            got = try_to_load_from_cache(source, name)
            path = got if isinstance(got, str) else None
        if not path or not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            found.append(f"{name} (auto_map)")
    if found and is_local and Path(source).is_dir():  # the code those maps import, for the user to read
        found += sorted(p.name for p in Path(source).glob("*.py"))
    return found


def check_model_source(params: Mapping[str, Any]) -> None:
    """The checks of :func:`load_subject` that need no weights: the model family, the path or cached hub id, the
    booleans, and remote code only with ``trust_remote_code: true``. Nothing is imported from the checkpoint."""
    name = str(_require(params, "model")).lower()
    model_path = str(_require(params, "model_path"))
    if name == "organism":
        return
    if name not in ADAPTERS:
        raise UnknownAdapterError(f"unknown model {params['model']!r} (config key `model`); known: {known_models()}")
    adapter = ADAPTERS[name]
    allow_hub = _flag(params, "allow_hub")
    trust = _flag(params, "trust_remote_code")
    source, is_local = resolve_source(model_path, allow_hub=allow_hub)  # raises ModelNotAvailableError at once
    if trust:
        return
    code = remote_code_files(source, is_local) if (is_local or not allow_hub) else []
    if adapter.requires_remote_code or code:
        what = f" ({', '.join(code)})" if code else ""
        raise RemoteCodeNotAllowedError(
            f"{model_path!r} ({adapter.name}) runs Python code shipped with the checkpoint{what}; read it, then set "
            "`trust_remote_code: true` in the config to opt in"
        )


def load_subject(params: Mapping[str, Any], *, inputs_fn: InputsFn | None = None) -> Any:
    """The subject a run's config describes: the organism, or a real LALM through its adapter.

    Keys: ``model`` (adapter family or ``organism``), ``model_path`` (local folder or hub id), ``labels``,
    ``dtype``, ``device``, ``device_map``, ``trust_remote_code`` (default false), ``allow_hub`` (default false:
    only the local Hugging Face cache is used), ``prompt_style``, ``question``, ``system_prompt``,
    ``context_format``, ``seed``. Every check that needs no weights runs before any weight is read, so a missing
    path, an uncached hub id, remote code without opt-in or a missing GPU fail in seconds.
    """
    name = str(_require(params, "model")).lower()
    model_path = str(_require(params, "model_path"))
    if name == "organism":
        from .organism import load_organism

        return load_organism(model_path)
    if name not in ADAPTERS:
        raise UnknownAdapterError(f"unknown model {params['model']!r} (config key `model`); known: {known_models()}")
    adapter = ADAPTERS[name]
    allow_hub = _flag(params, "allow_hub")
    trust = _flag(params, "trust_remote_code")  # strict: the string "false" is an error, never truthy
    style = _check_style(str(params.get("prompt_style") or "multiple_choice"))
    labels = tuple(_require(params, "labels"))
    dtype = _dtype(params.get("dtype", "auto"))
    device = params.get("device")
    device_map = params.get("device_map")

    check_model_source(params)  # path / cache, then remote code, before any processor, tokenizer or config loads
    if inputs_fn is None and adapter.audio_placeholder is None and not adapter.uses_conversation:
        raise NotImplementedError(
            f"the {adapter.name!r} adapter cannot build audio prompts with a transformers processor (Kimi-Audio "
            "tokenises audio with its own toolkit, kimia_infer); pass load_subject(params, inputs_fn=...) that returns "
            "(model inputs, candidate token ids) for a batch of rows"
        )
    wants_cuda = str(device or "").startswith("cuda") or str(device_map or "").startswith("cuda")
    if wants_cuda and not torch.cuda.is_available():
        raise ConfigError(
            f"the config asks for device={device!r} / device_map={device_map!r} but no CUDA GPU is "
            "visible; run on a GPU machine or set `device: cpu` (slow for 7B models)"
        )

    processor = None
    if inputs_fn is None:
        processor = adapter.load_processor(model_path, trust_remote_code=trust, allow_hub=allow_hub)
    model = adapter.load(
        model_path, dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust, allow_hub=allow_hub
    )
    return AdapterSubject(
        model=forward_model(model), labels=labels, adapter=adapter, processor=processor, prompt_style=style,
        question=str(params.get("question") or DEFAULT_QUESTION), seed=int(params.get("seed", 0) or 0),
        system=params.get("system_prompt"), context_format=params.get("context_format"), inputs_fn=inputs_fn,
        card={"model": name, "model_path": model_path, "dtype": str(dtype), "prompt_style": style},
    )  # fmt: skip


__all__ = [
    "SUBJECT_KEYS",
    "check_model_source",
    "config_params",
    "known_models",
    "load_subject",
    "remote_code_files",
]
