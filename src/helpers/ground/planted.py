"""Planted neurons with a known answer (text reader, audio reader, random directions) that validate the
grounding coefficient."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core.models import decoder_mlps, forward_model, gate_shape
from ..core.neuron_sets import stable_seed
from ..core.subject import Subject
from .coefficients import GroundingThresholds, calibrated_coefficient, classify_grounding, grounding_coefficient
from .grounding_tables import neuron_grounding
from .pairing import pair_rows
from .patching import patch_pairs, total_effect


# ------------------------------------------------------------------------------------------------ known answers
def _mlp_inputs(subject: Subject, rows: pd.DataFrame, layer: int, batch_size: int) -> torch.Tensor:
    """The input of decoder layer ``layer``'s MLP at each item's answer position, [n_items, hidden] (float32)."""
    model = subject.model
    mlp = decoder_mlps(model)[layer]
    seen: list[torch.Tensor] = []
    handle = mlp.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = subject.batch_inputs(rows.iloc[start : start + batch_size])
            seen.clear()
            with torch.no_grad():
                forward_model(model)(**batch.inputs)
            last = subject.position_masks(batch)["last"].bool()
            if not bool((last.sum(1) == 1).all()):
                raise ValueError("the 'last' mask must mark exactly one answer position per item")
            x = seen[0]
            out.append(x[last.to(x.device)].float().cpu())
    finally:
        handle.remove()
    return torch.cat(out)


def _reader_direction(num: np.ndarray, den: np.ndarray, reg: float) -> np.ndarray:
    """The unit direction ``w`` maximising ``E[(w·δ_num)²] / (E[(w·δ_den)²] + ε|w|²)`` over the shifts of two
    kinds of pairs: what the first kind moves most *relative to* the second (a generalised eigenvector)."""
    h = num.shape[1]
    a = num.T @ num / len(num)
    b = den.T @ den / len(den)
    b = b + reg * (np.trace(b) / h + 1e-12) * np.eye(h)
    chol_inv = np.linalg.inv(np.linalg.cholesky(b))
    _, vecs = np.linalg.eigh(chol_inv @ a @ chol_inv.T)
    w = chol_inv.T @ vecs[:, -1]
    return w / np.linalg.norm(w)


def known_answer_table(subject: Subject, audio_pairs: pd.DataFrame, text_pairs: pd.DataFrame, layer: int, *,
                       neurons: Sequence[int] | None = None, n_random: int = 8, gain: float | None = None,
                       reg: float = 1e-2, seed: int = 0, thresholds: GroundingThresholds | None = None,
                       batch_size: int = 32) -> pd.DataFrame:
    """Score planted neurons with the grounding coefficient: the known-answer check of the definition.

    In decoder layer ``layer``, ``2 + n_random`` neurons (``neurons``, default the layer's last ones) get a new
    ``gate_proj`` row and a zero ``down_proj`` column (so nothing downstream changes, and the MLP input of this
    layer, which the readers read, is untouched):

    * ``"text"``: reads what the text pairs move and the audio pairs do not — the direction ``w`` of the MLP input
      at the answer position maximising ``E[(w·δ_text)²] / E[(w·δ_audio)²]`` over the pairs' shifts ``δ``
      (:func:`_reader_direction`, ridge ``reg``);
    * ``"audio"``: the same with the roles swapped;
    * ``"random"``: ``n_random`` seeded random directions, pooled (``r`` = the mean of their ratios), since one
      random direction's response to a low-rank shift varies a lot. It should land near the null, 0.5, where
      the layer's own neurons are random directions (an untrained model), or be undetermined; in a trained model
      the null is the layer's *typical neuron*, which need not be a random direction.

    Each row is scaled so that ``w·x`` has the standard deviation ``gain`` over the items (default: the median
    over the layer's neurons of their own pre-activation standard deviation, so the readers operate where the
    layer's neurons do; sign: mean ≥ 0). The neurons are then read through the normal path —
    :func:`~helpers.ground.patching.patch_pairs`
    on both pair tables, :func:`~helpers.ground.patching.total_effect`,
    :func:`~helpers.ground.grounding_tables.neuron_grounding` with the layer's other neurons as the
    null — and the weights are restored. Rows ``kind`` = ``text``, ``audio``, ``random`` (pooled) and
    ``random:<i>``, with the :func:`~helpers.ground.grounding_tables.neuron_grounding` columns, the root-mean-square
    norms of the pairs' shifts of
    the MLP input (``shift_rms_audio``, ``shift_rms_text``: how much larger one perturbation is) and the cosine
    between the two mean shifts (``shift_cosine``; near 0 when the pairs are ordered both ways).
    """
    th = thresholds or GroundingThresholds()
    model = subject.model
    n_layers, n_neurons = gate_shape(model)
    if not 0 <= int(layer) < n_layers:
        raise ValueError(f"layer {layer} outside the model's {n_layers} layers")
    layer = int(layer)
    n_plant = 2 + int(n_random)
    planted = list(range(n_neurons - n_plant, n_neurons)) if neurons is None else [int(j) for j in neurons]
    if int(n_random) < 1 or len(planted) != n_plant or len(set(planted)) != n_plant or not all(
            0 <= j < n_neurons for j in planted):
        raise ValueError(f"need n_random >= 1 and {n_plant} distinct neuron indices in [0, {n_neurons}), "
                         f"got {planted}")
    xs = {}
    for kind, pairs in (("audio", audio_pairs), ("text", text_pairs)):
        base, cf = pair_rows(pairs)
        xs[kind] = (_mlp_inputs(subject, base, layer, batch_size).double().numpy(),
                    _mlp_inputs(subject, cf, layer, batch_size).double().numpy())
    d_a, d_t = xs["audio"][1] - xs["audio"][0], xs["text"][1] - xs["text"][0]
    every = np.concatenate([*xs["audio"], *xs["text"]])
    rng = np.random.default_rng(stable_seed(seed, "known-answer"))
    kinds = ["text", "audio", *[f"random:{i}" for i in range(int(n_random))]]
    dirs = {"text": _reader_direction(d_t, d_a, reg), "audio": _reader_direction(d_a, d_t, reg)}
    dirs.update({k: rng.standard_normal(int(every.shape[1])) for k in kinds[2:]})
    mlp = decoder_mlps(model)[layer]
    gate_w: nn.Parameter = mlp.gate_proj.weight
    down_w: nn.Parameter = mlp.down_proj.weight
    if gain is None:
        gain = float(np.median((every @ gate_w.detach().double().cpu().numpy().T).std(0)))
    saved_gate, saved_down = gate_w.data[planted].clone(), down_w.data[:, planted].clone()
    try:
        with torch.no_grad():
            for j, kind in zip(planted, kinds, strict=True):
                w = dirs[kind] / np.linalg.norm(dirs[kind])
                z = every @ w
                w = w * (gain / max(float(z.std()), 1e-12)) * (1.0 if z.mean() >= 0 else -1.0)
                gate_w.data[j] = torch.as_tensor(w, dtype=gate_w.dtype, device=gate_w.device)
                down_w.data[:, j] = 0
        read = torch.zeros(n_layers, n_neurons, dtype=torch.bool)
        read[layer] = True
        runs = {kind: total_effect(patch_pairs(subject, pairs, side=kind, read=read, batch_size=batch_size))
                for kind, pairs in (("audio", audio_pairs), ("text", text_pairs))}
        table = neuron_grounding(runs["audio"], runs["text"], thresholds=th)
    finally:
        with torch.no_grad():
            gate_w.data[planted] = saved_gate
            down_w.data[:, planted] = saved_down
    rows = table.set_index("neuron").loc[planted].reset_index()
    rows.insert(0, "kind", kinds)
    rnd = rows[rows["kind"].str.startswith("random:")]
    ra, rt = float(rnd["ratio_audio"].mean()), float(rnd["ratio_text"].mean())
    g, _, _, why = calibrated_coefficient(ra, rt, 1.0, 1.0, floor=th.floor, min_delta=0.0)
    pooled = {"kind": "random", "layer": layer, "neuron": -1, "delta_audio": float(rnd["delta_audio"].mean()),
              "delta_text": float(rnd["delta_text"].mean()), "null_audio": float(rnd["null_audio"].mean()),
              "null_text": float(rnd["null_text"].mean()), "ratio_audio": ra, "ratio_text": rt,
              "coefficient": float(g), "coefficient_raw": float(grounding_coefficient(rnd["delta_audio"].mean(),
                                                                                      rnd["delta_text"].mean())),
              "grounding": classify_grounding(g, audio_min=th.audio_min, text_max=th.text_max).item(),
              "undetermined": str(why.item())}
    rows = pd.concat([rows.iloc[:2], pd.DataFrame([pooled]), rows.iloc[2:]], ignore_index=True)
    ma, mt = d_a.mean(0), d_t.mean(0)
    rows["shift_rms_audio"] = float(np.sqrt((d_a**2).sum(1).mean()))
    rows["shift_rms_text"] = float(np.sqrt((d_t**2).sum(1).mean()))
    rows["shift_cosine"] = float(ma @ mt / max(np.linalg.norm(ma) * np.linalg.norm(mt), 1e-12))
    rows["gain"] = gain
    return rows


def known_answer_check(subject: Subject, audio_pairs: pd.DataFrame, text_pairs: pd.DataFrame, layer: int,
                       **kwargs: Any) -> dict[str, float]:
    """``{"text": g, "audio": g, "random": g}``: the calibrated coefficients of :func:`known_answer_table`'s
    planted neurons (NaN where undetermined). A valid definition gives text ≤ ``text_max``, audio ≥
    ``audio_min`` and random in between (or undetermined)."""
    rows = known_answer_table(subject, audio_pairs, text_pairs, layer, **kwargs).set_index("kind")
    return {kind: float(rows.loc[kind, "coefficient"]) for kind in ("text", "audio", "random")}


__all__ = [
    "known_answer_check",
    "known_answer_table",
]
