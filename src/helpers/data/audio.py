"""Audio decoding for every dataset: one function, one behaviour, whatever the corpus.

Decoding goes through ``soundfile`` (libsndfile: WAV, FLAC, OGG, MP3) and resampling through ``soxr``.
We do not use ``datasets.Audio(decode=True)``: in ``datasets`` >= 4 it decodes with ``torchcodec``, which does
not load next to the CPU-only torch wheel this project pins. Dataset tables therefore keep audio *undecoded*
(a path, or ``Audio(decode=False)`` bytes) and every model input is produced here.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AudioChannelWarning", "AudioLoadError", "SamplingRateError", "check_sampling_rate", "load_audio", "read_info",
]  # fmt: skip

#: Containers soundfile cannot read; MELD ships its utterances as MP4 clips.
_VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4a", ".aac"}


class AudioLoadError(RuntimeError):
    """An audio file exists but cannot be decoded; the message names the file and suggests a fix."""


class AudioChannelWarning(UserWarning):
    """A multi-channel file whose channels cancel when averaged to mono (the model would hear near silence)."""


class SamplingRateError(ValueError):
    """Audio is not at the sampling rate a model expects; the message says how to resample."""


def _describe(source: str | os.PathLike[str] | Mapping[str, Any]) -> str:
    if isinstance(source, Mapping):
        return str(source.get("path") or "<in-memory audio bytes>")
    return str(source)


def _open_target(source: str | os.PathLike[str] | Mapping[str, Any]) -> str | io.BytesIO:
    """Accept a path or an undecoded ``datasets`` audio dict ``{"path": ..., "bytes": ...}``."""
    location: str | os.PathLike[str]
    if isinstance(source, Mapping):
        data = source.get("bytes")
        if data:
            return io.BytesIO(data)
        given = source.get("path")
        if not given:
            raise AudioLoadError("audio dict has neither 'bytes' nor 'path'; expected datasets' Audio(decode=False).")
        location = given
    else:
        location = source
    path = Path(location)
    if not path.is_file():
        raise FileNotFoundError(
            f"audio file not found: {path}. Check the dataset root (paths in the table are absolute or relative "
            "to it) and that the audio was extracted/downloaded completely."
        )
    return str(path)


def _decode_hint(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in _VIDEO_SUFFIXES:
        return (
            f" soundfile cannot read '{suffix}' containers; extract the audio track first, e.g. "
            f"`ffmpeg -i {Path(name).name} -vn -ac 1 -ar 16000 {Path(name).with_suffix('.wav').name}`."
        )
    return " The file may be truncated or empty; re-extract it from the original archive."


def load_audio(source: str | os.PathLike[str] | Mapping[str, Any], target_sr: int) -> np.ndarray:
    """Decode ``source`` to a mono float32 waveform at ``target_sr`` Hz.

    ``source`` is a file path or an undecoded ``datasets`` audio dict (``Audio(decode=False)``). Multi-channel
    audio is averaged to mono (RAVDESS and some MELD extractions are stereo; an :class:`AudioChannelWarning` when
    the channels cancel) and resampled with soxr (HQ), so
    that every model sees the same rate whatever the corpus was recorded at. soundfile + soxr rather than
    ``datasets.Audio`` decoding, which needs torchcodec and that does not load with the CPU torch build.
    Empty files and files with NaN/Inf samples raise :class:`AudioLoadError` naming the file.
    """
    import soundfile as sf
    import soxr

    if int(target_sr) <= 0:
        raise ValueError(f"target_sr must be a positive sampling rate in Hz, got {target_sr!r}.")
    name = _describe(source)
    target = _open_target(source)
    try:
        data, sr = sf.read(target, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as err:
        raise AudioLoadError(f"cannot decode audio file {name}: {err}.{_decode_hint(name)}") from err
    if data.shape[0] == 0:
        raise AudioLoadError(f"audio file {name} contains no samples.{_decode_hint(name)}")
    finite = np.isfinite(data)
    if not finite.all():
        n_bad = int((~finite).sum())
        raise AudioLoadError(
            f"audio file {name} contains {n_bad} NaN/Inf sample(s) of {data.size}: the file is corrupt (a float WAV "
            "written from diverged values?). Re-extract or re-export it, or drop it from the dataset."
        )
    wav = _mono(data, name)
    if int(sr) != int(target_sr):
        wav = soxr.resample(wav, int(sr), int(target_sr), quality="HQ")
    return np.ascontiguousarray(wav, dtype=np.float32)


def _mono(data: np.ndarray, name: str) -> np.ndarray:
    """Average the channels; warn when they cancel (opposite phase), since the mix is then near silence."""
    if data.shape[1] == 1:
        return data[:, 0]
    wav = data.mean(axis=1)
    rms_channels = float(np.sqrt(np.mean(data.astype(np.float64) ** 2)))
    rms_mix = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
    if rms_channels > 1e-6 and rms_mix < 0.1 * rms_channels:
        warnings.warn(
            f"audio file {name}: its {data.shape[1]} channels cancel when mixed to mono (opposite phase?): the mix is "
            f"{20 * np.log10(max(rms_mix, 1e-12) / rms_channels):.0f} dB below the channels. Fix the file, e.g. keep "
            f"one channel: `ffmpeg -i {Path(name).name} -af 'pan=mono|c0=c0' {Path(name).stem}_mono.wav`.",
            AudioChannelWarning,
            stacklevel=3,
        )
    return wav


def read_info(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[int, int, int]:
    """Return ``(sampling_rate, n_frames, channels)`` from the header only: cheap enough for a whole corpus."""
    import soundfile as sf

    name = _describe(source)
    target = _open_target(source)
    try:
        info = sf.info(target)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as err:
        raise AudioLoadError(f"cannot read the header of audio file {name}: {err}.{_decode_hint(name)}") from err
    return int(info.samplerate), int(info.frames), int(info.channels)


def check_sampling_rate(sr: int | Iterable[int], expected: int) -> None:
    """Raise :class:`SamplingRateError` unless every rate in ``sr`` equals ``expected``.

    Models silently produce garbage on audio at the wrong rate, so this is checked before any forward pass.
    ``sr`` may be one rate or a column of rates (e.g. ``df["sampling_rate"]``).
    """
    rates = {int(sr)} if isinstance(sr, (int, np.integer)) else {int(r) for r in sr}
    wrong = sorted(r for r in rates if r != int(expected))
    if wrong:
        raise SamplingRateError(
            f"audio is at {wrong} Hz but {int(expected)} Hz is expected. Resample while decoding with "
            f"helpers.data.audio.load_audio(path, target_sr={int(expected)}) instead of feeding the raw samples."
        )
