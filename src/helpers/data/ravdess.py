"""RAVDESS: the Audio_Speech_Actors_01-24 folders (labels in the file names) into the unified table."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import pandas as pd

from .loading import LayoutError, _audio_files, _counts, _finish, _listing, _root, _visible

#: RAVDESS emotion code, third field of the file name; "fearful"/"surprised" use the canonical fear/surprise.
RAVDESS_LABEL_MAP: dict[str, str] = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fear", "07": "disgust", "08": "surprise",
}  # fmt: skip


#: The two RAVDESS statements (fifth field of the file name).
RAVDESS_STATEMENTS: dict[str, str] = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}


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


__all__ = [
    "RAVDESS_LABEL_MAP",
    "RAVDESS_STATEMENTS",
    "load_ravdess",
]
