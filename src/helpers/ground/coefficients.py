"""Grounding: does an emotion-sensitive neuron respond to what the model *hears* or to what it *reads*?

**Grounding coefficient** (our definition): for a neuron (or the mean of a neuron set) read at the answer position,
``Δ_audio`` is the mean over audio pairs of ``|activation after patching the audio side − before|`` and ``Δ_text``
the same over text pairs with the text side patched. The raw ratio ``Δ_audio / (Δ_audio + Δ_text)`` measures which
perturbation is larger, not which modality drives the neuron (a planted neuron that reads only the text shift
scored 0.90 on the organism, whose audio pairs move the MLP input 8.6x more than its text pairs). So each side's Δ
is divided by that side's *null* — the mean Δ of the neurons of the same layer (neurons), or of random sets of the
same size and per-layer counts (sets), or the side's total effect (predictions) — and
``g = r_audio / (r_audio + r_text)`` with ``r = Δ / null`` (:func:`calibrated_coefficient`): 1 = only the audio
moves it (relative to a typical neuron), 0 = only the text, 0.5 = like a typical neuron. ``g`` is NaN
(undetermined) when the neuron moves with neither side or less than :attr:`GroundingThresholds.floor` times its
null on both; every table keeps the raw Δs, nulls, ratios and the raw ratio (``coefficient_raw``).
:func:`~helpers.ground.planted.known_answer_table` validates the definition with planted neurons (text reader, audio
reader, random
directions) and :func:`~helpers.ground.dissociation.dissociation` tests it causally on conflict items. Bootstrap
intervals resample the audio
pairs and the text pairs independently (they are two samples), each side's Δ together with its null.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

#: Default thresholds on the grounding coefficient (named so notebooks can vary them).
AUDIO_GROUNDED_MIN = 0.7


TEXT_GROUNDED_MAX = 0.3


# ------------------------------------------------------------------------------------------- grounding coefficient
@dataclass(frozen=True)
class GroundingThresholds:
    """Thresholds of the grounding coefficient (one object shared by every grounding table)."""

    audio_min: float = AUDIO_GROUNDED_MIN
    """A coefficient at or above this is ``"audio"``-grounded."""
    text_max: float = TEXT_GROUNDED_MAX
    """A coefficient at or below this is ``"text"``-grounded (``"mixed"`` in between)."""
    floor: float = 0.25
    """Neurons and sets: the coefficient is undetermined (NaN, grounding ``"none"``) unless the neuron (set) moves
    at least ``floor`` times its null on one side (``max(ratio_audio, ratio_text) >= floor``): a neuron that
    neither side moves more than a quarter as much as a typical neuron has no grounding to report."""
    prediction_floor: float = 0.05
    """Predictions: undetermined unless the patch carries at least this share of one side's total effect on the
    probability of the counterfactual's emotion."""
    min_delta: float = 1e-6
    """Undetermined when both raw Δs are at most this (nothing moved at all, e.g. layer-0 neurons under gate
    patching)."""
    null: Literal["layer", "all"] = "layer"
    """Neurons: the null of a side is the mean Δ of that side over the read neurons of the same layer
    (``"layer"``; each layer's input moves by a different amount) or over all read neurons (``"all"``)."""
    n_null_sets: int = 200
    """Sets: random layer-matched sets of the same size (from the read neurons) whose mean Δ is the set's null."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.text_max < self.audio_min <= 1.0:
            raise ValueError(f"need 0 <= text_max < audio_min <= 1, got text_max={self.text_max}, "
                             f"audio_min={self.audio_min}")
        for name in ("floor", "prediction_floor", "min_delta"):
            if not float(getattr(self, name)) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.null not in ("layer", "all"):
            raise ValueError(f"null must be 'layer' or 'all', got {self.null!r}")
        if isinstance(self.n_null_sets, bool) or not isinstance(self.n_null_sets, int) or self.n_null_sets < 1:
            raise ValueError(f"n_null_sets must be an integer >= 1, got {self.n_null_sets!r}")


def _thresholds(thresholds: GroundingThresholds | None, audio_min: float | None, text_max: float | None
                ) -> GroundingThresholds:
    th = thresholds or GroundingThresholds()
    if audio_min is not None or text_max is not None:
        changes: dict[str, Any] = {"audio_min": audio_min} if audio_min is not None else {}
        if text_max is not None:
            changes["text_max"] = text_max
        th = dataclasses.replace(th, **changes)
    return th


def grounding_coefficient(delta_audio: Any, delta_text: Any) -> np.ndarray:
    """The *raw* ratio ``Δ_audio / (Δ_audio + Δ_text)`` elementwise, on absolute values; NaN where both are 0.

    Kept for reference (``coefficient_raw`` in the tables): it measures which perturbation is larger, not which
    modality drives a neuron — if the audio pairs move the MLP input 8.6x more than the text pairs, a neuron that
    reads only the text shift still scores about 0.9. :func:`calibrated_coefficient` is the one to use.
    """
    a = np.abs(np.asarray(delta_audio, dtype=np.float64))
    t = np.abs(np.asarray(delta_text, dtype=np.float64))
    total = a + t
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, a / np.where(total > 0, total, 1.0), np.nan)


def _ratio(delta: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Δ / null with 0 / anything = 0 and positive / 0 = inf."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(null > 0, delta / np.where(null > 0, null, 1.0), np.inf)
    return np.where(delta > 0, r, 0.0)


def calibrated_coefficient(delta_audio: Any, delta_text: Any, null_audio: Any, null_text: Any, *,
                           floor: float = 0.25, min_delta: float = 1e-6
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The grounding coefficient, invariant to how large each side's perturbation is.

    Each side's Δ is divided by that side's *null* — what the same perturbation does to a typical neuron (the
    mean Δ over the neurons of the layer) or to a random set of the same size and layer profile — giving
    ``r_audio = Δ_audio / null_audio`` and ``r_text = Δ_text / null_text``, and ``g = r_audio / (r_audio +
    r_text)``. Scaling every text Δ by 0.1 (a weaker text manipulation) scales the text null by 0.1 too and
    leaves ``g`` unchanged. ``g`` is NaN (undetermined) where both raw Δs are ``<= min_delta`` or neither ratio
    reaches ``floor``; a side whose null is 0 while the neuron moves gives ``r = inf`` (the neuron alone moves).

    Returns ``(g, r_audio, r_text, reason)`` with ``reason`` ``""`` where ``g`` is determined.
    """
    da = np.abs(np.asarray(delta_audio, dtype=np.float64))
    dt = np.abs(np.asarray(delta_text, dtype=np.float64))
    na = np.abs(np.asarray(null_audio, dtype=np.float64))
    nt = np.abs(np.asarray(null_text, dtype=np.float64))
    ra, rt = _ratio(da, na), _ratio(dt, nt)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.where(np.isinf(ra) & ~np.isinf(rt), 1.0,
                     np.where(np.isinf(rt) & ~np.isinf(ra), 0.0, ra / (ra + rt)))
    reason = np.full(g.shape, "", dtype=object)
    low = np.maximum(ra, rt) < floor
    reason[low] = f"moves less than {floor:g}x its null on both sides"
    both_inf = np.isinf(ra) & np.isinf(rt)
    reason[both_inf] = "both sides' nulls are 0 while it moves"
    still = (da <= min_delta) & (dt <= min_delta)
    reason[still] = f"moves with neither side (|Δ| <= {min_delta:g})"
    g = np.where(reason == "", g, np.nan)
    return g.astype(np.float64), ra, rt, reason


def classify_grounding(
    coefficient: Any, *, audio_min: float = AUDIO_GROUNDED_MIN, text_max: float = TEXT_GROUNDED_MAX
) -> np.ndarray:
    """``"audio"`` (coef ≥ audio_min), ``"text"`` (≤ text_max), ``"mixed"`` in between, ``"none"`` for NaN."""
    if not 0.0 <= text_max < audio_min <= 1.0:
        raise ValueError(f"need 0 <= text_max < audio_min <= 1, got text_max={text_max}, audio_min={audio_min}")
    c = np.asarray(coefficient, dtype=np.float64)
    out = np.full(c.shape, "mixed", dtype=object)
    out[c >= audio_min] = "audio"
    out[c <= text_max] = "text"
    out[np.isnan(c)] = "none"
    return out


__all__ = [
    "AUDIO_GROUNDED_MIN",
    "TEXT_GROUNDED_MAX",
    "GroundingThresholds",
    "calibrated_coefficient",
    "classify_grounding",
    "grounding_coefficient",
]
