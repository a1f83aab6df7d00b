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

import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .audio import AudioLoadError, read_info
from .schema import REQUIRED_COLUMNS, SchemaError, validate
from .speaker_splits import split_speakers

logger = logging.getLogger(__name__)


#: The four classes of the standard IEMOCAP benchmark, used by the paper's main experiments.
FOUR_CLASSES: tuple[str, ...] = ("neutral", "happy", "angry", "sad")


#: Spellings found in Hub copies of these corpora (matched case-insensitively by
#: :func:`~helpers.data.catalog.load_from_hub`).
GENERIC_LABEL_MAP: dict[str, str] = {
    "neutral": "neutral", "neu": "neutral", "happy": "happy", "happiness": "happy", "hap": "happy",
    "joy": "happy", "angry": "angry", "anger": "angry", "ang": "angry", "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise", "sur": "surprise", "fear": "fear", "fearful": "fear",
    "fea": "fear", "disgust": "disgust", "disgusted": "disgust", "dis": "disgust", "contempt": "contempt",
    "calm": "calm",
}  # fmt: skip


# ------------------------------------------------------------------------------------------------- errors
class LayoutError(FileNotFoundError):
    """The dataset folder does not look like the official distribution; the message names what was expected."""


class UnknownLabelError(ValueError):
    """``strict=True`` and the data contain labels outside ``label_map``."""


class DatasetNotAvailable(RuntimeError):
    """The data are not on this machine (no local folder, nothing in the Hugging Face cache)."""


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


__all__ = [
    "FOUR_CLASSES",
    "GENERIC_LABEL_MAP",
    "DatasetNotAvailable",
    "LayoutError",
    "UnknownLabelError",
]
