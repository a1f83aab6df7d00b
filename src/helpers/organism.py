"""The embedded model organism: a tiny Qwen2-Audio trained here so that its emotion decision lives in its
decoder MLPs.

Design (chapter 00 explains it): a real ``Qwen2AudioForConditionalGeneration`` (Whisper-style encoder,
Qwen2 SwiGLU decoder) small enough to train on two CPU cores in minutes.

* Stage 1 pretrains the audio encoder to regress each clip's prosody (pitch, pitch range, rate, loudness),
  a task that says nothing about emotion. The encoder is then frozen.
* Stage 2 trains **only the decoder MLP weights** (gate, up, down projections) to answer the emotion
  question. Attention, embeddings, projector and the unembedding keep their random initialisation.

So whatever maps "this prosody" to "this emotion word" must be computed by decoder MLP neurons, as in a large
LALM whose language model does the reasoning. The price, stated plainly in the book: the organism cannot tell
us *where* a pretrained LALM puts that computation, only whether the Log → Identify → Intervene pipeline finds
it when it is in the MLPs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .corpus import CONTEXT_PHRASES, EMOTIONS, MAX_SECONDS, SAMPLE_RATE
from .io import atomic_write_text

AUDIO_BOS, AUDIO_TOKEN, AUDIO_EOS = "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"
SPECIAL_TOKENS = ("<pad>", "<unk>", AUDIO_BOS, AUDIO_TOKEN, AUDIO_EOS)
#: The question after the audio and the context; the answer is scored at the last token (":").
QUESTION = "question : which emotion ? answer :"
#: Mel hop of 20 ms: 3 s → 150 frames → 75 encoder positions → 37 audio tokens after pooling.
HOP_LENGTH = 320
N_MELS = 80
N_AUDIO_TOKENS = ((int(MAX_SECONDS * SAMPLE_RATE) // HOP_LENGTH - 1) // 2 + 1 - 2) // 2 + 1

PROSODY_TARGETS = ("pitch", "range", "rate", "loudness_db")


@dataclass
class OrganismConfig:
    """Sizes and training recipe of the organism (all of it is recorded in the training card)."""

    audio_d_model: int = 128
    audio_layers: int = 2
    audio_heads: int = 4
    audio_ffn: int = 256
    hidden_size: int = 128
    decoder_layers: int = 6
    decoder_heads: int = 4
    decoder_kv_heads: int = 2
    intermediate_size: int = 512
    decoder_init_std: float = 0.08
    seed: int = 0
    # stage 1: encoder prosody regression
    encoder_epochs: int = 12
    encoder_lr: float = 1e-3
    # stage 2: decoder MLPs only
    decoder_epochs: int = 30
    decoder_lr: float = 3e-3
    batch_size: int = 32
    eval_every: int = 5
    weight_decay: float = 0.0
    labels: tuple[str, ...] = EMOTIONS
    notes: dict[str, Any] = field(default_factory=dict)


def vocabulary() -> list[str]:
    """Every word the organism can read: special tokens, the question, the context phrases, the labels."""
    words: list[str] = list(SPECIAL_TOKENS)
    text = " ".join([QUESTION, "context :", "."] + [p for ps in CONTEXT_PHRASES.values() for p in ps])
    for w in text.split() + list(EMOTIONS):
        if w not in words:
            words.append(w)
    return words


def build_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` built locally (nothing to download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": [AUDIO_BOS, AUDIO_TOKEN, AUDIO_EOS]})
    return fast


def build_feature_extractor():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=N_MELS, sampling_rate=SAMPLE_RATE, hop_length=HOP_LENGTH, chunk_length=int(MAX_SECONDS),
        n_fft=400,
    )


def build_model(cfg: OrganismConfig, tokenizer) -> nn.Module:
    """A randomly initialised tiny ``Qwen2AudioForConditionalGeneration`` (seeded)."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    torch.manual_seed(cfg.seed)
    n_frames = int(MAX_SECONDS * SAMPLE_RATE) // HOP_LENGTH
    config = Qwen2AudioConfig(
        audio_config={
            "num_mel_bins": N_MELS, "encoder_layers": cfg.audio_layers, "encoder_attention_heads": cfg.audio_heads,
            "encoder_ffn_dim": cfg.audio_ffn, "d_model": cfg.audio_d_model, "max_source_positions": n_frames // 2,
        },
        text_config={
            "model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.decoder_layers,
            "num_attention_heads": cfg.decoder_heads, "num_key_value_heads": cfg.decoder_kv_heads,
            "max_position_embeddings": 128, "initializer_range": cfg.decoder_init_std,
            "tie_word_embeddings": False, "pad_token_id": tokenizer.pad_token_id,
        },
        audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
    )
    model = Qwen2AudioForConditionalGeneration(config)
    model.eval()
    return model


@dataclass
class Organism:
    """The model with everything needed to ask it the emotion question and read its answer."""

    model: nn.Module
    tokenizer: Any
    feature_extractor: Any
    labels: tuple[str, ...]
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def label_token_ids(self) -> torch.Tensor:
        return torch.tensor([self.tokenizer.convert_tokens_to_ids(w) for w in self.labels])

    def prompt(self, text: str) -> str:
        """The prompt string for one item; ``text`` is its three-word context phrase."""
        words = text.split()
        if len(words) != 3:
            raise ValueError(f"organism context phrases have exactly 3 words (fixed prompt length); got {text!r}")
        return f"{AUDIO_BOS} {' '.join([AUDIO_TOKEN] * N_AUDIO_TOKENS)} {AUDIO_EOS} context : {text} . {QUESTION}"

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer([self.prompt(t) for t in texts], return_tensors="pt", padding=False)
        ids = enc["input_ids"]
        unk = self.tokenizer.unk_token_id
        if (ids == unk).any():
            bad = [t for t, row in zip(texts, ids, strict=True) if (row == unk).any()]
            raise ValueError(f"context text has words the organism's tokenizer does not know: {bad[:3]}")
        return ids

    def features(self, wavs: Sequence[np.ndarray]) -> torch.Tensor:
        """Log-mel features of the full 3 s window; every clip yields exactly ``N_AUDIO_TOKENS`` audio tokens."""
        out = self.feature_extractor(list(wavs), sampling_rate=SAMPLE_RATE, return_tensors="pt")
        return out["input_features"]

    def inputs(self, wavs: Sequence[np.ndarray] | torch.Tensor, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Model inputs for a batch: raw waveforms (or precomputed features) plus context phrases."""
        feats = wavs if isinstance(wavs, torch.Tensor) else self.features(wavs)
        ids = self.encode_text(texts)
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "input_features": feats,
            "feature_attention_mask": torch.ones(feats.shape[0], feats.shape[-1], dtype=torch.long),
        }

    def position_masks(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Boolean [B, T] masks of the token positions a stage may count: all, audio, text, last."""
        audio_id = self.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
        audio = input_ids == audio_id
        ctx_start = 1 + N_AUDIO_TOKENS + 1 + 2  # bos, audio, eos, "context", ":"
        text = torch.zeros_like(audio)
        text[:, ctx_start : ctx_start + 3] = True
        last = torch.zeros_like(audio)
        last[:, -1] = True
        return {"all": torch.ones_like(audio), "audio": audio, "text": text, "last": last}

    def label_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Constrained scoring: the label words' logits at the last prompt position, [B, n_labels].

        Accepts the full [B, T, V] logits or the last position's [B, V].
        """
        last = logits[:, -1, :] if logits.ndim == 3 else logits
        return last.index_select(-1, self.label_token_ids.to(logits.device))

    def batch_inputs(self, rows: pd.DataFrame) -> dict[str, torch.Tensor]:
        """Model inputs for a table of items in the unified schema (audio from ``path``, context from ``text``)."""
        return self.inputs(load_waves(rows["path"].tolist()), rows["text"].tolist())

    @torch.no_grad()
    def predict(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.label_logits(self.model(**inputs).logits).argmax(-1)

    def save(self, folder: str | Path) -> Path:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        self.feature_extractor.save_pretrained(out)
        atomic_write_text(out / "training_card.json", json.dumps(self.card, indent=2, default=str) + "\n")
        return out


def load_organism(folder: str | Path) -> Organism:
    """Load the committed organism checkpoint (safetensors + config + tokenizer + training card)."""
    from transformers import PreTrainedTokenizerFast, Qwen2AudioForConditionalGeneration, WhisperFeatureExtractor

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no organism checkpoint at {path} (config.json missing); train it with `make organism`"
        )
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path, local_files_only=True)
    model.eval()
    tok = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    fe = WhisperFeatureExtractor.from_pretrained(path, local_files_only=True)
    card = json.loads((path / "training_card.json").read_text()) if (path / "training_card.json").is_file() else {}
    labels = tuple(card.get("labels", EMOTIONS))
    return Organism(model=model, tokenizer=tok, feature_extractor=fe, labels=labels, card=card)


# ----------------------------------------------------------------------------------------------- training


def prosody_targets(df: pd.DataFrame) -> np.ndarray:
    """Per-clip prosody the encoder learns to hear: espeak pitch/range/rate and loudness in dB."""
    loud = 20 * np.log10(df["volume"].to_numpy() / 100.0) + df["gain_db"].to_numpy()
    return np.stack([df["pitch"], df["range"], df["rate"], loud], axis=1).astype(np.float32)


def load_waves(paths: Sequence[str]) -> list[np.ndarray]:
    import soundfile as sf

    out = []
    for p in paths:
        wav, sr = sf.read(p, dtype="float32")
        if sr != SAMPLE_RATE:
            raise ValueError(f"{p} has sampling rate {sr}, the organism expects {SAMPLE_RATE}: resample it")
        out.append(wav)
    return out


def featurize(org: Organism, df: pd.DataFrame, batch: int = 256) -> torch.Tensor:
    """Mel features for every row of ``df`` (in order)."""
    feats = []
    for i in range(0, len(df), batch):
        feats.append(org.features(load_waves(df["path"].iloc[i : i + batch].tolist())))
    return torch.cat(feats)


def _audio_embeddings(model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """Projected audio-token embeddings exactly as ``Qwen2AudioModel.forward`` computes them (full mask)."""
    inner = model.model
    hidden = inner.audio_tower(feats).last_hidden_state
    return inner.multi_modal_projector(hidden)


def _decoder_logits(model: nn.Module, input_ids: torch.Tensor, audio_emb: torch.Tensor) -> torch.Tensor:
    """The decoder pass of ``Qwen2AudioModel.forward`` given cached audio embeddings (same computation)."""
    inner = model.model
    embeds = inner.get_input_embeddings()(input_ids)
    mask = (input_ids == model.config.audio_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(mask, audio_emb.reshape(-1, audio_emb.shape[-1]).to(embeds.dtype))
    hidden = inner.language_model(inputs_embeds=embeds).last_hidden_state
    return model.lm_head(hidden[:, -1:, :])


def _batches(n: int, size: int, gen: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=gen).split(size))


def train_encoder(org: Organism, feats: torch.Tensor, targets: np.ndarray, cfg: OrganismConfig,
                  log: list[dict], verbose: bool = False) -> None:
    """Stage 1: the audio tower learns to regress prosody from mel features (mean-pooled, linear head)."""
    tower = org.model.model.audio_tower
    y = torch.from_numpy(targets)
    mu, sd = y.mean(0), y.std(0)
    y = (y - mu) / sd
    head = nn.Linear(tower.config.d_model, y.shape[1])
    params = list(tower.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.encoder_lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    tower.train()
    for epoch in range(cfg.encoder_epochs):
        t0, total = time.time(), 0.0
        for idx in _batches(len(feats), cfg.batch_size, gen):
            pred = head(tower(feats[idx]).last_hidden_state.mean(1))
            loss = nn.functional.mse_loss(pred, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        log.append({"stage": "encoder", "epoch": epoch, "mse": total / len(feats), "seconds": time.time() - t0})
        if verbose:
            print(log[-1], flush=True)
    tower.eval()
    for p in tower.parameters():
        p.requires_grad_(False)


def mlp_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The only weights stage 2 trains: every decoder layer's gate, up and down projections."""
    return [p for layer in model.model.language_model.layers for p in layer.mlp.parameters()]


def train_decoder(org: Organism, audio_emb: torch.Tensor, input_ids: torch.Tensor, y: torch.Tensor,
                  cfg: OrganismConfig, log: list[dict], eval_fn: Callable[[], dict[str, float]] | None = None,
                  verbose: bool = False) -> None:
    """Stage 2: only decoder MLPs learn to answer; cross-entropy over the label words at the last position."""
    model = org.model
    for p in model.parameters():
        p.requires_grad_(False)
    params = mlp_parameters(model)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.decoder_epochs)
    label_ids = org.label_token_ids
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    model.train()
    for epoch in range(cfg.decoder_epochs):
        t0, total, correct = time.time(), 0.0, 0
        for idx in _batches(len(y), cfg.batch_size, gen):
            logits = _decoder_logits(model, input_ids[idx], audio_emb[idx])[:, -1, label_ids]
            loss = nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(-1) == y[idx]).sum())
        sched.step()
        row = {"stage": "decoder", "epoch": epoch, "loss": total / len(y), "train_acc": correct / len(y),
               "seconds": time.time() - t0}
        if eval_fn is not None and (epoch % cfg.eval_every == cfg.eval_every - 1 or epoch == cfg.decoder_epochs - 1):
            model.eval()
            row.update(eval_fn())
            model.train()
        log.append(row)
        if verbose:
            print(row, flush=True)
    model.eval()
    for p in params:
        p.requires_grad_(False)


@torch.no_grad()
def evaluate(org: Organism, df: pd.DataFrame, feats: torch.Tensor | None = None, batch: int = 64) -> np.ndarray:
    """Predicted label index for every row of ``df`` through the full model forward (the public path)."""
    feats = featurize(org, df) if feats is None else feats
    preds = []
    for i in range(0, len(df), batch):
        inputs = org.inputs(feats[i : i + batch], df["text"].iloc[i : i + batch].tolist())
        preds.append(org.predict(inputs))
    return torch.cat(preds).numpy()


def train_organism(corpus_dirs: dict[str, str | Path], out_dir: str | Path, cfg: OrganismConfig | None = None,
                   progress: bool = True) -> Organism:
    """Train the organism on corpus A's train split and write the checkpoint and its training card."""
    from . import corpus as corpus_mod

    cfg = cfg or OrganismConfig()
    torch.manual_seed(cfg.seed)
    t_start = time.time()
    tok = build_tokenizer()
    org = Organism(build_model(cfg, tok), tok, build_feature_extractor(), tuple(cfg.labels))
    train = corpus_mod.load(corpus_dirs["A"], split="train", context=None)
    # the train split has one context row per clip, so rows == clips
    feats = featurize(org, train)
    log: list[dict] = []
    if progress:
        print(f"features ready after {time.time() - t_start:.1f}s", flush=True)
    train_encoder(org, feats, prosody_targets(train), cfg, log, verbose=progress)
    with torch.no_grad():
        audio_emb = torch.cat([_audio_embeddings(org.model, feats[i : i + 256]) for i in range(0, len(feats), 256)])
    ids = org.encode_text(train["text"].tolist())
    y = torch.tensor([cfg.labels.index(lbl) for lbl in train["label"]])
    val = corpus_mod.load(corpus_dirs["A"], split="identify")
    val_feats = featurize(org, val)
    y_val = np.array([cfg.labels.index(lbl) for lbl in val["label"]])

    def eval_fn() -> dict[str, float]:
        return {"identify_acc": float((evaluate(org, val, val_feats) == y_val).mean())}

    train_decoder(org, audio_emb, ids, y, cfg, log, eval_fn=eval_fn, verbose=progress)
    accuracy = {}
    for name, folder in corpus_dirs.items():
        ev = corpus_mod.load(folder, split="evaluate")
        y_ev = np.array([cfg.labels.index(lbl) for lbl in ev["label"]])
        accuracy[name] = float((evaluate(org, ev) == y_ev).mean())
    manifests = {}
    for name, folder in corpus_dirs.items():
        mf = Path(folder) / "manifest.json"
        manifests[name] = json.loads(mf.read_text()) if mf.is_file() else None
    n_params = sum(p.numel() for p in org.model.parameters())
    org.card = {
        "labels": list(cfg.labels),
        "config": {k: v for k, v in asdict(cfg).items() if k != "labels"},
        "parameters": n_params,
        "trainable_stage2": sum(p.numel() for p in mlp_parameters(org.model)),
        "train_items": len(train),
        "accuracy_evaluate": accuracy,
        "training_seconds": time.time() - t_start,
        "torch": torch.__version__,
        "corpus_manifests": manifests,
        "log": log,
    }
    org.save(out_dir)
    return org
