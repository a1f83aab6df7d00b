"""SAE features as units: per-class feature statistics (so every selector runs on them), decoder mass on the
neurons, feature edits through the one tracer, and the grounding runs and accuracy of chapter 07.

* **Editing** — :func:`feature_edit_fn` removes features *with the reconstruction error kept*:
  ``g' = g - sum_{f in S} z_f W_dec[f]``, so an empty edit is exactly the identity, and the edit runs inside the
  one tracer (:func:`helpers.core.hooks.run_with_gate_edits` ``gate_fns``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from ..core.hooks import run_with_gate_edits
from ..core.subject import Subject
from ..log.stats import ActivationStats, StatsAccumulator, row_sums
from .collect import answer_gates
from .training import TopKSAE

# --------------------------------------------------------------------------------------------------------------------
# Feature statistics and sets
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def feature_stats(saes: Sequence[TopKSAE], rows: torch.Tensor, labels_idx: torch.Tensor, labels: Sequence[str],
                  *, meta: Mapping[str, Any] | None = None) -> ActivationStats:
    """Per-class statistics of the latents, ``[layer, feature, class]``, through the neurons' own
    :class:`~helpers.log.stats.StatsAccumulator`: every selector of :mod:`helpers.identify.methods` runs on them
    unchanged.
    ``rows [n, L, N]``: one answer-position gate vector per counted item (one token each)."""
    if not saes:
        raise ValueError("need at least one SAE")
    d_sae = saes[0].cfg.d_sae
    if any(s.cfg.d_sae != d_sae for s in saes):
        raise ValueError("feature statistics need the same d_sae in every layer")
    acc = StatsAccumulator(len(saes), d_sae, list(labels))
    n = rows.shape[0]
    one = torch.ones(n, 1, dtype=torch.bool)
    layer_rows = [row_sums(s.encode(rows[:, i])[:, None, :], one) for i, s in enumerate(saes)]
    acc.update_rows(layer_rows, torch.ones(n), torch.as_tensor(labels_idx).long())
    return acc.result(meta={"units": "sae_features", "positions": "last", **dict(meta or {})})


def decoder_mass(saes: Sequence[TopKSAE], features: Mapping[str, torch.Tensor], neurons: Mapping[str, torch.Tensor]
                 ) -> pd.DataFrame:
    """How much of each emotion's feature set writes onto that emotion's neurons.

    Per label: ``mass`` = share of the squared decoder norm of the feature set that falls on the label's neuron
    set in the same layer, ``chance`` = the same share for a neuron set of the same size per layer spread evenly
    (``|neurons in layer| / N``): 1 = the features write only onto the ESNs, ``chance`` = no preference.
    """
    out = []
    for label, pairs in features.items():
        pairs = torch.as_tensor(pairs).long().reshape(-1, 2)
        npairs = torch.as_tensor(neurons.get(label, torch.zeros(0, 2))).long().reshape(-1, 2)
        tot = on = chance = 0.0
        for layer, f in pairs.tolist():
            w2 = saes[layer].W_dec[f].detach().pow(2)
            cols = npairs[npairs[:, 0] == layer, 1]
            tot += float(w2.sum())
            on += float(w2[cols].sum())
            chance += float(w2.sum()) * len(cols) / w2.numel()
        out.append({"label": label, "n_features": len(pairs), "n_neurons": len(npairs),
                    "mass": on / tot if tot else math.nan, "chance": chance / tot if tot else math.nan})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------------------------------
# Editing through the SAE
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class FeatureEdit:
    """One condition of :func:`run_feature_edits`: per layer, features to remove (``remove`` ``{layer: feature
    indices}``), layers whose gate is replaced by the SAE's reconstruction (``splice``, no error term) and layers
    zeroed (``zero``), all at the edited positions. An empty edit is the un-intervened model."""

    name: str
    remove: dict[int, torch.Tensor] = field(default_factory=dict)
    splice: tuple[int, ...] = ()
    zero: tuple[int, ...] = ()
    meta: dict = field(default_factory=dict)


def removal(pairs: torch.Tensor, *, name: str, meta: Mapping[str, Any] | None = None) -> FeatureEdit:
    """A :class:`FeatureEdit` removing the ``(layer, feature)`` pairs of a feature set."""
    pairs = torch.as_tensor(pairs).long().reshape(-1, 2)
    remove = {int(layer): pairs[pairs[:, 0] == layer, 1] for layer in pairs[:, 0].unique().tolist()}
    return FeatureEdit(name, remove=remove, meta={"n_units": len(pairs), **dict(meta or {})})


def feature_edit_fn(sae: TopKSAE, remove: torch.Tensor | None = None, splice: torch.Tensor | None = None,
                    zero: torch.Tensor | None = None):
    """The ``gate_fns`` entry of one layer for a tiled batch (row ``r`` carries its own edit).

    ``remove [R, d_sae]`` (0/1): ``g' = g - (z * remove) W_dec`` with ``z = encode(g)`` — the reconstruction error
    ``g - x_hat`` stays in, so a zero row is exactly ``g``; ``splice [R]`` bool: ``g' = x_hat``; ``zero [R]`` bool:
    ``g' = 0``. Only the positions of the mask change; the SAE runs only there.
    """

    def fn(gate: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        pos = positions if positions is not None else torch.ones(gate.shape[:2], dtype=torch.bool)
        pos = pos.expand(gate.shape[0], -1) if pos.shape[0] == 1 else pos
        r, t = pos.to(gate.device).nonzero(as_tuple=True)
        x = gate[r, t].float()
        z = sae.encode(x)
        new = x
        if remove is not None:
            new = new - (z * remove.to(z)[r]) @ sae.W_dec
        if splice is not None:
            new = torch.where(splice.to(gate.device)[r, None], sae.decode(z), new)
        if zero is not None:
            new = torch.where(zero.to(gate.device)[r, None], torch.zeros_like(new), new)
        out = gate.clone()
        out[r, t] = new.to(gate.dtype)
        return out

    return fn


@torch.no_grad()
def run_feature_edits(subject: Subject, df: pd.DataFrame, saes: Sequence[TopKSAE], edits: Sequence[FeatureEdit], *,
                      positions: str = "last", batch_size: int = 64, max_rows: int = 2048) -> np.ndarray:
    """Label logits ``[n_edits, n_items, n_labels]`` of every edit on every item, batched like
    :func:`helpers.intervene.runner.run_conditions` (one forward per batch and chunk of edits, row
    ``j * b + i`` = edit ``j`` on item ``i``), with the edits applied through ``gate_fns`` of the one tracer."""
    edits = list(edits)
    n_labels = len(subject.labels)
    out = np.zeros((len(edits), len(df), n_labels), dtype=np.float32)
    if not edits or not len(df):
        return out
    for j, e in enumerate(edits):
        for layer, f in e.remove.items():
            if not 0 <= layer < len(saes) or (len(f) and (int(f.min()) < 0 or int(f.max()) >= saes[layer].cfg.d_sae)):
                raise ValueError(f"edit {e.name!r} (#{j}) removes features outside layer {layer}'s SAE")
    for start in range(0, len(df), batch_size):
        rows = df.iloc[start : start + batch_size]
        b = len(rows)
        batch = subject.batch_inputs(rows)
        masks = subject.position_masks(batch)
        if positions != "all" and positions not in masks:
            raise ValueError(f"unknown position kind {positions!r}; this subject provides {sorted(masks)}")
        pos = masks[positions].bool() if positions != "all" else None
        per_chunk = max(1, max_rows // b)
        for c0 in range(0, len(edits), per_chunk):
            chunk = edits[c0 : c0 + per_chunk]
            k = len(chunk)
            fns = {}
            for layer, sae in enumerate(saes):
                rem = torch.zeros(k, b, sae.cfg.d_sae)
                spl = torch.zeros(k, b, dtype=torch.bool)
                zer = torch.zeros(k, b, dtype=torch.bool)
                for j, e in enumerate(chunk):
                    if layer in e.remove and len(e.remove[layer]):
                        rem[j, :, e.remove[layer]] = 1.0
                    spl[j] = layer in e.splice
                    zer[j] = layer in e.zero
                if rem.any() or spl.any() or zer.any():
                    fns[layer] = feature_edit_fn(sae, rem.reshape(k * b, -1) if rem.any() else None,
                                                 spl.reshape(-1) if spl.any() else None,
                                                 zer.reshape(-1) if zer.any() else None)
            tiled = batch.tile(k)
            p = pos.repeat(k, 1) if pos is not None else None
            logits = run_with_gate_edits(subject.model, tiled.inputs, positions=p, gate_fns=fns, logits="last")
            ll = subject.label_logits(tiled, cast(torch.Tensor, logits)).float().cpu().numpy()
            out[c0 : c0 + k, start : start + b] = ll.reshape(k, b, n_labels)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Grounding of feature sets (chapter 06's calibrated coefficient, total effects at the answer position)
# --------------------------------------------------------------------------------------------------------------------


def total_effect_runs(subject: Subject, pairs: pd.DataFrame, side: str, saes: Sequence[TopKSAE], *,
                      live: torch.Tensor | None = None, batch_size: int = 64) -> dict[str, Any]:
    """``{"neurons": PatchResult, "features": PatchResult}`` of the *total* effect of one side, as chapter 06's
    :func:`~helpers.ground.patching.total_effect`: ``before`` = the base prompt, ``after`` = ``source`` = the
    counterfactual prompt, both read at the answer position, as gate values and as SAE codes (one pass each).

    ``live`` [L, d_sae] bool: the features read (default all); the null of
    :func:`helpers.ground.grounding_tables.set_grounding` draws random sets among the read units, so pass the live
    features
    (dead ones never move and would make a typical feature look still). The label logits are one-hot
    predictions (``set_grounding`` reads only the activations and the number of items).
    """
    from ..ground.pairing import pair_rows
    from ..ground.patching import PatchResult

    base, cf = pair_rows(pairs)
    runs = [answer_gates(subject, rows, capacity=max(len(rows), 1), only_correct=False, batch_size=batch_size)
            for rows in (base, cf)]
    gates = [r.reservoir.data()[0] for r in runs]  # [n, L, N] in row order (the capacity holds every row)
    with torch.no_grad():
        codes = [torch.stack([s.encode(g[:, i]) for i, s in enumerate(saes)], 1) for g in gates]
    n_labels = len(subject.labels)
    onehot = [torch.nn.functional.one_hot(torch.from_numpy(r.y_pred).long(), n_labels).float() for r in runs]
    out = {}
    for kind, (a0, a1), read in (("neurons", gates, None), ("features", codes, live)):
        index = (read if read is not None else torch.ones(a0.shape[1], a0.shape[2], dtype=torch.bool)).nonzero()
        before, after = (a[:, index[:, 0], index[:, 1]].float() for a in (a0, a1))
        out[kind] = PatchResult(side=side, direction="denoise", what="input", layers=list(range(a0.shape[1])),
                                labels=tuple(subject.labels), base_rows=base, cf_rows=cf,
                                cf_emotion=pairs["cf_emotion"].tolist(), read_index=index, n_patched=0,
                                logits_before=onehot[0], logits_after=onehot[1], logits_source=onehot[1],
                                act_before={"answer": before}, act_after={"answer": after},
                                act_source={"answer": after.clone()})
    return out


def accuracy_recovered(acc_clean: float, acc_spliced: float, acc_zero: float) -> dict[str, float]:
    """``ratio`` = acc_spliced / acc_clean (1 = no loss; the headline) and ``vs_zero`` = (spliced - zero) /
    (clean - zero), the share of the zero-ablation loss the reconstruction avoids (NaN when zeroing the layer
    costs less than one point of accuracy: a ratio of near-zeros says nothing)."""
    ratio = acc_spliced / acc_clean if acc_clean > 0 else math.nan
    drop = acc_clean - acc_zero
    return {"ratio": ratio, "vs_zero": (acc_spliced - acc_zero) / drop if drop >= 0.01 else math.nan}


__all__ = ["FeatureEdit", "accuracy_recovered", "decoder_mass", "feature_edit_fn", "feature_stats", "removal",
           "run_feature_edits", "total_effect_runs"]
