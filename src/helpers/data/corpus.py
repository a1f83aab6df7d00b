"""The synthetic emotional-speech corpora that stand in for IEMOCAP & co. where no data can be downloaded.

Emotions are rendered as prosody (pitch, pitch range, speaking rate, loudness) by espeak-ng, with per-clip
jitter, random gain and background noise so that the classes overlap: recognising them takes evidence from
several cues at once, as with acted speech. Two corpora with disjoint sentences and voices and a shifted
prosody mapping serve cross-dataset transfer. Every sentence is spoken by every voice in every emotion
(matched-content sets), and identification/evaluation clips carry three text contexts (neutral, congruent,
conflicting) so grounding can separate what the audio says from what the text says.

**The audio-reliability dial** (corpus version 2): every clip exists at several *reliability levels*. A level
scales each emotion's prosody toward neutral (``intensity`` 1 = full emotion, 0 = every emotion sounds neutral,
so the audio carries no emotion information by construction) and records the clip through a channel of its own
quality (background noise at the level's SNR), so a listener can hear *which* level a clip is at. The label is
always the emotion the speaker expresses; the text context is a hint that is usually right. Per item it is then
known by construction which side *should* drive the answer: the audio when it is clear, the text when the audio
is uninformative — the ground truth the grounding chapter must recover.

The generator is deterministic from a seed: the clip list, the jitter, the noise and espeak-ng's own
pseudo-random flutter (synthesised in a fresh process, in a fixed order) all derive from it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.io import atomic_write_text
from .espeak import Prosody
from .schema import REQUIRED_COLUMNS, SchemaError, validate

GENERATOR_VERSION = "2"
EMOTIONS: tuple[str, ...] = ("neutral", "happy", "angry", "sad")
SAMPLE_RATE = 16_000
#: Clips are cut or padded to this length; the organism's encoder sees exactly this many seconds.
MAX_SECONDS = 3.0

# Text contexts are exactly three words so that every prompt has the same length (no padding anywhere).
CONTEXT_PHRASES: dict[str, tuple[str, ...]] = {
    "none": ("someone is talking", "voices are heard", "listen to this"),
    "neutral": ("she sounded calm", "he spoke plainly", "simply stating facts"),
    "happy": ("she sounded cheerful", "he was delighted", "what a joy"),
    "angry": ("she sounded furious", "he was outraged", "what an insult"),
    "sad": ("she sounded gloomy", "he was heartbroken", "what a loss"),
}

_SUBJECTS = (
    "the farmer", "my neighbour", "the teacher", "a student", "the driver", "our uncle", "the doctor",
    "a stranger", "the pilot", "her cousin", "the baker", "a tourist", "the painter", "his sister", "the guard",
    "a child", "the mayor", "the clerk", "my friend", "the singer",
)
_VERBS = (
    "carried", "opened", "painted", "counted", "moved", "found", "cleaned", "checked", "fixed", "sold",
    "borrowed", "packed", "lifted", "closed", "measured", "ordered",
)
_OBJECTS = (
    "the wooden box", "a green lamp", "the old map", "two paper bags", "the blue chair", "a small table",
    "the kitchen door", "a glass bottle", "the heavy coat", "three letters", "the garden gate", "a red bicycle",
    "the window frame", "a metal bucket", "the brown basket", "a thin book",
)
_TAILS = (
    "on monday", "before noon", "in the morning", "after lunch", "last week", "near the station",
    "by the river", "at the market", "this evening", "on the way home",
)


@dataclass(frozen=True)
class Reliability:
    """One level of the audio-reliability dial."""

    #: Share of each emotion's prosody distance from neutral that is kept (1 = full emotion, 0 = neutral).
    intensity: float
    #: Background-noise SNR range (dB) of this level's channel: lets a listener tell the levels apart.
    snr_db: tuple[float, float]


#: The default dial, clearest level first. At ``none`` the audio carries no emotion information at all.
RELIABILITY: dict[str, Reliability] = {
    "clear": Reliability(intensity=1.0, snr_db=(20.0, 40.0)),
    "faint": Reliability(intensity=0.4, snr_db=(10.0, 16.0)),
    "none": Reliability(intensity=0.0, snr_db=(2.0, 6.0)),
}


@dataclass(frozen=True)
class CorpusSpec:
    """Everything that determines one corpus. Changing any field changes the corpus (and its manifest hash)."""

    name: str
    voices: tuple[str, ...]
    n_sentences: int
    #: Mean prosody per emotion; per-clip values are drawn around it with ``jitter`` standard deviations.
    prosody: dict[str, Prosody]
    jitter: Prosody
    #: How sentences are split (by sentence, so no sentence is shared between splits).
    split_fractions: dict[str, float]
    #: Share of train clips whose context is neutral/none, congruent, conflicting: a present hint is right
    #: 70 % of the time, so a rational listener trusts clear audio (about 90 % right) over the hint.
    train_context_mix: dict[str, float] = field(
        default_factory=lambda: {"none": 0.4, "congruent": 0.42, "conflict": 0.18}
    )
    gain_db: float = 4.0
    #: The audio-reliability dial (level name -> intensity and channel SNR), clearest first.
    reliability: dict[str, Reliability] = field(default_factory=lambda: dict(RELIABILITY))
    sentence_offset: int = 0
    seed: int = 0


def _voices(*names: str) -> tuple[str, ...]:
    return tuple(names)


#: Corpus A: the organism is trained on its train split.
CORPUS_A = CorpusSpec(
    name="A",
    voices=_voices("en-us+m1", "en-us+f2", "en+m3", "en-gb-x-rp+f4", "en-us+m5", "en+f1"),
    n_sentences=80,
    prosody={
        "neutral": Prosody(pitch=48, range=45, rate=165, volume=100),
        "happy": Prosody(pitch=72, range=85, rate=195, volume=120),
        "angry": Prosody(pitch=56, range=60, rate=205, volume=175),
        "sad": Prosody(pitch=32, range=18, rate=125, volume=70),
    },
    jitter=Prosody(pitch=5, range=8, rate=10, volume=12),
    split_fractions={"train": 0.6, "identify": 0.2, "evaluate": 0.2},
    sentence_offset=0,
    seed=11,
)

#: Corpus B: other voices and sentences, and emotions rendered with a shifted prosody mapping (transfer).
CORPUS_B = CorpusSpec(
    name="B",
    voices=_voices("en-gb-scotland+m2", "en-us+f5", "en+m7", "en-029+f3", "en-us-nyc+m4"),
    n_sentences=40,
    prosody={
        "neutral": Prosody(pitch=52, range=38, rate=160, volume=105),
        "happy": Prosody(pitch=66, range=72, rate=180, volume=130),
        "angry": Prosody(pitch=64, range=58, rate=200, volume=165),
        "sad": Prosody(pitch=40, range=26, rate=138, volume=80),
    },
    jitter=Prosody(pitch=6, range=9, rate=12, volume=14),
    split_fractions={"identify": 0.5, "evaluate": 0.5},
    sentence_offset=500,
    seed=23,
)

CORPORA: dict[str, CorpusSpec] = {"A": CORPUS_A, "B": CORPUS_B}


def sentences(spec: CorpusSpec) -> list[str]:
    """Deterministic, emotionally neutral sentences; ``sentence_offset`` keeps corpora disjoint."""
    combos = [
        f"{s} {v} {o} {t}"
        for s in _SUBJECTS
        for v in _VERBS
        for o in _OBJECTS
        for t in _TAILS
    ]
    order = np.random.default_rng(12345).permutation(len(combos))
    picked = order[spec.sentence_offset : spec.sentence_offset + spec.n_sentences]
    return [combos[i] for i in picked]


def plan(spec: CorpusSpec) -> pd.DataFrame:
    """The metadata table of a corpus (one row per clip × context), before any audio exists.

    Columns: the unified schema plus ``transcript``, ``context`` (none/congruent/conflict),
    ``context_label``, ``clip_id``, ``matched_id`` (same sentence, voice and reliability level across
    emotions), ``reliability`` and ``intensity`` (the dial) and the clip's drawn prosody (``pitch``, ``range``,
    ``rate``, ``volume``, ``gain_db``, ``snr_db``, ``seed``).
    """
    rng = np.random.default_rng(spec.seed)
    texts = sentences(spec)
    sent_ids = np.arange(len(texts))
    perm = rng.permutation(sent_ids)
    split_of: dict[int, str] = {}
    start = 0
    names = list(spec.split_fractions)
    for i, name in enumerate(names):
        n = len(perm) - start if i == len(names) - 1 else int(round(spec.split_fractions[name] * len(perm)))
        for s in perm[start : start + n]:
            split_of[int(s)] = name
        start += n

    rows = []
    for s, text in enumerate(texts):
        for v, voice in enumerate(spec.voices):
            for emotion in EMOTIONS:
                draw = rng.normal(size=4)
                gain = float(rng.uniform(-spec.gain_db, spec.gain_db))
                others = [x for x in EMOTIONS if x != emotion]
                conflict_label = others[int(rng.integers(0, len(others)))]
                phrase_pick = int(rng.integers(0, 3))
                for level, rel in spec.reliability.items():
                    # the same speaker draw at every level: only the intensity and the channel change
                    prosody = _prosody(spec, emotion, rel.intensity, draw)
                    snr = float(rng.uniform(*rel.snr_db))
                    clip_seed = int(rng.integers(0, 2**31 - 1))
                    sid = f"{spec.name}_s{s + spec.sentence_offset:04d}"
                    clip_id = f"{sid}_v{v}_{emotion}_{level}"
                    split = split_of[s]
                    base = {
                        "path": f"wav/{clip_id}.wav",
                        "sampling_rate": SAMPLE_RATE,
                        "label": emotion,
                        "speaker": f"{spec.name}:{voice}",
                        "sentence_id": sid,
                        "split": split,
                        "transcript": text,
                        "clip_id": clip_id,
                        "matched_id": f"{sid}_v{v}_{level}",
                        "reliability": level,
                        "intensity": rel.intensity,
                        "voice": voice,
                        **prosody,
                        "gain_db": gain,
                        "snr_db": snr,
                        "seed": clip_seed,
                    }
                    contexts = {
                        "none": ("none", CONTEXT_PHRASES["none"][phrase_pick]),
                        "congruent": (emotion, CONTEXT_PHRASES[emotion][phrase_pick]),
                        "conflict": (conflict_label, CONTEXT_PHRASES[conflict_label][phrase_pick]),
                    }
                    if split == "train":
                        mix = spec.train_context_mix
                        kind = str(rng.choice(list(mix), p=np.array(list(mix.values())) / sum(mix.values())))
                        kinds = [kind]
                    else:
                        kinds = list(contexts)
                    for kind in kinds:
                        ctx_label, phrase = contexts[kind]
                        rows.append({**base, "context": kind, "context_label": ctx_label, "text": phrase})
    df = pd.DataFrame(rows)
    cols = list(REQUIRED_COLUMNS) + [c for c in df.columns if c not in REQUIRED_COLUMNS]
    return df[cols]


def _prosody(spec: CorpusSpec, emotion: str, intensity: float, draw: np.ndarray) -> dict[str, float]:
    """One clip's prosody: the emotion's mean moved ``intensity`` of the way from neutral, plus the clip's jitter."""
    neutral, target, jit = spec.prosody["neutral"], spec.prosody[emotion], spec.jitter

    def mean(name: str) -> float:
        a, b = getattr(neutral, name), getattr(target, name)
        return a + intensity * (b - a)

    return {
        "pitch": float(np.clip(mean("pitch") + jit.pitch * draw[0], 0, 100)),
        "range": float(np.clip(mean("range") + jit.range * draw[1], 0, 100)),
        "rate": float(np.clip(mean("rate") + jit.rate * draw[2], 90, 400)),
        "volume": float(np.clip(mean("volume") + jit.volume * draw[3], 20, 200)),
    }


def render_clip(engine, row: pd.Series) -> np.ndarray:  # noqa: ANN001 - Espeak lives in a worker process
    """Synthesise one clip at ``SAMPLE_RATE``: espeak-ng prosody, then gain, then background noise."""
    import soxr

    prosody = Prosody(pitch=row["pitch"], range=row["range"], rate=row["rate"], volume=row["volume"])
    wav = engine.synth(row["transcript"], row["voice"], prosody, seed=int(row["seed"]))
    wav = soxr.resample(wav, engine.sample_rate, SAMPLE_RATE).astype(np.float32)
    wav = wav[: int(MAX_SECONDS * SAMPLE_RATE)]
    rng = np.random.default_rng(int(row["seed"]))
    wav = wav * np.float32(10 ** (row["gain_db"] / 20))
    power = float(np.mean(wav**2)) if wav.size else 0.0
    noise_power = power / (10 ** (row["snr_db"] / 10)) if power > 0 else 1e-8
    wav = wav + rng.normal(scale=np.sqrt(noise_power), size=wav.shape).astype(np.float32)
    return np.clip(wav, -1.0, 1.0)


def _render_all(clips: list[dict], out_dir: str) -> None:
    """Worker: a fresh process, so espeak-ng's internal state starts the same way on every run."""
    import soundfile as sf
    from tqdm.auto import tqdm

    from .espeak import Espeak

    engine = Espeak()
    for row in tqdm(clips, desc="synthesising", mininterval=2.0):
        wav = render_clip(engine, pd.Series(row))
        target = Path(out_dir) / row["path"]
        tmp = target.with_suffix(".tmp.wav")
        sf.write(tmp, wav, SAMPLE_RATE, subtype="PCM_16")
        os.replace(tmp, target)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate(spec: CorpusSpec, out_dir: str | Path, *, limit: int | None = None) -> pd.DataFrame:
    """Write a corpus (WAVs + ``metadata.csv`` + ``manifest.json``) to ``out_dir`` and return its table.

    ``limit`` keeps only the first ``limit`` sentences (tests and quick previews).
    The metadata and manifest are written last, to temporary names, so a half-generated folder is never
    mistaken for a complete corpus.
    """
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    df = plan(spec)
    if limit is not None:
        keep = sorted(df["sentence_id"].unique())[:limit]
        df = df[df["sentence_id"].isin(keep)].reset_index(drop=True)
    clips = df.drop_duplicates("clip_id").to_dict("records")
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_render_all, args=(clips, str(out)))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"corpus synthesis failed (exit code {proc.exitcode}); see the messages above")
    hashes = {c["path"]: _sha256(out / c["path"]) for c in clips}
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "spec": json.loads(json.dumps(asdict(spec), default=str)),
        "n_clips": len(clips),
        "n_rows": len(df),
        "limit": limit,
        "audio_sha256": hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest(),
        "metadata_sha256": hashlib.sha256(df.to_csv(index=False).encode()).hexdigest(),
    }
    atomic_write_text(out / "metadata.csv", df.to_csv(index=False))
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    return df


def load(corpus_dir: str | Path, *, split: str | None = None, context: str | None = "none",
         reliability: str | None = "clear", check_files: bool = True) -> pd.DataFrame:
    """Read a generated corpus; by default only the plain (``context == "none"``) rows at the clearest level.

    Paths are returned absolute. ``context=None`` returns every context row (grounding needs them);
    ``reliability=None`` every level of the audio-reliability dial (a level name keeps that level).
    """
    root = Path(corpus_dir)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise SchemaError(
            f"no corpus at {root} (missing {meta.name}); generate it with `make corpus` "
            "or helpers.data.corpus.generate(CORPORA[name], folder)."
        )
    df = pd.read_csv(meta, keep_default_na=False)
    validate(df, root=root, check_files=check_files)
    if split is not None:
        if split not in set(df["split"]):
            raise SchemaError(f"corpus {root} has no split {split!r}; it has {sorted(set(df['split']))}.")
        df = df[df["split"] == split]
    if context is not None:
        df = df[df["context"] == context]
    if reliability is not None and "reliability" in df.columns:  # a table without the dial is all one level
        levels = list(dict.fromkeys(df["reliability"]))
        if reliability not in levels:
            raise SchemaError(f"corpus {root} has no reliability level {reliability!r}; it has {levels}")
        df = df[df["reliability"] == reliability]
    df = df.reset_index(drop=True)
    df["path"] = [str(root / p) for p in df["path"]]
    return df
