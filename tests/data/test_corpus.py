from __future__ import annotations

import json

import pandas as pd
import pytest

from helpers.data import corpus
from helpers.data.schema import REQUIRED_COLUMNS, SchemaError


def test_plan_is_deterministic_and_follows_the_schema():
    a1, a2 = corpus.plan(corpus.CORPUS_A), corpus.plan(corpus.CORPUS_A)
    pd.testing.assert_frame_equal(a1, a2)
    assert list(a1.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert set(a1.label) == set(corpus.EMOTIONS)
    assert set(a1.split) == {"train", "identify", "evaluate"}


def test_splits_are_disjoint_by_sentence_and_corpora_share_nothing():
    a, b = corpus.plan(corpus.CORPUS_A), corpus.plan(corpus.CORPUS_B)
    per_sentence = a.groupby("sentence_id").split.nunique()
    assert (per_sentence == 1).all()
    assert not set(a.transcript) & set(b.transcript)
    assert not set(a.voice) & set(b.voice)
    assert not set(a.path) & set(b.path)


def test_matched_sets_and_text_contexts():
    a = corpus.plan(corpus.CORPUS_A)
    clips = a.drop_duplicates("clip_id")
    # every matched set (sentence x voice) is spoken in every emotion
    assert (clips.groupby("matched_id").label.nunique() == len(corpus.EMOTIONS)).all()
    ev = a[a.split == "evaluate"]
    assert (ev.groupby("clip_id").context.apply(set) == {"none", "congruent", "conflict"}).all()
    cong, conf = ev[ev.context == "congruent"], ev[ev.context == "conflict"]
    assert (cong.context_label == cong.label).all()
    assert (conf.context_label != conf.label).all()
    # fixed prompt length: every context phrase has three words
    assert {len(t.split()) for t in a.text} == {3}


def test_prosody_mapping_is_shifted_between_corpora():
    a, b = corpus.CORPUS_A.prosody, corpus.CORPUS_B.prosody
    assert any(a[e] != b[e] for e in corpus.EMOTIONS)


def test_generation_is_deterministic(tmp_path):
    m1 = corpus.generate(corpus.CORPUS_B, tmp_path / "x", limit=1)
    m2 = corpus.generate(corpus.CORPUS_B, tmp_path / "y", limit=1)
    pd.testing.assert_frame_equal(m1, m2)
    j1 = json.loads((tmp_path / "x" / "manifest.json").read_text())
    j2 = json.loads((tmp_path / "y" / "manifest.json").read_text())
    assert j1["audio_sha256"] == j2["audio_sha256"]
    assert j1["n_clips"] == len(corpus.EMOTIONS) * len(corpus.CORPUS_B.voices) * len(corpus.RELIABILITY)


def test_reliability_dial_moves_prosody_to_neutral_and_sets_the_channel():
    a = corpus.plan(corpus.CORPUS_A).drop_duplicates("clip_id")
    assert list(dict.fromkeys(a.reliability)) == list(corpus.RELIABILITY)  # clearest first
    # matched sets stay within a level, and every level has every emotion of every sentence x voice
    assert (a.groupby("matched_id").reliability.nunique() == 1).all()
    assert (a.groupby(["sentence_id", "voice", "reliability"]).label.nunique() == len(corpus.EMOTIONS)).all()
    neutral = corpus.CORPUS_A.prosody["neutral"]
    for level, rel in corpus.RELIABILITY.items():
        at = a[a.reliability == level]
        assert ((at.snr_db >= rel.snr_db[0]) & (at.snr_db <= rel.snr_db[1])).all()
        for emotion in corpus.EMOTIONS:
            target = corpus.CORPUS_A.prosody[emotion]
            want = neutral.pitch + rel.intensity * (target.pitch - neutral.pitch)
            got = at[at.label == emotion].pitch.mean()
            assert abs(got - want) < 2.0, (level, emotion, got, want)  # jitter averages out
    # at intensity 0 the emotions are indistinguishable by construction (same means, same jitter)
    silent = a[a.reliability == "none"].groupby("label")[["pitch", "rate", "volume"]].mean()
    assert (silent.max() - silent.min() < 3.0).all()


def test_load_keeps_one_reliability_level_by_default(small_corpora):
    df = corpus.load(small_corpora["A"], split="evaluate")
    assert set(df.reliability) == {"clear"}
    every = corpus.load(small_corpora["A"], split="evaluate", reliability=None)
    assert set(every.reliability) == set(corpus.RELIABILITY)
    with pytest.raises(SchemaError, match="no reliability level"):
        corpus.load(small_corpora["A"], reliability="loud")


def test_load_reads_audio_paths_and_rejects_missing_files(small_corpora, tmp_path):
    import soundfile as sf

    df = corpus.load(small_corpora["A"], split="evaluate")
    assert set(df.context) == {"none"} and len(df) > 0
    info = sf.info(df.path.iloc[0])
    assert info.samplerate == corpus.SAMPLE_RATE
    assert info.duration <= corpus.MAX_SECONDS + 1e-6
    # a corpus folder with a missing file gets a message naming the file and the fix
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(small_corpora["B"], broken)
    victim = sorted((broken / "wav").iterdir())[0]
    victim.unlink()
    with pytest.raises(SchemaError, match=victim.name):
        corpus.load(broken)
    with pytest.raises(SchemaError, match="make corpus"):
        corpus.load(tmp_path / "nowhere")
    with pytest.raises(SchemaError, match="no split"):
        corpus.load(small_corpora["B"], split="train")
