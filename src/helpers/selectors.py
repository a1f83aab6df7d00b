"""Neuron selectors: which gate neurons are emotion-specific, from :class:`~helpers.stats.ActivationStats` alone.

Every selector returns ``{label: LongTensor[m, 2]}`` of ``(layer, neuron)`` pairs, best first, ranked globally
across layers. "Active" means gate activation > 0 and ``p_e(l, n) = active / tokens`` for emotion ``e``.

Selectors differ in what they call "specific", and the differences matter: a neuron that fires on almost every
token of every emotion tops a frequency ranking (LAP) yet carries no emotion information; entropy (LAPE, AAPE),
contrast (CAS) and magnitude (MAD) criteria each reject it for a different reason. ``tests/test_selectors.py``
plants such cases and checks each selector's behaviour on them.

Sizes: ``fraction`` is a share of *all* decoder gate neurons ``L * N`` (``k = max(1, round(fraction * L * N))``),
``k`` an absolute count. Ties are broken deterministically (documented per method, finally by lower flat index
``layer * N + neuron``), so the same stats always give the same selection.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping

import torch

from helpers.stats import ActivationStats

#: Valid ``method`` names for :func:`select`.
METHODS: tuple[str, ...] = ("lap", "lape", "mad", "cas", "aape", "random")

#: LAPE's default share of all neurons kept by entropy when neither ``fraction`` nor ``k`` is given: the 1 %
#: of Tang et al. (2024). (The version of their identify.py we read sets ``top_rate = 0.05``; pass
#: ``fraction=0.05`` to reproduce that.)
LAPE_DEFAULT_FRACTION = 0.01

Selection = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------- public entry
def select(
    stats: ActivationStats,
    method: str,
    *,
    fraction: float | None = None,
    k: int | None = None,
    seed: int = 0,
    **options,
) -> Selection:
    """Select emotion-specific neurons with ``method`` (one of :data:`METHODS`).

    Give exactly one of ``fraction`` (share of all ``L * N`` neurons, per emotion) or ``k`` (count per emotion).
    Exceptions, where the size has a method-specific meaning: ``lape`` (the share kept by entropy; defaults to
    :data:`LAPE_DEFAULT_FRACTION`), ``aape`` (overrides the per-class count; defaults to ``class_rate``) and
    ``random`` (sizes may come from ``like=`` instead). ``seed`` only affects ``random``. ``options`` are the
    method's named thresholds, see ``select_<method>``.
    """
    if not isinstance(stats, ActivationStats):
        raise TypeError(f"stats must be an ActivationStats, got {type(stats).__name__}")
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; valid methods: {', '.join(METHODS)}")
    func = _FUNCS[method]
    allowed = [n for n, p in inspect.signature(func).parameters.items() if p.kind is p.KEYWORD_ONLY and n != "seed"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {method!r}; valid options: {allowed or 'none'}")
    _check_classes(stats, method)

    if fraction is not None and k is not None:
        raise ValueError(f"give either fraction or k for method {method!r}, not both (got fraction={fraction}, k={k})")
    neither = fraction is None and k is None
    if method == "lape" and neither:
        fraction = LAPE_DEFAULT_FRACTION
    elif method == "random" and options.get("like") is not None:
        if not neither:
            raise ValueError("method 'random' takes its sizes from like=...; do not also give fraction or k")
    elif neither and method != "aape":
        raise ValueError(
            f"method {method!r} needs a size: give exactly one of fraction (share of all "
            f"{stats.n_layers} x {stats.n_neurons} neurons, per emotion) or k (neurons per emotion)"
        )
    size = None if fraction is None and k is None else _resolve_k(fraction, k, stats.n_layers * stats.n_neurons)
    if method == "random":
        return func(stats, size, seed=seed, **options)
    return func(stats, size, **options)


# ---------------------------------------------------------------------------------------------- the methods
def select_lap(stats: ActivationStats, k: int) -> Selection:
    """LAP (activation probability): per emotion e, the ``k`` neurons with the highest ``p_e``.

    Frequency only, no contrast: a neuron that fires for every emotion ranks as high as an emotion-specific
    one, which is why it serves as the naive baseline. Ties: higher mean activation for e first.
    """
    p, mean = _flat(stats.prob), _flat(stats.mean)
    return {
        label: _pairs(_order((p[:, c], True), (mean[:, c], True))[:k], stats.n_neurons)
        for c, label in enumerate(stats.labels)
    }


def select_lape(
    stats: ActivationStats, k: int, *, filter_quantile: float = 0.95, bar_quantile: float = 0.95
) -> Selection:
    """LAPE (activation probability entropy; Tang et al. 2024, RUCAIBox/Language-Specific-Neurons identify.py).

    1. ``p`` over emotions is normalised to a distribution ``q = p / sum_c p`` and its entropy
       ``H = -sum_c q log q`` (0 log 0 = 0) measures how concentrated a neuron's firing is.
    2. ``filter_quantile``: the filter value is the ``round(filter_quantile * count)``-th smallest of all
       ``L * N * C`` values of ``p`` (``torch.kthvalue``, not an interpolated quantile). Neurons whose ``p``
       never exceeds it for any emotion are dropped: rarely firing neurons have low entropy by chance.
    3. The ``k`` lowest-entropy surviving neurons are kept, globally across layers (via :func:`select`,
       ``fraction`` is this share of all ``L * N`` neurons). Ties: higher ``max_c p`` first.
    4. ``bar_quantile``: same construction gives the activation bar; a kept neuron belongs to every emotion
       whose ``p`` is above it, so emotions can get different counts (or none). Within an emotion: entropy
       ascending, ties by ``p_e`` descending.

    Deviation from the reference: its ``topk`` over entropies (dropped neurons set to +inf) picks dropped
    neurons when fewer than ``k`` survive; we never select a dropped neuron, so we may return fewer.
    """
    p = _flat(stats.prob)
    n_classes = p.shape[1]
    filter_value = _kth_smallest(p.flatten(), filter_quantile, "filter_quantile")
    bar = _kth_smallest(p.flatten(), bar_quantile, "bar_quantile")
    ent = _flat(entropy(stats.prob)[..., None])[:, 0]
    candidates = (p > filter_value).any(dim=1).nonzero().squeeze(1)
    order = _order((ent[candidates], False), (p[candidates].max(dim=1).values, True))
    kept = candidates[order[:k]]
    out: Selection = {}
    for c in range(n_classes):
        members = kept[p[kept, c] > bar]
        members = members[_order((ent[members], False), (p[members, c], True))]
        out[stats.labels[c]] = _pairs(members, stats.n_neurons)
    return out


def select_mad(stats: ActivationStats, k: int) -> Selection:
    """MAD (mean activation difference): ``score_e = mean_e - mean_{c != e} mean_c``; top ``k`` per emotion.

    ``mean_c`` is the mean activation (``total / tokens``) over class c's counted tokens. Magnitude-based:
    finds neurons that fire about as often for every emotion but much more strongly for one. Ties: higher
    ``p_e`` first.
    """
    mean, p = _flat(stats.mean), _flat(stats.prob)
    n_classes = mean.shape[1]
    others = (mean.sum(dim=1, keepdim=True) - mean) / (n_classes - 1)
    score = mean - others
    return {
        label: _pairs(_order((score[:, c], True), (p[:, c], True))[:k], stats.n_neurons)
        for c, label in enumerate(stats.labels)
    }


def select_cas(stats: ActivationStats, k: int, *, min_margin: float = 0.0) -> Selection:
    """CAS (contrastive activation selectivity): each neuron belongs only to its top emotion by ``p``.

    ``score = p_top - p_second``. Per emotion e, among the neurons whose top emotion is e, the ``k`` with the
    highest score (fewer if fewer neurons prefer e). ``min_margin``: a neuron needs ``score > min_margin`` to
    count at all; the default 0 drops exact ties, which prefer no emotion. Ties in score: higher ``p_e`` first.
    """
    p = _flat(stats.prob)
    top2 = p.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    top = p.argmax(dim=1)
    out: Selection = {}
    for c, label in enumerate(stats.labels):
        members = ((top == c) & (margin > min_margin)).nonzero().squeeze(1)
        members = members[_order((margin[members], True), (p[members, c], True))[:k]]
        out[label] = _pairs(members, stats.n_neurons)
    return out


def select_aape(
    stats: ActivationStats,
    k: int | None = None,
    *,
    drop_rate: float = 0.05,
    entropy_rate: float = 0.05,
    class_rate: float = 0.05,
) -> Selection:
    """AAPE (audio activation probability entropy; Kawamura, Niizumi, Ono 2026, "What Do Neurons Listen To?").

    1. ``drop_rate``: the overall activation probability ``sum_c active / sum_c tokens`` (pooled over classes,
       token weighted) is computed; with ``d = round(drop_rate * L * N)``, every neuron at or below the d-th
       smallest value is dropped (ties drop together, no arbitrary cut). Never-active neurons are always
       dropped: their entropy is undefined, and 0 would make them look perfectly selective.
    2. ``entropy_rate``: of the survivors, the ``max(1, round(entropy_rate * L * N))`` neurons with the lowest
       entropy of the normalised ``p`` (as in LAPE) are kept; the rate is a share of *all* neurons, like LAPE's
       fraction, so it does not move when ``drop_rate`` changes. Ties: higher ``max_c p`` first.
    3. ``class_rate``: per class, the top ``max(1, round(class_rate * n_kept))`` kept neurons by ``p_e``
       (ties: lower entropy first). A ``fraction``/``k`` given to :func:`select` overrides this count.

    Defaults: 5 % for all three, so the default per-class set is ~0.25 % of all neurons, the same order as the
    0.5 % used for the other selectors; the drop and entropy rates follow the paper's recipe of removing the
    least active neurons before ranking by entropy.
    """
    _check_rate(drop_rate, "drop_rate", allow_zero=True)
    _check_rate(entropy_rate, "entropy_rate")
    _check_rate(class_rate, "class_rate")
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
    kept = candidates[order[: max(1, round(entropy_rate * n_total))]]
    per_class = k if k is not None else max(1, round(class_rate * kept.numel()))
    return {
        label: _pairs(kept[_order((p[kept, c], True), (ent[kept], False))[:per_class]], stats.n_neurons)
        for c, label in enumerate(stats.labels)
    }


def select_random(
    stats: ActivationStats, k: int | None = None, *, like: Mapping[str, torch.Tensor] | None = None, seed: int = 0
) -> Selection:
    """Random baseline: per label, neurons drawn uniformly from all ``L * N`` without replacement.

    Sizes come from ``like`` (a selection whose per-label sizes are copied, so the baseline matches e.g. a
    LAPE selection emotion by emotion) or from ``k``. Deterministic: one ``torch.Generator`` seeded with
    ``seed`` draws the labels in order.
    """
    n_total = stats.n_layers * stats.n_neurons
    if like is not None:
        if set(like) != set(stats.labels):
            raise ValueError(f"like has labels {sorted(like)} but the stats have {sorted(stats.labels)}")
        sizes = {label: int(torch.as_tensor(like[label]).reshape(-1, 2).shape[0]) for label in stats.labels}
    elif k is not None:
        sizes = dict.fromkeys(stats.labels, int(k))
    else:
        raise ValueError("method 'random' needs like=<selection> or one of fraction / k")
    too_big = {label: m for label, m in sizes.items() if m > n_total}
    if too_big:
        raise ValueError(f"cannot draw {too_big} neurons without replacement from {n_total}")
    gen = torch.Generator().manual_seed(int(seed))
    return {
        label: _pairs(torch.randperm(n_total, generator=gen)[: sizes[label]], stats.n_neurons) for label in stats.labels
    }


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


def to_mask(selection: Mapping[str, torch.Tensor], n_layers: int, n_neurons: int) -> torch.Tensor:
    """Selection as a bool mask ``[C, L, N]`` (C in the selection's label order), e.g. for hooks or plots."""
    mask = torch.zeros(len(selection), n_layers, n_neurons, dtype=torch.bool)
    for c, (label, pairs) in enumerate(selection.items()):
        pairs = _check_pairs(pairs, label, n_layers, n_neurons)
        mask[c, pairs[:, 0], pairs[:, 1]] = True
    return mask


def layer_counts(selection: Mapping[str, torch.Tensor], n_layers: int) -> dict[str, list[int]]:
    """How many selected neurons fall in each layer, per label (the layer-wise clustering plots)."""
    out = {}
    for label, pairs in selection.items():
        pairs = _check_pairs(pairs, label, n_layers, None)
        out[label] = torch.bincount(pairs[:, 0], minlength=n_layers).tolist()
    return out


def jaccard(a: torch.Tensor | Mapping[str, torch.Tensor], b: torch.Tensor | Mapping[str, torch.Tensor]):
    """Jaccard overlap |A & B| / |A | B| of two neuron sets (``[m, 2]`` pairs), order ignored.

    Given two selections (dicts), returns ``{label: overlap}`` for their common labels, e.g. to compare
    selectors or data sets emotion by emotion. Two empty sets are identical: 1.0.
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return {label: jaccard(a[label], b[label]) for label in a if label in b}
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        raise TypeError("jaccard needs two pair tensors or two selections, not one of each")
    set_a = {tuple(x) for x in torch.as_tensor(a).reshape(-1, 2).tolist()}
    set_b = {tuple(x) for x in torch.as_tensor(b).reshape(-1, 2).tolist()}
    union = set_a | set_b
    return 1.0 if not union else len(set_a & set_b) / len(union)


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


def _check_rate(value: float, name: str, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and (value >= 0 if allow_zero else value > 0) and value <= 1
    if not ok:
        bound = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must be a number in {bound}, got {value!r}")


def _resolve_k(fraction: float | None, k: int | None, n_total: int) -> int:
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1] (a share of all {n_total} neurons), got {fraction!r}")
        return max(1, round(fraction * n_total))
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= n_total:
        raise ValueError(f"k must be an integer in [1, {n_total}] (neurons per emotion), got {k!r}")
    return int(k)


def _check_classes(stats: ActivationStats, method: str) -> None:
    for label, tok, items in zip(stats.labels, stats.tokens.tolist(), stats.items.tolist(), strict=True):
        if tok <= 0:
            raise ValueError(
                f"class {label!r} has no counted tokens ({int(items)} correctly answered items, 0 tokens), so its "
                "activation probabilities are undefined; add identification items for it or use a different "
                "token mask"
            )
    if method in ("lape", "mad", "cas", "aape") and stats.n_classes < 2:
        raise ValueError(f"method {method!r} contrasts emotions and needs at least 2 classes, got {stats.labels}")


def _check_pairs(pairs: torch.Tensor, label: str, n_layers: int, n_neurons: int | None) -> torch.Tensor:
    pairs = torch.as_tensor(pairs).long().reshape(-1, 2)
    if pairs.numel() and (int(pairs[:, 0].min()) < 0 or int(pairs[:, 0].max()) >= n_layers):
        raise ValueError(f"selection {label!r} has layer indices outside [0, {n_layers})")
    if n_neurons is not None and pairs.numel() and (int(pairs[:, 1].min()) < 0 or int(pairs[:, 1].max()) >= n_neurons):
        raise ValueError(f"selection {label!r} has neuron indices outside [0, {n_neurons})")
    return pairs
