"""MELD: the MELD.Raw folder (per-part metadata CSVs, extracted ``dia{D}_utt{U}.wav``) into the unified table."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from .loading import LayoutError, _finish, _read_csv, _require, _root

#: MELD's seven ``Emotion`` values; joy/sadness/anger renamed to the canonical happy/sad/angry.
MELD_LABEL_MAP: dict[str, str] = {
    "neutral": "neutral", "joy": "happy", "sadness": "sad", "anger": "angry",
    "surprise": "surprise", "fear": "fear", "disgust": "disgust",
}  # fmt: skip


#: MELD part -> (metadata CSV, folder with the extracted ``dia{D}_utt{U}.wav``), as MELD.Raw unpacks.
MELD_AUDIO_DIRS: dict[str, str] = {
    "train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test",
}  # fmt: skip


MELD_CSVS: dict[str, str] = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}


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


__all__ = [
    "MELD_AUDIO_DIRS",
    "MELD_LABEL_MAP",
    "load_meld",
]
