"""Loaders for real corpora, tested on fixture trees laid out like the official distributions."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from helpers.data.audio import AudioLoadError, SamplingRateError, check_sampling_rate, load_audio, read_info
from helpers.data.catalog import DATASETS, load_dataset, load_from_hub
from helpers.data.crema_d import load_crema_d
from helpers.data.iemocap import IEMOCAP_LABEL_MAP, load_iemocap
from helpers.data.loading import DatasetNotAvailable, LayoutError, UnknownLabelError
from helpers.data.meld import load_meld
from helpers.data.msp_podcast import load_msp_podcast
from helpers.data.ravdess import load_ravdess
from helpers.data.schema import REQUIRED_COLUMNS, SchemaError, validate
from helpers.data.speaker_splits import check_speaker_disjoint, split_speakers, summary

from fixtures_datasets import (
    make_all,
    make_crema_d,
    make_iemocap,
    make_meld,
    make_msp_podcast,
    make_ravdess,
    write_tone,
)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Written once per module and only read by tests (tests that modify a tree build their own)."""
    return make_all(tmp_path_factory.mktemp("corpora"))


def counts(series: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.value_counts().sort_index().items()}


def check_common(df: pd.DataFrame) -> None:
    validate(df, check_files=True)
    assert list(df.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert all(os.path.isabs(p) for p in df["path"])
    check_speaker_disjoint(df)
    assert set(df["split"]) <= {"train", "identify", "evaluate"}


# -------------------------------------------------------------------------------------------------- audio
def test_load_audio_resamples_and_downmixes(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "stereo.wav", 48_000, channels=2)
    native, _ = sf.read(path, dtype="float32", always_2d=True)
    assert native.shape == (9600, 2)
    same = load_audio(path, 48_000)
    assert same.dtype == np.float32 and same.shape == (9600,)
    np.testing.assert_allclose(same, native.mean(axis=1), atol=1e-6)
    down = load_audio(path, 16_000)
    assert down.dtype == np.float32 and down.shape == (3200,)
    assert read_info(path) == (48_000, 9600, 2)
    # the resampled tone keeps its level (soxr, not decimation garbage)
    assert abs(np.sqrt(np.mean(down[200:-200] ** 2)) - np.sqrt(np.mean(same[600:-600] ** 2))) < 0.02


def test_load_audio_accepts_undecoded_hf_dict(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "a.wav", 16_000)
    from_bytes = load_audio({"bytes": path.read_bytes(), "path": "a.wav"}, 8_000)
    from_path = load_audio({"bytes": None, "path": str(path)}, 8_000)
    assert from_bytes.shape == from_path.shape == (1600,)


def test_load_audio_missing_and_undecodable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        load_audio(tmp_path / "nope.wav", 16_000)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF but not really")
    with pytest.raises(AudioLoadError, match="broken.wav"):
        load_audio(bad, 16_000)
    clip = tmp_path / "dia0_utt0.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(AudioLoadError, match="ffmpeg"):
        load_audio(clip, 16_000)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(AudioLoadError, match="no samples"):
        load_audio(empty, 16_000)


def test_check_sampling_rate() -> None:
    check_sampling_rate(16_000, 16_000)
    check_sampling_rate(pd.Series([16_000, 16_000]), 16_000)
    with pytest.raises(SamplingRateError, match=r"48000.*load_audio\(path, target_sr=16000\)"):
        check_sampling_rate(pd.Series([16_000, 48_000]), 16_000)


# ------------------------------------------------------------------------------------------------ IEMOCAP
def test_iemocap_four_class_merge(corpora: dict[str, Path]) -> None:
    df = load_iemocap(corpora["iemocap"])
    check_common(df)
    assert len(df) == 40
    assert counts(df["label"]) == {"angry": 8, "happy": 16, "neutral": 8, "sad": 8}
    assert counts(df["speaker"]) == {"Ses01F": 10, "Ses01M": 10, "Ses02F": 10, "Ses02M": 10}
    assert counts(df["split"]) == {"evaluate": 20, "identify": 20}
    assert df.groupby("split")["speaker"].nunique().to_dict() == {"evaluate": 2, "identify": 2}
    assert df.attrs["dropped"] == {"unmapped_label": {"fru": 8, "xxx": 8}}
    assert (df["sampling_rate"] == 16_000).all()
    row = df.set_index("sentence_id").loc["Ses01F_impro01_M003"]
    assert row["speaker"] == "Ses01M" and row["label"] == "angry" and row["original_label"] == "ang"
    assert row["text"] == "Excuse me, turn 3 of M." and row["arousal"] == 4.0


def test_iemocap_label_options(corpora: dict[str, Path]) -> None:
    sub = load_iemocap(corpora["iemocap"], labels=["happy", "sad"])
    assert counts(sub["label"]) == {"happy": 16, "sad": 8}
    assert sub.attrs["dropped"]["not_in_labels"] == {"angry": 8, "neutral": 8}
    assert sub.attrs["classes"] == ["happy", "sad"]
    merged = load_iemocap(corpora["iemocap"], label_map={**IEMOCAP_LABEL_MAP, "fru": "angry"})
    assert counts(merged["label"])["angry"] == 16
    assert merged.attrs["dropped"] == {"unmapped_label": {"xxx": 8}}
    with pytest.raises(UnknownLabelError, match=r"fru.*label_map"):
        load_iemocap(corpora["iemocap"], strict=True)
    with pytest.raises(ValueError, match="calm"):
        load_iemocap(corpora["iemocap"], labels=["calm"])


def test_iemocap_session_split(corpora: dict[str, Path]) -> None:
    df = load_iemocap(corpora["iemocap"], split_by="session")
    check_speaker_disjoint(df, by="session")
    assert df.groupby("split")["session"].nunique().to_dict() == {"evaluate": 1, "identify": 1}


def test_dropped_rows_are_logged(corpora: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="helpers.data.loading"):
        load_iemocap(corpora["iemocap"])
    assert "fru" in caplog.text and "16" in caplog.text


def test_missing_audio_is_dropped_and_reported(tmp_path: Path) -> None:
    root = make_iemocap(tmp_path / "iemocap")
    (root / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav").unlink()
    df = load_iemocap(root)
    assert len(df) == 39
    assert df.attrs["dropped"]["missing_audio"] == {"neu": 1}


def test_iemocap_wrong_layout(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="does not exist"):
        load_iemocap(tmp_path / "absent")
    (tmp_path / "flat").mkdir()
    with pytest.raises(LayoutError, match=r"Session1.*EmoEvaluation"):
        load_iemocap(tmp_path / "flat")
    root = make_iemocap(tmp_path / "iemocap", sessions=(1,))
    shutil.rmtree(root / "Session1" / "sentences")
    with pytest.raises(LayoutError, match=r"Session1/sentences/wav"):
        load_iemocap(root)
    with pytest.raises(LayoutError, match="Session2"):
        load_iemocap(root, sessions=[1, 2])


# --------------------------------------------------------------------------------------------------- MELD
def test_meld(corpora: dict[str, Path]) -> None:
    df = load_meld(corpora["meld"])
    check_common(df)
    assert len(df) == 28 and df.attrs["dropped"] == {}
    assert counts(df["label"]) == dict.fromkeys(["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"], 4)
    assert counts(df["speaker"]) == {"Chandler": 4, "Joey": 8, "Monica": 3, "Phoebe": 6, "Rachel": 3, "Ross": 4}
    assert counts(df["original_split"]) == {"dev": 7, "test": 7, "train": 14}
    assert sorted(counts(df["split"]).values()) == [13, 15]
    alt = df.set_index("sentence_id").loc["test_dia0_utt3"]
    assert Path(alt["path"]).name == "final_videos_testdia0_utt3.wav" and alt["label"] == "angry"
    assert df.loc[df["sentence_id"] == "train_dia0_utt1", "text"].item() == 'Oh, "really"? I’m joy, utterance 1.'


def test_meld_keep_train_and_four_classes(corpora: dict[str, Path]) -> None:
    df = load_meld(corpora["meld"], keep_train=True, labels=["neutral", "happy", "angry", "sad"])
    check_common(df)
    assert counts(df["label"]) == {"angry": 4, "happy": 4, "neutral": 4, "sad": 4}
    assert df.attrs["dropped"] == {"not_in_labels": {"disgust": 4, "fear": 4, "surprise": 4}}
    assert (df.loc[df["original_split"] == "train", "split"] == "train").all()
    assert counts(df["split"])["train"] == 8
    assert set(df.loc[df["split"] != "train", "original_split"]) == {"dev", "test"}


def test_meld_wrong_layout(tmp_path: Path) -> None:
    root = make_meld(tmp_path / "meld")
    (root / "dev_sent_emo.csv").unlink()
    with pytest.raises(LayoutError, match="dev_sent_emo.csv"):
        load_meld(root)
    df = load_meld(root, parts=("train", "test"))
    assert len(df) == 21
    shutil.rmtree(root / "train_splits")
    with pytest.raises(LayoutError, match=r"train_splits.*audio_dirs"):
        load_meld(root, parts=("train",))
    (root / "wav_train").mkdir()
    with pytest.raises(LayoutError, match=r"none of the 14 audio files.*wav_train"):
        load_meld(root, parts=("train",), audio_dirs={"train": "wav_train"})


# -------------------------------------------------------------------------------------------- MSP-Podcast
def test_msp_podcast(corpora: dict[str, Path]) -> None:
    df = load_msp_podcast(corpora["msp_podcast"])
    check_common(df)
    assert len(df) == 48
    assert counts(df["label"]) == dict.fromkeys(
        ["angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"], 6
    )
    assert df.attrs["dropped"] == {"unmapped_label": {"O": 6, "X": 6}}
    assert counts(df["speaker"]) == dict.fromkeys(["1", "2", "3", "4", "unknown_0005", "unknown_0006"], 8)
    assert counts(df["split"]) == {"evaluate": 24, "identify": 24}
    first = df.set_index("sentence_id").loc["MSP-PODCAST_0003_0001"]
    assert first["text"] == "transcript of podcast 3" and first["gender"] == "F" and first["valence"] == 3.8


def test_msp_podcast_keep_train_and_partitions(corpora: dict[str, Path]) -> None:
    df = load_msp_podcast(corpora["msp_podcast"], keep_train=True, labels=["neutral", "happy", "angry", "sad"])
    check_common(df)
    assert counts(df["split"]) == {"evaluate": 8, "identify": 8, "train": 8}
    assert set(df.loc[df["split"] == "train", "speaker"]) == {"1", "2"}
    test1 = load_msp_podcast(corpora["msp_podcast"], partitions=["Test1", "Test2"], fractions={"evaluate": 1.0})
    assert counts(test1["split"]) == {"evaluate": 24}


def test_msp_podcast_wrong_layout(tmp_path: Path) -> None:
    root = make_msp_podcast(tmp_path / "msp")
    with pytest.raises(LayoutError, match=r"Labels/labels_consensus.csv"):
        load_msp_podcast(root, labels_file="Labels/missing.csv")
    shutil.rmtree(root / "Audios")
    with pytest.raises(LayoutError, match="Audios"):
        load_msp_podcast(root)


# ------------------------------------------------------------------------------------------------ CREMA-D
def test_crema_d(corpora: dict[str, Path]) -> None:
    df = load_crema_d(corpora["crema_d"])
    check_common(df)
    assert len(df) == 48 and df.attrs["dropped"] == {}
    assert counts(df["label"]) == dict.fromkeys(["angry", "disgust", "fear", "happy", "neutral", "sad"], 8)
    assert counts(df["speaker"]) == dict.fromkeys(["1001", "1002", "1003", "1004"], 12)
    assert counts(df["split"]) == {"evaluate": 24, "identify": 24}
    assert counts(df["sentence_id"]) == {"DFA": 24, "IEO": 24}
    assert set(df.loc[df["sentence_id"] == "DFA", "text"]) == {"Don't forget a jacket."}
    assert counts(df["gender"]) == {"F": 24, "M": 24}
    assert counts(df["intensity"]) == {"high": 24, "unspecified": 24}


def test_crema_d_probe_audio_drops_broken_files(tmp_path: Path) -> None:
    root = make_crema_d(tmp_path / "crema")
    sf.write(root / "AudioWAV" / "1001_DFA_ANG_XX.wav", np.zeros(0, dtype=np.float32), 16_000)
    (root / "AudioWAV" / "1001_DFA_DIS_XX.wav").write_bytes(b"garbage")
    (root / "AudioWAV" / "notes.wav").write_bytes(b"garbage")
    df = load_crema_d(root, probe_audio=True)
    assert len(df) == 46
    assert df.attrs["dropped"] == {"unparsed_filename": {"?": 1}, "unreadable_audio": {"ANG": 1, "DIS": 1}}
    with pytest.raises(LayoutError, match="AudioWAV"):
        load_crema_d(tmp_path / "crema", audio_dir="AudioMP3")


# ------------------------------------------------------------------------------------------------ RAVDESS
def test_ravdess(corpora: dict[str, Path]) -> None:
    df = load_ravdess(corpora["ravdess"])
    check_common(df)
    assert len(df) == 60
    expected = dict.fromkeys(["angry", "calm", "disgust", "fear", "happy", "sad", "surprise"], 8)
    assert counts(df["label"]) == {**expected, "neutral": 4}
    assert df.attrs["dropped"] == {"not_speech": {"01": 4, "03": 4}}
    assert counts(df["speaker"]) == dict.fromkeys(["Actor_01", "Actor_02", "Actor_03", "Actor_04"], 15)
    assert counts(df["split"]) == {"evaluate": 30, "identify": 30}
    assert (df["sampling_rate"] == 48_000).all()
    assert counts(df["gender"]) == {"F": 30, "M": 30}
    calm_as_neutral = load_ravdess(corpora["ravdess"], label_map={"01": "neutral", "02": "neutral"})
    assert counts(calm_as_neutral["label"]) == {"neutral": 12}
    assert calm_as_neutral.attrs["dropped"]["unmapped_label"]["05"] == 8


def test_ravdess_wrong_layout(tmp_path: Path) -> None:
    make_ravdess(tmp_path / "zip" / "Audio_Speech_Actors_01-24")
    with pytest.raises(LayoutError, match=r"Actor_01.*Audio_Speech_Actors_01-24"):
        load_ravdess(tmp_path / "zip")
    assert len(load_ravdess(tmp_path / "zip" / "Audio_Speech_Actors_01-24")) == 60


# ------------------------------------------------------------------------------------------------- splits
def test_splits_are_deterministic_and_seeded(corpora: dict[str, Path]) -> None:
    a = load_crema_d(corpora["crema_d"], seed=3)
    b = load_crema_d(corpora["crema_d"], seed=3)
    pd.testing.assert_series_equal(a["split"], b["split"])
    assignments = {
        tuple(sorted(load_crema_d(corpora["crema_d"], seed=s).query("split == 'identify'")["speaker"].unique()))
        for s in range(8)
    }
    assert len(assignments) > 1


def test_split_speakers_three_way_and_errors() -> None:
    df = pd.DataFrame({"speaker": [f"s{i // 3}" for i in range(30)], "label": "happy"})
    out = split_speakers(df, {"train": 0.6, "identify": 0.2, "evaluate": 0.2}, seed=1)
    assert counts(out.groupby("speaker")["split"].first()) == {"evaluate": 2, "identify": 2, "train": 6}
    check_speaker_disjoint(out, ("train", "identify", "evaluate"))
    assert "split" not in df.columns  # input untouched
    with pytest.raises(ValueError, match="distinct 'speaker'"):
        split_speakers(df.head(3), seed=0)
    with pytest.raises(ValueError, match="unknown split"):
        split_speakers(df, {"test": 1.0})
    leaky = out.copy()
    leaky.loc[0, "split"], leaky.loc[1, "split"] = "identify", "evaluate"  # both rows are speaker s0
    with pytest.raises(ValueError, match="s0"):
        check_speaker_disjoint(leaky, ("train", "identify", "evaluate"))


def test_summary(corpora: dict[str, Path]) -> None:
    table = summary(load_iemocap(corpora["iemocap"]))
    assert list(table.index) == ["identify", "evaluate", "all"]
    assert table.loc["all"].to_dict() == {
        "angry": 8, "happy": 16, "neutral": 8, "sad": 8, "total": 40, "speakers": 4,
    }  # fmt: skip
    assert table.loc["identify", "speakers"] == 2


# ----------------------------------------------------------------------------------------------- registry
def test_registry_and_env_root(corpora: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(DATASETS) == {"iemocap", "meld", "msp_podcast", "crema_d", "ravdess"}
    assert len(load_dataset("CREMA-D", corpora["crema_d"])) == 48
    assert len(load_dataset("MSP-Podcast", corpora["msp_podcast"], labels=["sad"])) == 6
    monkeypatch.setenv("ESN_RAVDESS_ROOT", str(corpora["ravdess"]))
    assert len(load_dataset("ravdess")) == 60
    monkeypatch.delenv("ESN_IEMOCAP_ROOT", raising=False)
    with pytest.raises(DatasetNotAvailable, match=r"ESN_IEMOCAP_ROOT.*Session1"):
        load_dataset("iemocap")
    with pytest.raises(KeyError, match="known"):
        load_dataset("emodb", corpora["crema_d"])


# ---------------------------------------------------------------------------------------------------- hub
def test_uncached_hub_id_fails_fast(tmp_path: Path) -> None:
    import datasets.config

    before = os.environ.get("HF_HUB_OFFLINE"), datasets.config.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(DatasetNotAvailable, match=r"not available offline.*root="):
        load_dataset("iemocap", hub_id="esn-test/definitely-not-cached", cache_dir=str(tmp_path / "cache"))
    assert time.monotonic() - start < 5
    assert (os.environ.get("HF_HUB_OFFLINE"), datasets.config.HF_HUB_OFFLINE) == before  # offline mode was scoped


def _hub_copy(root: Path) -> Path:
    """A Hub-style dataset repo (data/<split>-*.parquet) with the audio embedded as bytes, as on the Hub."""
    import datasets as hf

    clips = [write_tone(root / "src" / f"clip{i}.wav", 16_000, seed=i) for i in range(8)]
    ds = hf.Dataset.from_dict({
        "audio": [{"bytes": p.read_bytes(), "path": p.name} for p in clips],
        "emotion": [0, 1, 2, 3, 0, 1, 2, 4],
        "speaker_id": ["a", "a", "b", "b", "c", "c", "d", "d"],
        "transcription": [f"text {i}" for i in range(8)],
    })  # fmt: skip
    ds = ds.cast_column("audio", hf.Audio(sampling_rate=16_000))
    ds = ds.cast_column("emotion", hf.ClassLabel(names=["Neutral", "Happiness", "Anger", "Sadness", "Frustrated"]))
    (root / "repo" / "data").mkdir(parents=True)
    ds.select(range(4)).to_parquet(str(root / "repo" / "data" / "train-00000-of-00001.parquet"))
    ds.select(range(4, 8)).to_parquet(str(root / "repo" / "data" / "test-00000-of-00001.parquet"))
    return root / "repo"


def test_hub_copy_is_loaded_undecoded(tmp_path: Path) -> None:
    repo = _hub_copy(tmp_path)
    df = load_from_hub(
        str(repo), dataset="iemocap", audio_dir=tmp_path / "audio", cache_dir=str(tmp_path / "cache"), keep_train=True
    )
    check_common(df)
    assert len(df) == 7
    assert df.attrs["dropped"] == {"unmapped_label": {"frustrated": 1}}
    assert counts(df["label"]) == {"angry": 2, "happy": 2, "neutral": 2, "sad": 1}
    assert counts(df["split"]) == {"evaluate": 1, "identify": 2, "train": 4}
    assert set(df["text"]) >= {"text 0", "text 6"}
    assert all(Path(p).parent == tmp_path / "audio" for p in df["path"])
    assert load_audio(df["path"].iloc[0], 8_000).shape == (1600,)
    with pytest.raises(SchemaError, match=r"no column 'spk'.*speaker_column="):
        load_from_hub(str(repo), label_column="emotion", speaker_column="spk", cache_dir=str(tmp_path / "cache"))
