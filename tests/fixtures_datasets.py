"""Tiny stand-ins for the real corpora, laid out exactly like the official distributions.

The real datasets are licensed and cannot be downloaded here, so the loaders are tested on these trees: same
folder and file names, same metadata formats, generated audio (0.2 s tones with a little noise). No real data
is copied. Each ``make_*`` writes into ``root`` and returns it; the docstrings give the counts tests rely on.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

SECONDS = 0.2


def write_tone(path: Path, sr: int, *, freq: float = 220.0, channels: int = 1, seed: int = 0) -> Path:
    """Write a short PCM-16 WAV: a sine tone plus faint noise, so every file decodes to non-silent audio."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(SECONDS * sr))) / sr
    wav = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    if channels > 1:
        wav = np.stack([wav * (1.0 - 0.2 * c) for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav.astype(np.float32), sr, subtype="PCM_16")
    return path


def _junk(path: Path) -> None:
    """A macOS resource fork (``._name``), which archives of these corpora often contain."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x05\x16\x07not audio")


# ---------------------------------------------------------------------------------------------- IEMOCAP
IEMOCAP_CODES_PER_SPEAKER = ("neu", "hap", "exc", "ang", "sad", "fru", "xxx")


def make_iemocap(root: Path, sessions: tuple[int, ...] = (1, 2)) -> Path:
    """IEMOCAP_full_release-like tree: 2 sessions x 2 dialogs x 2 speakers x 7 turns = 56 labelled turns.

    Per speaker and dialog one turn each of neu, hap, exc, ang, sad, fru, xxx, so the 4-class merge keeps 40
    turns (happy 16; neutral, angry, sad 8 each), drops fru 8 and xxx 8, and each of the 4 speakers (Ses01F,
    Ses01M, Ses02F, Ses02M) keeps 10.
    """
    root = Path(root)
    for s in sessions:
        sdir = root / f"Session{s}"
        for dialog in (f"Ses0{s}F_impro01", f"Ses0{s}M_script01_1"):
            eval_lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            text_lines = []
            start = 6.2901
            for g, gender in enumerate("FM"):
                for i, code in enumerate(IEMOCAP_CODES_PER_SPEAKER):
                    utt = f"{dialog}_{gender}{i:03d}"
                    end = start + 1.9456
                    eval_lines += [
                        f"[{start:.4f} - {end:.4f}]\t{utt}\t{code}\t[2.5000, {3 + g}.0000, 2.0000]",
                        "C-E2:\tNeutral;\t()",
                        "C-E3:\tNeutral;\t()",
                        "A-E3:\tval 3; act 2; dom  2;\t()",
                        "",
                    ]
                    text_lines.append(f"{utt} [{start:08.4f}-{end:08.4f}]: Excuse me, turn {i} of {gender}.")
                    write_tone(sdir / "sentences" / "wav" / dialog / f"{utt}.wav", 16_000, freq=200 + 20 * i, seed=i)
                    start = end + 0.5
            text_lines.append("M: [LAUGHTER]")  # transcripts carry lines that are not turns
            emo = sdir / "dialog" / "EmoEvaluation"
            emo.mkdir(parents=True, exist_ok=True)
            (emo / f"{dialog}.txt").write_text("\n".join(eval_lines) + "\n")
            (emo / "Categorical").mkdir(exist_ok=True)
            (emo / "Categorical" / f"{dialog}_e2_cat.txt").write_text(f"{dialog}_F000 :Neutral state; ()\n")
            _junk(emo / f"._{dialog}.txt")
            tr = sdir / "dialog" / "transcriptions"
            tr.mkdir(parents=True, exist_ok=True)
            (tr / f"{dialog}.txt").write_text("\n".join(text_lines) + "\n")
    return root


# ------------------------------------------------------------------------------------------------- MELD
MELD_EMOTIONS = ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust")
_SENTIMENT = {"neutral": "neutral", "joy": "positive", "surprise": "positive"}
#: part -> list of (dialogue id, (speaker for even utterances, speaker for odd utterances))
MELD_DIALOGUES = {
    "train": [(0, ("Joey", "Rachel")), (1, ("Ross", "Monica"))],
    "dev": [(0, ("Chandler", "Phoebe"))],
    "test": [(0, ("Joey", "Phoebe"))],
}
_MELD_FILES = {
    "train": ("train_sent_emo.csv", "train_splits"),
    "dev": ("dev_sent_emo.csv", "dev_splits_complete"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test"),
}


def make_meld(root: Path) -> Path:
    """MELD.Raw-like tree *after* the user extracted 16 kHz WAVs from the MP4 clips: 28 utterances.

    4 dialogues (train 2, dev 1, test 1) x 7 utterances, one per emotion (so 4 per label). Speakers: Joey 8,
    Phoebe 6, Ross 4, Chandler 4, Rachel 3, Monica 3. The test clip dia0_utt3 is stored under MELD's
    ``final_videos_test`` prefix. The MP4 clips themselves are left out, as after a cleanup.
    """
    root = Path(root)
    sr_no = 1
    for part, dialogues in MELD_DIALOGUES.items():
        csv_name, folder = _MELD_FILES[part]
        rows = []
        for dia, speakers in dialogues:
            for utt, emotion in enumerate(MELD_EMOTIONS):
                rows.append({
                    "Sr No.": sr_no,
                    "Utterance": f"Oh, \"really\"? I’m {emotion}, utterance {utt}.",
                    "Speaker": speakers[utt % 2],
                    "Emotion": emotion,
                    "Sentiment": _SENTIMENT.get(emotion, "negative"),
                    "Dialogue_ID": dia,
                    "Utterance_ID": utt,
                    "Season": 3,
                    "Episode": 7,
                    "StartTime": "00:14:38,127",
                    "EndTime": "00:14:40,378",
                })  # fmt: skip
                sr_no += 1
                name = f"dia{dia}_utt{utt}.wav"
                if part == "test" and (dia, utt) == (0, 3):
                    name = f"final_videos_test{name}"
                write_tone(root / folder / name, 16_000, freq=300 + 10 * utt, seed=sr_no)
        root.mkdir(parents=True, exist_ok=True)
        with open(root / csv_name, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return root


# ------------------------------------------------------------------------------------------ MSP-Podcast
MSP_CODES = ("A", "S", "H", "U", "F", "D", "C", "N", "O", "X")
#: (SpkrID, Gender, Split_Set, podcast id) per group of 10 segments (one per EmoClass).
MSP_GROUPS = (
    ("1", "Female", "Train", 1),
    ("2", "Male", "Train", 2),
    ("3", "Female", "Development", 3),
    ("4", "Male", "Test1", 4),
    ("Unknown", "Unknown", "Test2", 5),
    ("Unknown", "Unknown", "Test2", 6),
)


def make_msp_podcast(root: Path) -> Path:
    """MSP-Podcast-like tree: Labels/labels_consensus.csv + Audios/*.wav (16 kHz) + some Transcripts.

    6 speaker groups x 10 segments (one per EmoClass A,S,H,U,F,D,C,N,O,X) = 60 rows; O and X are dropped
    (6 each), leaving 48 (6 per canonical label). Speakers 1, 2 are Train (16 kept rows), 3 Development,
    4 Test1, and two Unknown-speaker podcasts (0005, 0006) Test2, each 8 kept rows.
    """
    root = Path(root)
    rows = []
    for k, (spk, gender, split, pod) in enumerate(MSP_GROUPS):
        for seg, code in enumerate(MSP_CODES, start=1):
            name = f"MSP-PODCAST_{pod:04d}_{seg:04d}.wav"
            rows.append([name, code, 4.2, 3.8, 4.0, spk, gender, split])
            write_tone(root / "Audios" / name, 16_000, freq=180 + 15 * seg, seed=k * 100 + seg)
            if seg == 1:
                tdir = root / "Transcripts"
                tdir.mkdir(parents=True, exist_ok=True)
                (tdir / name.replace(".wav", ".txt")).write_text(f"transcript of podcast {pod}\n")
    (root / "Labels").mkdir(parents=True, exist_ok=True)
    with open(root / "Labels" / "labels_consensus.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        writer.writerows(rows)
    return root


# ---------------------------------------------------------------------------------------------- CREMA-D
CREMA_EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
CREMA_ACTORS = {"1001": "Male", "1002": "Female", "1003": "Female", "1004": "Male"}


def make_crema_d(root: Path) -> Path:
    """CREMA-D-like tree: AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav, 16 kHz, + VideoDemographics.csv.

    4 actors x 2 sentences (DFA at level XX, IEO at level HI) x 6 emotions = 48 files, 8 per label, 12 per
    actor. A macOS ``._`` file is included and must be ignored.
    """
    root = Path(root)
    for a, actor in enumerate(CREMA_ACTORS):
        for sentence, level in (("DFA", "XX"), ("IEO", "HI")):
            for e, emotion in enumerate(CREMA_EMOTIONS):
                write_tone(root / "AudioWAV" / f"{actor}_{sentence}_{emotion}_{level}.wav", 16_000,
                           freq=150 + 25 * e, seed=a * 10 + e)  # fmt: skip
    _junk(root / "AudioWAV" / "._1001_DFA_ANG_XX.wav")
    with open(root / "VideoDemographics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ActorID", "Age", "Sex", "Race", "Ethnicity"])
        for actor, sex in CREMA_ACTORS.items():
            writer.writerow([actor, 30, sex, "Caucasian", "Not Hispanic"])
    return root


# ---------------------------------------------------------------------------------------------- RAVDESS
def make_ravdess(root: Path, actors: tuple[int, ...] = (1, 2, 3, 4)) -> Path:
    """RAVDESS-like tree: Actor_XX/03-01-EE-II-01-01-XX.wav at 48 kHz, plus song files (channel 02).

    Per actor 15 speech files: emotions 01-08 at normal intensity and 02-08 at strong intensity (neutral
    has no strong version) -> 60 speech rows (neutral 4, every other label 8). Per actor 2 song files
    (emotions 01 and 03) -> 8 rows reported as ``not_speech``.
    """
    root = Path(root)
    for actor in actors:
        adir = root / f"Actor_{actor:02d}"
        for emotion in range(1, 9):
            for intensity in (1, 2):
                if emotion == 1 and intensity == 2:
                    continue
                name = f"03-01-{emotion:02d}-{intensity:02d}-01-01-{actor:02d}.wav"
                write_tone(adir / name, 48_000, freq=200 + 30 * emotion, seed=actor * 100 + emotion)
        for emotion in (1, 3):
            write_tone(adir / f"03-02-{emotion:02d}-01-01-01-{actor:02d}.wav", 48_000, freq=440, seed=actor)
    return root


def make_all(root: Path) -> dict[str, Path]:
    """Every fixture corpus under ``root/<name>``, keyed like ``helpers.data.catalog.DATASETS``."""
    root = Path(root)
    return {
        "iemocap": make_iemocap(root / "iemocap"),
        "meld": make_meld(root / "meld"),
        "msp_podcast": make_msp_podcast(root / "msp_podcast"),
        "crema_d": make_crema_d(root / "crema_d"),
        "ravdess": make_ravdess(root / "ravdess"),
    }
