"""helpers.intervene: conditions, the batched runner and the experiments, on a tiny real Qwen2-Audio."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers.core.gate_edits import NonFiniteEditError  # noqa: E402
from helpers.core.models import gate_modules, gate_shape  # noqa: E402
from helpers.core.neuron_sets import as_mask  # noqa: E402
from helpers.core.subject import Batch  # noqa: E402
from helpers.intervene import conditions, deactivation, dose_response, per_item, runner, steering  # noqa: E402
from helpers.log.stats import ActivationStats  # noqa: E402
from helpers.metrics import bootstrap  # noqa: E402

from tiny_models import AUDIO_ID, TinySubject, build_tiny, tiny_inputs  # noqa: E402

LABELS = ("neutral", "happy", "angry", "sad")
LABEL_TOKENS = (11, 22, 33, 44)
N_ITEMS = 8


pytestmark = pytest.mark.usefixtures("one_thread")


class FakeSubject(TinySubject):
    """A Subject over precomputed tiny inputs: ``batch_inputs`` slices rows by the table's ``idx`` column (left
    padded, so the answer position is the last one)."""

    def __init__(self, model, inputs, labels=LABELS):
        self.model = model
        self.labels = tuple(labels)
        self._inputs = inputs
        self.label_ids = torch.tensor(LABEL_TOKENS[: len(labels)])
        self.calls = 0

    def batch_inputs(self, rows: pd.DataFrame) -> Batch:
        self.calls += 1
        idx = torch.tensor(rows["idx"].to_numpy())
        return self.make_batch({k: v[idx] for k, v in self._inputs.items()})


@pytest.fixture(scope="module")
def subject():
    model = build_tiny("qwen2-audio")
    # Larger random weights than the default init so that edits move the label logits visibly.
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            for lin in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                lin.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(lin.weight.numel()))
    inputs = tiny_inputs("qwen2-audio", model, batch=N_ITEMS, ragged=True, seed=3)
    return FakeSubject(model, inputs)


@pytest.fixture(scope="module")
def df():
    return pd.DataFrame({"idx": np.arange(N_ITEMS), "label": [LABELS[i % 4] for i in range(N_ITEMS)]})


@pytest.fixture(scope="module")
def shape(subject):
    return gate_shape(subject.model)


def _sets(L: int, N: int, m: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for lbl in LABELS:
        flat = torch.randperm(L * N, generator=g)[:m]
        out[lbl] = torch.stack((flat // N, flat % N), 1)
    return out


def _record_gates(model):
    seen: list[list[torch.Tensor]] = [[] for _ in gate_modules(model)]
    handles = [
        act.register_forward_hook(lambda m, a, o, i=i: seen[i].append(o.detach().clone()))
        for i, act in enumerate(gate_modules(model))
    ]
    return seen, handles


# ---------------------------------------------------------------------------------------------------- conditions
def test_constructors_build_the_expected_scales():
    pairs = torch.tensor([[0, 1], [1, 3], [1, 3]])  # duplicate collapses
    d = conditions.deactivate(pairs, 2, 4)
    expected = torch.ones(2, 4)
    expected[0, 1] = expected[1, 3] = 0.0
    assert torch.equal(d.scale, expected) and d.meta["n_neurons"] == 2
    s = conditions.steer(pairs, 2, 4, -0.25)
    assert s.scale[0, 1] == 0.75 and s.scale[1, 3] == 0.75 and s.scale.sum() == 6 + 1.5
    j = conditions.joint({"a": [[0, 1]], "b": [[0, 1], [1, 0]]}, 2, 4, 2.0)  # shared neuron scaled once
    assert j.scale[0, 1] == 3.0 and j.scale[1, 0] == 3.0 and (j.scale == 3.0).sum() == 2
    c = conditions.combine(conditions.deactivate([[0, 1]], 2, 4), conditions.steer([[0, 1], [0, 2]], 2, 4, 1.0))
    assert c.scale[0, 1] == 0.0 and c.scale[0, 2] == 2.0 and c.scale.sum() == 6 + 2
    assert conditions.identity().is_identity and not d.is_identity


def test_out_of_range_neurons_name_the_range_and_shape():
    with pytest.raises(ValueError, match=r"layers must be in \[0, 2\).*neurons in \[0, 64\).*2 x 64"):
        conditions.deactivate(torch.tensor([[0, 5], [2, 0]]), 2, 64)
    with pytest.raises(ValueError, match=r"neurons in \[0, 64\)"):
        conditions.steer([[1, 64]], 2, 64, 1.0)
    with pytest.raises(ValueError, match=r"\[m, 2\]"):
        conditions.deactivate(torch.tensor([1, 2, 3]), 2, 64)


def test_condition_for_another_model_is_refused(subject, df):
    L, N = gate_shape(subject.model)
    with pytest.raises(ValueError, match=rf"3 x 8 gates but the model has {L} x {N}"):
        runner.run_conditions(subject, df, [conditions.deactivate([[0, 0]], 3, 8)], progress=False)


@pytest.mark.parametrize("alpha", [float("inf"), float("nan"), 1e39, -1e39])
def test_non_finite_alpha_is_refused(alpha):
    with pytest.raises(ValueError, match="non-finite"):
        conditions.steer([[0, 1]], 2, 4, alpha)
    with pytest.raises(ValueError, match="non-finite"):
        per_item.label_free("union", {"a": [[0, 1]]}, ["a", "b"], 2, 4, alpha)


def test_overflowing_edit_names_the_condition(subject, df, shape):
    L, N = shape
    every = torch.cartesian_prod(torch.arange(L), torch.arange(N))
    huge = conditions.steer(every, L, N, 3e38, name="way-too-loud")
    with pytest.raises(NonFiniteEditError, match="way-too-loud"):
        runner.run_conditions(subject, df, [huge], progress=False)


def test_label_free_scales_match_hand_computation():
    labels = ["a", "b", "c"]
    sets = {"a": [[0, 1]], "b": [[0, 1], [1, 2]], "c": []}
    first = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 3.0, 1.0]])
    alpha = 0.5
    p = np.exp(first) / np.exp(first).sum(1, keepdims=True)

    two = per_item.label_free("two_pass", sets, labels, 2, 3, alpha, first_pass=first).scale_for([0, 1, 2])
    exp = torch.ones(3, 2, 3)
    exp[0, 0, 1] = 1.5  # item 0 -> a
    exp[2, 0, 1] = exp[2, 1, 2] = 1.5  # item 2 -> b; item 1 -> c (empty set): unchanged
    torch.testing.assert_close(two, exp)

    mix = per_item.label_free("mix", sets, labels, 2, 3, alpha, first_pass=first).scale_for([0, 1, 2])
    exp = torch.ones(3, 2, 3)
    for i in range(3):
        exp[i, 0, 1] = 1 + alpha * (p[i, 0] + p[i, 1])  # (0, 1) is in a and b: weights add
        exp[i, 1, 2] = 1 + alpha * p[i, 1]
    torch.testing.assert_close(mix, exp)
    torch.testing.assert_close(
        per_item.label_free("mix", sets, labels, 2, 3, alpha, first_pass=first).scale_for([2]), exp[2:3]
    )

    union = per_item.label_free("union", sets, labels, 2, 3, alpha).scale_for([0, 1, 2])
    exp = torch.ones(1, 2, 3)
    exp[0, 0, 1] = exp[0, 1, 2] = 1.5
    torch.testing.assert_close(union, exp)

    assert per_item.label_free("mix", sets, labels, 2, 3, 0.0, first_pass=first).is_identity
    with pytest.raises(ValueError, match="first_pass"):
        per_item.label_free("two_pass", sets, labels, 2, 3, alpha)


# ---------------------------------------------------------------------------------------------------- the runner
@pytest.mark.parametrize("positions", ["all", "audio"])
def test_edit_changes_exactly_the_targeted_neurons(subject, df, shape, positions):
    L, N = shape
    pairs = torch.tensor([[0, 3], [0, 17], [0, 40], [1, 5]])
    inputs = subject.batch_inputs(df).inputs
    seen, handles = _record_gates(subject.model)
    try:
        runner.run_conditions(subject, df, [conditions.identity()], progress=False)
        clean = seen[0][-1]
        runner.run_conditions(subject, df, [conditions.deactivate(pairs, L, N)], positions=positions, progress=False)
        zeroed = seen[0][-1]
        runner.run_conditions(subject, df, [conditions.steer(pairs, L, N, 2.0)], positions=positions, progress=False)
        loud = seen[0][-1]
    finally:
        for h in handles:
            h.remove()
    where = torch.ones_like(inputs["input_ids"], dtype=torch.bool)
    if positions == "audio":
        where = inputs["input_ids"] == AUDIO_ID
        assert where.any() and (~where).any()
    targeted = [3, 17, 40]
    others = [j for j in range(N) if j not in targeted]
    assert clean.shape == zeroed.shape == (N_ITEMS, inputs["input_ids"].shape[1], N)
    assert clean[..., targeted][where].abs().min() > 0  # there was something to zero
    assert torch.all(zeroed[..., targeted][where] == 0)
    torch.testing.assert_close(zeroed[..., targeted][~where], clean[..., targeted][~where], rtol=0, atol=0)
    torch.testing.assert_close(zeroed[..., others], clean[..., others], rtol=0, atol=0)
    torch.testing.assert_close(loud[..., targeted][where], 3.0 * clean[..., targeted][where])
    torch.testing.assert_close(loud[..., others], clean[..., others], rtol=0, atol=0)


def test_batched_equals_sequential(subject, df, shape):
    L, N = shape
    sets = _sets(L, N, m=10)
    base = runner.run_conditions(subject, df, [conditions.identity()], progress=False)[0]
    conds = [
        conditions.identity(),
        conditions.deactivate(sets["happy"], L, N),
        conditions.steer(sets["angry"], L, N, 2.0),
        conditions.steer(sets["angry"], L, N, -0.5),
        conditions.combine(conditions.deactivate(sets["sad"], L, N), conditions.steer(sets["neutral"], L, N, 1.0)),
        conditions.Condition("add", add=torch.full((L, N), 0.05)),
        per_item.label_free("two_pass", sets, LABELS, L, N, 3.0, first_pass=base),
        per_item.label_free("mix", sets, LABELS, L, N, 3.0, first_pass=base),
        per_item.label_free("union", sets, LABELS, L, N, 1.0),
    ]
    for positions in ("all", "text"):
        seq = runner.run_conditions_sequential(subject, df, conds, batch_size=3, positions=positions, progress=False)
        # max_rows=7 with batches of 3 -> 2 conditions per forward, and a ragged last batch of 2 -> 3 per forward
        bat = runner.run_conditions(subject, df, conds, batch_size=3, max_rows=7, positions=positions, progress=False)
        assert bat.shape == seq.shape == (len(conds), N_ITEMS, len(LABELS))
        np.testing.assert_allclose(bat, seq, rtol=1e-4, atol=1e-5)
        margin = np.sort(seq, -1)[..., -1] - np.sort(seq, -1)[..., -2]
        clear = margin > 1e-4
        assert (bat.argmax(-1)[clear] == seq.argmax(-1)[clear]).all()
        # the conditions really differ from each other (otherwise equality above would prove little)
        assert not np.allclose(seq[1], seq[0]) and not np.allclose(seq[2], seq[3])
        assert not np.allclose(seq[6], seq[7])
    # inputs are built once per batch, whatever the number of conditions
    subject.calls = 0
    runner.run_conditions(subject, df, conds, batch_size=4, progress=False)
    assert subject.calls == 2


def test_empty_set_is_a_no_op(subject, df, shape):
    L, N = shape
    base = runner.run_conditions(subject, df, [conditions.identity()], batch_size=4, progress=False)[0]
    empty = torch.zeros(0, 2, dtype=torch.long)
    conds = [conditions.deactivate(empty, L, N), conditions.steer([], L, N, 5.0),
             conditions.joint({"a": empty}, L, N, 2.0)]
    assert all(c.is_identity for c in conds)
    out = runner.run_conditions(subject, df, conds, batch_size=4, reuse_identity=False, progress=False)
    for o in out:
        np.testing.assert_array_equal(o, base)  # skipped layers: the very same computation
    seq = runner.run_conditions_sequential(subject, df, conds, batch_size=4, progress=False)
    np.testing.assert_array_equal(seq[0], base)


# ---------------------------------------------------------------------------------------------------- experiments
def test_dose_response_k_zero_is_the_baseline(subject, df, shape):
    L, N = shape
    sets = _sets(L, N, m=12)
    table = dose_response.dose_response_k(subject, df, sets, [0, 4, 12, 50], selector="test", random_seeds=(0,),
                                          n_boot=50,
                                          progress=False)
    assert set(table["target"]) == set(LABELS)
    k0 = table[table["param"] == 0]
    assert len(k0) == 2 * len(LABELS)  # the selector and one random seed, per emotion
    assert (k0[["self_effect", "cross_effect", "gap"]] == 0).all().all()
    assert (k0["uar_int"] == k0["uar_base"]).all() and (k0["k_effective"] == 0).all()
    big = table[(table["param"] == 50) & ~table["control"]]
    assert (big["k_effective"] == 12).all()  # prefix clipped to the set size
    rnd = table[table["control"]]
    assert (rnd["selector"] == "random(test)").all() and (rnd["seed"] == 0).all()
    # deactivating some neurons must change something somewhere, or the experiment measures nothing
    assert (table[table["param"] > 0]["uar_int"] != table[table["param"] > 0]["uar_base"]).any() or (
        table[table["param"] > 0][["self_effect", "cross_effect"]].abs().to_numpy().sum() > 0
    )


def test_deactivation_experiment_tables(subject, df, shape):
    L, N = shape
    sets = {"sel": _sets(L, N, m=16, seed=1)}
    sets["sel"]["sad"] = torch.zeros(0, 2, dtype=torch.long)  # an emotion with no neurons: a valid no-op
    res = deactivation.deactivation_experiment(subject, df, sets, random_seeds=(0, 1), n_boot=50, progress=False)
    t = res.table
    assert len(t) == 5 * len(LABELS)  # selector + 2 seeds x 2 kinds of random control
    names = {"sel", "random(sel)", "random(sel, layer-matched)"}
    assert set(t["selector"]) == names
    assert set(t["control_kind"].dropna()) == set(deactivation.CONTROLS)
    rnd = t[t["control"]]
    for lbl, m in (("happy", 16), ("sad", 0)):  # random controls match each emotion's set size
        assert (rnd[rnd["target"] == lbl]["n_neurons"] == m).all()
    sad = t[(t["selector"] == "sel") & (t["target"] == "sad")].iloc[0]
    assert sad["self_effect"] == sad["gap"] == 0
    assert math.isclose(sad["uar_int"], sad["uar_base"])
    delta_cols = [f"delta_{lbl}" for lbl in LABELS]
    row = t.iloc[0]
    assert math.isclose(row["self_effect"], row[f"delta_{row['target']}"])
    assert res.matrices["sel"].shape == (4, 4) and res.matrices["random(sel)"].shape == (4, 4)
    np.testing.assert_allclose(res.matrices["sel"].loc["happy"].to_numpy(),
                               t[(t["selector"] == "sel") & (t["target"] == "happy")][delta_cols].to_numpy()[0])
    assert set(res.summary) == names | set(deactivation.CONTROLS)
    assert res.summary["random"] == res.summary["random(sel)"]  # one selector: the pooled control is its own
    assert set(res.gap_ci) == set(res.summary)
    assert (res.comparison["n_seeds"] == 2).all() and len(res.comparison) == len(LABELS)
    assert {"random_gap_mean", "layer_random_gap_mean", "gap_minus_layer_random"} <= set(res.comparison.columns)
    np.testing.assert_array_equal(res.y_base, res.logits[0].argmax(-1))


def test_random_controls_are_matched_and_independent_per_selector(subject, df, shape):
    L, N = shape
    same = _sets(L, N, m=10, seed=5)
    # concentrate one set in layer 1, so a layer-matched control differs from a uniform one
    same["happy"] = torch.stack((torch.ones(10, dtype=torch.long), torch.arange(10)), 1)
    res = deactivation.deactivation_experiment(subject, df, {"a": same, "b": same}, random_seeds=(0,), n_boot=0,
                                               progress=False)
    masks = {(c.meta["selector"], c.meta["target"]): c.scale == 0 for c in res.conditions[1:]}
    for kind_name in ("random({})", "random({}, layer-matched)"):
        for lbl in LABELS:
            ma, mb = masks[(kind_name.format("a"), lbl)], masks[(kind_name.format("b"), lbl)]
            assert int(ma.sum()) == int(mb.sum()) == 10 and not torch.equal(ma, mb)  # independent draws
    for lbl in LABELS:
        want = as_mask(same[lbl], L, N).sum(1)
        assert torch.equal(masks[("random(a, layer-matched)", lbl)].sum(1), want)
    assert masks[("random(a)", "happy")][0].any()  # uniform draws land outside layer 1 too
    counts = res.layer_counts()
    assert counts["random(a, layer-matched)"] == counts["a"] != counts["random(a)"]
    assert counts["a"]["happy"] == [0, 10] + [0] * (L - 2)
    assert {lbl: sum(v) for lbl, v in counts["random(b)"].items()} == dict.fromkeys(LABELS, 10)
    assert all(math.isnan(v) for v in res.gap_ci["a"])  # n_boot = 0
    with pytest.raises(ValueError, match="unknown controls"):
        deactivation.deactivation_experiment(subject, df, {"a": same}, controls=("shuffled",), progress=False)


def test_gap_ci_is_the_joint_bootstrap_of_the_mean_gap(subject, df, shape):
    L, N = shape
    sets = {"sel": _sets(L, N, m=20, seed=6)}
    res = deactivation.deactivation_experiment(subject, df, sets, random_seeds=(0, 1), controls=("random",), n_boot=200,
                                               seed=4, progress=False)
    preds = res.logits.argmax(-1)
    own = {c.meta["target"]: preds[j] for j, c in enumerate(res.conditions) if c.meta.get("selector") == "sel"}
    expected = bootstrap.bootstrap_mean_gap(res.y_true, res.y_base, own, labels=LABELS, n_boot=200, seed=4)
    assert res.gap_ci["sel"] == pytest.approx(expected)
    assert res.summary["sel"] == pytest.approx(bootstrap.mean_gap(res.y_true, res.y_base, own, labels=LABELS))
    ctrl: dict[str, list] = {}
    for j, c in enumerate(res.conditions):
        if c.meta.get("selector") == "random(sel)":
            ctrl.setdefault(c.meta["target"], []).append(preds[j])
    stacked = {t: np.stack(v) for t, v in ctrl.items()}
    assert res.gap_ci["random"] == pytest.approx(
        bootstrap.bootstrap_mean_gap(res.y_true, res.y_base, stacked, labels=LABELS, n_boot=200, seed=4))


def test_dose_response_random_control_never_exceeds_the_selection(subject, df, shape):
    L, N = shape
    sets = _sets(L, N, m=6, seed=3)
    sets["sad"] = sets["sad"][:2]
    table = dose_response.dose_response_k(subject, df, sets, [2, 4, 10], selector="s", random_seeds=(0, 1), n_boot=0,
                                          progress=False)
    sel, rnd = table[~table["control"]], table[table["control"]]
    merged = rnd.merge(sel[["target", "param", "k_effective"]], on=["target", "param"], suffixes=("", "_sel"))
    assert len(merged) == len(rnd) and (merged["k_effective"] == merged["k_effective_sel"]).all()
    assert (table[(table["target"] == "sad") & (table["param"] >= 4)]["k_effective"] == 2).all()
    assert table[(table["target"] == "sad") & (table["param"] == 4)]["clamped"].all()
    skipped = dose_response.dose_response_k(subject, df, sets, [2, 4, 10], selector="s", random_seeds=(0,),
                                            beyond="skip",
                                            match_layers=True, n_boot=0, progress=False)
    assert set(skipped[skipped["target"] == "sad"]["param"]) == {2}
    assert set(skipped[skipped["target"] == "happy"]["param"]) == {2, 4}
    assert (skipped["k_effective"] == skipped["param"]).all()
    assert set(skipped[skipped["control"]]["selector"]) == {"random(s, layer-matched)"}


def _planted_stats(L: int, N: int) -> ActivationStats:
    g = torch.Generator().manual_seed(0)
    tokens = torch.tensor([10.0, 20.0, 30.0, 40.0])
    mean = torch.rand(L, N, 4, generator=g, dtype=torch.float64)
    sq = mean**2 + 0.25
    return ActivationStats(labels=list(LABELS), tokens=tokens, items=tokens, active=0.5 * tokens * torch.ones(L, N, 4),
                           total=mean * tokens, total_sq=sq * tokens)


def test_steering_constants_by_hand(shape):
    L, N = shape
    st = _planted_stats(L, N)
    mu = conditions.steering_constants(st, "patch_mean")
    torch.testing.assert_close(mu["happy"], st.mean[..., 1].float())
    diff = conditions.steering_constants(st, "add")
    overall = st.total.sum(-1) / st.tokens.sum()
    torch.testing.assert_close(diff["sad"], (st.mean[..., 3] - overall).float())
    sd = conditions.steering_constants(st, "add", conditions.SteeringSettings(add_constant="std"))
    var = st.total_sq.sum(-1) / st.tokens.sum() - overall**2
    torch.testing.assert_close(sd["neutral"], var.sqrt().float())
    assert conditions.steering_constants(st, "multiply") is None
    with pytest.raises(ValueError, match="needs the identification stats"):
        conditions.steering_constants(None, "add")
    with pytest.raises(ValueError, match="add_constant"):
        conditions.SteeringSettings(add_constant="max")
    with pytest.raises(ValueError, match="modes"):
        conditions.SteeringSettings(modes=("square",))


@pytest.mark.parametrize(("mode", "alpha"), [("add", 2.0), ("patch_mean", 1.0), ("patch_mean", 0.5)])
def test_steering_modes_edit_exactly_as_documented(subject, df, shape, mode, alpha):
    L, N = shape
    pairs = torch.tensor([[0, 3], [0, 17], [1, 5]])
    const = torch.linspace(-1, 1, L * N).reshape(L, N)
    seen, handles = _record_gates(subject.model)
    try:
        runner.run_conditions(subject, df, [conditions.identity()], progress=False)
        clean = seen[0][-1]
        runner.run_conditions(subject, df, [conditions.steer(pairs, L, N, alpha, mode=mode, constant=const)],
                              progress=False)
        edited = seen[0][-1]
    finally:
        for h in handles:
            h.remove()
    on, off = [3, 17], [j for j in range(N) if j not in (3, 17)]
    c0 = const[0, on]
    want = clean[..., on] + alpha * c0 if mode == "add" else (1 - alpha) * clean[..., on] + alpha * c0
    torch.testing.assert_close(edited[..., on], want)
    torch.testing.assert_close(edited[..., off], clean[..., off], rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs a per-neuron constant"):
        conditions.steer(pairs, L, N, alpha, mode=mode)
    with pytest.raises(ValueError, match="unknown steering mode"):
        conditions.steer(pairs, L, N, alpha, mode="square")


def test_per_item_modes_and_oracle_match_targeted_steering(subject, df, shape):
    L, N = shape
    sets = _sets(L, N, m=16, seed=2)
    consts = {lbl: torch.full((L, N), 0.5 + i) for i, lbl in enumerate(LABELS)}
    first = np.eye(4)[[0, 1, 2, 3, 1, 1, 0, 3]] * 3.0
    two = per_item.label_free("two_pass", sets, LABELS, L, N, 2.0, first_pass=first, mode="add", constants=consts)
    assert two.scale_for([0]) is None
    add = two.add_for([4])[0]
    m_happy = as_mask(sets["happy"], L, N)
    torch.testing.assert_close(add, 2.0 * 1.5 * m_happy.float())
    y = np.array([LABELS.index(x) for x in df["label"]])
    for mode, c in (("multiply", None), ("patch_mean", consts)):
        orc = per_item.oracle(sets, LABELS, L, N, 1.5, y, mode=mode, constants=c)
        targeted = [conditions.steer(sets[lbl], L, N, 1.5, mode=mode,
                                     constant=None if c is None else c[lbl]) for lbl in LABELS]
        out = runner.run_conditions(subject, df, [orc, *targeted], progress=False)
        for i, yi in enumerate(y):
            np.testing.assert_allclose(out[0, i], out[1 + yi, i], rtol=1e-4, atol=1e-5)


def test_dose_response_alpha_and_steering(subject, df, shape):
    L, N = shape
    sets = _sets(L, N, m=16, seed=2)
    alphas = [-1.0, 0.0, 4.0]
    dose = dose_response.dose_response_alpha(subject, df, sets, alphas, n_boot=0, progress=False)
    assert len(dose) == len(LABELS) * len(alphas) and (dose["mode"] == "multiply").all()
    zero = dose[dose["param"] == 0.0]
    assert (zero["gap"] == 0).all() and (zero["p_target_shift"].abs() < 1e-12).all()
    assert {"acc_others_base", "acc_others_int", "flip_rate", "p_target_shift"} <= set(dose.columns)

    st = _planted_stats(L, N)
    settings = conditions.SteeringSettings(modes=("multiply", "patch_mean"))
    table = steering.steering_experiment(subject, df, sets, alphas, settings=settings, stats=st, n_boot=20,
                                         progress=False)
    assert set(table["strategy"]) == set(steering.STRATEGIES) and set(table["mode"]) == {"multiply", "patch_mean"}
    assert "flip_rate" not in table.columns  # one key per measure
    lf = table[table["strategy"].isin(per_item.LABEL_FREE)]
    assert (lf["target"] == "all").all() and lf["flip_rate_to_target"].isna().all()
    orc = table[table["strategy"] == "oracle"]
    assert (orc["target"] == "true").all()
    np.testing.assert_allclose(orc["flip_rate_to_target"], orc["corrections"])
    mul0 = table[(table["alpha"] == 0.0) & (table["mode"] == "multiply")]
    assert (mul0["delta_uar"] == 0).all() and (mul0["damage"].fillna(0) == 0).all()
    assert (mul0["corrections"].fillna(0) == 0).all()
    m = steering.steering_metrics(table)
    assert m["alpha"] == alphas and set(m["flip_rate"]) == {"multiply", "patch_mean"}
    assert set(m["corrections"]) == set(steering.STRATEGIES) and set(m["by_mode"]) == {"multiply", "patch_mean"}
    assert all(len(v) == len(alphas) for v in m["flip_rate"].values())
    assert m["corrections"]["oracle"] == m["by_mode"]["multiply"]["corrections"]["oracle"]
    assert m["by_mode"]["multiply"]["flip_rate_to_target"]["two_pass"] == [None] * len(alphas)
    tg = table[(table["strategy"] == "targeted") & (table["mode"] == "multiply")]
    mean = tg[tg["target"] == "mean"].set_index("alpha")["flip_rate_to_target"]
    per = tg[tg["target"].isin(LABELS)]
    np.testing.assert_allclose(mean.loc[4.0], per[per["alpha"] == 4.0]["flip_rate_to_target"].mean())
    assert m["flip_rate"]["multiply"][2] == pytest.approx(mean.loc[4.0])


def test_identification_variability(subject, df, shape):
    L, N = shape
    a, b = _sets(L, N, m=12, seed=7), _sets(L, N, m=12, seed=8)
    table, summary = deactivation.identification_variability(subject, df, [{"x": a}, {"x": b}, {"x": a}],
                                                             reference={"x": a},
                                                             progress=False)
    assert len(table) == 3 and table["jaccard_to_reference"].tolist()[0] == 1.0
    assert table["gap"].iloc[0] == table["gap"].iloc[2]
    assert summary["x"]["n_replicates"] == 3
    assert summary["x"]["ci_low"] <= summary["x"]["mean"] <= summary["x"]["ci_high"]


def test_non_additivity_table(subject, df, shape):
    L, N = shape
    sets = _sets(L, N, m=16, seed=4)
    t = steering.non_additivity(subject, df, sets, pairs=[("happy", "sad")], alpha=2.0, n_boot=50, progress=False)
    assert len(t) == 2 * 2  # two targets x two measures
    several = steering.non_additivity(subject, df, sets, pairs=[("happy", "sad")], alpha=[0.0, 2.0], n_boot=0,
                                      progress=False)
    assert len(several) == 2 * 2 * 2 and set(several["alpha"]) == {0.0, 2.0}
    assert (several[several["alpha"] == 0.0][["joint", "additive", "interaction"]].abs() < 1e-9).all().all()
    np.testing.assert_allclose(several[several["alpha"] == 2.0]["interaction"].to_numpy(),
                               t["interaction"].to_numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(t["additive"], t["effect_a"] + t["effect_b"])
    np.testing.assert_allclose(t["interaction"], t["joint"] - t["additive"])
    # with disjoint sets on a nonlinear network the joint effect is generally not the sum
    assert (t["interaction"].abs() > 0).any()
    with pytest.raises(ValueError, match="no neuron set"):
        steering.non_additivity(subject, df, {"happy": sets["happy"]}, pairs=[("happy", "sad")], progress=False)


def test_log_resampled_stats_with_unit_weights_is_the_log_stage(subject, df):
    from helpers.identify.resampling import log_resampled_stats
    from helpers.log.activation_log import log_activations

    items = df.assign(path=[f"a{i}" for i in range(len(df))])
    plain = log_activations(subject, items, positions="audio", only_correct=False, batch_size=3, progress=False)
    (one,) = log_resampled_stats(subject, items, weights=np.ones((1, len(items)), dtype=int), positions="audio",
                                 only_correct=False, batch_size=5, progress=False)
    for name in ("tokens", "items", "active", "total", "total_sq"):
        torch.testing.assert_close(getattr(one, name), getattr(plain.stats, name))
    reps = log_resampled_stats(subject, items, n_resamples=3, seed=2, positions="audio", only_correct=False,
                               progress=False)
    assert len(reps) == 3 and all(r.items.sum() == len(items) for r in reps)
    assert not torch.equal(reps[0].total, reps[1].total)


def test_cached_batched_sweep_equals_the_uncached_one_condition_at_a_time(organism, small_corpora):
    """The audio tower's output is computed once per item and shared by every condition; the reference runs
    the whole model from the waveform for each condition. Same logits, and the reference really did not cache."""
    import dataclasses

    from helpers.data import corpus
    from helpers.intervene.conditions import deactivate, identity, steer
    from helpers.intervene.runner import run_conditions, run_conditions_sequential
    from helpers.subjects.organism_inputs import AudioCache

    df = corpus.load(small_corpora["A"], split="evaluate").head(6)
    pairs = torch.tensor([[0, 1], [1, 5], [4, 9]])
    conds = [identity(), deactivate(pairs, 6, 512), steer(pairs, 6, 512, 3.0)]
    plain = dataclasses.replace(organism, cache=AudioCache(enabled=False))
    cached = dataclasses.replace(organism, cache=AudioCache())
    ref = run_conditions_sequential(plain, df, conds, batch_size=4, reuse_inputs=False, progress=False)
    new = run_conditions(cached, df, conds, batch_size=4, max_rows=8, progress=False)
    assert len(plain.cache) == 0 and cached.cache.misses == len(df)
    np.testing.assert_allclose(new, ref, atol=1e-5, rtol=0)
    assert not np.allclose(ref[0], ref[2])
