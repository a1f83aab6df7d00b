"""The neuron selectors (LAP, LAPE, MAD, CAS, AAPE, random), each from :class:`~helpers.log.stats.ActivationStats`
alone, and the ranking helpers they share; run them by name with :func:`helpers.identify.selection.select`.

Every selector returns ``{label: LongTensor[m, 2]}`` of ``(layer, neuron)`` pairs, best first, ranked globally
across layers. "Active" means gate activation > 0 and ``p_e(l, n) = active / tokens`` for emotion ``e``.

Selectors differ in what they call "specific", and the differences matter: a neuron that fires on almost every
token of every emotion tops a frequency ranking (LAP) yet carries no emotion information; entropy (LAPE, AAPE),
contrast (CAS) and magnitude (MAD) criteria each reject it for a different reason. ``tests/identify/test_selectors.py``
plants such cases and checks each selector's behaviour on them.

Sizes: ``fraction`` is a share of *all* decoder gate neurons ``L * N`` (``k = max(1, round(fraction * L * N))``),
``k`` an absolute count. Ties are broken deterministically (documented per method, finally by lower flat index
``layer * N + neuron``), so the same stats always give the same selection.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch

from helpers.core.neuron_sets import random_sets, stable_seed
from helpers.log.stats import ActivationStats

Selection = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------- the methods
def select_lap(stats: ActivationStats, k: int, *, ties: Literal["mean", "random"] = "mean", seed: int = 0,
               report: dict | None = None) -> Selection:
    """LAP (activation probability): per emotion e, the ``k`` neurons with the highest ``p_e``.

    Frequency only, no contrast: a neuron that fires for every emotion ranks as high as an emotion-specific
    one, which is why it serves as the naive baseline.

    ``ties``: how neurons with equal ``p_e`` are ordered, which decides the set whenever more neurons tie at the
    cut than fit (at the answer position, hundreds of neurons per emotion have ``p = 1``).

    * ``"mean"`` (default, as before): higher mean activation for e first — a magnitude criterion slipped into
      a frequency selector, so LAP at saturation behaves partly like MAD.
    * ``"random"``: a seeded random order among equal ``p_e`` (``seed`` mixed with ``"lap-ties"`` and the
      label), i.e. LAP as a pure frequency criterion.

    The number of neurons tied at the cut is in :func:`~helpers.identify.selection.select_report`'s
    ``details["ties"]`` (:func:`~helpers.identify.selection.tie_report`).
    """
    if ties not in ("mean", "random"):
        raise ValueError(f"ties must be 'mean' or 'random', got {ties!r}")
    p, mean = _flat(stats.prob), _flat(stats.mean)
    out: Selection = {}
    tie_info: dict[str, dict[str, float]] = {}
    for c, label in enumerate(stats.labels):
        if ties == "mean":
            second = mean[:, c]
        else:
            gen = torch.Generator().manual_seed(stable_seed(seed, "lap-ties", label))
            second = torch.randperm(p.shape[0], generator=gen).double()
        order = _order((p[:, c], True), (second, True))
        out[label] = _pairs(order[:k], stats.n_neurons)
        tie_info[label] = _ties_at_cut(p[:, c], order, k)
    _fill(report, ties=tie_info)
    return out


def select_lape(
    stats: ActivationStats,
    k: int,
    *,
    filter_quantile: float = 0.95,
    bar_quantile: float = 0.95,
    bar: Literal["strict", "saturation"] = "strict",
    report: dict | None = None,
) -> Selection:
    """LAPE (activation probability entropy; Tang et al. 2024, RUCAIBox/Language-Specific-Neurons identify.py).

    1. ``p`` over emotions is normalised to a distribution ``q = p / sum_c p`` and its entropy
       ``H = -sum_c q log q`` (0 log 0 = 0) measures how concentrated a neuron's firing is.
    2. ``filter_quantile``: the filter value is the ``round(filter_quantile * count)``-th smallest of all
       ``L * N * C`` values of ``p`` (``torch.kthvalue``, not an interpolated quantile). Neurons whose ``p``
       never exceeds it for any emotion are dropped: rarely firing neurons have low entropy by chance.
    3. The ``k`` lowest-entropy surviving neurons are kept, globally across layers (via
       :func:`~helpers.identify.selection.select`, ``fraction`` is this share of all ``L * N`` neurons). Ties:
       higher ``max_c p`` first.
    4. ``bar_quantile``: same construction gives the activation bar; a kept neuron belongs to every emotion
       whose ``p`` is above it, so emotions can get different counts (or none). Within an emotion: entropy
       ascending, ties by ``p_e`` descending.

    ``bar`` — how the filter value and the bar of steps 2 and 4 are compared:

    * ``"strict"`` (default, the reference): ``p > value``. When more than ``1 - quantile`` of all ``p`` are
      saturated at their maximum (``p = 1``: at the answer position 17.8 % of them on the organism), the value
      *is* that maximum, nothing exceeds it, and LAPE keeps nothing.
    * ``"saturation"``: identical to ``"strict"`` whenever the value lies below the maximum of ``p``; when it
      equals the maximum, the same quantile is taken over the values *below* the maximum instead, and ``p >``
      that. Saturated neurons then pass (they exceed every unsaturated value), as the reference intends for its
      top 5 %, and the rest of the ranking is unchanged. We chose this over ``p >= value`` because ``>=`` at a
      bar of 1 keeps only the saturated neurons — the ones that fire on every token of some emotion, mostly
      of every emotion — and makes the bar meaningless.

    Which rule set each value is in the report's ``details`` (``filter_value``, ``bar_value``, ``filter_rule``,
    ``bar_rule``, ``n_candidates``); an emotion with no neuron above the bar is reported with the reason.

    Deviation from the reference: its ``topk`` over entropies (dropped neurons set to +inf) picks dropped
    neurons when fewer than ``k`` survive; we never select a dropped neuron, so we may return fewer.
    """
    if bar not in ("strict", "saturation"):
        raise ValueError(f"bar must be 'strict' or 'saturation', got {bar!r}")
    p = _flat(stats.prob)
    n_classes = p.shape[1]
    filter_value, filter_rule = _lape_value(p.flatten(), filter_quantile, "filter_quantile", bar)
    bar_value, bar_rule = _lape_value(p.flatten(), bar_quantile, "bar_quantile", bar)
    ent = _flat(entropy(stats.prob)[..., None])[:, 0]
    candidates = (p > filter_value).any(dim=1).nonzero().squeeze(1)
    order = _order((ent[candidates], False), (p[candidates].max(dim=1).values, True))
    kept = candidates[order[:k]]
    out: Selection = {}
    shortfall: dict[str, str] = {}
    for c in range(n_classes):
        members = kept[p[kept, c] > bar_value]
        members = members[_order((ent[members], False), (p[members, c], True))]
        label = stats.labels[c]
        out[label] = _pairs(members, stats.n_neurons)
        if members.numel() == 0:
            if candidates.numel() == 0:
                why = (f"no neuron's p exceeds the filter value {filter_value:.4g} ({filter_rule}); "
                       + ("p is saturated at its maximum, use bar='saturation'" if filter_rule == "strict, saturated"
                          else "lower filter_quantile"))
            else:
                why = (f"none of the {kept.numel()} kept neurons has p_{label} above the bar {bar_value:.4g} "
                       f"({bar_rule})" + ("; p is saturated at its maximum, use bar='saturation'"
                                          if bar_rule == "strict, saturated" else ""))
            shortfall[label] = why
    if 0 < candidates.numel() < k:
        for label in stats.labels:
            shortfall.setdefault(label, f"only {candidates.numel()} neurons clear the filter, fewer than the {k} "
                                        "to keep (LAPE never selects a dropped neuron)")
    _fill(report, requested=dict.fromkeys(stats.labels), shortfall=shortfall, filter_value=filter_value,
          bar_value=bar_value, filter_rule=filter_rule, bar_rule=bar_rule, n_candidates=int(candidates.numel()),
          n_kept=int(kept.numel()), k=k)
    return out


def select_mad(stats: ActivationStats, k: int, *, report: dict | None = None) -> Selection:
    """MAD (mean activation difference): ``score_e = mean_e - mean_{c != e} mean_c``; top ``k`` per emotion.

    ``mean_c`` is the mean activation (``total / tokens``) over class c's counted tokens. Magnitude-based:
    finds neurons that fire about as often for every emotion but much more strongly for one. Ties: higher
    ``p_e`` first.
    """
    mean, p = _flat(stats.mean), _flat(stats.prob)
    n_classes = mean.shape[1]
    others = (mean.sum(dim=1, keepdim=True) - mean) / (n_classes - 1)
    score = mean - others
    out: Selection = {}
    tie_info = {}
    for c, label in enumerate(stats.labels):
        order = _order((score[:, c], True), (p[:, c], True))
        out[label] = _pairs(order[:k], stats.n_neurons)
        tie_info[label] = _ties_at_cut(score[:, c], order, k)
    _fill(report, ties=tie_info)
    return out


def select_cas(stats: ActivationStats, k: int, *, min_margin: float = 0.0, on: Literal["prob", "mean"] = "prob",
               report: dict | None = None) -> Selection:
    """CAS (contrastive activation selectivity): each neuron belongs only to its top emotion.

    ``on`` — what the contrast is computed on:

    * ``"prob"`` (default, the paper's): ``score = p_top - p_second`` over the activation probabilities.
      Picks selective neurons, however weakly they fire.
    * ``"mean"``: the same on mean activations (``mean_top - mean_second``): a neuron that fires equally often
      for every emotion but more strongly for one (invisible to ``"prob"``) now counts.

    Per emotion e, among the neurons whose top emotion is e, the ``k`` with the highest score (fewer if fewer
    neurons prefer e; the report says how many did). ``min_margin``: a neuron needs ``score > min_margin`` to
    count at all; the default 0 drops exact ties, which prefer no emotion. Ties in score: higher ``p_e`` first.
    """
    if on not in ("prob", "mean"):
        raise ValueError(f"on must be 'prob' or 'mean', got {on!r}")
    p = _flat(stats.prob)
    x = p if on == "prob" else _flat(stats.mean)
    top2 = x.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    top = x.argmax(dim=1)
    out: Selection = {}
    shortfall: dict[str, str] = {}
    tie_info = {}
    for c, label in enumerate(stats.labels):
        members = ((top == c) & (margin > min_margin)).nonzero().squeeze(1)
        order = _order((margin[members], True), (p[members, c], True))
        out[label] = _pairs(members[order[:k]], stats.n_neurons)
        tie_info[label] = _ties_at_cut(margin[members], order, k)
        if members.numel() < k:
            shortfall[label] = (f"only {members.numel()} neurons have {label!r} as their top emotion by {on} with a "
                                f"margin > {min_margin:g}")
    _fill(report, shortfall=shortfall, ties=tie_info)
    return out


def select_aape(
    stats: ActivationStats,
    k: int | None = None,
    *,
    drop_rate: float = 0.05,
    entropy_rate: float = 0.05,
    class_rate: float = 0.05,
    budget: Literal["own", "fraction"] | None = None,
    report: dict | None = None,
) -> Selection:
    """AAPE (audio activation probability entropy; Kawamura, Niizumi, Ono 2026, "What Do Neurons Listen To?").

    1. ``drop_rate``: the overall activation probability ``sum_c active / sum_c tokens`` (pooled over classes,
       token weighted) is computed; with ``d = round(drop_rate * L * N)``, every neuron at or below the d-th
       smallest value is dropped (ties drop together, no arbitrary cut). Never-active neurons are always
       dropped: their entropy is undefined, and 0 would make them look perfectly selective.
    2. ``entropy_rate``: of the survivors, the ``max(1, round(entropy_rate * L * N))`` neurons with the lowest
       entropy of the normalised ``p`` (as in LAPE) are kept; the rate is a share of *all* neurons, like LAPE's
       fraction, so it does not move when ``drop_rate`` changes. Ties: higher ``max_c p`` first.
    3. Per class, the top kept neurons by ``p_e`` (ties: lower entropy first); how many is the ``budget``:

       * ``"own"`` (the paper's recipe; the default when :func:`~helpers.identify.selection.select` gets no size):
         ``max(1, round(class_rate * n_kept))`` per class. On a small model this is a handful of neurons
         (8 on the organism against 154 for the other selectors), so its gap is not comparable with theirs.
       * ``"fraction"`` (the default when :func:`~helpers.identify.selection.select` gets ``fraction`` or
         ``k``): the same per-emotion count as the other selectors, for comparisons at equal budgets. The
         entropy pool of step 2 is enlarged to at least that count if it is smaller (``details["pool_enlarged"]``).

    Defaults: 5 % for all three rates, so the own per-class set is ~0.25 % of all neurons.
    """
    _check_rate(drop_rate, "drop_rate", allow_zero=True)
    _check_rate(entropy_rate, "entropy_rate")
    _check_rate(class_rate, "class_rate")
    if budget is None:
        budget = "own" if k is None else "fraction"
    if budget not in ("own", "fraction"):
        raise ValueError(f"budget must be 'own' or 'fraction', got {budget!r}")
    if budget == "own" and k is not None:
        raise ValueError("budget='own' takes AAPE's per-class count from class_rate; do not also give fraction or "
                         "k (or use budget='fraction' to give AAPE the same budget as the other selectors)")
    if budget == "fraction" and k is None:
        raise ValueError("budget='fraction' needs a size: give fraction or k to select()")
    p = _flat(stats.prob)
    n_total = p.shape[0]
    overall = _flat(stats.active.sum(dim=-1, keepdim=True))[:, 0] / stats.tokens.sum()
    alive = overall > 0
    n_drop = round(drop_rate * n_total)
    if n_drop >= 1:
        alive &= overall > torch.kthvalue(overall, min(n_drop, n_total)).values
    ent = _flat(entropy(stats.prob)[..., None])[:, 0]
    candidates = alive.nonzero().squeeze(1)
    order = _order((ent[candidates], False), (p[candidates].max(dim=1).values, True))
    pool = max(1, round(entropy_rate * n_total))
    enlarged = False
    if budget == "fraction" and k is not None and k > pool:
        pool, enlarged = int(k), True
    kept = candidates[order[:pool]]
    per_class = int(k) if budget == "fraction" and k is not None else max(1, round(class_rate * kept.numel()))
    out = {
        label: _pairs(kept[_order((p[kept, c], True), (ent[kept], False))[:per_class]], stats.n_neurons)
        for c, label in enumerate(stats.labels)
    }
    shortfall = {}
    if kept.numel() < per_class:
        shortfall = dict.fromkeys(stats.labels, f"only {kept.numel()} neurons survive the drop step "
                                                f"(drop_rate={drop_rate:g}), fewer than {per_class} per class")
    _fill(report, requested=dict.fromkeys(stats.labels, per_class), shortfall=shortfall, budget=budget,
          n_kept=int(kept.numel()), pool_enlarged=enlarged, per_class=per_class)
    return out


def select_random(
    stats: ActivationStats,
    k: int | None = None,
    *,
    like: Mapping[str, Any] | None = None,
    match_layers: bool = False,
    salt: str = "random",
    seed: int = 0,
    report: dict | None = None,
) -> Selection:
    """Random baseline: per label, neurons drawn without replacement by :func:`helpers.core.neuron_sets.random_sets`.

    Sizes come from ``like`` (a selection whose per-label sizes are copied, so the baseline matches e.g. a
    LAPE selection emotion by emotion; with ``match_layers`` also its count per layer) or from ``k``.
    Deterministic in ``(seed, salt, label)``: give each compared selector its own ``salt`` (e.g. its name) so
    that their random controls are independent draws.
    """
    n_total = stats.n_layers * stats.n_neurons
    if like is not None:
        if set(like) != set(stats.labels):
            raise ValueError(f"like has labels {sorted(like)} but the stats have {sorted(stats.labels)}")
        reference: dict[str, Any] = {label: like[label] for label in stats.labels}
    elif k is not None:
        if match_layers:
            raise ValueError("match_layers needs like=<selection> (a layer profile to match)")
        if k > n_total:
            raise ValueError(f"cannot draw {k} neurons without replacement from {n_total}")
        reference = dict.fromkeys(stats.labels, int(k))
    else:
        raise ValueError("method 'random' needs like=<selection> or one of fraction / k")
    out = random_sets(reference, (stats.n_layers, stats.n_neurons), seed=seed, salt=salt, match_layers=match_layers)
    _fill(report, requested={label: int(v.shape[0]) for label, v in out.items()})
    return out


_FUNCS: dict[str, Callable[..., Selection]] = {
    "lap": select_lap,
    "lape": select_lape,
    "mad": select_mad,
    "cas": select_cas,
    "aape": select_aape,
    "random": select_random,
}


# ---------------------------------------------------------------------------------------------- helpers
def entropy(prob: torch.Tensor) -> torch.Tensor:
    """Entropy over the last (class) axis of ``prob`` normalised to sum 1, with 0 log 0 = 0.

    A neuron that never fires gets 0 (the reference's convention); callers must filter such neurons.
    """
    normed = prob / prob.sum(dim=-1, keepdim=True)
    normed = torch.nan_to_num(normed, nan=0.0)
    logs = torch.where(normed > 0, normed.log(), torch.zeros_like(normed))
    return -(normed * logs).sum(dim=-1)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``[L, N, C]`` -> ``[L * N, C]`` with flat index ``layer * N + neuron``."""
    return x.reshape(-1, x.shape[-1])


def _pairs(flat_idx: torch.Tensor, n_neurons: int) -> torch.Tensor:
    flat_idx = flat_idx.long()
    return torch.stack((flat_idx // n_neurons, flat_idx % n_neurons), dim=1)


def _order(*keys: tuple[torch.Tensor, bool]) -> torch.Tensor:
    """Permutation sorting by several keys (primary first; each ``(values, descending)``), remaining ties by
    position. Built from stable sorts, last key first, like ``numpy.lexsort``."""
    n = keys[0][0].shape[0]
    idx = torch.arange(n)
    for values, descending in reversed(keys):
        perm = torch.sort(values[idx], descending=descending, stable=True).indices
        idx = idx[perm]
    return idx


def _kth_smallest(values: torch.Tensor, quantile: float, name: str) -> float:
    """The ``round(quantile * count)``-th smallest value (clamped to 1..count), as in the LAPE reference."""
    _check_rate(quantile, name)
    kk = min(max(1, round(values.numel() * quantile)), values.numel())
    return torch.kthvalue(values, kk).values.item()


def _lape_value(values: torch.Tensor, quantile: float, name: str, bar: str) -> tuple[float, str]:
    """LAPE's filter value / bar and the rule that set it (see :func:`select_lape`'s ``bar``)."""
    value = _kth_smallest(values, quantile, name)
    top = float(values.max())
    if value < top:
        return value, "strict"
    if bar == "strict":
        return value, "strict, saturated"
    below = values[values < top]
    if below.numel() == 0:
        return value, "saturation: every value is the maximum"
    return _kth_smallest(below, quantile, name), "saturation: quantile of the values below the maximum"


def _ties_at_cut(score: torch.Tensor, order: torch.Tensor, k: int) -> dict[str, float]:
    """How many neurons share the score of the last selected one, and how many of those made it in."""
    n = int(order.numel())
    if n == 0 or k <= 0:
        return {"cut_value": float("nan"), "tied_at_cut": 0, "tied_selected": 0}
    cut = score[order[min(k, n) - 1]]
    tied = score == cut
    return {"cut_value": float(cut), "tied_at_cut": int(tied.sum()), "tied_selected": int(tied[order[:k]].sum())}


def _fill(report: dict | None, **values: Any) -> None:
    if report is not None:
        report.update(values)


def _check_rate(value: float, name: str, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and (value >= 0 if allow_zero else value > 0) and value <= 1
    if not ok:
        bound = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must be a number in {bound}, got {value!r}")
