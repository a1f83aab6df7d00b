"""Real audio-language models as :class:`~helpers.core.subject.Subject`\\ s, and the config-driven loaders of a run.

Every stage talks to "the subject" only through ``batch_inputs``, ``label_logits`` and ``position_masks``. The
organism implements them for its own word-level prompt; :class:`AdapterSubject` implements them for any family
in :data:`helpers.core.families.ADAPTERS` (Qwen2-Audio, Qwen2.5-Omni, Audio Flamingo 3, Voxtral, ...) with the family's
chat template and processor. :func:`load_subject` and :func:`load_items` turn a papermill parameter file
(``configs/*.yml``) into the subject and its items, failing in seconds, not minutes, when weights or data are
missing.

Design points, each a reason rather than a convenience:

* **Shuffled multiple choice** (the authors' later prompt **[later]**): each item gets its own letter order, seeded
  by ``(seed, item id)``, so the letter position cannot carry the emotion. The subject remembers the batch's
  letter→label mapping and :meth:`AdapterSubject.label_logits` returns scores in *label* order, i.e. un-shuffled.
* **Constrained scoring**: the answer is the arg-max over the candidates' first tokens of the log-softmax over the
  whole vocabulary at the last attended position (:func:`helpers.core.prompts.score`); no free-text parsing.
* **Left padding**: processors are set to pad on the left, so position ``-1`` is every row's last prompt token;
  masks still use the attention mask, so right padding would not silently miscount.
* The prompt/scoring/mask logic lives in pure functions (:func:`item_prompt`, :func:`candidate_matrix`,
  :func:`position_masks_from`) and the processor call behind an injectable ``inputs_fn``, so all of it is tested
  on tiny random models without any processor files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch
from torch import nn

from ..book.config import SUBJECT_KEYS as _CONFIG_SUBJECT_KEYS
from ..core.families import ADAPTERS, Adapter, RemoteCodeNotAllowedError, UnknownAdapterError, resolve_source
from ..core.io import ConfigError
from ..core.models import forward_model
from ..core.prompts import LETTERS, candidate_token_ids, label_word_prompt, multiple_choice_prompt, score
from ..core.subject import Batch, last_position_logits

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_QUESTION",
    "PROMPT_STYLES",
    "AdapterSubject",
    "DatasetSpec",
    "InputsFn",
    "ItemPrompt",
    "SUBJECT_KEYS",
    "answer_strings",
    "audio_token_ids",
    "candidate_matrix",
    "check_datasets",
    "check_model_source",
    "config_params",
    "dataset_spec",
    "filter_labels",
    "item_prompt",
    "known_models",
    "load_items",
    "load_subject",
    "position_masks_from",
    "remote_code_files",
    "special_token_ids",
    "template_lengths",
]

#: ``multiple_choice``: lettered options shuffled per item, letters scored **[later]**; ``label_words``: the
#: label words listed in a fixed order and their first tokens scored.
PROMPT_STYLES: tuple[str, ...] = ("multiple_choice", "label_words")
DEFAULT_QUESTION = "What emotion does the speaker express in this audio?"
#: A string no tokenizer or template contains; used to split a chat template around the user text.
_USER_MARK = "\u2063ESN-USER-TEXT\u2063"

#: ``inputs_fn(rows) -> (model inputs, candidate token ids [B, n_labels] or [n_labels])``; candidate column j is
#: the token that answers ``labels[j]`` for that row.
InputsFn = Callable[[pd.DataFrame], tuple[Mapping[str, torch.Tensor], torch.Tensor]]


# ---------------------------------------------------------------------------------------------------------------------
# Prompts and candidates (pure)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemPrompt:
    """The user text of one item and, for each label in label order, the answer string that means it."""

    text: str
    answers: tuple[str, ...]


def _check_style(style: str) -> str:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {list(PROMPT_STYLES)}")
    return style


def item_prompt(
    labels: Sequence[str],
    *,
    style: str = "multiple_choice",
    question: str = DEFAULT_QUESTION,
    seed: int = 0,
    item_id: Any = 0,
    context: str | None = None,
    context_format: str | None = None,
) -> ItemPrompt:
    """User text (without chat template) for one item, and the answer for each label.

    ``context_format`` (e.g. ``"Transcript: {text}\\n"``) puts the row's text before the question when given and
    the text is not empty: the grounding chapter needs prompts whose text can agree or conflict with the audio.
    """
    _check_style(style)
    prefix = context_format.format(text=context) if context_format and context else ""
    if style == "multiple_choice":
        mc = multiple_choice_prompt(prefix + question, labels, seed=seed, item_id=item_id)
        return ItemPrompt(mc.text, tuple(mc.letter_of(lbl) for lbl in labels))
    return ItemPrompt(label_word_prompt(prefix + question, labels), tuple(labels))


def answer_strings(labels: Sequence[str], style: str) -> list[str]:
    """Every answer a prompt of ``style`` can ask for: letters ``A..`` or the label words."""
    _check_style(style)
    return list(LETTERS[: len(labels)]) if style == "multiple_choice" else list(labels)


def candidate_matrix(prompts: Sequence[ItemPrompt], answer_ids: Mapping[str, int]) -> torch.Tensor:
    """``[B, n_labels]`` token ids: row b, column j = the token answering ``labels[j]`` in prompt b.

    Gathering with this matrix *is* the un-shuffling: scores come back in label order whatever the letter order.
    """
    if not prompts:
        raise ValueError("no prompts")
    missing = sorted({a for p in prompts for a in p.answers} - set(answer_ids))
    if missing:
        raise KeyError(f"no token id for answer(s) {missing}")
    return torch.tensor([[int(answer_ids[a]) for a in p.answers] for p in prompts], dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------------------
# Token positions (pure)
# ---------------------------------------------------------------------------------------------------------------------


def position_masks_from(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    audio_ids: Sequence[int] = (),
    special_ids: Sequence[int] = (),
    after_audio: int = 0,
    suffix: int = 0,
) -> dict[str, torch.Tensor]:
    """Bool ``[B, T]`` masks ``all`` / ``audio`` / ``text`` / ``last`` for a padded batch of prompts.

    * ``all``: attended positions (padding excluded).
    * ``audio``: the audio placeholder positions (one per audio frame embedding).
    * ``text``: the user's text — positions after the last audio token plus ``after_audio`` template tokens
      (e.g. ``<|audio_eos|>`` and a newline) and up to the last attended position minus ``suffix`` template tokens
      (e.g. ``<|im_end|>\\n<|im_start|>assistant\\n``), minus audio and special tokens. A row without audio starts
      at its first attended token.
    * ``last``: each row's last attended position, where the answer is read (left or right padding).
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    b, t = input_ids.shape
    dev = input_ids.device
    att = torch.ones(b, t, dtype=torch.bool, device=dev) if attention_mask is None else attention_mask.to(dev).bool()
    if att.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(att.shape)} does not match input_ids {tuple(input_ids.shape)}")
    pos = torch.arange(t, device=dev).expand(b, t)
    audio = torch.isin(input_ids, torch.as_tensor(list(audio_ids), dtype=input_ids.dtype, device=dev)) & att
    special = torch.isin(input_ids, torch.as_tensor(list(special_ids), dtype=input_ids.dtype, device=dev))
    last_idx = t - 1 - att.flip(-1).int().argmax(-1)
    first_idx = att.int().argmax(-1)
    has_audio = audio.any(-1)
    last_audio = torch.where(audio, pos, torch.full_like(pos, -1)).max(-1).values
    start = torch.where(has_audio, last_audio + 1 + int(after_audio), first_idx)
    end = last_idx - int(suffix)
    text = att & ~audio & ~special & (pos >= start[:, None]) & (pos <= end[:, None])
    last = torch.zeros_like(att)
    last[torch.arange(b, device=dev), last_idx] = True
    last &= att.any(-1, keepdim=True)
    return {"all": att, "audio": audio, "text": text, "last": last}


def audio_token_ids(model: Any) -> tuple[int, ...]:
    """The audio placeholder id(s) from the (forward) model's config (``audio_token_id`` / ``audio_token_index``)."""
    cfg = getattr(forward_model(model), "config", None)
    ids: list[int] = []
    for c in (cfg, getattr(cfg, "thinker_config", None)):
        for key in ("audio_token_id", "audio_token_index"):
            v = getattr(c, key, None) if c is not None else None
            if isinstance(v, int) and v not in ids:
                ids.append(v)
    return tuple(ids)


def special_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """Special and added-special token ids (chat-template markers, audio brackets), never counted as text."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return tuple(sorted(ids))


def _n_tokens(tokenizer: Any, text: str) -> int:
    if not text:
        return 0
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)
    if convert is not None:  # one control token such as "[/INST]" (some tokenizers would not encode it as one)
        try:
            tid = convert(text)
        except Exception:  # noqa: BLE001 - any failure just means "not a single token"
            tid = None
        if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None):
            return 1
    return len(tokenizer.encode(text, add_special_tokens=False))


def template_lengths(adapter: Adapter, tokenizer: Any, audio_token: str | None) -> tuple[int, int]:
    """``(after_audio, suffix)`` token counts of the chat template around the user text, for the text mask.

    Found by rendering the adapter's template around a marker: what follows the audio token inside the audio
    placeholder (``<|audio_eos|>\\n`` for Qwen2-Audio) and what follows the user text (the assistant turn header).
    """
    prompt = adapter.prompt_text(_USER_MARK)
    if _USER_MARK not in prompt:
        return 0, 0
    suffix = prompt.split(_USER_MARK, 1)[1]
    placeholder = adapter.audio_placeholder or ""
    after = placeholder.split(audio_token)[-1] if audio_token and audio_token in placeholder else ""
    return _n_tokens(tokenizer, after), _n_tokens(tokenizer, suffix)


# ---------------------------------------------------------------------------------------------------------------------
# The subject
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class AdapterSubject:
    """A real LALM behind the :class:`~helpers.core.subject.Subject` protocol, via its family adapter and processor.

    ``batch_inputs`` returns a self-contained :class:`~helpers.core.subject.Batch`: the model inputs, each row's answer
    tokens (per row, since letters are shuffled per item) and the position masks, so ``label_logits(batch, ...)``
    can never read another batch's letters. ``inputs_fn`` replaces the processor path entirely (tests, or models
    such as Kimi-Audio whose inputs come from their own toolkit).
    """

    model: nn.Module
    labels: tuple[str, ...]
    adapter: Adapter
    processor: Any = None
    prompt_style: str = "multiple_choice"
    question: str = DEFAULT_QUESTION
    seed: int = 0
    sampling_rate: int | None = None
    system: str | None = None
    context_format: str | None = None
    inputs_fn: InputsFn | None = None
    #: Audio placeholder ids; default from the model config.
    audio_ids: tuple[int, ...] | None = None
    #: Ids never counted as text; default from the tokenizer.
    special_ids: tuple[int, ...] | None = None
    #: ``(after_audio, suffix)`` template token counts for the text mask; default from the adapter's template.
    text_span: tuple[int, int] | None = None
    pad_token_id: int | None = None
    card: dict[str, Any] = field(default_factory=dict)
    _answer_ids: dict[str, int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.labels = tuple(self.labels)
        if len(set(self.labels)) != len(self.labels) or not self.labels:
            raise ValueError(f"labels must be distinct and non-empty, got {list(self.labels)}")
        _check_style(self.prompt_style)
        if self.inputs_fn is None and self.processor is None:
            raise ValueError("AdapterSubject needs a processor (adapter.load_processor) or an inputs_fn")
        if self.audio_ids is None:
            self.audio_ids = audio_token_ids(self.model)
        tok = self.tokenizer
        if self.special_ids is None:
            self.special_ids = special_token_ids(tok) if tok is not None else ()
        if self.pad_token_id is None and tok is not None:
            self.pad_token_id = getattr(tok, "pad_token_id", None)
        if self.sampling_rate is None:
            fe = getattr(self.processor, "feature_extractor", None)
            self.sampling_rate = int(getattr(fe, "sampling_rate", 16_000) or 16_000)
        if self.text_span is None:
            self.text_span = self._template_lengths()

    # ---- accessors ---------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer (or the processor itself when it is one); None with an injected inputs_fn."""
        return getattr(self.processor, "tokenizer", self.processor)

    def _template_lengths(self) -> tuple[int, int]:
        tok = self.tokenizer
        if tok is None or not hasattr(tok, "encode"):
            return 0, 0
        audio_tok = None
        if self.audio_ids and hasattr(tok, "convert_ids_to_tokens"):
            audio_tok = tok.convert_ids_to_tokens(int(self.audio_ids[0]))
        try:
            return template_lengths(self.adapter, tok, audio_tok)
        except Exception as exc:  # noqa: BLE001 - a tokenizer we cannot probe: count the whole prompt as text
            logger.warning(
                "could not measure the %s chat template (%s); the text mask includes it", self.adapter.name, exc
            )
            return 0, 0

    def answer_ids(self) -> dict[str, int]:
        """First token id of every answer string (letters or label words), computed once from the tokenizer."""
        if self._answer_ids is None:
            words = answer_strings(self.labels, self.prompt_style)
            ids = candidate_token_ids(self.tokenizer, words)
            self._answer_ids = dict(zip(words, ids.tolist(), strict=True))
        return self._answer_ids

    def prompts(self, rows: pd.DataFrame) -> list[ItemPrompt]:
        """The user text and answers of each row (item id = ``clip_id`` if present, else ``path``)."""
        ids = rows["clip_id"] if "clip_id" in rows.columns else rows["path"]
        texts = rows["text"] if "text" in rows.columns else [None] * len(rows)
        return [
            item_prompt(self.labels, style=self.prompt_style, question=self.question, seed=self.seed, item_id=i,
                        context=c if isinstance(c, str) else None, context_format=self.context_format)
            for i, c in zip(ids.tolist(), list(texts), strict=True)
        ]  # fmt: skip

    # ---- Subject protocol --------------------------------------------------------------------------------------
    def processor_inputs(self, rows: pd.DataFrame) -> tuple[Mapping[str, torch.Tensor], torch.Tensor]:
        """The default ``inputs_fn``: decode audio at the processor's rate, build prompts, call the processor."""
        from ..data.audio import load_audio

        # undecoded `datasets` audio dicts (hub copies) win over paths; everything else is read from `path`
        given = rows["audio"].tolist() if "audio" in rows.columns else [None] * len(rows)
        sources = [a if isinstance(a, Mapping) else p for a, p in zip(given, rows["path"].tolist(), strict=True)]
        rate = int(cast(int, self.sampling_rate))  # set by __post_init__
        audios = [load_audio(src, rate) for src in sources]
        prompts = self.prompts(rows)
        inputs = self.adapter.prepare_inputs(
            self.processor, audios, [p.text for p in prompts], sampling_rate=rate, system=self.system
        )
        return inputs, candidate_matrix(prompts, self.answer_ids())

    def batch_inputs(self, rows: pd.DataFrame) -> Batch:
        """A self-contained batch for ``rows`` on the model's device (floating tensors in the model's dtype)."""
        inputs, cand = (self.inputs_fn or self.processor_inputs)(rows)
        inputs = self._to_model(inputs)
        ids = inputs.get("input_ids")
        if not isinstance(ids, torch.Tensor):
            raise ValueError("the inputs have no `input_ids` tensor")
        cand = torch.as_tensor(cand, dtype=torch.long)
        if cand.ndim == 1:
            cand = cand.unsqueeze(0).expand(ids.shape[0], -1)
        if tuple(cand.shape) != (ids.shape[0], len(self.labels)):
            raise ValueError(
                f"candidate ids have shape {tuple(cand.shape)}, expected [{ids.shape[0]}, "
                f"{len(self.labels)}] (one answer token per row and label)"
            )
        mask = inputs.get("attention_mask")
        masks = self.masks_of(ids, mask if isinstance(mask, torch.Tensor) else None)
        return Batch(inputs=inputs, candidates=cand.to(ids.device), masks=masks)

    def masks_of(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The position masks of token ids (padding from ``attention_mask``, else the pad token)."""
        if attention_mask is None and self.pad_token_id is not None:
            attention_mask = input_ids != int(self.pad_token_id)
        after, suffix = self.text_span or (0, 0)
        return position_masks_from(
            input_ids, attention_mask, audio_ids=self.audio_ids or (), special_ids=self.special_ids or (),
            after_audio=after, suffix=suffix,
        )

    def label_logits(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        """``[B, n_labels]`` log-probabilities of each label's answer token, in label order (un-shuffled).

        ``logits`` is the answer position's ``[B, V]`` or the full ``[B, T, V]`` (read at the last attended position).
        """
        last = last_position_logits(logits, batch)
        if len(batch) != last.shape[0]:
            raise ValueError(f"logits have {last.shape[0]} rows but the batch has {len(batch)} (tile the batch)")
        return score(last, batch.candidates.to(last.device))

    def position_masks(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Bool ``[B, T]`` masks ``all``/``audio``/``text``/``last`` (see :func:`position_masks_from`)."""
        return batch.masks

    # ---- helpers -----------------------------------------------------------------------------------------------
    def _to_model(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Move tensors to the embedding's device; cast floating ones (audio features) to the model's dtype."""
        try:
            hf: Any = forward_model(self.model)  # a transformers model (get_input_embeddings), duck-typed
            emb = hf.get_input_embeddings().weight
            dev, dt = emb.device, emb.dtype
        except (AttributeError, NotImplementedError):
            p = next(self.model.parameters())
            dev, dt = p.device, p.dtype
        out: dict[str, Any] = {}
        for k, v in dict(inputs).items():
            if isinstance(v, torch.Tensor):
                v = v.to(dev, dtype=dt) if v.is_floating_point() else v.to(dev)
            out[k] = v
        return out


# ---------------------------------------------------------------------------------------------------------------------
# Config -> subject
# ---------------------------------------------------------------------------------------------------------------------

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}  # fmt: skip


def known_models() -> list[str]:
    """Every value the config key ``model`` accepts."""
    return sorted({"organism", *ADAPTERS})


#: Every config key :func:`load_subject` and :func:`load_items` read (defined with their types in helpers.book.config).
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


# ---------------------------------------------------------------------------------------------------------------------
# Config -> items
# ---------------------------------------------------------------------------------------------------------------------

#: Loader names for the synthetic corpora (``helpers.data.corpus``) in a ``datasets`` mapping entry.
CORPUS_LOADERS = ("corpus", "synthetic")


@dataclass(frozen=True)
class DatasetSpec:
    """One ``datasets`` entry, normalised: which loader, where the data are, and extra loader options."""

    name: str
    loader: str  # "corpus" or a key of helpers.data.catalog.DATASETS
    root: str | None = None
    hub_id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _expand(path: Any, where: str) -> str | None:
    if path in (None, ""):
        return None
    text = os.path.expanduser(os.path.expandvars(str(path)))
    if "$" in text:
        raise ConfigError(f"{where}: {path!r} names an environment variable that is not set ({text!r})")
    return text


def dataset_spec(name: str, entry: Any) -> DatasetSpec:
    """Normalise a ``datasets`` entry: a folder string, or ``{loader:, root:, hub_id:, ...loader options}``.

    A folder string is a synthetic corpus when it holds ``metadata.csv`` (or when ``name`` is no known dataset);
    otherwise the entry's name picks the real loader (``iemocap: /data/IEMOCAP_full_release``). In a mapping,
    ``root: null`` lets the loader read its environment variable (``ESN_IEMOCAP_ROOT``, ...).
    """
    from ..data.catalog import DATASETS, _canonical

    where = f"datasets.{name}"
    if isinstance(entry, (str, os.PathLike)):
        root = _expand(entry, where)
        assert root is not None
        if (Path(root) / "metadata.csv").is_file():
            return DatasetSpec(name, "corpus", root)
        try:
            return DatasetSpec(name, _canonical(name), root)
        except KeyError:
            return DatasetSpec(name, "corpus", root)  # corpus.load then says how to generate it
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a folder or a mapping with `loader` and `root`, got {type(entry).__name__}")
    opts = dict(entry)
    loader = str(opts.pop("loader", None) or name).lower()
    root = _expand(opts.pop("root", None) or opts.pop("path", None), where)
    hub_id = opts.pop("hub_id", None)
    if loader in CORPUS_LOADERS:
        if root is None:
            raise ConfigError(f"{where}: a synthetic corpus needs `root: <folder>`")
        return DatasetSpec(name, "corpus", root, None, opts)
    try:
        loader = _canonical(loader)
    except KeyError as exc:
        raise ConfigError(f"{where}: unknown loader {loader!r}; known: {[*CORPUS_LOADERS, *DATASETS]}") from exc
    return DatasetSpec(name, loader, root, hub_id, opts)


def filter_labels(df: pd.DataFrame, labels: Sequence[str], what: str = "dataset") -> pd.DataFrame:
    """Keep rows whose label is configured; report (log + ``df.attrs["dropped"]``) what was dropped, never silently.

    Raises when a configured label has no item at all: every stage would fail later on an empty class.
    """
    labels = list(labels)
    attrs = dict(df.attrs)
    outside = ~df["label"].isin(labels)
    if outside.any():
        counts = df.loc[outside, "label"].value_counts().sort_index()
        dropped = {str(k): int(v) for k, v in counts.items()}
        logger.warning(
            "%s: dropped %d item(s) whose label is not in the configured labels %s: %s",
            what,
            int(outside.sum()),
            labels,
            dropped,
        )
        attrs["dropped"] = {**attrs.get("dropped", {}), "not_in_config_labels": dropped}
        df = df.loc[~outside].reset_index(drop=True)
    absent = [lbl for lbl in labels if not (df["label"] == lbl).any()]
    if absent:
        raise ValueError(
            f"{what}: configured label(s) {absent} have no items (labels present: "
            f"{sorted(set(df['label']))}); fix `labels` or the dataset's label_map"
        )
    df.attrs = attrs
    return df


def check_datasets(params: Mapping[str, Any]) -> None:
    """The dataset checks that need no model and no audio decoding, run before a stage loads its model.

    Every ``datasets`` entry must resolve to a loader and an existing folder (or a set environment variable, or a
    hub id); a synthetic corpus must have its ``metadata.csv`` with the schema's columns and an item of every
    configured label; a real corpus must be laid out as its loader expects, its metadata files must have the label
    columns, and its label map must be able to produce every configured label.
    """
    from ..data.schema import REQUIRED_COLUMNS, SchemaError
    from ..data.source_checks import check_source

    datasets = params.get("datasets") or {}
    if not isinstance(datasets, Mapping) or not datasets:
        raise ConfigError("config lacks `datasets: {name: folder or {loader:, root:}}`")
    labels = [str(x) for x in _require(params, "labels")]
    for name, entry in datasets.items():
        spec = dataset_spec(str(name), entry)
        where = f"datasets.{name}"
        if spec.loader != "corpus":
            check_source(spec.loader, root=spec.root, hub_id=spec.hub_id, labels=labels, where=where, **spec.options)
            continue
        meta = Path(str(spec.root)) / "metadata.csv"
        if not meta.is_file():
            raise SchemaError(
                f"{where}: no corpus at {spec.root} (missing metadata.csv); generate it with `make corpus` or point "
                f"`{where}` at a corpus folder"
            )
        try:
            head = pd.read_csv(meta, nrows=0).columns
            missing = [c for c in REQUIRED_COLUMNS if c not in head]
            present = set() if missing else set(pd.read_csv(meta, usecols=["label"], dtype=str)["label"])
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            raise SchemaError(f"{where}: cannot read {meta} ({exc}); regenerate the corpus (`make corpus`)") from None
        if missing:
            raise SchemaError(
                f"{where}: {meta} lacks the column(s) {missing}; every dataset needs {list(REQUIRED_COLUMNS)} "
                "(regenerate it with `make corpus` or fix the table)"
            )
        absent = [lbl for lbl in labels if lbl not in present]
        if absent:
            raise SchemaError(
                f"{where}: configured label(s) {absent} have no items in {meta} (labels present: {sorted(present)}); "
                "fix `labels` in the config or the dataset"
            )


def load_items(
    params: Mapping[str, Any], name: str | None = None, *, split: str | None = None, **kwargs: Any
) -> pd.DataFrame:
    """Items of dataset ``name`` (default: the config's ``dataset``) in the unified schema, labels checked.

    Synthetic corpora go through :func:`helpers.data.corpus.load` (``kwargs`` e.g. ``context=None``), real corpora
    through :func:`helpers.data.catalog.load_dataset` with the entry's root / hub id and options; the configured
    ``labels`` and ``seed`` are passed on unless the entry sets them. ``split`` keeps one split.
    """
    datasets = params.get("datasets") or {}
    if not isinstance(datasets, Mapping) or not datasets:
        raise ConfigError("config lacks `datasets: {name: folder or {loader:, root:}}`")
    name = name or str(_require(params, "dataset"))
    if name not in datasets:
        raise ConfigError(f"dataset {name!r} is not in the config's datasets {list(datasets)}")
    spec = dataset_spec(name, datasets[name])
    labels = list(_require(params, "labels"))
    if spec.loader == "corpus":
        from ..data import corpus

        df = corpus.load(cast(str, spec.root), **{**spec.options, **kwargs})  # dataset_spec gives corpora a root
    else:
        from ..data.catalog import load_dataset

        # `context` selects a synthetic corpus's text-context rows; a real dataset has one row per clip
        kwargs = {k: v for k, v in kwargs.items() if k != "context"}
        opts = {"labels": labels, "seed": int(params.get("seed", 0) or 0), **spec.options, **kwargs}
        df = load_dataset(spec.loader, root=spec.root, hub_id=spec.hub_id, allow_hub=_flag(params, "allow_hub"), **opts)
    df = filter_labels(df, labels, f"{name} ({spec.loader})")
    if split is not None:
        splits = sorted(set(df["split"]))
        attrs = dict(df.attrs)
        df = df[df["split"] == split].reset_index(drop=True)
        if df.empty:
            raise ValueError(f"{name}: no items in split {split!r}; splits present: {splits}")
        df.attrs = attrs
    return df
