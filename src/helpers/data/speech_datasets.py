"""Loaders that turn local copies of real speech-emotion corpora into the unified table (``helpers.data.schema``).

None of these corpora can be downloaded here (they are licensed, and this build has no internet), so every
loader reads a folder laid out exactly as the official distribution unpacks, and fails with a message that
names the file or folder it expected. The book runs on the synthetic corpora by default; with a real copy the
same pipeline runs on, e.g., ``load_dataset("iemocap", root="/data/IEMOCAP_full_release")``.

Conventions shared by every loader:

* ``path`` is absolute, so ``load_audio(row.path, sr)`` works without knowing the root.
* ``label`` is a canonical lower-case name (``neutral``, ``happy``, ``angry``, ``sad``, ``surprise``, ``fear``,
  ``disgust``, ``contempt``, ``calm``); the dataset's own code stays in ``original_label``.
* Nothing is dropped silently: rows whose label is outside ``label_map`` or ``labels``, whose audio file is
  missing, or that the corpus marks as out of scope are counted in ``df.attrs["dropped"]``
  (``{reason: {label: count}}``) and logged as a warning.
* ``identify``/``evaluate`` are assigned by speaker (no speaker in both), deterministically from ``seed``.
  Where the corpus has an official training partition, ``keep_train=True`` keeps it as ``train``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .audio import AudioLoadError, read_info
from .schema import REQUIRED_COLUMNS, SPLITS, SchemaError, validate

__all__ = [
    "CREMA_D_LABEL_MAP",
    "CREMA_D_SENTENCES",
    "DATASETS",
    "DEFAULT_FRACTIONS",
    "FOUR_CLASSES",
    "GENERIC_LABEL_MAP",
    "IEMOCAP_CODES",
    "IEMOCAP_LABEL_MAP",
    "MELD_AUDIO_DIRS",
    "MELD_LABEL_MAP",
    "MSP_PODCAST_LABEL_MAP",
    "RAVDESS_LABEL_MAP",
    "RAVDESS_STATEMENTS",
    "DatasetInfo",
    "DatasetNotAvailable",
    "LayoutError",
    "UnknownLabelError",
    "check_source",
    "check_speaker_disjoint",
    "load_crema_d",
    "load_dataset",
    "load_from_hub",
    "load_iemocap",
    "load_meld",
    "load_msp_podcast",
    "load_ravdess",
    "split_speakers",
    "summary",
]

logger = logging.getLogger(__name__)

#: The four classes of the standard IEMOCAP benchmark, used by the paper's main experiments.
FOUR_CLASSES: tuple[str, ...] = ("neutral", "happy", "angry", "sad")
#: Default speaker-disjoint split of everything not kept as ``train``.
DEFAULT_FRACTIONS: dict[str, float] = {"identify": 0.5, "evaluate": 0.5}

# --------------------------------------------------------------------------------------------- label maps
#: Every categorical code in IEMOCAP's EmoEvaluation files (for reference and for custom maps).
IEMOCAP_CODES: dict[str, str] = {
    "neu": "neutral", "hap": "happiness", "exc": "excited", "ang": "anger", "sad": "sadness",
    "fru": "frustration", "sur": "surprise", "fea": "fear", "dis": "disgust", "oth": "other",
    "xxx": "no majority agreement",
}  # fmt: skip
#: The standard 4-class merge (excited joins happy); fru, sur, fea, dis, oth and xxx are dropped and reported.
IEMOCAP_LABEL_MAP: dict[str, str] = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
#: MELD's seven ``Emotion`` values; joy/sadness/anger renamed to the canonical happy/sad/angry.
MELD_LABEL_MAP: dict[str, str] = {
    "neutral": "neutral", "joy": "happy", "sadness": "sad", "anger": "angry",
    "surprise": "surprise", "fear": "fear", "disgust": "disgust",
}  # fmt: skip
#: MSP-Podcast ``EmoClass`` codes; O (other) and X (no agreement) are dropped and reported.
MSP_PODCAST_LABEL_MAP: dict[str, str] = {
    "N": "neutral", "H": "happy", "A": "angry", "S": "sad",
    "U": "surprise", "F": "fear", "D": "disgust", "C": "contempt",
}  # fmt: skip
#: CREMA-D's intended emotion, third field of the file name.
CREMA_D_LABEL_MAP: dict[str, str] = {
    "NEU": "neutral", "HAP": "happy", "ANG": "angry", "SAD": "sad", "FEA": "fear", "DIS": "disgust",
}  # fmt: skip
#: RAVDESS emotion code, third field of the file name; "fearful"/"surprised" use the canonical fear/surprise.
RAVDESS_LABEL_MAP: dict[str, str] = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fear", "07": "disgust", "08": "surprise",
}  # fmt: skip
#: Spellings found in Hub copies of these corpora (matched case-insensitively by :func:`load_from_hub`).
GENERIC_LABEL_MAP: dict[str, str] = {
    "neutral": "neutral", "neu": "neutral", "happy": "happy", "happiness": "happy", "hap": "happy",
    "joy": "happy", "angry": "angry", "anger": "angry", "ang": "angry", "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise", "sur": "surprise", "fear": "fear", "fearful": "fear",
    "fea": "fear", "disgust": "disgust", "disgusted": "disgust", "dis": "disgust", "contempt": "contempt",
    "calm": "calm",
}  # fmt: skip

#: The twelve CREMA-D sentences (second field of the file name), from the corpus README.
CREMA_D_SENTENCES: dict[str, str] = {
    "IEO": "It's eleven o'clock.", "TIE": "That is exactly what happened.", "IOM": "I'm on my way to the meeting.",
    "IWW": "I wonder what this is about.", "TAI": "The airplane is almost full.",
    "MTI": "Maybe tomorrow it will be cold.", "IWL": "I would like a new alarm clock.",
    "ITH": "I think I have a doctor's appointment.", "DFA": "Don't forget a jacket.",
    "ITS": "I think I've seen this before.", "TSI": "The surface is slick.",
    "WSI": "We'll stop in a couple of minutes.",
}  # fmt: skip
#: The two RAVDESS statements (fifth field of the file name).
RAVDESS_STATEMENTS: dict[str, str] = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}
#: MELD part -> (metadata CSV, folder with the extracted ``dia{D}_utt{U}.wav``), as MELD.Raw unpacks.
MELD_AUDIO_DIRS: dict[str, str] = {
    "train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test",
}  # fmt: skip
MELD_CSVS: dict[str, str] = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}


# ------------------------------------------------------------------------------------------------- errors
class LayoutError(FileNotFoundError):
    """The dataset folder does not look like the official distribution; the message names what was expected."""


class UnknownLabelError(ValueError):
    """``strict=True`` and the data contain labels outside ``label_map``."""


class DatasetNotAvailable(RuntimeError):
    """The data are not on this machine (no local folder, nothing in the Hugging Face cache)."""


# ------------------------------------------------------------------------------------------------ splits
def _allocate(sizes: pd.Series, fractions: Mapping[str, float], rng: np.random.Generator) -> dict[str, str]:
    """Greedy speaker -> split allocation that tracks the row fractions (speakers differ a lot in size)."""
    groups = sorted(sizes.index, key=str)
    order = [groups[i] for i in rng.permutation(len(groups))]
    order.sort(key=lambda g: -int(sizes[g]))  # stable: ties keep the seeded order
    total = float(sizes.sum())
    targets = {s: f * total for s, f in fractions.items() if f > 0}
    rows = dict.fromkeys(targets, 0.0)
    n_groups = dict.fromkeys(targets, 0)
    out: dict[str, str] = {}
    for i, g in enumerate(order):
        empty = [s for s in targets if n_groups[s] == 0]
        candidates = empty if len(order) - i <= len(empty) else list(targets)
        best = max(candidates, key=lambda s: (targets[s] - rows[s]) / targets[s])
        out[g] = best
        rows[best] += float(sizes[g])
        n_groups[best] += 1
    return out


def split_speakers(
    df: pd.DataFrame,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    *,
    by: str = "speaker",
    rows: pd.Series | np.ndarray | None = None,
) -> pd.DataFrame:
    """Return a copy of ``df`` whose ``split`` column assigns whole speakers (or ``by`` groups) to splits.

    Neuron identification and evaluation must not share speakers, or "emotion" neurons could be speaker
    neurons. Groups are shuffled with ``seed`` and then allocated greedily, largest first, so that the *row*
    shares approach ``fractions`` (default identify/evaluate 50/50) and every split gets at least one group.
    ``rows`` (a boolean mask) restricts the assignment to those rows; the others keep their ``split``.
    ``by="session"`` gives IEMOCAP's leave-sessions-out protocol.
    """
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown} in fractions; allowed: {list(SPLITS)}.")
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ValueError(f"fractions must be non-negative with a positive sum, got {fractions}.")
    total = sum(fractions.values())
    fractions = {k: v / total for k, v in fractions.items()}
    if by not in df.columns:
        raise KeyError(f"cannot split by '{by}': the table has no such column (columns: {list(df.columns)}).")
    out = df.copy()
    mask = np.ones(len(out), dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    if "split" not in out.columns:
        out["split"] = pd.Series([None] * len(out), index=out.index, dtype=object)
    if not mask.any():
        return out
    keys = out.loc[mask, by].astype(str)
    sizes = keys.value_counts()
    n_needed = sum(1 for f in fractions.values() if f > 0)
    if len(sizes) < n_needed:
        raise ValueError(
            f"only {len(sizes)} distinct '{by}' value(s) to share among {n_needed} splits {list(fractions)}; "
            "speaker-disjoint splits need at least one per split (use fewer splits or more data)."
        )
    assignment = _allocate(sizes, fractions, np.random.default_rng(seed))
    out.loc[mask, "split"] = keys.map(assignment).to_numpy()
    return out


def check_speaker_disjoint(
    df: pd.DataFrame, splits: Sequence[str] = ("identify", "evaluate"), *, by: str = "speaker"
) -> None:
    """Raise ``ValueError`` naming the shared speakers if any two of ``splits`` share a ``by`` value."""
    groups = {s: set(df.loc[df["split"] == s, by].astype(str)) for s in splits}
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            shared = sorted(groups[a] & groups[b])
            if shared:
                raise ValueError(f"splits '{a}' and '{b}' share {len(shared)} {by}(s): {shared[:10]}.")


# ----------------------------------------------------------------------------------------------- helpers
def _root(root: str | os.PathLike[str], name: str, layout: str) -> Path:
    path = Path(root).expanduser().absolute()
    if not path.is_dir():
        raise LayoutError(f"{name} folder {path} does not exist or is not a folder; expected {layout}.")
    return path


def _listing(folder: Path, n: int = 12) -> list[str]:
    return sorted(p.name for p in folder.iterdir())[:n]


def _require(path: Path, name: str, what: str) -> Path:
    if not path.exists():
        parent = path.parent
        hint = f" ({parent} contains: {_listing(parent)})" if parent.is_dir() else f" ({parent} does not exist either)"
        raise LayoutError(f"{name}: expected {what} at {path}, but it is missing{hint}.")
    return path


def _visible(paths: Iterable[Path]) -> list[Path]:
    """Skip macOS resource forks (``._x.wav``) and other dot-files that archives often carry along."""
    return sorted(p for p in paths if not p.name.startswith("."))


def _audio_files(folder: Path, ext: str = ".wav") -> list[Path]:
    """Visible files of ``folder`` with extension ``ext`` in any case (``.wav``, ``.WAV``, ``.Wav``)."""
    return _visible(p for p in folder.iterdir() if p.suffix.lower() == ext.lower() and p.is_file())


def _case_path(path: str) -> str:
    """``path`` if it exists, else the same path with its extension in the other case (``x.WAV`` for ``x.wav``)."""
    if os.path.isfile(path):
        return path
    root, ext = os.path.splitext(path)
    for other in (ext.upper(), ext.lower()):
        if other != ext and os.path.isfile(root + other):
            return root + other
    return path


def _read_csv(path: Path, required: Sequence[str], name: str) -> pd.DataFrame:
    df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", encoding_errors="replace")
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise LayoutError(f"{name}: {path} lacks column(s) {missing}; found {list(df.columns)}.")
    return df


def _counts(values: Iterable[Any]) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(Counter(map(str, values)).items())}


def _format_dropped(dropped: Mapping[str, Mapping[str, int]]) -> str:
    parts = [f"{reason}: {sum(c.values())} {dict(c)}" for reason, c in dropped.items() if c]
    return "; ".join(parts)


def _finish(
    rows: pd.DataFrame,
    *,
    dataset: str,
    root: Path | str,
    label_map: Mapping[str, str],
    labels: Sequence[str] | None,
    strict: bool,
    fractions: Mapping[str, float] | None,
    seed: int,
    keep_train: bool,
    probe_audio: bool,
    nominal_sr: int | None,
    audio_hint: str,
    dropped: dict[str, dict[str, int]] | None = None,
    train_values: Iterable[str] = ("train",),
    split_by: str = "speaker",
) -> pd.DataFrame:
    """Shared second half of every loader: labels, missing audio, sampling rate, splits, report, validation.

    ``rows`` holds ``path`` (absolute), ``original_label``, ``speaker``, ``sentence_id``, ``text`` and any extra
    columns (``original_split`` where the corpus has one).
    """
    dropped = {k: dict(v) for k, v in (dropped or {}).items()}
    label_map = dict(label_map)
    rows = rows.reset_index(drop=True)
    orig = rows["original_label"].astype(str)

    unmapped = ~orig.isin(list(label_map))
    if strict and unmapped.any():
        raise UnknownLabelError(
            f"{dataset}: label(s) {_counts(orig[unmapped])} are not in label_map {label_map}. Add them to "
            "label_map, or pass strict=False to drop (and report) them."
        )
    if labels is not None:
        labels = list(labels)
        impossible = sorted(set(labels) - set(label_map.values()))
        if impossible:
            raise ValueError(
                f"{dataset}: requested label(s) {impossible} cannot occur: label_map produces only "
                f"{sorted(set(label_map.values()))}."
            )

    rows["path"] = [_case_path(str(p)) for p in rows["path"]]  # `Ses01F_impro01_F000.WAV` is found too
    exists = np.array([os.path.isfile(p) for p in rows["path"]], dtype=bool)
    if len(rows) and not exists.any():
        raise LayoutError(
            f"{dataset}: none of the {len(rows)} audio files listed in the metadata exist; expected them at "
            f"{audio_hint} (first expected file: {rows['path'].iloc[0]})."
        )
    if not exists.all():
        dropped["missing_audio"] = _counts(orig[~exists])
        logger.warning(
            "%s: %d audio file(s) listed in the metadata are missing, e.g. %s",
            dataset, int((~exists).sum()), list(rows.loc[~exists, "path"].head(3)),
        )  # fmt: skip
    keep = exists & ~unmapped.to_numpy()
    if (exists & unmapped.to_numpy()).any():
        dropped["unmapped_label"] = _counts(orig[exists & unmapped.to_numpy()])
    mapped = orig.map(label_map)
    if labels is not None:
        outside = keep & ~mapped.isin(labels).to_numpy()
        if outside.any():
            dropped["not_in_labels"] = _counts(mapped[outside])
        keep &= ~outside
    df = rows.loc[keep].copy()
    df["label"] = mapped[keep]

    sr: int | None
    if probe_audio:
        rates: list[int | None] = []
        for p in df["path"]:
            try:
                sr, frames, _ = read_info(p)
                rates.append(sr if frames > 0 else None)
            except AudioLoadError:
                rates.append(None)
        bad = np.array([r is None for r in rates], dtype=bool)
        if bad.any():
            dropped["unreadable_audio"] = _counts(df.loc[bad, "original_label"])
            logger.warning(
                "%s: %d audio file(s) are empty or cannot be decoded and were dropped, e.g. %s; re-extract them from "
                "the original archive", dataset, int(bad.sum()), list(df.loc[bad, "path"].head(3)),
            )  # fmt: skip
        df["sampling_rate"] = [0 if r is None else r for r in rates]
        df = df.loc[~bad]
    else:
        sr = nominal_sr
        if len(df):
            try:
                sr = read_info(df["path"].iloc[0])[0]
            except AudioLoadError:
                if sr is None:
                    raise
        if sr is None:
            raise SchemaError(f"{dataset}: cannot determine the sampling rate; pass probe_audio=True.")
        df["sampling_rate"] = int(sr)
    df["sampling_rate"] = df["sampling_rate"].astype(int)

    dropped = {k: v for k, v in dropped.items() if v}
    if df.empty:
        raise SchemaError(
            f"{dataset}: no rows left after filtering ({_format_dropped(dropped) or 'the metadata lists no items'})."
        )

    df["split"] = pd.Series([None] * len(df), index=df.index, dtype=object)
    assign = np.ones(len(df), dtype=bool)
    if keep_train:
        if "original_split" not in df.columns:
            raise ValueError(f"{dataset} has no official training partition; use keep_train=False.")
        in_train = df["original_split"].isin(list(train_values)).to_numpy()
        df.loc[in_train, "split"] = "train"
        assign = ~in_train
    df = split_speakers(df, fractions, seed, by=split_by, rows=assign)

    df["dataset"] = dataset
    df["text"] = df["text"].fillna("").astype(str)
    df["speaker"] = df["speaker"].astype(str)
    df["sentence_id"] = df["sentence_id"].astype(str)
    first = [*REQUIRED_COLUMNS, "dataset", "original_label"]
    df = df[first + [c for c in df.columns if c not in first]].reset_index(drop=True)
    df.attrs = {
        "dataset": dataset,
        "root": str(root),
        "label_map": label_map,
        "classes": list(labels) if labels is not None else sorted(set(df["label"])),
        "dropped": dropped,
    }
    if dropped:
        logger.warning("%s: dropped %d row(s): %s", dataset, sum(sum(v.values()) for v in dropped.values()),
                       _format_dropped(dropped))  # fmt: skip
    return validate(df)


# ---------------------------------------------------------------------------------------------- IEMOCAP
IEMOCAP_LAYOUT = (
    "the IEMOCAP_full_release folder: Session1..Session5/dialog/EmoEvaluation/<dialog>.txt (labels), "
    "Session*/sentences/wav/<dialog>/<utterance>.wav (16 kHz audio), Session*/dialog/transcriptions/<dialog>.txt"
)
_IEMOCAP_EVAL = re.compile(
    r"^\[\s*(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\s*\]\s+(?P<utt>\S+)\s+(?P<label>\S+)\s+\[(?P<vad>[^\]]*)\]"
)
_IEMOCAP_TRANSCRIPT = re.compile(r"^(?P<utt>\S+)\s+\[[^\]]*\]:\s?(?P<text>.*)$")


def _iemocap_transcripts(folder: Path) -> dict[str, str]:
    texts: dict[str, str] = {}
    if not folder.is_dir():
        return texts
    for f in _visible(folder.glob("*.txt")):
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            m = _IEMOCAP_TRANSCRIPT.match(line.strip())
            if m:
                texts[m["utt"]] = m["text"].strip()
    return texts


def load_iemocap(
    root: str | os.PathLike[str],
    *,
    sessions: Iterable[int] | None = None,
    label_map: Mapping[str, str] | None = None,
    labels: Sequence[str] | None = None,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    split_by: str = "speaker",
    strict: bool = False,
    probe_audio: bool = True,
) -> pd.DataFrame:
    """Load IEMOCAP (``IEMOCAP_full_release``) with the standard 4-class merge.

    Labels come from the turn lines of ``Session*/dialog/EmoEvaluation/<dialog>.txt`` (the majority label,
    ``[start - end]\\t<utterance>\\t<code>\\t[V, A, D]``); the evaluator lines below them and the
    ``Categorical``/``Attribute``/``Self-evaluation`` subfolders are ignored. Default ``label_map`` is
    :data:`IEMOCAP_LABEL_MAP` (neu, hap+exc, ang, sad). ``speaker`` is the session plus the gender of the
    *utterance* (the letter after the last underscore: ``Ses01F_impro01_M003`` -> ``Ses01M``), since each
    dialog has one female and one male actor. ``sentence_id`` is the utterance name (IEMOCAP has no shared
    sentence inventory). Transcripts are optional. ``split_by="session"`` assigns whole sessions instead of
    speakers. IEMOCAP has no official training partition, so everything is split into ``fractions``.
    """
    root = _root(root, "IEMOCAP", IEMOCAP_LAYOUT)
    if sessions is None:
        session_dirs = [root / f"Session{i}" for i in range(1, 6) if (root / f"Session{i}").is_dir()]
        if not session_dirs:
            raise LayoutError(
                f"IEMOCAP: no Session1..Session5 folder in {root} (contains {_listing(root)}); "
                f"expected {IEMOCAP_LAYOUT}."
            )
    else:
        session_dirs = [_require(root / f"Session{int(i)}", "IEMOCAP", "a session folder") for i in sessions]

    records: list[dict[str, Any]] = []
    for sdir in session_dirs:
        emo_dir = _require(sdir / "dialog" / "EmoEvaluation", "IEMOCAP", "the label folder")
        wav_dir = _require(sdir / "sentences" / "wav", "IEMOCAP", "the utterance audio folder")
        label_files = _visible(emo_dir.glob("*.txt"))
        if not label_files:
            raise LayoutError(f"IEMOCAP: expected <dialog>.txt label files in {emo_dir}, found none.")
        texts = _iemocap_transcripts(sdir / "dialog" / "transcriptions")
        session = int(sdir.name.removeprefix("Session"))
        for f in label_files:
            dialog = f.stem
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
                m = _IEMOCAP_EVAL.match(line.strip())
                if not m:
                    continue
                utt = m["utt"]
                gender = utt.rsplit("_", 1)[-1][:1].upper()
                vad = [float(x) if x.strip() else np.nan for x in m["vad"].split(",")] + [np.nan] * 3
                records.append({
                    "path": str(wav_dir / dialog / f"{utt}.wav"),
                    "original_label": m["label"],
                    "speaker": f"{utt[:5]}{gender}",
                    "sentence_id": utt,
                    "text": texts.get(utt, ""),
                    "session": session,
                    "gender": gender,
                    "dialog": dialog,
                    "improvised": "_impro" in dialog,
                    "start": float(m["start"]),
                    "end": float(m["end"]),
                    "valence": vad[0],
                    "arousal": vad[1],
                    "dominance": vad[2],
                })  # fmt: skip
    if not records:
        raise LayoutError(f"IEMOCAP: no '[start - end] <utterance> <label> [V, A, D]' lines under {root}.")
    if split_by not in ("speaker", "session"):
        raise ValueError(f"split_by must be 'speaker' or 'session', got {split_by!r}.")
    return _finish(
        pd.DataFrame(records), dataset="iemocap", root=root, label_map=label_map or IEMOCAP_LABEL_MAP, labels=labels,
        strict=strict, fractions=fractions, seed=seed, keep_train=False, probe_audio=probe_audio, nominal_sr=16_000,
        audio_hint=f"{root}/Session*/sentences/wav/<dialog>/<utterance>.wav", split_by=split_by,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------- MELD
MELD_LAYOUT = (
    "the MELD.Raw folder: train_sent_emo.csv, dev_sent_emo.csv, test_sent_emo.csv next to the folders "
    "train_splits/, dev_splits_complete/, output_repeated_splits_test/ holding dia{D}_utt{U}.wav files that you "
    "extracted from the distributed .mp4 clips (e.g. `ffmpeg -i dia0_utt0.mp4 -vn -ac 1 -ar 16000 dia0_utt0.wav`)"
)


def _meld_clip(folder: Path, name: str, part: str) -> Path:
    """MELD's test folder holds some clips as ``final_videos_testdia{D}_utt{U}``; fall back to that name."""
    path = folder / name
    if part == "test" and not path.is_file() and (folder / f"final_videos_test{name}").is_file():
        return folder / f"final_videos_test{name}"
    return path


def load_meld(
    root: str | os.PathLike[str],
    *,
    parts: Sequence[str] = ("train", "dev", "test"),
    audio_dirs: Mapping[str, str] | None = None,
    audio_ext: str = ".wav",
    label_map: Mapping[str, str] | None = None,
    labels: Sequence[str] | None = None,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    keep_train: bool = False,
    strict: bool = False,
    probe_audio: bool = True,
) -> pd.DataFrame:
    """Load MELD from its CSVs plus audio that the user extracted from MELD's MP4 clips.

    MELD distributes utterances only as video (``MELD.Raw/{train,dev,test}.tar.gz`` -> ``train_splits/``,
    ``dev_splits_complete/``, ``output_repeated_splits_test/`` with ``dia{D}_utt{U}.mp4``); soundfile cannot
    read MP4, so extract a WAV next to each clip (same stem, ``audio_ext``). Folder names can be overridden per
    part with ``audio_dirs`` (relative to ``root``). In the test folder the clip may be called
    ``final_videos_testdia{D}_utt{U}``; that name is tried second. A few clips are missing or broken in the
    official release: they are dropped and reported as ``missing_audio``.

    ``speaker`` is MELD's ``Speaker`` name (the same character across parts); ``text`` is ``Utterance``;
    ``sentence_id`` is ``<part>_dia{D}_utt{U}`` because dialogue ids restart in every part. Default
    ``label_map`` is :data:`MELD_LABEL_MAP` (all seven emotions, joy/sadness/anger renamed). The official
    parts are *not* speaker-disjoint (the six main characters are everywhere): by default all parts are pooled
    and re-split by speaker; ``keep_train=True`` keeps the ``train`` part as ``train`` and splits the rest.
    """
    root = _root(root, "MELD", MELD_LAYOUT)
    dirs = {**MELD_AUDIO_DIRS, **(audio_dirs or {})}
    unknown = sorted(set(parts) - set(MELD_CSVS))
    if unknown:
        raise ValueError(f"MELD parts are {list(MELD_CSVS)}, got {unknown}.")
    ext = audio_ext if audio_ext.startswith(".") else f".{audio_ext}"
    frames = []
    for part in parts:
        csv = _require(root / MELD_CSVS[part], "MELD", f"the {part} metadata CSV (layout: {MELD_LAYOUT})")
        audio_dir = root / dirs[part]
        if not audio_dir.is_dir():
            raise LayoutError(
                f"MELD: expected the {part} audio folder at {audio_dir} (dia{{D}}_utt{{U}}{ext} files); "
                f"pass audio_dirs={{'{part}': '<folder>'}} if you extracted elsewhere. Layout: {MELD_LAYOUT}."
            )
        meta = _read_csv(csv, ["Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID"], "MELD")
        dia, utt = meta["Dialogue_ID"].str.strip(), meta["Utterance_ID"].str.strip()
        stems = "dia" + dia + "_utt" + utt
        paths = [_meld_clip(audio_dir, f"{s}{ext}", part) for s in stems]
        frame = pd.DataFrame({
            "path": [str(p) for p in paths],
            "original_label": meta["Emotion"].str.strip().str.lower(),
            "speaker": meta["Speaker"].str.strip(),
            "sentence_id": part + "_" + stems,
            "text": meta["Utterance"],
            "original_split": part,
            "dialogue_id": dia.astype(int),
            "utterance_id": utt.astype(int),
        })  # fmt: skip
        for col in ("Sentiment", "Season", "Episode", "StartTime", "EndTime"):
            if col in meta.columns:
                frame[col.lower()] = meta[col].to_numpy()
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    return _finish(
        rows, dataset="meld", root=root, label_map=label_map or MELD_LABEL_MAP, labels=labels, strict=strict,
        fractions=fractions, seed=seed, keep_train=keep_train, probe_audio=probe_audio, nominal_sr=16_000,
        audio_hint=f"{root}/{{{','.join(dirs[p] for p in parts)}}}/dia{{D}}_utt{{U}}{ext}",
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ MSP-Podcast
MSP_PODCAST_LAYOUT = (
    "the MSP-Podcast release folder: Labels/labels_consensus.csv (FileName, EmoClass, EmoAct, EmoVal, EmoDom, "
    "SpkrID, Gender, Split_Set) and Audios/<FileName> (16 kHz WAV); Transcripts/<stem>.txt optional"
)


def load_msp_podcast(
    root: str | os.PathLike[str],
    *,
    labels_file: str = "Labels/labels_consensus.csv",
    audio_dir: str = "Audios",
    partitions: Sequence[str] | None = None,
    transcripts: bool = True,
    label_map: Mapping[str, str] | None = None,
    labels: Sequence[str] | None = None,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    keep_train: bool = False,
    strict: bool = False,
    probe_audio: bool = True,
) -> pd.DataFrame:
    """Load MSP-Podcast from ``labels_consensus.csv`` (releases 1.x; the JSON variant is not read).

    Default ``label_map`` is :data:`MSP_PODCAST_LABEL_MAP`; ``O`` (other) and ``X`` (no agreement) are
    dropped and reported. ``partitions`` selects ``Split_Set`` values (``Train``, ``Development``, ``Test1``,
    ``Test2``, ``Test3``; default all). ``SpkrID`` is ``Unknown`` for many segments: those become one
    pseudo-speaker per podcast (``unknown_<podcast>``, from ``MSP-PODCAST_<podcast>_<segment>.wav``) so an
    unidentified voice cannot straddle identify and evaluate within an episode. ``keep_train=True`` keeps
    ``Train`` as ``train`` (the official partitions are speaker-disjoint) and re-splits the rest.
    """
    root = _root(root, "MSP-Podcast", MSP_PODCAST_LAYOUT)
    csv = _require(root / labels_file, "MSP-Podcast", f"the consensus label file (layout: {MSP_PODCAST_LAYOUT})")
    adir = _require(root / audio_dir, "MSP-Podcast", f"the audio folder (layout: {MSP_PODCAST_LAYOUT})")
    meta = _read_csv(csv, ["FileName", "EmoClass", "SpkrID", "Split_Set"], "MSP-Podcast")
    if partitions is not None:
        chosen = meta["Split_Set"].isin(list(partitions))
        meta = meta.loc[chosen].reset_index(drop=True)
    names = meta["FileName"].str.strip()
    stems = names.str.replace(r"\.wav$", "", regex=True)
    spk = meta["SpkrID"].str.strip()
    unknown = spk.str.lower().isin(["unknown", "", "nan"])
    podcast = stems.str.split("_").str[1].fillna("na")
    speaker = spk.where(~unknown, "unknown_" + podcast)
    text = [""] * len(meta)
    tdir = root / "Transcripts"
    if transcripts and tdir.is_dir():
        text = [
            (tdir / f"{s}.txt").read_text(encoding="utf-8", errors="replace").strip()
            if (tdir / f"{s}.txt").is_file() else ""
            for s in stems
        ]  # fmt: skip
    rows = pd.DataFrame({
        "path": [str(adir / (n if n.lower().endswith(".wav") else f"{n}.wav")) for n in names],
        "original_label": meta["EmoClass"].str.strip(),
        "speaker": speaker,
        "sentence_id": stems,
        "text": text,
        "original_split": meta["Split_Set"].str.strip(),
        "speaker_known": ~unknown,
    })  # fmt: skip
    if "Gender" in meta.columns:
        first = meta["Gender"].str.strip().str[:1].str.upper()
        rows["gender"] = first.where(first.isin(["F", "M"]), "")
    for src, dst in (("EmoAct", "arousal"), ("EmoVal", "valence"), ("EmoDom", "dominance")):
        if src in meta.columns:
            rows[dst] = pd.to_numeric(meta[src], errors="coerce")
    return _finish(
        rows, dataset="msp_podcast", root=root, label_map=label_map or MSP_PODCAST_LABEL_MAP, labels=labels,
        strict=strict, fractions=fractions, seed=seed, keep_train=keep_train, probe_audio=probe_audio,
        nominal_sr=16_000, audio_hint=f"{adir}/<FileName>", train_values=("Train",),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- CREMA-D
CREMA_D_LAYOUT = (
    "the CREMA-D folder: AudioWAV/<ActorID>_<Sentence>_<Emotion>_<Level>.wav (e.g. AudioWAV/1001_DFA_ANG_XX.wav, "
    "16 kHz); VideoDemographics.csv optional (adds gender)"
)
_CREMA_NAME = re.compile(r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<level>[A-Z]{2})$")
_CREMA_LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}


def load_crema_d(
    root: str | os.PathLike[str],
    *,
    audio_dir: str = "AudioWAV",
    label_map: Mapping[str, str] | None = None,
    labels: Sequence[str] | None = None,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    strict: bool = False,
    probe_audio: bool = True,
) -> pd.DataFrame:
    """Load CREMA-D from its file names (the *intended* emotion; crowd ratings are not used).

    Default ``label_map`` is :data:`CREMA_D_LABEL_MAP`. ``speaker`` is the actor id (1001-1091),
    ``sentence_id`` the three-letter sentence code and ``text`` its sentence (:data:`CREMA_D_SENTENCES`), so
    matched-content comparisons work as on the synthetic corpora. Files whose names do not follow the pattern
    are reported as ``unparsed_filename``. The corpus is known to contain a few empty/corrupt WAVs: with
    ``probe_audio=True`` (the default) every header is read and they are dropped (and reported).
    """
    root = _root(root, "CREMA-D", CREMA_D_LAYOUT)
    adir = _require(root / audio_dir, "CREMA-D", f"the audio folder (layout: {CREMA_D_LAYOUT})")
    files = _audio_files(adir)
    if not files:
        raise LayoutError(f"CREMA-D: no .wav files in {adir}; expected {CREMA_D_LAYOUT}.")
    genders: dict[str, str] = {}
    demo = root / "VideoDemographics.csv"
    if demo.is_file():
        d = _read_csv(demo, ["ActorID", "Sex"], "CREMA-D")
        genders = dict(zip(d["ActorID"].str.strip(), d["Sex"].str.strip().str[:1].str.upper(), strict=True))
    records, unparsed = [], []
    for f in files:
        m = _CREMA_NAME.match(f.stem)
        if not m:
            unparsed.append(f.name)
            continue
        records.append({
            "path": str(f),
            "original_label": m["emotion"],
            "speaker": m["actor"],
            "sentence_id": m["sentence"],
            "text": CREMA_D_SENTENCES.get(m["sentence"], ""),
            "intensity": _CREMA_LEVELS.get(m["level"], m["level"]),
            "gender": genders.get(m["actor"], ""),
        })  # fmt: skip
    dropped = {"unparsed_filename": {"?": len(unparsed)}} if unparsed else {}
    if unparsed:
        logger.warning("CREMA-D: %d file name(s) do not match <actor>_<sentence>_<emotion>_<level>.wav, e.g. %s",
                       len(unparsed), unparsed[:3])  # fmt: skip
    if not records:
        raise LayoutError(f"CREMA-D: no file in {adir} is named like 1001_DFA_ANG_XX.wav.")
    return _finish(
        pd.DataFrame(records), dataset="crema_d", root=root, label_map=label_map or CREMA_D_LABEL_MAP,
        labels=labels, strict=strict, fractions=fractions, seed=seed, keep_train=False, probe_audio=probe_audio,
        nominal_sr=16_000, audio_hint=f"{adir}/*.wav", dropped=dropped,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- RAVDESS
RAVDESS_LAYOUT = (
    "the folder that Audio_Speech_Actors_01-24.zip unpacks to: Actor_01..Actor_24/03-01-EE-II-SS-RR-AA.wav "
    "(modality-channel-emotion-intensity-statement-repetition-actor, 48 kHz)"
)
_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def load_ravdess(
    root: str | os.PathLike[str],
    *,
    label_map: Mapping[str, str] | None = None,
    labels: Sequence[str] | None = None,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    strict: bool = False,
    probe_audio: bool = True,
) -> pd.DataFrame:
    """Load the speech part of RAVDESS (vocal channel 01).

    Song files (channel 02, from ``Audio_Song_Actors_01-24.zip`` unpacked into the same ``Actor_XX`` folders)
    are dropped and reported as ``not_speech``. Default ``label_map`` is :data:`RAVDESS_LABEL_MAP` (codes
    01-08; ``calm`` is kept as its own class, map ``"02": "neutral"`` to merge it). ``speaker`` is
    ``Actor_XX`` (odd = male, even = female), ``sentence_id`` ``statement_SS`` with the statement as ``text``.
    """
    root = _root(root, "RAVDESS", RAVDESS_LAYOUT)
    actor_dirs = _visible(p for p in root.glob("Actor_*") if p.is_dir())
    if not actor_dirs:
        raise LayoutError(
            f"RAVDESS: no Actor_01..Actor_24 folders in {root} (contains {_listing(root)}); expected {RAVDESS_LAYOUT}."
        )
    records, unparsed, song = [], [], []
    for adir in actor_dirs:
        for f in _audio_files(adir):
            m = _RAVDESS_NAME.match(f.stem)
            if not m:
                unparsed.append(f.name)
                continue
            modality, channel, emotion, intensity, statement, repetition, actor = m.groups()
            if channel != "01":
                song.append(emotion)
                continue
            records.append({
                "path": str(f),
                "original_label": emotion,
                "speaker": f"Actor_{actor}",
                "sentence_id": f"statement_{statement}",
                "text": RAVDESS_STATEMENTS.get(statement, ""),
                "intensity": {"01": "normal", "02": "strong"}.get(intensity, intensity),
                "repetition": int(repetition),
                "gender": "M" if int(actor) % 2 else "F",
            })  # fmt: skip
    dropped: dict[str, dict[str, int]] = {}
    if song:
        dropped["not_speech"] = _counts(song)
    if unparsed:
        dropped["unparsed_filename"] = {"?": len(unparsed)}
    if not records:
        raise LayoutError(f"RAVDESS: no speech file (03-01-EE-II-SS-RR-AA.wav) in {root}/Actor_*; {RAVDESS_LAYOUT}.")
    return _finish(
        pd.DataFrame(records), dataset="ravdess", root=root, label_map=label_map or RAVDESS_LABEL_MAP,
        labels=labels, strict=strict, fractions=fractions, seed=seed, keep_train=False, probe_audio=probe_audio,
        nominal_sr=48_000, audio_hint=f"{root}/Actor_XX/*.wav", dropped=dropped,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ Hugging Face
@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Force offline mode for one call: the env var alone is read only when the libraries are imported."""
    if not offline:
        yield
        return
    import datasets.config as dcfg
    import huggingface_hub.constants as hcon

    saved = (os.environ.get("HF_HUB_OFFLINE"), dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE, hcon.HF_HUB_OFFLINE)
    os.environ["HF_HUB_OFFLINE"] = "1"
    dcfg.HF_HUB_OFFLINE = dcfg.HF_DATASETS_OFFLINE = hcon.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[0]
        dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE, hcon.HF_HUB_OFFLINE = saved[1:]


def _pick(columns: Sequence[str], given: str | None, candidates: Sequence[str], what: str, hub_id: str) -> str | None:
    if given is not None:
        if given not in columns:
            raise SchemaError(
                f"{hub_id}: no column '{given}' for the {what}; columns are {list(columns)} (fix {what}_column=)."
            )
        return given
    lower = {c.lower(): c for c in columns}
    return next((lower[c.lower()] for c in candidates if c.lower() in lower), None)


def _materialise(entry: Mapping[str, Any], folder: Path) -> str:
    """Audio stored inside the Hub parquet files is written once to ``folder`` so the table can hold a path.

    Files are named by content hash, so re-loading another split or revision never reuses a stale file.
    """
    path = entry.get("path") or ""
    if path and os.path.isfile(path):
        return str(Path(path).absolute())
    data = entry.get("bytes")
    if not data:
        return str(path)  # reported as missing audio by _finish
    name = Path(path).name or "audio.wav"
    target = folder / f"{hashlib.sha1(data).hexdigest()[:16]}_{name}"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return str(target)


def load_from_hub(
    hub_id: str,
    *,
    dataset: str | None = None,
    split: str | None = None,
    audio_column: str = "audio",
    label_column: str | None = None,
    speaker_column: str | None = None,
    text_column: str | None = None,
    label_map: Mapping[str, str] | None = None,
    labels: Sequence[str] | None = None,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    keep_train: bool = False,
    strict: bool = False,
    probe_audio: bool = True,
    allow_hub: bool = False,
    audio_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    **load_kwargs: Any,
) -> pd.DataFrame:
    """Load a Hugging Face copy of a corpus (``datasets.load_dataset(hub_id)``) into the unified table.

    The audio column is cast to ``Audio(decode=False)``: decoding would need torchcodec (see
    :mod:`helpers.data.audio`), and we only need paths. Audio embedded in the parquet files is written once under
    ``audio_dir`` (default ``<HF datasets cache>/esn_audio/<hub_id>``). Unless ``allow_hub=True`` the Hub is
    not contacted (``HF_HUB_OFFLINE=1``), so an id that is not in the local cache fails at once with
    :class:`DatasetNotAvailable` instead of hanging on the network. Label, speaker and text columns are
    guessed from common names unless given; labels are matched case-insensitively against ``label_map``
    (default: :data:`GENERIC_LABEL_MAP` plus the map of ``dataset`` when named). Splits as in the folder
    loaders; with ``keep_train`` the Hub's ``train`` split stays ``train``.
    """
    import datasets as hf

    with _hub_offline(not allow_hub):
        try:
            loaded = hf.load_dataset(hub_id, split=split, revision=revision, **load_kwargs)
        except OSError as err:  # ConnectionError / OfflineModeIsEnabled / FileNotFoundError / DatasetNotFoundError
            how = (
                "the Hub could not be reached or the id does not exist"
                if allow_hub
                else "it is not in the local Hugging Face cache and the Hub is not contacted (HF_HUB_OFFLINE=1)"
            )
            local = (
                f"load_dataset({dataset!r}, root='/path/to/folder') with {DATASETS[dataset].layout}"
                if dataset in DATASETS
                else "one of the folder loaders (load_iemocap, load_meld, load_msp_podcast, load_crema_d, load_ravdess)"
            )
            raise DatasetNotAvailable(
                f"Hugging Face dataset '{hub_id}' is not available offline: {how}. Either copy a local folder and "
                f"use {local}, or fetch it once on a machine with internet (allow_hub=True) and copy the HF cache "
                f"(HF_HOME). Original error: {type(err).__name__}: {err}"
            ) from err
    parts = dict(loaded.items()) if isinstance(loaded, Mapping) else {split or "train": loaded}
    base = dict(GENERIC_LABEL_MAP)
    if dataset in DATASETS:
        base.update(DATASETS[dataset].label_map)
        base.update(DATASETS[dataset].hub_aliases)
    lmap = {str(k).strip().lower(): v for k, v in (label_map or base).items()}
    folder = Path(audio_dir) if audio_dir is not None else (
        Path(hf.config.HF_DATASETS_CACHE) / "esn_audio" / re.sub(r"[^A-Za-z0-9._-]+", "__", hub_id)
    )  # fmt: skip

    frames = []
    for part, ds in parts.items():
        cols = list(ds.column_names)
        if audio_column not in cols:
            raise SchemaError(f"{hub_id}: no audio column '{audio_column}'; columns are {cols} (pass audio_column=).")
        lcol = _pick(cols, label_column, ("label", "emotion", "emotions", "major_emotion", "EmoClass", "class"),
                     "label", hub_id)  # fmt: skip
        scol = _pick(cols, speaker_column, ("speaker", "speaker_id", "SpkrID", "actor", "actor_id", "client_id"),
                     "speaker", hub_id)  # fmt: skip
        tcol = _pick(cols, text_column, ("text", "transcription", "transcript", "utterance", "sentence"), "text",
                     hub_id)  # fmt: skip
        if lcol is None or scol is None:
            raise SchemaError(
                f"{hub_id}: cannot tell which column holds the {'label' if lcol is None else 'speaker'}; "
                f"columns are {cols}. Pass label_column= and speaker_column=."
            )
        ds = ds.cast_column(audio_column, hf.Audio(decode=False))
        feature = ds.features[lcol]
        names = getattr(feature, "names", None)
        keep = [c for c in dict.fromkeys([audio_column, lcol, scol, tcol]) if c is not None]
        records: list[dict[str, str]] = []
        for batch in ds.select_columns(keep).iter(batch_size=1000):
            for j in range(len(batch[audio_column])):
                index = len(records)
                raw = batch[lcol][j]
                label = names[raw] if names is not None and isinstance(raw, (int, np.integer)) else raw
                records.append({
                    "path": _materialise(batch[audio_column][j], folder),
                    "original_label": str(label).strip().lower(),
                    "speaker": str(batch[scol][j]),
                    "sentence_id": f"{part}_{index:07d}",
                    "text": "" if tcol is None or batch[tcol][j] is None else str(batch[tcol][j]),
                    "original_split": part,
                })  # fmt: skip
        frames.append(pd.DataFrame(records))
    rows = pd.concat(frames, ignore_index=True)
    return _finish(
        rows, dataset=dataset or hub_id, root=folder, label_map=lmap, labels=labels, strict=strict,
        fractions=fractions, seed=seed, keep_train=keep_train, probe_audio=probe_audio, nominal_sr=None,
        audio_hint=f"the paths stored in '{hub_id}' or {folder}",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class DatasetInfo:
    """What the book needs to know about one corpus: how to load it and where to get it."""

    name: str
    loader: Callable[..., pd.DataFrame]
    label_map: Mapping[str, str]
    sampling_rate: int
    layout: str
    source: str
    #: Environment variable read by :func:`load_dataset` when no ``root`` is given.
    env_var: str
    #: Extra label spellings for Hub copies (lower case).
    hub_aliases: Mapping[str, str] = field(default_factory=dict)


DATASETS: dict[str, DatasetInfo] = {
    "iemocap": DatasetInfo(
        "iemocap", load_iemocap, IEMOCAP_LABEL_MAP, 16_000, IEMOCAP_LAYOUT,
        "https://sail.usc.edu/iemocap/ (licence agreement required)", "ESN_IEMOCAP_ROOT", {"excited": "happy"},
    ),
    "meld": DatasetInfo(
        "meld", load_meld, MELD_LABEL_MAP, 16_000, MELD_LAYOUT,
        "https://affective-meld.github.io/ (MELD.Raw.tar.gz)", "ESN_MELD_ROOT",
    ),
    "msp_podcast": DatasetInfo(
        "msp_podcast", load_msp_podcast, MSP_PODCAST_LABEL_MAP, 16_000, MSP_PODCAST_LAYOUT,
        "https://ecs.utdallas.edu/research/researchlabs/msp-lab/MSP-Podcast.html (licence agreement required)",
        "ESN_MSP_PODCAST_ROOT",
    ),
    "crema_d": DatasetInfo(
        "crema_d", load_crema_d, CREMA_D_LABEL_MAP, 16_000, CREMA_D_LAYOUT,
        "https://github.com/CheyneyComputerScience/CREMA-D (ODbL)", "ESN_CREMA_D_ROOT",
    ),
    "ravdess": DatasetInfo(
        "ravdess", load_ravdess, RAVDESS_LABEL_MAP, 48_000, RAVDESS_LAYOUT,
        "https://zenodo.org/records/1188976 (Audio_Speech_Actors_01-24.zip, CC BY-NC-SA 4.0)", "ESN_RAVDESS_ROOT",
        {"fearful": "fear", "surprised": "surprise"},
    ),
}  # fmt: skip


def _canonical(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    for canonical in DATASETS:
        if re.sub(r"[^a-z0-9]", "", canonical) == key:
            return canonical
    raise KeyError(f"unknown dataset {name!r}; known: {list(DATASETS)}.")


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    hub_id: str | None = None,
    *,
    allow_hub: bool = False,
    **kwargs: Any,
) -> pd.DataFrame:
    """Load corpus ``name`` from a local folder (``root``, else ``$ESN_<NAME>_ROOT``) or a Hub copy (``hub_id``).

    Keyword arguments go to the corpus loader (``label_map``, ``labels``, ``fractions``, ``seed``, ...). With
    neither a folder nor a hub id this raises :class:`DatasetNotAvailable` saying where to get the data and how
    the folder must look, rather than trying to download anything.
    """
    info = DATASETS[_canonical(name)]
    if root is None and hub_id is None:
        root = os.environ.get(info.env_var) or None
    if root is not None:
        return info.loader(root, **kwargs)
    if hub_id is not None:
        return load_from_hub(hub_id, dataset=info.name, allow_hub=allow_hub, **kwargs)
    raise DatasetNotAvailable(
        f"{info.name}: no data on this machine. Pass root=<folder> (or set {info.env_var}) pointing at "
        f"{info.layout}, or hub_id=<id> of a copy in the Hugging Face cache. Obtain it from {info.source}."
    )


#: Metadata tables of the folder loaders and the columns they read: ``(option naming the file, default, columns)``.
_METADATA: dict[str, tuple[tuple[str | None, str, tuple[str, ...]], ...]] = {
    "meld": tuple((None, csv, ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID"))
                  for csv in MELD_CSVS.values()),
    "msp_podcast": (("labels_file", "Labels/labels_consensus.csv", ("FileName", "EmoClass", "SpkrID", "Split_Set")),),
}  # fmt: skip
#: Folders a loader cannot work without: ``(option naming the folder, default)``.
_FOLDERS: dict[str, tuple[tuple[str | None, str], ...]] = {
    "msp_podcast": (("audio_dir", "Audios"),),
    "crema_d": (("audio_dir", "AudioWAV"),),
}


def check_source(
    name: str,
    root: str | os.PathLike[str] | None = None,
    hub_id: str | None = None,
    *,
    labels: Sequence[str] | None = None,
    label_map: Mapping[str, str] | None = None,
    where: str | None = None,
    **options: Any,
) -> None:
    """What :func:`load_dataset` would find wrong without reading any audio: no data on this machine, a folder
    that is not laid out as the corpus unpacks, metadata tables without their label columns, or configured
    ``labels`` that the label map cannot produce. Runs in milliseconds, so a stage checks it before its model loads.
    """
    info = DATASETS[_canonical(name)]
    where = where or info.name
    if label_map is None and labels is not None and hub_id is None:
        impossible = sorted(set(labels) - set(info.label_map.values()))
        if impossible:
            raise SchemaError(
                f"{where}: label(s) {impossible} cannot occur in {info.name} (its label map produces "
                f"{sorted(set(info.label_map.values()))}); fix `labels` or give the dataset entry a `label_map`"
            )
    elif label_map is not None and labels is not None:
        impossible = sorted(set(labels) - {str(v) for v in dict(label_map).values()})
        if impossible:
            raise SchemaError(f"{where}: label(s) {impossible} cannot occur: the entry's label_map produces only "
                              f"{sorted({str(v) for v in dict(label_map).values()})}; fix `labels` or `label_map`")
    if root is None and hub_id is None:
        root = os.environ.get(info.env_var) or None
    if root is None:
        if hub_id is not None:
            return
        raise DatasetNotAvailable(
            f"{where}: no data on this machine for {info.name}. Set `root: <folder>` in the dataset entry (or export "
            f"{info.env_var}) pointing at {info.layout}, or `hub_id: <id>` of a copy in the Hugging Face cache. "
            f"Obtain it from {info.source}."
        )
    folder = _root(root, info.name, info.layout)
    pattern = {"iemocap": "Session[1-5]", "ravdess": "Actor_*"}.get(info.name)
    if pattern and not any(p.is_dir() for p in folder.glob(pattern)):
        raise LayoutError(f"{where}: no {pattern} folder in {folder} (contains {_listing(folder)}); expected "
                          f"{info.layout}.")
    for option, default in _FOLDERS.get(info.name, ()):
        _require(folder / str(options.get(option or "", default) or default), info.name,
                 f"the audio folder (layout: {info.layout})")
    parts = options.get("parts")
    for option, default, columns in _METADATA.get(info.name, ()):
        rel = str(options.get(option or "", default) or default)
        if info.name == "meld" and parts is not None and not any(MELD_CSVS.get(p) == rel for p in parts):
            continue
        csv = _require(folder / rel, info.name, f"the metadata table (layout: {info.layout})")
        try:
            head = pd.read_csv(csv, nrows=0, encoding="utf-8", encoding_errors="replace").columns
        except (ValueError, OSError) as exc:
            raise LayoutError(f"{where}: cannot read {csv} ({exc}); re-extract it from the original archive") from None
        missing = [c for c in columns if c not in [h.strip() for h in head]]
        if missing:
            raise LayoutError(
                f"{where}: {csv} lacks the column(s) {missing} ({info.name} reads the labels and speakers from them); "
                f"found {list(head)}. Use the table of the official release ({info.source})"
            )


# --------------------------------------------------------------------------------------------- summary
def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Rows per split x label, with row and speaker totals: the table to eyeball before any experiment."""
    counts = pd.crosstab(df["split"], df["label"])
    order = [s for s in SPLITS if s in counts.index] + [s for s in counts.index if s not in SPLITS]
    counts = counts.reindex(order)
    counts["total"] = counts.sum(axis=1)
    counts["speakers"] = df.groupby("split")["speaker"].nunique().reindex(order)
    all_row = counts.drop(columns="speakers").sum()
    all_row["speakers"] = df["speaker"].nunique()
    counts.loc["all"] = all_row
    counts.index.name = "split"
    counts.columns.name = None
    return counts.astype(int)
