"""Where the SwiGLU gates live in each supported audio-language model, how to load the model, and how to ask it.

The method reads and edits ``a = act_fn(gate_proj(x))`` in every decoder MLP. Because a SwiGLU MLP is
``down_proj(act_fn(gate_proj(x)) * up_proj(x))``, editing the *output* of the ``act_fn`` module at neuron ``j`` edits
neuron ``j`` exactly, and the ``act_fn`` module is a hookable ``nn.Module`` in every transformers SwiGLU MLP.

Module paths verified on transformers 5.23 by instantiating tiny configs (see ``tests/tiny_models.py``):

=================================================  ===================================================
Qwen2AudioForConditionalGeneration                 ``model.language_model.layers[i].mlp.act_fn``
Qwen2_5OmniThinkerForConditionalGeneration         ``model.language_model.layers[i].mlp.act_fn``
Qwen2_5OmniForConditionalGeneration (full)         ``thinker.model.language_model.layers[i].mlp.act_fn``
AudioFlamingo3ForConditionalGeneration             ``model.language_model.layers[i].mlp.act_fn``
VoxtralForConditionalGeneration                    ``model.language_model.layers[i].mlp.act_fn``
Kimi-Audio (remote code, MoonshotKimiaForCausalLM)  ``model.layers[i].mlp.act_fn`` (``mimo_layers`` ignored)
=================================================  ===================================================

Everything here works on the plain ``torch.nn.Module``; an nnsight wrapper is unwrapped first.
"""

from __future__ import annotations

import base64
import io
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

# --------------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------------


class UnsupportedModelError(ValueError):
    """The model has no dense SwiGLU gate the method can read and edit (MoE, fused gate_up_proj, no decoder...)."""


class ModelNotAvailableError(FileNotFoundError):
    """The weights (or processor files) are not on this machine: a missing local path or an uncached hub id."""


class RemoteCodeNotAllowedError(PermissionError):
    """The checkpoint needs code from its repository and the caller did not opt in with ``trust_remote_code=True``."""


class UnknownAdapterError(ValueError):
    """No adapter is registered under that name / for that model class."""


# --------------------------------------------------------------------------------------------------------------------
# Structure: language model, decoder layers, gate modules
# --------------------------------------------------------------------------------------------------------------------

SWIGLU_PARTS = ("gate_proj", "up_proj", "down_proj")


def unwrap(model: Any) -> nn.Module:
    """The plain torch module behind an nnsight wrapper (``Envoy``/``NNsight``), or the module itself."""
    inner = getattr(model, "_module", None)
    if isinstance(inner, nn.Module) and not isinstance(model, nn.Module):
        return inner
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module or an nnsight wrapper of one, got {type(model).__name__}")
    return model


def forward_model(model: Any) -> nn.Module:
    """The module whose forward returns the text logits.

    Qwen2.5-Omni's full model has no text forward of its own: the ``thinker`` produces the text (the talker only
    turns it into speech), so it is the thinker that gets traced and whose gates are the "decoder gates".
    """
    m = unwrap(model)
    thinker = getattr(m, "thinker", None)
    return thinker if isinstance(thinker, nn.Module) else m


def _is_decoder_stack(module: nn.Module) -> bool:
    layers = getattr(module, "layers", None)
    return isinstance(layers, nn.ModuleList) and len(layers) > 0 and all(hasattr(lay, "mlp") for lay in layers)


def find_language_model(model: Any) -> nn.Module:
    """The text decoder: the module that owns the decoder ``layers`` (and, normally, ``embed_tokens``).

    Found by structure rather than by a per-class path so that remote-code models (Kimi-Audio) work too. Audio and
    vision encoders are excluded naturally: their blocks have no ``mlp`` attribute (Whisper-style ``fc1/fc2``) or
    live under ``blocks``. Among several candidates the one named ``*language_model`` wins, then the one with an
    ``embed_tokens``, then the deepest stack.
    """
    root = forward_model(model)
    candidates = [(name, mod) for name, mod in root.named_modules() if _is_decoder_stack(mod)]
    if not candidates:
        raise UnsupportedModelError(
            f"{type(root).__name__}: found no decoder layer list (a module with `.layers` whose layers have `.mlp`); "
            "the method needs a decoder-only language model with dense SwiGLU MLPs"
        )

    def rank(item: tuple[str, nn.Module]) -> tuple[int, int, int, int]:
        name, mod = item
        return (
            int(name.split(".")[-1] == "language_model" if name else False),
            int(hasattr(mod, "embed_tokens")),
            len(cast(nn.ModuleList, mod.layers)),
            -name.count("."),
        )

    return max(candidates, key=rank)[1]


def decoder_layers(model: Any) -> nn.ModuleList:
    """The language model's decoder layers, in order."""
    return cast(nn.ModuleList, find_language_model(model).layers)  # checked by _is_decoder_stack


def decoder_mlps(model: Any) -> list[Any]:
    """The decoder layers' MLPs (``layer.mlp``), in order.

    Typed ``Any``: each is a transformers (or remote-code) SwiGLU MLP reached by duck typing (``gate_proj``,
    ``up_proj``, ``down_proj``, ``act_fn``), which ``nn.Module.__getattr__`` would type ``Tensor | Module``.
    """
    return [layer.mlp for layer in decoder_layers(model)]


def _check_swiglu_mlp(mlp: nn.Module, where: str) -> nn.Module:
    """Return ``mlp.act_fn`` after checking the MLP is a dense, unfused SwiGLU; raise a precise error otherwise."""
    kind = type(mlp).__name__
    if hasattr(mlp, "experts"):
        raise UnsupportedModelError(
            f"{where} is a mixture-of-experts block ({kind}, has `mlp.experts`): the method needs a dense SwiGLU MLP "
            "with one gate per neuron; MoE models are not supported"
        )
    if hasattr(mlp, "gate_up_proj"):
        raise UnsupportedModelError(
            f"{where} ({kind}) uses a fused `gate_up_proj` (as Phi-3/Phi-4-multimodal do): the gate is not a separate "
            "module output here, so this model is unsupported"
        )
    missing = [p for p in SWIGLU_PARTS if not isinstance(getattr(mlp, p, None), nn.Module)]
    if missing:
        raise UnsupportedModelError(
            f"{where} ({kind}) lacks {missing}: the method needs a SwiGLU MLP with gate_proj/up_proj/down_proj"
        )
    act = getattr(mlp, "act_fn", None)
    if not isinstance(act, nn.Module):
        raise UnsupportedModelError(
            f"{where} ({kind}) has no `act_fn` submodule (got {type(act).__name__}); the gate activation must be an "
            "nn.Module to be traced"
        )
    return act


def gate_modules(model: Any) -> list[nn.Module]:
    """The decoder layers' SwiGLU gate activation modules (``layer.mlp.act_fn``), in layer order.

    Raises :class:`UnsupportedModelError` for models without them (MoE MLPs, fused gate_up_proj, no decoder).
    """
    return [_check_swiglu_mlp(mlp, f"decoder layer {i} MLP") for i, mlp in enumerate(decoder_mlps(model))]


def gate_shape(model: Any) -> tuple[int, int]:
    """``(n_layers, n_neurons)``: decoder layers x MLP intermediate size (checked to be equal across layers)."""
    mlps = decoder_mlps(model)
    gate_modules(model)  # validates every MLP
    sizes: set[int] = {mlp.gate_proj.out_features for mlp in mlps}
    if len(sizes) != 1:
        raise UnsupportedModelError(f"decoder MLPs have different intermediate sizes {sorted(sizes)}")
    return len(mlps), sizes.pop()


def gate_paths(model: Any) -> list[str]:
    """Dotted names of the gate modules in the (unwrapped) model, e.g. ``thinker.model.language_model.layers.0...``."""
    root = unwrap(model)
    names = {id(m): n for n, m in root.named_modules()}
    return [names[id(m)] for m in gate_modules(model)]


def check_swiglu(model: Any, inputs: Mapping[str, torch.Tensor], layer: int = 0, atol: float = 1e-4) -> None:
    """Numerically confirm ``down_proj`` input == ``act_fn(gate) * up_proj(x)`` in one layer.

    Why: for remote-code models the structure search only sees module names; this checks that the forward really
    multiplies the act_fn output by up_proj, i.e. that editing act_fn's output edits the neuron. Raises on mismatch.
    """
    mlp = decoder_mlps(model)[layer]
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        mlp.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].detach())),
        mlp.act_fn.register_forward_hook(lambda m, a, o: seen.__setitem__("a", o.detach())),
        mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("d", a[0].detach())),
    ]
    try:
        with torch.no_grad():
            forward_model(model)(**inputs)
            expected = seen["a"] * mlp.up_proj(seen["x"])
    finally:
        for h in hooks:
            h.remove()
    if not torch.allclose(seen["d"].float(), expected.float(), atol=atol, rtol=1e-3):
        raise UnsupportedModelError(
            f"decoder layer {layer}: down_proj's input is not act_fn(gate_proj x) * up_proj x, so editing act_fn's "
            "output would not edit the neuron exactly"
        )


# --------------------------------------------------------------------------------------------------------------------
# Prompt building (pure string functions) and constrained scoring
# --------------------------------------------------------------------------------------------------------------------

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class MCPrompt:
    """A multiple-choice question with its (shuffled) option order; ``letters[i]`` labels ``options[i]``."""

    text: str
    letters: tuple[str, ...]
    options: tuple[str, ...]

    def letter_of(self, option: str) -> str:
        return self.letters[self.options.index(option)]

    def option_of(self, letter: str) -> str:
        return self.options[self.letters.index(letter)]


def shuffled_options(options: Sequence[str], seed: int, item_id: Any) -> list[str]:
    """Options in an order fixed by ``(seed, item_id)``: shuffled per item so that letter position cannot carry the
    answer, yet reproducible run to run (string seeding is stable across processes, unlike ``hash``)."""
    order = list(options)
    random.Random(f"{seed}:{item_id}").shuffle(order)
    return order


def multiple_choice_prompt(
    question: str,
    options: Sequence[str],
    *,
    seed: int = 0,
    item_id: Any = 0,
    shuffle: bool = True,
    instruction: str = "Answer with the letter of the correct option only.",
) -> MCPrompt:
    """``question`` + lettered options (shuffled per item when ``shuffle``) + an answer instruction."""
    if len(options) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} options, got {len(options)}")
    if len(set(options)) != len(options):
        raise ValueError(f"options must be distinct, got {list(options)}")
    opts = shuffled_options(options, seed, item_id) if shuffle else list(options)
    letters = tuple(LETTERS[: len(opts)])
    lines = [question.strip()] + [f"{ltr}. {opt}" for ltr, opt in zip(letters, opts, strict=True)]
    if instruction:
        lines.append(instruction)
    return MCPrompt(text="\n".join(lines), letters=letters, options=tuple(opts))


def label_word_prompt(
    question: str, labels: Sequence[str], *, instruction: str = "Answer with one word from: {labels}."
) -> str:
    """``question`` + the allowed label words, for scoring the label words' first tokens directly."""
    text = question.strip()
    if instruction:
        text += " " + instruction.format(labels=", ".join(labels))
    return text


def candidate_token_ids(tokenizer: Any, words: Sequence[str], *, prefix: str = "") -> torch.Tensor:
    """First token id of each answer word (as it would follow ``prefix``); refuses words sharing a first token.

    Why: constrained scoring compares the next-token probability of each answer; two answers starting with the same
    token would be indistinguishable.
    """
    ids = []
    for w in words:
        toks = tokenizer.encode(prefix + w, add_special_tokens=False)
        if prefix:
            pre = tokenizer.encode(prefix, add_special_tokens=False)
            toks = toks[len(pre) :] if toks[: len(pre)] == pre else toks
        if not toks:
            raise ValueError(f"answer {w!r} encodes to no tokens")
        ids.append(int(toks[0]))
    if len(set(ids)) != len(ids):
        clash = {w: i for w, i in zip(words, ids, strict=True)}
        raise ValueError(f"answers share a first token, constrained scoring cannot tell them apart: {clash}")
    return torch.tensor(ids, dtype=torch.long)


def score(logits_last: torch.Tensor, candidate_token_ids: torch.Tensor) -> torch.Tensor:
    """Constrained scoring: log-softmax over the whole vocabulary (float32), then the candidates' entries.

    ``logits_last``: [B, V]; ``candidate_token_ids``: [K] (shared) or [B, K] (per row, e.g. shuffled letters).
    Returns [B, K] log-probabilities; their argmax is the model's answer among the candidates.
    """
    if logits_last.ndim != 2:
        raise ValueError(f"logits_last must be [B, V], got shape {tuple(logits_last.shape)} (take logits[:, -1])")
    cand = torch.as_tensor(candidate_token_ids, device=logits_last.device).long()
    if cand.ndim == 1:
        cand = cand.unsqueeze(0).expand(logits_last.shape[0], -1)
    if cand.ndim != 2 or cand.shape[0] != logits_last.shape[0]:
        raise ValueError(f"candidate ids must be [K] or [B={logits_last.shape[0]}, K], got {tuple(cand.shape)}")
    if (cand < 0).any() or (cand >= logits_last.shape[-1]).any():
        raise ValueError(f"candidate ids out of the vocabulary range [0, {logits_last.shape[-1]})")
    return torch.log_softmax(logits_last.float(), dim=-1).gather(-1, cand)


def chatml_prompt(user_text: str, *, audio: str | None, system: str | None, audio_first: bool = True) -> str:
    """A ChatML (``<|im_start|>``) single-turn prompt with the audio placeholder, ending at the assistant turn."""
    parts = []
    if system:
        parts.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    body = user_text if audio is None else (audio + user_text if audio_first else user_text + audio)
    parts.append(f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n")
    return "".join(parts)


def _wav_base64(wave: Any, sampling_rate: int) -> str:
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(wave, dtype=np.float32), sampling_rate, format="WAV")
    return base64.b64encode(buf.getvalue()).decode("ascii")


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
