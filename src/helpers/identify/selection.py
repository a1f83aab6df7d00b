"""Neuron selection by method name: :func:`select`, :func:`select_report`, :func:`select_many` and the
selectors' named options; the selectors themselves are in :mod:`helpers.identify.methods`, set utilities in
:mod:`helpers.identify.set_ops`.

What each selector calls "specific" (and why it matters) is described in :mod:`helpers.identify.methods`.

Sizes: ``fraction`` is a share of *all* decoder gate neurons ``L * N`` (``k = max(1, round(fraction * L * N))``),
``k`` an absolute count. Ties are broken deterministically (documented per method, finally by lower flat index
``layer * N + neuron``), so the same stats always give the same selection.
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from helpers.log.stats import ActivationStats

from .methods import _FUNCS, Selection

#: Valid ``method`` names for :func:`select`.
METHODS: tuple[str, ...] = ("lap", "lape", "mad", "cas", "aape", "random")

#: LAPE's default share of all neurons kept by entropy when neither ``fraction`` nor ``k`` is given: the 1 %
#: of Tang et al. (2024). (The version of their identify.py we read sets ``top_rate = 0.05``; pass
#: ``fraction=0.05`` to reproduce that.)
LAPE_DEFAULT_FRACTION = 0.01


class SelectionShortfall(UserWarning):
    """A selector returned fewer neurons than asked for some emotion (the reason is in the message and in
    :attr:`SelectionReport.shortfall`)."""


@dataclass(frozen=True)
class SelectionReport:
    """A selection together with what it was asked for and, where it fell short, why.

    Fields:

    * ``method`` — the selector's name.
    * ``selection`` — ``{label: LongTensor[m, 2]}``, best first (what :func:`select` returns).
    * ``requested`` — per label, the size the method aimed at (None where the method has no per-emotion size:
      LAPE keeps ``k`` neurons in all and hands them to the emotions above its bar).
    * ``sizes`` — per label, how many neurons it got.
    * ``shortfall`` — per label that got fewer than requested (or none at all), a sentence saying why.
    * ``details`` — method-specific numbers: LAPE's filter value and bar (and which rule set them), the number of
      candidates; LAP/MAD/CAS's ties at the cut (``ties``: per label the score at the cut, how many neurons share
      it, and how many of those were selected); AAPE's pool size and per-class count.
    """

    method: str
    selection: Selection
    requested: dict[str, int | None]
    sizes: dict[str, int]
    shortfall: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def full(self) -> bool:
        """True when every emotion got its full budget (and, for LAPE, at least one neuron)."""
        return not self.shortfall


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
    :data:`LAPE_DEFAULT_FRACTION`), ``aape`` (with ``budget="own"``, its default without a size, the per-class
    count comes from ``class_rate``) and ``random`` (sizes may come from ``like=`` instead). ``seed`` affects
    ``random`` and LAP's ``ties="random"``. ``options`` are the method's named options, see ``select_<method>``.

    Where a method cannot give some emotion its full budget, a :class:`SelectionShortfall` warning says why;
    :func:`select_report` returns the same selection with the reasons and diagnostics attached.
    """
    report = select_report(stats, method, fraction=fraction, k=k, seed=seed, **options)
    if report.shortfall:
        reasons = "; ".join(f"{lbl}: {why}" for lbl, why in report.shortfall.items())
        warnings.warn(f"{method} fell short of its budget for {sorted(report.shortfall)} ({reasons})",
                      SelectionShortfall, stacklevel=2)
    return report.selection


def select_report(
    stats: ActivationStats,
    method: str,
    *,
    fraction: float | None = None,
    k: int | None = None,
    seed: int = 0,
    **options,
) -> SelectionReport:
    """:func:`select` with its diagnostics: a :class:`SelectionReport` (never warns)."""
    if not isinstance(stats, ActivationStats):
        raise TypeError(f"stats must be an ActivationStats, got {type(stats).__name__}")
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; valid methods: {', '.join(METHODS)}")
    func = _FUNCS[method]
    params = inspect.signature(func).parameters
    allowed = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in ("seed", "report")]
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
    report: dict[str, Any] = {}
    kw = {"seed": seed} if "seed" in params else {}
    selection = func(stats, size, report=report, **kw, **options)
    sizes = {label: int(pairs.shape[0]) for label, pairs in selection.items()}
    requested = report.pop("requested", dict.fromkeys(selection, size))
    shortfall = dict(report.pop("shortfall", {}))
    for label, want in requested.items():
        if want is not None and sizes[label] < want and label not in shortfall:
            shortfall[label] = f"got {sizes[label]} of {want} neurons"
    return SelectionReport(method=method, selection=selection, requested=requested, sizes=sizes,
                           shortfall=shortfall, details=report)


#: Each selector's named edge-case option and its values (see ``select_<method>``): the values a chapter
#: compares. :func:`option_variants` builds the "other value" of each.
OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "lap": ("ties", ("mean", "random")),
    "lape": ("bar", ("strict", "saturation")),
    "cas": ("on", ("prob", "mean")),
    "aape": ("budget", ("own", "fraction")),
}
#: The value each option takes when a spec does not name it (the functions' defaults).
_OPTION_DEFAULTS = {"lap": "mean", "lape": "strict", "cas": "prob", "aape": "own"}


def spec_method(name: str, spec: Mapping[str, Any]) -> str:
    """The method of a selector spec (``spec["method"]``, else the spec's name)."""
    return str(spec.get("method", name))


def select_many(stats: ActivationStats, specs: Mapping[str, Mapping[str, Any]], *, seed: int = 0
                ) -> dict[str, SelectionReport]:
    """Run several selectors on the same stats: ``{name: SelectionReport}``, in ``specs`` order.

    ``specs``: ``{name: select() keyword arguments}`` with ``method`` defaulting to the name — the format of
    :func:`helpers.identify.resampling.identification_resamples`, so a chapter can store its specs with the sets and a
    later chapter re-select with exactly the same options. E.g. ``{"mad": {"fraction": 0.05}, "cas(on=mean)":
    {"method": "cas", "fraction": 0.05, "on": "mean"}}``. Never warns: shortfalls are in each report.
    """
    out = {}
    for name, spec in specs.items():
        kw = {k: v for k, v in spec.items() if k != "method"}
        out[str(name)] = select_report(stats, spec_method(name, spec), seed=seed, **kw)
    return out


def option_variants(specs: Mapping[str, Mapping[str, Any]], *, fraction: float | None = None
                    ) -> dict[str, dict[str, Any]]:
    """For every spec whose method has a named edge-case option (:data:`OPTIONS`), the same spec with each
    *other* value of that option, named ``"<method>(<option>=<value>)"`` — e.g. ``lap(ties=random)`` next to a
    ``lap`` spec with the default ties. ``aape(budget=fraction)`` needs a size: ``fraction`` (the other
    selectors' budget); a ``budget="own"`` variant drops the spec's size."""
    out: dict[str, dict[str, Any]] = {}
    for name, spec in specs.items():
        method = spec_method(name, spec)
        if method not in OPTIONS:
            continue
        option, values = OPTIONS[method]
        current = spec.get(option, _OPTION_DEFAULTS[method])
        for value in values:
            if value == current:
                continue
            new = {**spec, "method": method, option: value}
            if method == "aape":
                new.pop("fraction", None)
                new.pop("k", None)
                if value == "fraction":
                    if fraction is None:
                        raise ValueError("aape(budget=fraction) needs the budget: pass fraction=")
                    new["fraction"] = fraction
            out[f"{method}({option}={value})"] = new
    return out


def tie_report(report: SelectionReport) -> dict[str, dict[str, float]]:
    """Per label: the score at the cut, how many neurons share it (``tied_at_cut``) and how many of those were
    selected (``tied_selected``). ``tied_at_cut > tied_selected`` means the tie-breaker, not the score, chose
    which of them are in the set (LAP at saturation: hundreds of neurons tie at p = 1)."""
    if "ties" not in report.details:
        raise ValueError(f"method {report.method!r} does not rank by a single score; no tie report")
    return report.details["ties"]


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
