"""MSP-Podcast: the release folder (Audios/, Labels/labels_consensus.csv) into the unified table."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import pandas as pd

from .loading import _finish, _read_csv, _require, _root

#: MSP-Podcast ``EmoClass`` codes; O (other) and X (no agreement) are dropped and reported.
MSP_PODCAST_LABEL_MAP: dict[str, str] = {
    "N": "neutral", "H": "happy", "A": "angry", "S": "sad",
    "U": "surprise", "F": "fear", "D": "disgust", "C": "contempt",
}  # fmt: skip


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


__all__ = [
    "MSP_PODCAST_LABEL_MAP",
    "load_msp_podcast",
]
