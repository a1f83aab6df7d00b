"""A minimal ctypes binding to the libespeak-ng bundled in the ``espeakng-loader`` wheel.

Why our own binding: the wheel ships the library and its voice data but no Python API, and the corpus only
needs four calls (initialise, choose voice, set prosody parameters, synthesise to memory). Synthesis is
synchronous into a Python buffer, so it is deterministic and never touches a sound device.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4, "wordgap": 7}

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Prosody:
    """espeak-ng prosody settings: pitch and range 0-100 (50 = voice default), rate in words/min, volume 0-200."""

    pitch: float = 50.0
    range: float = 50.0
    rate: float = 175.0
    volume: float = 100.0


class Espeak:
    """One initialised espeak-ng engine (the C library is a process-wide singleton, hence the lock)."""

    _lock = threading.Lock()
    _lib: ctypes.CDLL | None = None
    _sample_rate: int = 0

    def __init__(self) -> None:
        with Espeak._lock:
            if Espeak._lib is None:
                Espeak._lib, Espeak._sample_rate = self._load()
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)

    @staticmethod
    def _load() -> tuple[ctypes.CDLL, int]:
        try:
            import espeakng_loader
        except ImportError as exc:  # pragma: no cover - dependency is pinned
            raise RuntimeError("the corpus needs the PyPI wheel espeakng-loader: pip install it") from exc
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data_parent = str(Path(espeakng_loader.get_data_path()).parent).encode()
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, 0)
        if rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise with data at {data_parent!r}")
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        return lib, rate

    @property
    def sample_rate(self) -> int:
        return Espeak._sample_rate

    def _collect(self, wav, numsamples, events) -> int:  # noqa: ANN001 - ctypes callback
        if numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0

    def synth(self, text: str, voice: str, prosody: Prosody, seed: int = 0) -> np.ndarray:
        """Synthesise ``text`` with ``voice`` (e.g. ``"en-us+f3"``) and return float32 samples in [-1, 1].

        espeak-ng adds pseudo-random flutter to its voices; seeding it per clip makes every clip reproducible
        regardless of the order in which clips are synthesised.
        """
        lib = Espeak._lib
        assert lib is not None
        with Espeak._lock:
            self._chunks = []
            lib.espeak_ng_SetRandSeed(int(seed))
            lib.espeak_SetSynthCallback(self._callback)
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}; list voices in espeakng_loader's data folder")
            for name in ("pitch", "range", "rate", "volume"):
                lib.espeak_SetParameter(_PARAM[name], int(round(getattr(prosody, name))), 0)
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            err = lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
            if err != 0:
                raise RuntimeError(f"espeak_Synth failed with code {err} for text {text!r}")
            chunks = self._chunks
            self._chunks = []
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return (np.concatenate(chunks).astype(np.float32) / 32768.0).clip(-1.0, 1.0)
