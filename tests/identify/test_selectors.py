"""Selectors on planted ground truth, LAPE against a transcription of its reference code, and input errors."""

from __future__ import annotations

import pytest
import torch

from helpers.identify.selection import (
    METHODS,
    SelectionShortfall,
    select,
    select_report,
    tie_report,
)
from helpers.identify.set_ops import jaccard, layer_counts, to_mask
from helpers.log.stats import ActivationStats

LABELS = ["angry", "happy", "neutral", "sad"]
L, N, C = 4, 64, len(LABELS)
M = L * N
TOKENS = torch.tensor([1000.0, 800.0, 1200.0, 900.0])


# ------------------------------------------------------------------------------------------------ planted stats
def _planted():
    """Synthetic stats with known neuron types (flat index = layer * N + neuron), scattered over layers.

    - specific[e] (3 per emotion): p_e = 0.90/0.88/0.86, other emotions 0.05; mean 2.0 vs 0.1.
    - always_on (4): p ~ 0.97-0.99 for EVERY emotion, mean 3.0 everywhere: fools frequency (LAP) only.
    - magnitude[e] (1 per emotion): p = 0.5 everywhere, mean 5.0 for e vs 0.2: only magnitude (MAD) sees it.
    - rare[e] (1 per emotion): p_e = 0.02, others 0: zero entropy, but too rare to matter (LAPE/AAPE filters).
    - dead (2): never active; entropy undefined (0 by the 0 log 0 convention), must never be selected.
    - background: p in [0.1, 0.3], nearly equal over emotions, mean ~0.2.
    """
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(M, generator=gen)
    specific = {c: perm[3 * c : 3 * c + 3].tolist() for c in range(C)}
    always_on = perm[12:16].tolist()
    magnitude = {c: int(perm[16 + c]) for c in range(C)}
    rare = {c: int(perm[20 + c]) for c in range(C)}
    dead = perm[24:26].tolist()

    base = 0.1 + 0.2 * torch.rand(M, 1, generator=gen, dtype=torch.float64)
    p = (base + 0.02 * (torch.rand(M, C, generator=gen, dtype=torch.float64) - 0.5)).clone()
    mean = 0.2 + 0.04 * (torch.rand(M, C, generator=gen, dtype=torch.float64) - 0.5)
    for c in range(C):
        for j, n in enumerate(specific[c]):
            p[n], mean[n] = 0.05, 0.1
            p[n, c], mean[n, c] = 0.90 - 0.02 * j, 2.0 + 0.1 * j  # probability and magnitude rank oppositely
        p[magnitude[c]], mean[magnitude[c]] = 0.5, 0.2
        mean[magnitude[c], c] = 5.0
        p[rare[c]], mean[rare[c]] = 0.0, 0.0
        p[rare[c], c], mean[rare[c], c] = 0.02, 0.05
    p[dead], mean[dead] = 0.0, 0.0
    for j, n in enumerate(always_on):
        p[n], mean[n] = 0.97 + 0.005 * j, 3.0

    active = (p * TOKENS).reshape(L, N, C)
    total = (mean * TOKENS).reshape(L, N, C)
    stats = ActivationStats(
        labels=list(LABELS),
        tokens=TOKENS.clone(),
        items=TOKENS / 10,
        active=active,
        total=total,
        total_sq=total * 10,
    )
    truth = {"specific": specific, "always_on": always_on, "magnitude": magnitude, "rare": rare, "dead": dead}
    return stats, truth


def _flat_list(pairs: torch.Tensor) -> list[int]:
    assert pairs.dtype == torch.long and pairs.ndim == 2 and pairs.shape[1] == 2
    return (pairs[:, 0] * N + pairs[:, 1]).tolist()


def _flat_sets(selection) -> dict[str, set[int]]:
    return {label: set(_flat_list(pairs)) for label, pairs in selection.items()}


@pytest.fixture(scope="module")
def planted():
    return _planted()


def test_lap_prefers_always_on_neurons(planted):
    stats, t = planted
    sel = select(stats, "lap", k=4)
    for label in LABELS:
        # Ranked best first: the always-on neurons by descending probability.
        assert _flat_list(sel[label]) == t["always_on"][::-1]
    sel = select(stats, "lap", fraction=7 / M)
    for c, label in enumerate(LABELS):
        assert _flat_sets(sel)[label] == set(t["always_on"]) | set(t["specific"][c])


def test_cas_finds_specific_neurons_and_never_shared_ones(planted):
    stats, t = planted
    sel = select(stats, "cas", k=3)
    for c, label in enumerate(LABELS):
        assert _flat_list(sel[label]) == t["specific"][c]  # margins 0.85 > 0.83 > 0.81
    everything = select(stats, "cas", k=M)
    chosen = set().union(*_flat_sets(everything).values())
    # Equal probability across emotions: no margin, never chosen however large k is.
    assert chosen.isdisjoint(t["always_on"]) and chosen.isdisjoint(t["magnitude"].values())
    # Each neuron goes to one emotion only.
    assert sum(len(s) for s in _flat_sets(everything).values()) == len(chosen)


def test_mad_finds_magnitude_neurons_that_cas_and_lape_miss(planted):
    stats, t = planted
    top1 = select(stats, "mad", k=1)
    top4 = select(stats, "mad", k=4)
    for c, label in enumerate(LABELS):
        assert _flat_list(top1[label]) == [t["magnitude"][c]]
        assert _flat_sets(top4)[label] == {t["magnitude"][c], *t["specific"][c]}
        assert set(_flat_list(top4[label])).isdisjoint(t["always_on"])
        assert t["magnitude"][c] not in _flat_sets(select(stats, "cas", k=M))[label]


def test_lape_ranks_uniform_neurons_last(planted):
    stats, t = planted
    # Always-on and magnitude neurons clear the filter but their probabilities are equal over emotions:
    # maximal entropy, so they are the last survivors; any budget short of all survivors excludes them.
    flat = stats.prob.flatten()
    filter_value = flat.kthvalue(round(0.95 * flat.numel())).values
    n_survivors = int((stats.prob > filter_value).any(dim=-1).sum())
    uniform = set(t["always_on"]) | set(t["magnitude"].values())
    assert n_survivors > 12 + len(uniform)
    almost_all = set().union(*_flat_sets(select(stats, "lape", k=n_survivors - len(uniform))).values())
    assert almost_all.isdisjoint(uniform)
    everything = _flat_sets(select(stats, "lape", k=n_survivors))
    assert all(uniform <= members for members in everything.values())  # kept, but then above the bar everywhere


def test_lape_keeps_low_entropy_frequent_neurons(planted):
    stats, t = planted
    sel = select(stats, "lape", k=12)
    for c, label in enumerate(LABELS):
        assert _flat_list(sel[label]) == t["specific"][c]  # equal entropy inside a class: ties by p_e
    everything = _flat_sets(select(stats, "lape", k=M))
    for c, label in enumerate(LABELS):
        assert t["rare"][c] not in everything[label]  # entropy 0, but below the filter


def test_lape_filter_matters(planted):
    stats, t = planted
    # Without the filter, the four zero-entropy rare neurons take the whole budget, yet none clears the bar.
    unfiltered = select(stats, "lape", k=4, filter_quantile=1e-9)
    assert all(pairs.shape == (0, 2) for pairs in unfiltered.values())
    assert all(len(s) == 1 for s in _flat_sets(select(stats, "lape", k=4)).values())


def test_lape_default_fraction_and_unequal_counts(planted):
    stats, _ = planted
    sel = select(stats, "lape")  # default 1 % of 256 -> 3 neurons in all, lowest entropy first
    assert sum(v.shape[0] for v in sel.values()) == 3
    assert sorted(v.shape[0] for v in sel.values()) == [0, 1, 1, 1]


def test_aape_drops_rare_neurons_then_ranks_by_entropy(planted):
    stats, t = planted
    sel = select(stats, "aape", k=3, entropy_rate=12 / M)
    for c, label in enumerate(LABELS):
        assert _flat_list(sel[label]) == t["specific"][c]
    default = select(stats, "aape", entropy_rate=12 / M)  # class_rate 0.05 of 12 kept -> 1 per class
    for c, label in enumerate(LABELS):
        assert _flat_list(default[label]) == [t["specific"][c][0]]
    kept = set().union(*_flat_sets(select(stats, "aape", k=12, entropy_rate=12 / M)).values())
    assert kept == {n for c in range(C) for n in t["specific"][c]}
    no_drop = set().union(*_flat_sets(select(stats, "aape", k=12, entropy_rate=12 / M, drop_rate=0)).values())
    assert set(t["rare"].values()) <= no_drop  # without the drop step, rare zero-entropy neurons get in
    assert no_drop.isdisjoint(t["dead"])  # never-active neurons stay out even then


def test_fraction_means_share_of_all_neurons(planted):
    stats, _ = planted
    assert all(v.shape == (13, 2) for v in select(stats, "mad", fraction=0.05).values())  # round(12.8)
    assert all(v.shape == (1, 2) for v in select(stats, "lap", fraction=0.0001).values())  # at least one


# ------------------------------------------------------------------------------------------------ LAPE reference
def _reference_lape(over_zero, n, top_rate, filter_rate, activation_bar_ratio):
    """Transcription of the thresholding in RUCAIBox/Language-Specific-Neurons identify.py (``activation()``).

    Returns, per language (class) index, the set of selected (layer, neuron) pairs.
    """
    activation_probs = over_zero / n  # layer x inter x lang_num
    normed_activation_probs = activation_probs / activation_probs.sum(dim=-1, keepdim=True)
    normed_activation_probs[torch.isnan(normed_activation_probs)] = 0
    log_probs = torch.where(normed_activation_probs > 0, normed_activation_probs.log(), 0)
    entropy = -torch.sum(normed_activation_probs * log_probs, dim=-1)
    largest = False
    flattened_probs = activation_probs.flatten()
    top_prob_value = flattened_probs.kthvalue(round(len(flattened_probs) * filter_rate)).values.item()
    top_position = (activation_probs > top_prob_value).sum(dim=-1)
    entropy[top_position == 0] = -torch.inf if largest else torch.inf
    flattened_entropy = entropy.flatten()
    top_entropy_value = round(len(flattened_entropy) * top_rate)
    _, index = flattened_entropy.topk(top_entropy_value, largest=largest)
    row_index = index // entropy.size(1)
    col_index = index % entropy.size(1)
    selected_probs = activation_probs[row_index, col_index]
    selected_probs = selected_probs.transpose(0, 1)
    activation_bar = flattened_probs.kthvalue(round(len(flattened_probs) * activation_bar_ratio)).values.item()
    lang, indice = torch.where(selected_probs > activation_bar)
    merged_index = torch.stack((row_index, col_index), dim=-1)
    out = {c: set() for c in range(over_zero.shape[-1])}
    for c, i in zip(lang.tolist(), indice.tolist(), strict=True):
        out[c].add(tuple(merged_index[i].tolist()))
    n_survivors = int((top_position > 0).sum())
    return out, n_survivors


@pytest.mark.parametrize(
    ("seed", "top_rate", "filter_rate", "bar_ratio"),
    [
        (0, 0.01, 0.95, 0.95),
        (1, 0.05, 0.95, 0.95),
        (2, 0.05, 0.9, 0.97),
        (3, 0.03, 0.97, 0.9),
    ],
)
def test_lape_matches_reference(seed, top_rate, filter_rate, bar_ratio):
    gen = torch.Generator().manual_seed(seed)
    n_layers, n_neurons, n_classes = 6, 100, 5
    n = torch.randint(300, 1000, (n_classes,), generator=gen).double()
    skew = torch.rand(n_layers, n_neurons, n_classes, generator=gen, dtype=torch.float64) ** 3
    over_zero = torch.floor(skew * n)
    ref, n_survivors = _reference_lape(over_zero, n, top_rate, filter_rate, bar_ratio)
    assert n_survivors >= round(n_layers * n_neurons * top_rate)  # the regime where we agree with the reference
    stats = ActivationStats(
        labels=[f"c{i}" for i in range(n_classes)],
        tokens=n,
        items=n,
        active=over_zero,
        total=over_zero,
        total_sq=over_zero,
    )
    got = select(stats, "lape", fraction=top_rate, filter_quantile=filter_rate, bar_quantile=bar_ratio)
    assert sum(len(s) for s in ref.values()) > 0
    for c in range(n_classes):
        assert {tuple(x) for x in got[f"c{c}"].tolist()} == ref[c]


def test_lape_never_selects_dropped_neurons():
    # Only one neuron clears the filter; the reference's topk would fill k=5 with dropped (inf-entropy) ones.
    p = torch.full((1, 10, 2), 0.1, dtype=torch.float64)
    p[0, 3] = torch.tensor([0.9, 0.2], dtype=torch.float64)
    stats = ActivationStats(labels=["a", "b"], tokens=torch.ones(2), items=torch.ones(2), active=p, total=p, total_sq=p)
    sel = select(stats, "lape", k=5)
    assert sel["a"].tolist() == [[0, 3]] and sel["b"].shape == (0, 2)


# ------------------------------------------------------------------------------------------------ random baseline
def test_random_is_seeded_and_matches_sizes(planted):
    stats, _ = planted
    like = select(stats, "lape", k=20)
    sizes = {label: v.shape[0] for label, v in like.items()}
    assert len(set(sizes.values())) > 1  # unequal sizes make the check meaningful
    a = select(stats, "random", like=like, seed=7)
    b = select(stats, "random", like=like, seed=7)
    c = select(stats, "random", like=like, seed=8)
    assert {label: v.shape[0] for label, v in a.items()} == sizes
    assert all(torch.equal(a[label], b[label]) for label in LABELS)
    assert any(not torch.equal(a[label], c[label]) for label in LABELS if sizes[label] > 0)
    big = select(stats, "random", k=200, seed=0)
    for pairs in big.values():
        assert len(set(_flat_list(pairs))) == 200  # without replacement
        assert pairs[:, 0].max() < L and pairs[:, 1].max() < N
    with pytest.raises(ValueError, match="do not also give fraction or k"):
        select(stats, "random", like=like, k=3)
    with pytest.raises(ValueError, match="like has labels"):
        select(stats, "random", like={"angry": like["angry"]})


# ------------------------------------------------------------------------------------------------ errors
def test_size_arguments_are_checked(planted):
    stats, _ = planted
    with pytest.raises(ValueError, match="not both"):
        select(stats, "lap", fraction=0.01, k=3)
    with pytest.raises(ValueError, match="needs a size: give exactly one of fraction .* or k"):
        select(stats, "mad")
    with pytest.raises(ValueError, match="not both"):
        select(stats, "lape", fraction=0.01, k=3)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        select(stats, "cas", fraction=1.5)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 256\]"):
        select(stats, "cas", k=0)


def test_unknown_method_and_option(planted):
    stats, _ = planted
    with pytest.raises(ValueError, match="unknown selection method 'lapx'.*lap, lape, mad, cas, aape, random"):
        select(stats, "lapx", k=1)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['bogus'\] for method 'lape'.*bar_quantile"):
        select(stats, "lape", k=1, bogus=0.9)
    with pytest.raises(ValueError, match="bar must be 'strict' or 'saturation'"):
        select(stats, "lape", k=1, bar=0.9)
    with pytest.raises(ValueError, match="bar_quantile must be a number in"):
        select(stats, "lape", k=1, bar_quantile=95)
    assert set(METHODS) == {"lap", "lape", "mad", "cas", "aape", "random"}


@pytest.mark.parametrize("method", METHODS)
def test_empty_class_is_named(planted, method):
    stats, _ = planted
    tokens, items, active = stats.tokens.clone(), stats.items.clone(), stats.active.clone()
    tokens[2], items[2], active[..., 2] = 0, 0, 0
    empty = ActivationStats(
        labels=stats.labels, tokens=tokens, items=items, active=active, total=stats.total, total_sq=stats.total_sq
    )
    with pytest.raises(ValueError, match="class 'neutral' has no counted tokens.*identification items.*token mask"):
        select(empty, method, k=1)


# ------------------------------------------------------------------------------------------------ helpers
def test_mask_counts_and_overlap(planted):
    stats, t = planted
    lap, cas = select(stats, "lap", k=7), select(stats, "cas", k=3)
    mask = to_mask(cas, L, N)
    assert mask.shape == (C, L, N) and mask.sum().item() == 12
    assert mask.reshape(C, M)[1, t["specific"][1]].all()
    counts = layer_counts(cas, L)
    assert all(sum(v) == 3 and len(v) == L for v in counts.values())
    assert counts["angry"] == torch.bincount(torch.tensor(t["specific"][0]) // N, minlength=L).tolist()
    assert jaccard(lap, cas) == pytest.approx(dict.fromkeys(LABELS, 3 / 7))
    assert jaccard(cas["angry"], cas["angry"]) == 1.0 and jaccard(cas["angry"], cas["happy"]) == 0.0
    with pytest.raises(ValueError, match=rf"first \({L}, 0\).*{L} x {N} gates"):
        to_mask({"x": torch.tensor([[L, 0]])}, L, N)


# ------------------------------------------------------------------------------------------------ named options
def _stats_from(p: torch.Tensor, mean: torch.Tensor) -> ActivationStats:
    """Stats with prescribed p and mean [M, C] (flat index = layer * N + neuron)."""
    return ActivationStats(labels=list(LABELS), tokens=TOKENS.clone(), items=TOKENS / 10,
                           active=(p * TOKENS).reshape(L, N, C), total=(mean * TOKENS).reshape(L, N, C),
                           total_sq=(mean * TOKENS).reshape(L, N, C) * 10)


def _saturated():
    """Like the answer position: 60 neurons fire on every token of every emotion (p = 1, 23 % of all p), so the
    95 % bar is 1. Planted: 3 specific neurons per emotion (p_e 0.9, else 0.05) and 1 saturated-specific one
    (p_e = 1, else 0.05); background p in [0.1, 0.3]."""
    gen = torch.Generator().manual_seed(5)
    perm = torch.randperm(M, generator=gen)
    p = 0.1 + 0.2 * torch.rand(M, C, generator=gen, dtype=torch.float64)
    mean = 0.2 * torch.ones(M, C, dtype=torch.float64)
    p[perm[:60]] = 1.0
    specific = {c: perm[60 + 4 * c : 63 + 4 * c].tolist() for c in range(C)}
    saturated = {c: int(perm[63 + 4 * c]) for c in range(C)}
    for c in range(C):
        for j, n in enumerate(specific[c]):
            p[n] = 0.05
            p[n, c] = 0.9 - 0.01 * j
        p[saturated[c]] = 0.05
        p[saturated[c], c] = 1.0
    return _stats_from(p, mean), specific, saturated


def test_lape_strict_bar_keeps_nothing_at_saturation_and_says_why():
    stats, _, _ = _saturated()
    report = select_report(stats, "lape", k=16)
    assert report.details["filter_value"] == 1.0 and report.details["filter_rule"] == "strict, saturated"
    assert all(v.shape == (0, 2) for v in report.selection.values()) and not report.full
    assert all("saturated" in why and "bar='saturation'" in why for why in report.shortfall.values())
    with pytest.warns(SelectionShortfall, match="saturated"):
        select(stats, "lape", k=16)


def test_lape_saturation_bar_finds_the_planted_neurons():
    stats, specific, saturated = _saturated()
    report = select_report(stats, "lape", k=16, bar="saturation")
    assert report.details["bar_rule"].startswith("saturation") and report.details["bar_value"] < 1.0
    assert report.full
    for c, label in enumerate(LABELS):
        got = _flat_list(report.selection[label])
        assert set(got) == {*specific[c], saturated[c]}
        assert got[0] == saturated[c]  # lowest entropy (p = 1 vs 0.05) first
    # the 60 neurons saturated for every emotion pass the filter but have maximal entropy: never kept
    all_on = set(torch.randperm(M, generator=torch.Generator().manual_seed(5))[:60].tolist())
    assert all_on.isdisjoint(set().union(*_flat_sets(report.selection).values()))


def test_lape_saturation_bar_equals_strict_when_nothing_saturates(planted):
    stats, _ = planted
    for k in (12, 40):
        strict, sat = select_report(stats, "lape", k=k), select_report(stats, "lape", k=k, bar="saturation")
        assert sat.details["bar_rule"] == sat.details["filter_rule"] == "strict"
        assert all(torch.equal(strict.selection[lbl], sat.selection[lbl]) for lbl in LABELS)


def _tied():
    """20 neurons with p = 1 for every emotion and distinct means (0.5 .. 2.4); one neuron with p = 0.99 and a
    huge mean; background p < 0.5."""
    gen = torch.Generator().manual_seed(9)
    perm = torch.randperm(M, generator=gen)
    p = 0.1 + 0.3 * torch.rand(M, C, generator=gen, dtype=torch.float64)
    mean = 0.2 * torch.ones(M, C, dtype=torch.float64)
    tied = perm[:20].tolist()
    for j, n in enumerate(tied):
        p[n], mean[n] = 1.0, 0.5 + 0.1 * j
    p[perm[20]], mean[perm[20]] = 0.99, 50.0
    return _stats_from(p, mean), tied, int(perm[20])


def test_lap_ties_mean_vs_random_and_the_tie_report():
    stats, tied, runner_up = _tied()
    by_mean = select_report(stats, "lap", k=5)
    for label in LABELS:
        assert _flat_list(by_mean.selection[label]) == tied[::-1][:5]  # highest mean first among p = 1
        assert tie_report(by_mean)[label] == {"cut_value": 1.0, "tied_at_cut": 20, "tied_selected": 5}
    r0, r0b, r1 = (select_report(stats, "lap", k=5, ties="random", seed=s) for s in (0, 0, 1))
    for label in LABELS:
        got = _flat_list(r0.selection[label])
        assert set(got) <= set(tied) and runner_up not in got  # ties only reorder equal p
        assert got == _flat_list(r0b.selection[label])  # seeded
    assert any(_flat_list(r0.selection[lbl]) != _flat_list(r1.selection[lbl]) for lbl in LABELS)
    assert any(set(_flat_list(r0.selection[lbl])) != set(tied[::-1][:5]) for lbl in LABELS)
    # with room for all the tied neurons, the tie-breaker no longer decides membership
    wide = select_report(stats, "lap", k=21, ties="random")
    assert all(set(_flat_list(v)) == {*tied, runner_up} for v in wide.selection.values())
    assert tie_report(wide)["angry"]["tied_at_cut"] == 1


def test_cas_on_means_finds_magnitude_neurons(planted):
    stats, t = planted
    on_mean = select(stats, "cas", k=1, on="mean")
    on_prob = _flat_sets(select(stats, "cas", k=M))
    for c, label in enumerate(LABELS):
        assert _flat_list(on_mean[label]) == [t["magnitude"][c]]  # mean margin 4.8, the largest
        assert t["magnitude"][c] not in on_prob[label]
    with pytest.raises(ValueError, match="on must be"):
        select(stats, "cas", k=1, on="median")


def test_cas_reports_how_many_neurons_prefer_an_emotion(planted):
    stats, _ = planted
    report = select_report(stats, "cas", k=M)
    assert not report.full and all("top emotion by prob" in why for why in report.shortfall.values())
    assert all(report.sizes[lbl] < M for lbl in LABELS)


def test_aape_budget_own_vs_fraction(planted):
    stats, t = planted
    own = select_report(stats, "aape", entropy_rate=12 / M)
    assert own.details["budget"] == "own" and set(own.sizes.values()) == {1}  # round(0.05 * 12) -> 1
    same = select_report(stats, "aape", k=20, entropy_rate=12 / M)
    assert same.details["budget"] == "fraction" and same.details["pool_enlarged"]
    assert set(same.sizes.values()) == {20} and same.full
    for c, label in enumerate(LABELS):
        assert set(t["specific"][c]) <= set(_flat_list(same.selection[label]))
    lap = select(stats, "lap", k=20)
    assert {lbl: v.shape[0] for lbl, v in lap.items()} == same.sizes  # equal budgets
    with pytest.raises(ValueError, match="budget='own'"):
        select(stats, "aape", k=3, budget="own")
    with pytest.raises(ValueError, match="needs a size"):
        select(stats, "aape", budget="fraction")


def test_random_draws_are_independent_per_salt_and_can_match_layers(planted):
    stats, _ = planted
    like = select(stats, "cas", k=3)
    a, b = select(stats, "random", like=like, salt="mad"), select(stats, "random", like=like, salt="lap")
    assert all(not torch.equal(a[lbl], b[lbl]) for lbl in LABELS)
    matched = select(stats, "random", like=like, salt="cas", match_layers=True)
    assert layer_counts(matched, L) == layer_counts(like, L)
    assert select_report(stats, "random", like=like).full


def test_select_many_and_option_variants(planted):
    from helpers.identify.selection import OPTIONS, option_variants, select_many

    stats, _ = planted
    specs = {"lap": {"fraction": 0.02}, "lape": {"fraction": 0.05, "bar": "saturation"}, "mad": {"fraction": 0.02},
             "cas": {"fraction": 0.02}, "aape": {"entropy_rate": 12 / M}}
    reports = select_many(stats, specs)
    assert list(reports) == list(specs)
    for name, spec in specs.items():  # the same selection as select() with the same options
        kw = dict(spec)
        ref = select_report(stats, name, **kw)
        assert all(torch.equal(ref.selection[lbl], reports[name].selection[lbl]) for lbl in LABELS)
    variants = option_variants(specs, fraction=0.02)
    assert set(variants) == {"lap(ties=random)", "lape(bar=strict)", "cas(on=mean)", "aape(budget=fraction)"}
    assert variants["lape(bar=strict)"] == {"method": "lape", "fraction": 0.05, "bar": "strict"}
    assert variants["aape(budget=fraction)"]["fraction"] == 0.02 and variants["aape(budget=fraction)"]["budget"] == \
        "fraction"
    got = select_many(stats, variants)
    assert got["aape(budget=fraction)"].sizes == reports["mad"].sizes  # equal budgets
    assert got["cas(on=mean)"].details["ties"] and got["lap(ties=random)"].method == "lap"
    assert set(OPTIONS) == {"lap", "lape", "cas", "aape"}
    # a spec already at the non-default value gets the default as its variant; aape needs the budget
    assert set(option_variants({"x": {"method": "cas", "k": 3, "on": "mean"}})) == {"cas(on=prob)"}
    with pytest.raises(ValueError, match="needs the budget"):
        option_variants({"aape": {}})
