"""IEMOCAP: the IEMOCAP_full_release folder (Session1..5) into the unified table."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .loading import LayoutError, _finish, _listing, _require, _root, _visible

#: Every categorical code in IEMOCAP's EmoEvaluation files (for reference and for custom maps).
IEMOCAP_CODES: dict[str, str] = {
    "neu": "neutral", "hap": "happiness", "exc": "excited", "ang": "anger", "sad": "sadness",
    "fru": "frustration", "sur": "surprise", "fea": "fear", "dis": "disgust", "oth": "other",
    "xxx": "no majority agreement",
}  # fmt: skip


#: The standard 4-class merge (excited joins happy); fru, sur, fea, dis, oth and xxx are dropped and reported.
IEMOCAP_LABEL_MAP: dict[str, str] = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}


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


__all__ = [
    "IEMOCAP_CODES",
    "IEMOCAP_LABEL_MAP",
    "load_iemocap",
]
