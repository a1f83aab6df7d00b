"""Hand-computed checks for helpers.metrics (recall, effects, flip rate, effect matrix, bootstrap, tables)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.metrics.bootstrap import BootstrapSettings, bootstrap_ci, bootstrap_effects, bootstrap_mean_gap, mean_gap
from helpers.metrics.corrections import corrections, damage, delta_uar, outcomes
from helpers.metrics.effects import (
    Effects,
    effect_matrix,
    effects,
    flip_rate,
    flip_rate_to_target,
    recall_per_class,
    uar,
)
from helpers.metrics.summaries import aggregate_random, dose_response_table, summarise_gaps

LABELS = ["neutral", "happy", "sad"]
NEU, HAP, SAD = 0, 1, 2

# 12 items, 4 per class.            neutral     | happy       | sad
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
# Baseline recalls: neutral 3/4 (item 3 -> sad), happy 3/4 (item 7 -> neutral), sad 2/4 (items 10, 11 -> neutral).
Y_BASE = np.array([0, 0, 0, 2, 1, 1, 1, 0, 2, 2, 0, 0])
# Deactivate "happy": recalls neutral 4/4, happy 1/4, sad 3/4.
Y_DEACT_HAPPY = np.array([0, 0, 0, 0, 1, 0, 0, 0, 2, 2, 2, 0])
# Steer toward "sad": recalls neutral 2/4, happy 1/4, sad 4/4.
Y_STEER_SAD = np.array([2, 0, 0, 2, 2, 2, 1, 0, 2, 2, 2, 2])


# --------------------------------------------------------------------------------------------------- recall / UAR
def test_recall_and_uar_by_hand():
    rec = recall_per_class(Y_TRUE, Y_BASE, 3)
    np.testing.assert_allclose(rec, [0.75, 0.75, 0.5])
    assert uar(Y_TRUE, Y_BASE, 3) == pytest.approx((0.75 + 0.75 + 0.5) / 3)  # = 2/3
    assert uar(Y_TRUE, Y_BASE, labels=LABELS) == pytest.approx(2 / 3)


def test_unparsed_prediction_counts_as_wrong_and_torch_input_accepted():
    y_pred = torch.tensor([0, -1, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])  # -1 = answer the parser could not map
    np.testing.assert_allclose(recall_per_class(torch.tensor(Y_TRUE), y_pred, 3), [0.75, 1.0, 1.0])


def test_empty_class_raises_with_class_name_and_fix():
    y_true = np.array([0, 0, 1, 1])  # no "sad" items
    with pytest.raises(ValueError, match=r"'sad' \(index 2\) has no items.*add evaluation items"):
        recall_per_class(y_true, y_true, labels=LABELS)
    with pytest.raises(ValueError, match="'sad'"):
        effects(y_true, y_true, y_true, "happy", labels=LABELS)
    with pytest.raises(ValueError, match="'sad'"):
        bootstrap_effects(y_true, y_true, y_true, "happy", labels=LABELS, n_boot=10)


def test_input_validation():
    with pytest.raises(ValueError, match="same items"):
        recall_per_class(Y_TRUE, Y_BASE[:-1], 3)
    with pytest.raises(ValueError, match="outside 0..2"):
        recall_per_class(np.array([0, 1, 3]), np.array([0, 1, 2]), 3)
    with pytest.raises(ValueError, match="disagrees"):
        recall_per_class(Y_TRUE, Y_BASE, 4, labels=LABELS)
    with pytest.raises(ValueError, match="map label names"):
        recall_per_class(np.array(["a", "b"]), np.array(["a", "b"]), 2)


# --------------------------------------------------------------------------------------------------- effects
def test_effects_deactivation_by_hand():
    eff = effects(Y_TRUE, Y_BASE, Y_DEACT_HAPPY, HAP, 3)
    # per-class delta: neutral 1.00-0.75=+0.25, happy 0.25-0.75=-0.50, sad 0.75-0.50=+0.25
    np.testing.assert_allclose(eff.per_class_delta, [0.25, -0.5, 0.25])
    assert eff.self_effect == pytest.approx(-0.5)
    assert eff.cross_effect == pytest.approx((0.25 + 0.25) / 2)  # 0.25
    assert eff.gap == pytest.approx(-0.5 - 0.25)  # -0.75: the target lost more than the others
    assert eff.target == HAP
    assert eff.flip_rate == 0.0  # nothing was pushed *toward* happy


def test_effects_steering_by_hand_and_label_name_target():
    eff = effects(Y_TRUE, Y_BASE, Y_STEER_SAD, "sad", labels=LABELS)
    # per-class delta: neutral 0.50-0.75=-0.25, happy 0.25-0.75=-0.50, sad 1.00-0.50=+0.50
    np.testing.assert_allclose(eff.per_class_delta, [-0.25, -0.5, 0.5])
    assert eff.self_effect == pytest.approx(0.5)
    assert eff.cross_effect == pytest.approx((-0.25 - 0.5) / 2)  # -0.375
    assert eff.gap == pytest.approx(0.875)
    d = eff.as_dict()
    assert d["per_class_delta"] == pytest.approx([-0.25, -0.5, 0.5]) and d["target"] == SAD


def test_effects_need_two_classes():
    with pytest.raises(ValueError, match="at least two classes"):
        effects([0, 0], [0, 0], [0, 0], 0, 1)


# --------------------------------------------------------------------------------------------------- flip rate
def test_flip_rate_both_variants_by_hand():
    # Toward sad. Non-sad items are 0..7; the baseline already called item 3 sad.
    # baseline_non_target: eligible {0,1,2,4,5,6,7} (7 items), now sad: {0,4,5} -> 3/7.
    assert flip_rate(Y_TRUE, Y_BASE, Y_STEER_SAD, SAD) == pytest.approx(3 / 7)
    # all_non_target: eligible {0..7} (8 items), now sad: {0,3,4,5} -> 4/8.
    assert flip_rate(Y_TRUE, Y_BASE, Y_STEER_SAD, SAD, among="all_non_target") == pytest.approx(0.5)
    assert flip_rate(Y_TRUE, Y_BASE, Y_STEER_SAD, "sad", labels=LABELS) == pytest.approx(3 / 7)
    assert effects(Y_TRUE, Y_BASE, Y_STEER_SAD, SAD, 3, among="all_non_target").flip_rate == pytest.approx(0.5)


def test_flip_rate_undefined_warns_nan():
    y_true = np.array([0, 1])
    with pytest.warns(RuntimeWarning, match="no item is eligible"):
        assert math.isnan(flip_rate(y_true, np.array([1, 1]), np.array([1, 1]), 1))
    with pytest.raises(ValueError, match="among"):
        flip_rate(y_true, y_true, y_true, 1, among="everything")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------- effect matrix
def test_effect_matrix_shape_labels_values():
    m = effect_matrix(Y_TRUE, Y_BASE, {SAD: Y_STEER_SAD, "happy": Y_DEACT_HAPPY}, LABELS)
    assert isinstance(m, pd.DataFrame)
    assert list(m.index) == ["happy", "sad"]  # rows in labels order, only the targets given
    assert list(m.columns) == LABELS
    assert m.index.name == "target" and m.columns.name == "evaluated"
    np.testing.assert_allclose(m.loc["happy"], [0.25, -0.5, 0.25])
    np.testing.assert_allclose(m.loc["sad"], [-0.25, -0.5, 0.5])
    assert m.loc["sad", "sad"] == pytest.approx(effects(Y_TRUE, Y_BASE, Y_STEER_SAD, SAD, 3).self_effect)
    with pytest.raises(ValueError, match="twice"):
        effect_matrix(Y_TRUE, Y_BASE, {SAD: Y_STEER_SAD, "sad": Y_STEER_SAD}, LABELS)


# --------------------------------------------------------------------------------------------------- bootstrap
def _synthetic(n_per_class: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Baseline ~80% correct; intervention on class 1 drops its recall to ~30%, others barely move."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    wrong = (y + rng.integers(1, 3, size=y.size)) % 3
    base = np.where(rng.random(y.size) < 0.8, y, wrong)
    keep = np.where(y == 1, rng.random(y.size) < 0.35, rng.random(y.size) < 0.97)
    inter = np.where(keep, base, (base + 1) % 3)
    return y, base, inter


def test_bootstrap_contains_point_estimate_and_is_deterministic():
    y, b, i = _synthetic(60)
    eff = effects(y, b, i, 1, 3)
    iv = bootstrap_effects(y, b, i, 1, 3, n_boot=500, seed=3)
    assert set(iv) == {"self_effect", "cross_effect", "gap", "flip_rate"}
    for name in ("self_effect", "cross_effect", "gap", "flip_rate"):
        low, high = iv[name]
        assert low <= getattr(eff, name) <= high, name
    assert iv["gap"][1] < 0  # a clear deactivation: the whole interval is negative
    assert bootstrap_effects(y, b, i, 1, 3, n_boot=500, seed=3) == iv
    assert bootstrap_effects(y, b, i, 1, 3, n_boot=500, seed=4) != iv


def test_bootstrap_shrinks_with_more_items():
    y, b, i = _synthetic(30)
    reps = 16  # same point estimate, 16x the items -> interval ~4x narrower
    small = bootstrap_effects(y, b, i, 1, 3, n_boot=400)["gap"]
    big = bootstrap_effects(np.tile(y, reps), np.tile(b, reps), np.tile(i, reps), 1, 3, n_boot=400)["gap"]
    w_small, w_big = small[1] - small[0], big[1] - big[0]
    assert w_big < 0.5 * w_small


def test_paired_bootstrap_identical_predictions_gives_exact_zero():
    y, b, _ = _synthetic(20)
    iv = bootstrap_effects(y, b, b.copy(), 1, 3, n_boot=300)
    assert iv["self_effect"] == iv["cross_effect"] == iv["gap"] == (0.0, 0.0)
    assert iv["flip_rate"] == (0.0, 0.0)  # baseline-eligible items were not predicted as the target before


def test_generic_bootstrap_matches_vectorised_path():
    """The generic loop and the batched path see the same paired resamples as bootstrap_effects."""
    y, b, i = _synthetic(25)

    def gap(yt, yb, yi):
        return effects(yt, yb, yi, 1, 3).gap

    def gap_batched(yt, yb, yi):
        return np.array([gap(*row) for row in zip(yt, yb, yi, strict=True)])

    fast = bootstrap_effects(y, b, i, 1, 3, n_boot=200, seed=7)["gap"]
    loop = bootstrap_ci(gap, y, b, i, n_boot=200, seed=7)
    batched = bootstrap_ci(gap_batched, y, b, i, n_boot=200, seed=7, batched=True, max_elements=500)
    assert loop == pytest.approx(fast) and batched == pytest.approx(fast)


def test_bootstrap_chunking_does_not_change_result():
    y, b, i = _synthetic(40)
    whole = bootstrap_effects(y, b, i, 1, 3, n_boot=250, seed=2)
    chunked = bootstrap_effects(y, b, i, 1, 3, n_boot=250, seed=2, max_elements=7 * len(y))
    assert chunked == whole


def test_bootstrap_rare_class_plain_warns_stratified_does_not():
    y = np.array([0] * 30 + [1] * 30 + [2])  # a single "sad" item often vanishes from a plain resample
    b = y.copy()
    i = np.where(y == 1, 0, y)
    with pytest.warns(RuntimeWarning, match="resamples left"):
        bootstrap_effects(y, b, i, 1, 3, n_boot=200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iv = bootstrap_effects(y, b, i, 1, 3, n_boot=200, stratify=True)
    assert iv["self_effect"] == (-1.0, -1.0)  # every happy item is lost in every resample


def test_bootstrap_ci_argument_checks():
    with pytest.raises(ValueError, match="ci must"):
        bootstrap_ci(np.mean, np.arange(5), ci=1.5)
    with pytest.raises(ValueError, match="same number"):
        bootstrap_ci(lambda a, b: 0.0, np.arange(5), np.arange(4))
    low, high = bootstrap_ci(np.mean, np.arange(10.0), n_boot=300)
    assert low < 4.5 < high


# --------------------------------------------------------------------------------------------------- aggregation
def test_aggregate_random_by_hand():
    runs = {
        0: Effects(1, self_effect=-0.1, cross_effect=0.0, gap=-0.1, flip_rate=0.0, per_class_delta=np.zeros(3)),
        1: {"self_effect": 0.1, "cross_effect": 0.1, "gap": 0.0, "flip_rate": math.nan},
        2: {"self_effect": 0.0, "cross_effect": -0.1, "gap": 0.1, "flip_rate": 0.2},
    }
    agg = aggregate_random(runs)
    assert agg["n_seeds"] == 3 and agg["seeds"] == [0, 1, 2]
    assert agg["gap"]["mean"] == pytest.approx(0.0)
    assert agg["gap"]["std"] == pytest.approx(0.1)  # sample std of (-0.1, 0, 0.1)
    assert agg["gap"]["values"] == pytest.approx([-0.1, 0.0, 0.1])
    assert agg["flip_rate"]["mean"] == pytest.approx(0.1)  # NaN ignored
    single = aggregate_random([runs[0]])
    assert single["seeds"] is None and math.isnan(single["gap"]["std"])
    with pytest.raises(ValueError, match="at least one"):
        aggregate_random([])


# --------------------------------------------------------------------------------------------------- tables
def test_dose_response_table_columns_values_and_passthrough():
    records = [
        {"alpha": 0.0, "target": "sad", "selector": "esn", "y_true": Y_TRUE, "y_base": Y_BASE, "y_int": Y_BASE},
        {"alpha": 2.0, "target": SAD, "selector": "esn", "y_true": Y_TRUE, "y_base": Y_BASE, "y_int": Y_STEER_SAD},
    ]
    df = dose_response_table(records, LABELS, param_key="alpha", n_boot=200, stratify=True)
    head = ["param", "target", "self_effect", "cross_effect", "gap", "flip_rate", "ci_low", "ci_high"]
    assert list(df.columns[:8]) == head
    assert "selector" in df.columns and "alpha" not in df.columns
    assert df["param"].tolist() == [0.0, 2.0] and df["target"].tolist() == ["sad", "sad"]
    assert df.loc[0, ["self_effect", "cross_effect", "gap", "ci_low", "ci_high"]].tolist() == [0, 0, 0, 0, 0]
    row = df.loc[1]
    assert (row.self_effect, row.cross_effect, row.gap) == pytest.approx((0.5, -0.375, 0.875))
    assert row.flip_rate == pytest.approx(3 / 7)
    assert row.ci_low <= row.gap <= row.ci_high
    assert row.uar_base == pytest.approx(2 / 3) and row.uar_int == pytest.approx((0.5 + 0.25 + 1.0) / 3)
    assert row.n_items == 12
    quick = dose_response_table(records, LABELS, param_key="alpha", n_boot=0)
    assert quick["ci_low"].isna().all()
    with pytest.raises(ValueError, match="lacks key"):
        dose_response_table([{"target": 0}], LABELS)


def test_summarise_gaps_by_hand():
    records = [
        {"selector": "esn", "target": "happy", "gap": -0.6},
        {"selector": "esn", "target": "sad", "gap": -0.2},
        # two random seeds for "happy" are averaged first (-0.1), so each emotion weighs the same
        {"selector": "random", "target": "happy", "gap": -0.2},
        {"selector": "random", "target": "happy", "gap": 0.0},
        {"selector": "random", "target": "sad", "gap": 0.1},
        # gap computed from predictions when absent: deactivating happy gives -0.75
        {"selector": "raw", "target": "happy", "y_true": Y_TRUE, "y_base": Y_BASE, "y_int": Y_DEACT_HAPPY},
    ]
    out = summarise_gaps(records, labels=LABELS)
    assert out == pytest.approx({"esn": -0.4, "random": 0.0, "raw": -0.75})
    assert summarise_gaps(pd.DataFrame(records[:2])) == pytest.approx({"esn": -0.4})
    with pytest.raises(ValueError, match="pass labels"):
        summarise_gaps(records[-1:])


# --------------------------------------------------------------------------------------------------- outcomes
def test_outcomes_by_hand():
    # baseline errors: items 3, 7, 10, 11; steering toward sad fixes 10 and 11 (-> sad) and breaks 0, 4, 5
    assert corrections(Y_TRUE, Y_BASE, Y_STEER_SAD) == pytest.approx(2 / 4)
    assert damage(Y_TRUE, Y_BASE, Y_STEER_SAD) == pytest.approx(3 / 8)
    assert delta_uar(Y_TRUE, Y_BASE, Y_STEER_SAD, labels=LABELS) == pytest.approx(
        (2 / 4 + 1 / 4 + 4 / 4) / 3 - (3 / 4 + 3 / 4 + 2 / 4) / 3)
    # eligible for sad: true != sad and baseline != sad -> items 0, 1, 2, 4, 5, 6, 7; flipped: 0, 4, 5
    assert flip_rate_to_target(Y_TRUE, Y_BASE, Y_STEER_SAD, SAD) == pytest.approx(3 / 7)
    assert flip_rate_to_target(Y_TRUE, Y_BASE, Y_STEER_SAD, SAD) == flip_rate(Y_TRUE, Y_BASE, Y_STEER_SAD, SAD)
    # oracle: target = the true label, so the flip rate is the share of baseline errors fixed
    oracle = flip_rate_to_target(Y_TRUE, Y_BASE, Y_STEER_SAD, Y_TRUE, exclude_true_target=False)
    assert oracle == corrections(Y_TRUE, Y_BASE, Y_STEER_SAD)
    assert math.isnan(flip_rate_to_target(Y_TRUE, Y_BASE, Y_STEER_SAD, Y_TRUE))  # nobody eligible
    out = outcomes(Y_TRUE, Y_BASE, Y_STEER_SAD, LABELS, target=SAD)
    assert out["n_errors_base"] == 4 and out["n_correct_base"] == 8 and out["n_eligible"] == 7
    assert out["flip_rate_to_target"] == pytest.approx(3 / 7) and out["corrections"] == pytest.approx(0.5)
    assert math.isnan(outcomes(Y_TRUE, Y_BASE, Y_STEER_SAD, LABELS)["flip_rate_to_target"])
    assert math.isnan(corrections(Y_TRUE, Y_TRUE, Y_BASE)) and math.isnan(damage(Y_TRUE, (Y_TRUE + 1) % 3, Y_BASE))


def test_bootstrap_settings_are_validated():
    assert BootstrapSettings().n_boot == 1000
    for bad in ({"n_boot": -1}, {"n_boot": 1.5}, {"ci": 1.0}, {"seed": "x"}):
        with pytest.raises(ValueError):
            BootstrapSettings(**bad)


def _independent_deactivations(n_per_class=60, k=4, seed=0):
    """Each target's deactivation breaks a random half of its own class's items (independently per target)."""
    rng = np.random.default_rng(seed)
    yt = np.repeat(np.arange(k), n_per_class)
    yb = yt.copy()
    by_target = {}
    for t in range(k):
        yi = yb.copy()
        own = np.flatnonzero(yt == t)
        hit = own[rng.random(own.size) < 0.5]
        yi[hit] = (t + 1) % k
        other = np.flatnonzero(yt != t)
        yi[other[rng.random(other.size) < 0.1]] = t  # some collateral
        by_target[t] = yi
    return yt, yb, by_target


def test_mean_gap_and_its_joint_bootstrap():
    yt, yb, by_target = _independent_deactivations()
    labels = [f"c{i}" for i in range(4)]
    point = mean_gap(yt, yb, by_target, labels=labels)
    assert point == pytest.approx(np.mean([effects(yt, yb, y, t, labels=labels).gap for t, y in by_target.items()]))
    lo, hi = bootstrap_mean_gap(yt, yb, by_target, labels=labels, n_boot=400, seed=1)
    assert lo < point < hi
    # one target: exactly the stratified per-target interval (same resamples)
    single = bootstrap_mean_gap(yt, yb, {2: by_target[2]}, labels=labels, n_boot=300, seed=3)
    ref = bootstrap_effects(yt, yb, by_target[2], 2, labels=labels, n_boot=300, seed=3, stratify=True)["gap"]
    assert single == pytest.approx(ref)
    # the interval of the mean is narrower than the mean of the per-target intervals (errors partly cancel)
    per = [bootstrap_effects(yt, yb, y, t, labels=labels, n_boot=400, seed=1, stratify=True)["gap"]
           for t, y in by_target.items()]
    averaged = (np.mean([p[0] for p in per]), np.mean([p[1] for p in per]))
    assert hi - lo < 0.8 * (averaged[1] - averaged[0])
    # several draws per target (random seeds) are averaged within the target first
    draws = {t: np.stack([y, yb]) for t, y in by_target.items()}
    assert mean_gap(yt, yb, draws, labels=labels) == pytest.approx(point / 2)
    assert bootstrap_mean_gap(yt, yb, {t: yb for t in range(4)}, labels=labels, n_boot=50) == (0.0, 0.0)
    with pytest.raises(ValueError, match="n_items"):
        bootstrap_mean_gap(yt, yb, {0: yb[:-1]}, labels=labels, n_boot=10)
