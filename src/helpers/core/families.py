"""Model families: how to load each supported audio-language model (local paths, the offline hub cache, remote
code) and build its inputs; the adapter registry."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import gate_modules, unwrap
from .prompts import _wav_base64, chatml_prompt


class ModelNotAvailableError(FileNotFoundError):
    """The weights (or processor files) are not on this machine: a missing local path or an uncached hub id."""


class RemoteCodeNotAllowedError(PermissionError):
    """The checkpoint needs code from its repository and the caller did not opt in with ``trust_remote_code=True``."""


class UnknownAdapterError(ValueError):
    """No adapter is registered under that name / for that model class."""


# --------------------------------------------------------------------------------------------------------------------
# Loading: local paths, offline hub cache, remote code
# --------------------------------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "~")) and not os.path.isabs(name)


def resolve_source(model_id_or_path: str | os.PathLike, *, allow_hub: bool = False) -> tuple[str, bool]:
    """``(source, is_local)``, failing fast and clearly when the weights cannot be on this machine.

    A path that exists is used as is. Something that looks like a path but does not exist raises at once (no slow
    hub lookup for a typo). A hub id is looked up in the local cache only (``HF_HUB_OFFLINE=1``) unless
    ``allow_hub``: if its ``config.json`` is not cached we raise before transformers starts resolving files.
    """
    name = os.fspath(model_id_or_path)
    path = Path(name).expanduser()
    if path.exists():
        return str(path), True
    if not _is_hub_id(name):
        raise ModelNotAvailableError(f"model path {name!r} does not exist (resolved to {path.resolve()})")
    if allow_hub:
        return name, False
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if not isinstance(cached, str):
        raise ModelNotAvailableError(_not_cached_message(name))
    return name, False


def _not_cached_message(name: str) -> str:
    from huggingface_hub import constants

    return (
        f"the weights for {name!r} are not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and hub "
        f"access is off (HF_HUB_OFFLINE=1). Download them on a machine with internet: `hf download {name}` (or "
        f"`huggingface-cli download {name}`), then copy the cache or pass the local folder; or call with "
        "allow_hub=True to let transformers download them"
    )


def _needs_remote_code(source: str, is_local: bool) -> bool:
    """Whether the checkpoint's config maps to repository code (``auto_map``)."""
    import json

    cfg_path: str | None
    if is_local:
        cfg_path = str(Path(source) / "config.json")
    else:
        from huggingface_hub import try_to_load_from_cache

        got = try_to_load_from_cache(source, "config.json")
        cfg_path = got if isinstance(got, str) else None
    if not cfg_path or not os.path.exists(cfg_path):
        return False
    with open(cfg_path) as fh:
        return "auto_map" in json.load(fh)


# --------------------------------------------------------------------------------------------------------------------
# Adapters
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Adapter:
    """Everything family-specific: loader class, prompt template, audio placeholder, where the text model is.

    The base class is the generic adapter: it loads with ``AutoModelForCausalLM`` and finds the gates by structure.
    Prompt builders are pure string functions so they are testable without processors.
    """

    name: str = "generic"
    loader: str = "AutoModelForCausalLM"  # transformers attribute name used by `load`
    model_classes: tuple[str, ...] = ()  # class names `get_adapter(model)` matches
    hub_patterns: tuple[str, ...] = ()  # case-insensitive substrings of hub ids this family is known under
    audio_placeholder: str | None = None  # text the processor expands into the audio tokens
    default_system: str | None = None
    requires_remote_code: bool = False
    uses_conversation: bool = False  # processor takes audio only through apply_chat_template (Voxtral)
    loader_kwargs: dict[str, Any] = field(default_factory=dict)

    # ---- loading ---------------------------------------------------------------------------------------------
    def load(
        self,
        model_id_or_path: str | os.PathLike,
        dtype: Any = "auto",
        device: str | torch.device | None = None,
        device_map: Any = None,
        trust_remote_code: bool = False,
        *,
        allow_hub: bool = False,
        **kwargs: Any,
    ) -> nn.Module:
        """Load the model in eval mode; fails fast on a missing path / uncached id / unapproved remote code."""
        source, is_local = resolve_source(model_id_or_path, allow_hub=allow_hub)
        remote = self.requires_remote_code or _needs_remote_code(source, is_local)
        if remote and not trust_remote_code:
            raise RemoteCodeNotAllowedError(
                f"{source!r} ({self.name}) runs Python code shipped with the checkpoint; read it, then pass "
                "trust_remote_code=True to opt in"
            )
        import transformers

        cls = getattr(transformers, self.loader)
        opts: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code, **self.loader_kwargs, **kwargs}
        if device_map is not None:
            opts["device_map"] = device_map
        if not allow_hub:
            opts["local_files_only"] = True
        try:
            model = cls.from_pretrained(source, **opts)
        except OSError as exc:  # LocalEntryNotFoundError is an OSError
            if is_local:
                raise ModelNotAvailableError(f"could not load {self.name} weights from {source!r}: {exc}") from exc
            raise ModelNotAvailableError(_not_cached_message(source)) from exc
        if device is not None and device_map is None:
            model = model.to(device)
        return model.eval()

    def load_processor(
        self, model_id_or_path: str | os.PathLike, *, trust_remote_code: bool = False, allow_hub: bool = False
    ) -> Any:
        """``AutoProcessor`` from the same checkpoint, left-padding so position -1 is every row's last token."""
        source, _ = resolve_source(model_id_or_path, allow_hub=allow_hub)
        from transformers import AutoProcessor

        try:
            proc = AutoProcessor.from_pretrained(
                source, trust_remote_code=trust_remote_code, local_files_only=not allow_hub
            )
        except OSError as exc:
            raise ModelNotAvailableError(f"could not load the processor for {source!r}: {exc}") from exc
        tok = getattr(proc, "tokenizer", None)
        if tok is not None and hasattr(tok, "padding_side"):
            tok.padding_side = "left"
        return proc

    # ---- prompts ---------------------------------------------------------------------------------------------
    def prompt_text(self, user_text: str, system: str | None = None) -> str:
        """Single-turn chat prompt with the audio placeholder (ChatML by default)."""
        return chatml_prompt(user_text, audio=self.audio_placeholder, system=system or self.default_system)

    def conversation(self, user_text: str, audio: Any = None, system: str | None = None) -> list[dict[str, Any]]:
        """The same prompt as a chat-template conversation (for processors' ``apply_chat_template``)."""
        conv: list[dict[str, Any]] = []
        if system or self.default_system:
            conv.append({"role": "system", "content": [{"type": "text", "text": system or self.default_system}]})
        item: dict[str, Any] = {"type": "audio"}
        if audio is not None:
            item.update(audio)
        conv.append({"role": "user", "content": [item, {"type": "text", "text": user_text}]})
        return conv

    def prepare_inputs(
        self,
        processor: Any,
        audios: Sequence[Any],
        texts: Sequence[str],
        *,
        sampling_rate: int = 16000,
        system: str | None = None,
    ) -> Mapping[str, torch.Tensor]:
        """Processor call for a batch of (waveform, user text) pairs: one audio clip per prompt."""
        if len(audios) != len(texts):
            raise ValueError(f"{len(audios)} audios but {len(texts)} texts")
        if self.uses_conversation:
            convs = [
                self.conversation(t, {"base64": _wav_base64(a, sampling_rate)}, system)
                for a, t in zip(audios, texts, strict=True)
            ]
            return processor.apply_chat_template(
                convs, tokenize=True, return_dict=True, return_tensors="pt", add_generation_prompt=True
            )
        if self.audio_placeholder is None:
            raise NotImplementedError(
                f"the {self.name!r} adapter has no audio prompt format; build its inputs with the model's own "
                "toolkit and pass them to the hook functions directly"
            )
        prompts = [self.prompt_text(t, system) for t in texts]
        return processor(
            text=prompts, audio=list(audios), sampling_rate=sampling_rate, return_tensors="pt", padding=True
        )


@dataclass
class Qwen2AudioAdapter(Adapter):
    """Qwen2-Audio(-Instruct): ChatML with ``Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\\n`` before the text."""

    name: str = "qwen2-audio"
    loader: str = "Qwen2AudioForConditionalGeneration"
    model_classes: tuple[str, ...] = ("Qwen2AudioForConditionalGeneration",)
    hub_patterns: tuple[str, ...] = ("qwen2-audio",)
    audio_placeholder: str | None = "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    default_system: str | None = "You are a helpful assistant."


QWEN_OMNI_SYSTEM = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory and "
    "visual inputs, as well as generating text and speech."
)


@dataclass
class Qwen25OmniAdapter(Adapter):
    """Qwen2.5-Omni: the thinker is the text model (the full model is accepted and its ``.thinker`` used)."""

    name: str = "qwen2.5-omni"
    loader: str = "Qwen2_5OmniForConditionalGeneration"
    model_classes: tuple[str, ...] = (
        "Qwen2_5OmniForConditionalGeneration",
        "Qwen2_5OmniThinkerForConditionalGeneration",
    )
    hub_patterns: tuple[str, ...] = ("qwen2.5-omni",)
    audio_placeholder: str | None = "<|audio_bos|><|AUDIO|><|audio_eos|>"
    default_system: str | None = QWEN_OMNI_SYSTEM
    # The talker/token2wav (speech output) are not needed to read text answers; skipping them saves ~3 GB.
    loader_kwargs: dict[str, Any] = field(default_factory=lambda: {"enable_audio_output": False})


@dataclass
class AudioFlamingo3Adapter(Adapter):
    """Audio Flamingo 3 (HF port): Qwen2 ChatML with a ``<sound>`` placeholder before the text."""

    name: str = "audio-flamingo-3"
    loader: str = "AudioFlamingo3ForConditionalGeneration"
    model_classes: tuple[str, ...] = ("AudioFlamingo3ForConditionalGeneration",)
    hub_patterns: tuple[str, ...] = ("audio-flamingo-3", "audioflamingo3")
    audio_placeholder: str | None = "<sound>"
    default_system: str | None = None


@dataclass
class VoxtralAdapter(Adapter):
    """Voxtral: Mistral ``[INST]`` format; audio goes in only through ``processor.apply_chat_template``."""

    name: str = "voxtral"
    loader: str = "VoxtralForConditionalGeneration"
    model_classes: tuple[str, ...] = ("VoxtralForConditionalGeneration",)
    hub_patterns: tuple[str, ...] = ("voxtral",)
    audio_placeholder: str | None = "[BEGIN_AUDIO][AUDIO]"
    uses_conversation: bool = True

    def prompt_text(self, user_text: str, system: str | None = None) -> str:
        """Display form only: the processor refuses text containing ``[AUDIO]`` (see ``prepare_inputs``)."""
        sys_part = f"[SYSTEM_PROMPT]{system}[/SYSTEM_PROMPT]" if system else ""
        return f"<s>{sys_part}[INST]{self.audio_placeholder}{user_text}[/INST]"


@dataclass
class GenericAdapter(Adapter):
    """Unknown / remote-code models: ``AutoModelForCausalLM`` and gates found by structure."""

    name: str = "generic"


ADAPTERS: dict[str, Adapter] = {}


def register_adapter(name: str, adapter: Adapter, *, overwrite: bool = True) -> Adapter:
    """Make ``adapter`` available to :func:`get_adapter` under ``name`` (e.g. the in-house "organism")."""
    key = name.lower()
    if key in ADAPTERS and not overwrite:
        raise ValueError(f"an adapter named {name!r} is already registered")
    ADAPTERS[key] = adapter
    return adapter


for _adapter in (
    Qwen2AudioAdapter(),
    Qwen25OmniAdapter(),
    AudioFlamingo3Adapter(),
    VoxtralAdapter(),
    # Kimi-Audio's LM (MoonshotKimiaForCausalLM) is remote code; its prompts/audio need the kimia_infer toolkit.
    GenericAdapter(name="kimi-audio", requires_remote_code=True, hub_patterns=("kimi-audio",)),
    GenericAdapter(),
):
    register_adapter(_adapter.name, _adapter)


def get_adapter(name_or_model: Any) -> Adapter:
    """The adapter for a family name, a hub id / path containing a family name, or a model object (by class).

    A model of an unknown class gets the generic adapter if its gates can be found by structure.
    """
    if isinstance(name_or_model, (str, os.PathLike)):
        name = os.fspath(name_or_model).lower()
        if name in ADAPTERS:
            return ADAPTERS[name]
        for adapter in ADAPTERS.values():
            if any(p in name for p in adapter.hub_patterns):
                return adapter
        raise UnknownAdapterError(f"no adapter for {os.fspath(name_or_model)!r}; known: {sorted(ADAPTERS)}")
    module = unwrap(name_or_model)
    cls_names = {c.__name__ for c in type(module).__mro__}
    for adapter in ADAPTERS.values():
        if cls_names & set(adapter.model_classes):
            return adapter
    gate_modules(module)  # raises UnsupportedModelError when the structure search fails
    return ADAPTERS["generic"]

