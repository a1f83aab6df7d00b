"""CREMA-D: the AudioWAV folder (labels in the file names) into the unified table."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import pandas as pd

from .loading import LayoutError, _audio_files, _finish, _read_csv, _require, _root, logger

#: CREMA-D's intended emotion, third field of the file name.
CREMA_D_LABEL_MAP: dict[str, str] = {
    "NEU": "neutral", "HAP": "happy", "ANG": "angry", "SAD": "sad", "FEA": "fear", "DIS": "disgust",
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


__all__ = [
    "CREMA_D_LABEL_MAP",
    "CREMA_D_SENTENCES",
    "load_crema_d",
]
