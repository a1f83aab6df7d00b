"""Real audio-language models as :class:`~helpers.core.subject.Subject`\\ s, and the config-driven loaders of a run.

Every stage talks to "the subject" only through ``batch_inputs``, ``label_logits`` and ``position_masks``. The
organism implements them for its own word-level prompt; :class:`AdapterSubject` implements them for any family
in :data:`helpers.core.families.ADAPTERS` (Qwen2-Audio, Qwen2.5-Omni, Audio Flamingo 3, Voxtral, ...) with the family's
chat template and processor. :func:`~helpers.subjects.subject_loading.load_subject` and
:func:`~helpers.subjects.run_items.load_items` turn a papermill parameter file
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
* The prompt/scoring/mask logic lives in pure functions (:func:`~helpers.subjects.item_prompts.item_prompt`,
  :func:`~helpers.subjects.item_prompts.candidate_matrix`, :func:`~helpers.subjects.positions.position_masks_from`)
  and the processor call behind an injectable ``inputs_fn``, so all of it is tested on tiny random models without
  any processor files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import pandas as pd
import torch
from torch import nn

from ..core.families import Adapter
from ..core.models import forward_model
from ..core.prompts import candidate_token_ids, score
from ..core.subject import Batch, last_position_logits
from .item_prompts import DEFAULT_QUESTION, ItemPrompt, _check_style, answer_strings, candidate_matrix, item_prompt
from .positions import audio_token_ids, position_masks_from, special_token_ids, template_lengths

logger = logging.getLogger(__name__)


#: ``inputs_fn(rows) -> (model inputs, candidate token ids [B, n_labels] or [n_labels])``; candidate column j is
#: the token that answers ``labels[j]`` for that row.
InputsFn = Callable[[pd.DataFrame], tuple[Mapping[str, torch.Tensor], torch.Tensor]]


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
        """Bool ``[B, T]`` masks ``all``/``audio``/``text``/``last`` (see
        :func:`~helpers.subjects.positions.position_masks_from`)."""
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


__all__ = [
    "AdapterSubject",
    "InputsFn",
]
