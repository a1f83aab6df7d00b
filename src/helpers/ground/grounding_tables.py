"""Grounding tables: the calibrated coefficient per neuron, per neuron set and per prediction, with bootstrap
intervals that resample the audio pairs and the text pairs independently."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..core.neuron_sets import as_mask, stable_seed
from .cluster_masks import cluster_of_layers
from .coefficients import (
    GroundingThresholds,
    _thresholds,
    calibrated_coefficient,
    classify_grounding,
    grounding_coefficient,
)
from .patching import PatchResult, Where


def _boot_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] multinomial resampling weights (each row sums to 1)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64) / n


def _coef_interval(da: np.ndarray, dt: np.ndarray, na: np.ndarray, nt: np.ndarray, n_boot: int, ci: float,
                   seed: int, th: GroundingThresholds, floor: float, chunk: int = 4096
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the calibrated coefficient per column, resampling audio and text pairs independently
    (each side's Δ and its null with the same resample). Undetermined resamples are dropped."""
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must lie strictly between 0 and 1, got {ci}")
    k = da.shape[1]
    lo, hi = np.full(k, np.nan), np.full(k, np.nan)
    alpha = (1.0 - ci) / 2.0
    wa = _boot_weights(da.shape[0], n_boot, np.random.default_rng([seed, 0]))
    wt = _boot_weights(dt.shape[0], n_boot, np.random.default_rng([seed, 1]))
    for s in range(0, k, chunk):
        sl = slice(s, s + chunk)
        coef = calibrated_coefficient(wa @ da[:, sl], wt @ dt[:, sl], wa @ na[:, sl], wt @ nt[:, sl], floor=floor,
                                      min_delta=th.min_delta)[0]
        ok = ~np.isnan(coef).all(0)
        if ok.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                q = np.nanquantile(coef[:, ok], [alpha, 1 - alpha], axis=0)
            lo[sl][ok], hi[sl][ok] = q[0], q[1]
    return lo, hi


def _check_pair(audio: PatchResult, text: PatchResult) -> None:
    if audio.side != "audio" or text.side != "text":
        raise ValueError(f"expected an audio-side and a text-side patch run, got {audio.side!r} and {text.side!r}")
    if audio.direction != text.direction:
        raise ValueError(f"the two runs use different directions ({audio.direction} vs {text.direction})")
    if not torch.equal(audio.read_index, text.read_index):
        raise ValueError("the two runs read different neurons; pass the same `read` mask to both")


def _groups(result: PatchResult, group_by: str | None) -> np.ndarray:
    if group_by is None:
        return np.full(result.n_items, "all", dtype=object)
    if group_by == "cf_emotion":
        return np.array(result.cf_emotion, dtype=object)
    if group_by == "base_emotion":
        return result.base_rows["label"].to_numpy().astype(object)
    if group_by not in result.base_rows.columns:
        raise ValueError(f"cannot group by {group_by!r}: not a column of the base rows")
    return result.base_rows[group_by].to_numpy().astype(object)


def _coef_rows(da: np.ndarray, dt: np.ndarray, na: np.ndarray, nt: np.ndarray, n_boot: int, ci: float, seed: int,
               th: GroundingThresholds, floor: float | None = None) -> dict[str, np.ndarray]:
    """Columns of a grounding table from per-item Δs ``da`` [n_a, K], ``dt`` [n_t, K] and the per-item nulls
    ``na``, ``nt`` of the same shapes (their means over items are the nulls)."""
    fl = th.floor if floor is None else floor
    ma, mt, mna, mnt = da.mean(0), dt.mean(0), na.mean(0), nt.mean(0)
    coef, ra, rt, reason = calibrated_coefficient(ma, mt, mna, mnt, floor=fl, min_delta=th.min_delta)
    out = {"delta_audio": ma, "delta_text": mt, "null_audio": mna, "null_text": mnt, "ratio_audio": ra,
           "ratio_text": rt, "coefficient": coef, "coefficient_raw": grounding_coefficient(ma, mt)}
    if n_boot > 0:
        out["ci_low"], out["ci_high"] = _coef_interval(da, dt, na, nt, n_boot, ci, seed, th, fl)
    out["grounding"] = classify_grounding(coef, audio_min=th.audio_min, text_max=th.text_max)
    out["undetermined"] = reason
    return out


def _layer_null(change: np.ndarray, read_index: torch.Tensor, how: str) -> np.ndarray:
    """Per item, the mean |Δ| over the read neurons of each column's layer (or all read neurons)."""
    if how == "all" or change.shape[1] == 0:
        return np.repeat(change.mean(1, keepdims=True), change.shape[1], axis=1) if change.shape[1] else change
    layer = read_index[:, 0].numpy()
    uniq, inv = np.unique(layer, return_inverse=True)
    onehot = np.zeros((change.shape[1], uniq.size))
    onehot[np.arange(change.shape[1]), inv] = 1.0
    per_layer = (change @ onehot) / onehot.sum(0)
    return per_layer[:, inv]


def neuron_grounding(
    audio: PatchResult,
    text: PatchResult,
    *,
    where: Where = "answer",
    clusters: Mapping[str, Sequence[int]] | None = None,
    n_boot: int = 0,
    ci: float = 0.95,
    seed: int = 0,
    thresholds: GroundingThresholds | None = None,
    audio_min: float | None = None,
    text_max: float | None = None,
) -> pd.DataFrame:
    """Per read neuron: ``layer, neuron, [cluster], delta_audio, delta_text`` (raw: mean over pairs of
    ``|after − before|``), ``null_audio, null_text`` (the mean Δ of the read neurons of its layer, see
    :attr:`GroundingThresholds.null`), ``ratio_audio, ratio_text, coefficient``
    (:func:`~helpers.ground.coefficients.calibrated_coefficient`),
    ``coefficient_raw``, ``[ci_low, ci_high]`` (bootstrap when ``n_boot``), ``grounding``, ``undetermined``.

    The null is taken over the *read* neurons: read every neuron of the layers of interest (the default of
    :func:`~helpers.ground.patching.patch_run` without a ``neuron_mask``), not just a selected set, or the null is the
    set itself.
    ``audio_min`` / ``text_max`` override the thresholds' class bounds."""
    th = _thresholds(thresholds, audio_min, text_max)
    _check_pair(audio, text)
    da = audio.activation_change(where).abs().double().numpy()
    dt = text.activation_change(where).abs().double().numpy()
    idx = audio.read_index.numpy()
    df = pd.DataFrame({"layer": idx[:, 0], "neuron": idx[:, 1]})
    if clusters is not None:
        df["cluster"] = cluster_of_layers(int(idx[:, 0].max()) + 1 if len(idx) else 0, clusters)[idx[:, 0]]
    na, nt = _layer_null(da, audio.read_index, th.null), _layer_null(dt, text.read_index, th.null)
    for k, v in _coef_rows(da, dt, na, nt, n_boot, ci, seed, th).items():
        df[k] = v
    return df


def _null_sets(read_index: torch.Tensor, cols: np.ndarray, n_sets: int, seed: int, name: str) -> np.ndarray:
    """[K_read, n_sets] averaging matrix of random sets with the same per-layer counts as the columns ``cols``."""
    layer = read_index[:, 0].numpy()
    rng = np.random.default_rng(stable_seed(seed, "grounding-null", name))
    out = np.zeros((len(layer), n_sets))
    m = len(cols)
    for lyr, count in zip(*np.unique(layer[cols], return_counts=True), strict=True):
        pool = np.flatnonzero(layer == lyr)
        pick = np.argsort(rng.random((n_sets, pool.size)), axis=1)[:, :count]
        out[pool[pick], np.arange(n_sets)[:, None]] = 1.0 / m
    return out


def set_grounding(
    audio: PatchResult,
    text: PatchResult,
    sets: Mapping[str, Any],
    n_layers: int,
    n_neurons: int,
    *,
    where: Where = "answer",
    group_by: str | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    thresholds: GroundingThresholds | None = None,
    audio_min: float | None = None,
    text_max: float | None = None,
) -> pd.DataFrame:
    """Per neuron set (and per item group, e.g. ``group_by="base_emotion"`` or a corpus column such as the
    reliability level): Δ = mean over pairs of ``|mean activation of the set after − before|`` (raw), its null (the
    same Δ of :attr:`GroundingThresholds.n_null_sets` random sets of the same size and per-layer counts drawn
    from the read neurons), the calibrated coefficient with its bootstrap interval, ``coefficient_raw`` and the
    class. Read every neuron of the sets' layers so that the null has neurons to draw from."""
    th = _thresholds(thresholds, audio_min, text_max)
    _check_pair(audio, text)
    ga, gt = _groups(audio, group_by), _groups(text, group_by)
    names = list(sets)
    cols = {n: audio.columns_of(sets[n], n_layers, n_neurons) for n in names}
    ca = audio.activation_change(where).double().numpy()
    ct = text.activation_change(where).double().numpy()

    def set_delta(change: np.ndarray, n: str) -> np.ndarray:
        c = cols[n]
        return np.abs(change[:, c].mean(1)) if len(c) else np.full(change.shape[0], np.nan)

    def null_delta(change: np.ndarray, n: str) -> np.ndarray:
        if not len(cols[n]):
            return np.full(change.shape[0], np.nan)
        return np.abs(change @ _null_sets(audio.read_index, cols[n], th.n_null_sets, seed, n)).mean(1)

    da_all = {n: set_delta(ca, n) for n in names}
    dt_all = {n: set_delta(ct, n) for n in names}
    na_all = {n: null_delta(ca, n) for n in names}
    nt_all = {n: null_delta(ct, n) for n in names}
    sizes = [int(as_mask(sets[n], n_layers, n_neurons).sum()) for n in names]
    rows = []
    for g in [x for x in pd.unique(ga) if x in set(gt)]:
        sa, st = ga == g, gt == g
        stack = lambda d, sel: np.stack([d[n][sel] for n in names], axis=1)  # noqa: E731
        out = _coef_rows(stack(da_all, sa), stack(dt_all, st), stack(na_all, sa), stack(nt_all, st), n_boot, ci,
                         seed, th)
        for j, n in enumerate(names):
            row = {"set": n, "group": g, "n_neurons": sizes[j], "n_audio_pairs": int(sa.sum()),
                   "n_text_pairs": int(st.sum())}
            row.update({k: v[j] for k, v in out.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def prediction_grounding(
    audio: PatchResult,
    text: PatchResult,
    *,
    group_by: str | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    thresholds: GroundingThresholds | None = None,
    audio_min: float | None = None,
    text_max: float | None = None,
) -> pd.DataFrame:
    """The coefficient on the answer: Δ = mean over pairs of ``|change of p(counterfactual emotion)|`` for the
    patched set and layers of the two runs; each side's null is that side's *total* effect (mean
    ``|p_cf(source) − p_cf(before)|``, the whole counterfactual against the target run), so ``ratio_*`` is the
    share of the side's total effect the patch carries, and the coefficient is undetermined below
    :attr:`GroundingThresholds.prediction_floor` on both sides (a ratio of near-zeros is not a finding). Also
    the signed mean effects toward the counterfactual. For :func:`~helpers.ground.patching.total_effect` runs the patch
    *is* the total
    effect, so only ``coefficient_raw`` is reported (``coefficient`` NaN with the reason)."""
    th = _thresholds(thresholds, audio_min, text_max)
    if audio.side != "audio" or text.side != "text" or audio.direction != text.direction:
        raise ValueError("expected an audio-side and a text-side patch run in the same direction")
    ea, et = audio.pred_effect(), text.pred_effect()
    tot_a = np.abs(audio.p_cf("source") - audio.p_cf("before"))
    tot_t = np.abs(text.p_cf("source") - text.p_cf("before"))
    ga, gt = _groups(audio, group_by), _groups(text, group_by)
    rows = []
    for g in [x for x in pd.unique(ga) if x in set(gt)]:
        sa, st = (ga == g) & ~np.isnan(ea), (gt == g) & ~np.isnan(et)
        if not sa.any() or not st.any():
            continue
        cols = _coef_rows(np.abs(ea[sa])[:, None], np.abs(et[st])[:, None], tot_a[sa][:, None], tot_t[st][:, None],
                          n_boot, ci, seed, th, floor=th.prediction_floor)
        row = {"group": g, "n_audio_pairs": int(sa.sum()), "n_text_pairs": int(st.sum()),
               "effect_audio": float(ea[sa].mean()), "effect_text": float(et[st].mean())}
        row.update({k: v[0] for k, v in cols.items()})
        if audio.what == "input" or text.what == "input":
            row.update({"coefficient": np.nan, "ci_low": np.nan, "ci_high": np.nan, "grounding": "none",
                        "undetermined": "a total-effect run is its own null; see coefficient_raw"})
        rows.append(row)
    return pd.DataFrame(rows)


def extreme_sets(table: pd.DataFrame, k: int, n_layers: int, n_neurons: int, *, within: Any = None
                 ) -> dict[str, torch.Tensor]:
    """The ``k`` most text-grounded and the ``k`` most audio-grounded neurons of a :func:`neuron_grounding` table
    by the calibrated coefficient: ``{"text_sets": mask, "audio_sets": mask}`` (the inputs of
    :func:`~helpers.ground.dissociation.dissociation`).

    Only neurons with a determined coefficient count, and only those in ``within`` (a mask or pairs, e.g. the
    union of the emotion-sensitive sets) when given. Ranks: coefficient ascending (text) / descending (audio),
    ties by the larger raw Δ of that side, then by position. With fewer than ``2 k`` candidates each side gets
    half of them (rounded down), so the two sets never share a neuron."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    t = table.dropna(subset=["coefficient"]).reset_index(drop=True)
    if within is not None:
        m = as_mask(within, n_layers, n_neurons)
        t = t[m[t["layer"].to_numpy(), t["neuron"].to_numpy()].numpy()].reset_index(drop=True)
    n = min(int(k), len(t) // 2)
    out = {}
    for name, ascending, delta in (("text_sets", True, "delta_text"), ("audio_sets", False, "delta_audio")):
        order = t.assign(_neg=-t[delta]).sort_values(["coefficient", "_neg"], ascending=[ascending, True],
                                                     kind="stable")
        pick = np.array(order.head(n)[["layer", "neuron"]].to_numpy(dtype=np.int64).reshape(-1, 2))
        out[name] = as_mask(pick, n_layers, n_neurons)
    return out


def grounded_sets(table: pd.DataFrame, n_layers: int, n_neurons: int) -> dict[str, torch.Tensor]:
    """Masks of the audio-, text-grounded and mixed neurons of a :func:`neuron_grounding` table."""
    out = {}
    for kind in ("audio", "text", "mixed"):
        sub = table[table["grounding"] == kind]
        out[f"{kind}-grounded" if kind != "mixed" else "mixed"] = as_mask(
            sub[["layer", "neuron"]].to_numpy(dtype=np.int64).reshape(-1, 2), n_layers, n_neurons)
    return out


__all__ = [
    "extreme_sets",
    "grounded_sets",
    "neuron_grounding",
    "prediction_grounding",
    "set_grounding",
]
