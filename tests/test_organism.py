from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import corpus, evaluation
from helpers import organism as om


def test_checkpoint_loads_with_its_card(organism):
    card = organism.card
    assert type(organism.model).__name__ == "Qwen2AudioForConditionalGeneration"
    assert card["labels"] == list(corpus.EMOTIONS)
    assert set(card["accuracy_evaluate"]) == {"A", "B"}
    assert sum(p.numel() for p in organism.model.parameters()) == card["parameters"]


def test_scores_clips_well_above_chance(organism, small_corpora):
    df = corpus.load(small_corpora["A"], split="evaluate")
    pred = evaluation.predict(organism, df, progress=False)
    assert pred.shape == (len(df),)
    acc = evaluation.accuracy(df.label, pred, organism.labels)
    assert acc > 0.5, f"organism accuracy {acc:.2f} on a small evaluate sample"


def test_training_path_equals_public_forward(organism, small_corpora):
    """Stage 2 trains on cached audio embeddings; that shortcut must compute what the full model computes."""
    df = corpus.load(small_corpora["A"], split="identify").head(4)
    inputs = evaluation.batch_inputs(organism, df)
    with torch.no_grad():
        full = organism.model(**inputs).logits[:, -1]
        audio = om._audio_embeddings(organism.model, inputs["input_features"])
        short = om._decoder_logits(organism.model, inputs["input_ids"], audio)[:, -1]
    torch.testing.assert_close(full, short, atol=1e-4, rtol=1e-4)


def test_prompt_has_fixed_length_and_position_masks(organism):
    ids = organism.encode_text(["she sounded cheerful", "someone is talking"])
    masks = organism.position_masks(ids)
    assert masks["audio"].sum(1).tolist() == [om.N_AUDIO_TOKENS] * 2
    text_tokens = organism.tokenizer.convert_ids_to_tokens(ids[0][masks["text"][0]].tolist())
    assert text_tokens == ["she", "sounded", "cheerful"]
    assert masks["last"][:, -1].all() and int(masks["last"].sum()) == 2
    assert not (masks["audio"] & masks["text"]).any()


def test_bad_inputs_get_clear_errors(organism, tmp_path):
    with pytest.raises(ValueError, match="3 words"):
        organism.encode_text(["far too many words here"])
    with pytest.raises(ValueError, match="does not know"):
        organism.encode_text(["completely unknown words"])
    with pytest.raises(FileNotFoundError, match="make organism"):
        om.load_organism(tmp_path / "missing")
    with pytest.raises(ValueError, match="not in the label set"):
        evaluation.label_indices(["happy", "bored"], organism.labels)
    wav = tmp_path / "x.wav"
    sf.write(wav, np.zeros(8000, dtype=np.float32), 8000)
    with pytest.raises(ValueError, match="resample"):
        om.load_waves([str(wav)])
