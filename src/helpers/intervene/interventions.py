"""The Intervene stage: gate-edit *conditions*, a batched runner, and the experiments the notebooks report.

A :class:`Condition` is one edit of the SwiGLU gates ``a = act_fn(gate_proj x)`` of every decoder MLP,
``a <- a * scale + add`` with ``scale``/``add`` of shape ``[L, N]`` (layers x neurons). The constructors build the
edits of the paper:

* :func:`deactivate` — scale 0 on an emotion's neurons (necessity test);
* :func:`steer` — in the paper's ``mode="multiply"``, scale ``1 + alpha`` on them (amplification for ``alpha > 0``,
  attenuation for ``-1 < alpha < 0``; ``alpha = -1`` equals deactivation); ``"add"`` adds ``alpha`` times a
  per-neuron constant, ``"patch_mean"`` moves the gates toward the target emotion's mean (see :data:`MODES`);
* :func:`joint` — scale ``1 + alpha`` on the *union* of several emotions' sets (a neuron in two sets is scaled once);
* :func:`combine` — several conditions applied one after the other;
* :func:`label_free` — the per-item strategies ``two_pass``, ``union`` and ``mix`` (defined there) that need no
  target emotion; :func:`oracle` — each item steered toward its own true emotion (an upper bound);
* :func:`identity` — no edit (the baseline).

:func:`run_conditions` evaluates many conditions on the same items with as few forward passes as possible: for
each batch of items the inputs are tiled over a chunk of conditions (rows = conditions x items, at most
``max_rows``) and ONE :func:`~helpers.core.hooks.run_with_gate_edits` call applies a different edit to every row.
Identity conditions reuse one plain forward. :func:`run_conditions_sequential` runs the same conditions one forward
per condition and batch; it exists to check the batched runner (tests) and to measure its speedup
(``bench/benchmarks.py``).

The experiments (:func:`deactivation_experiment`, :func:`dose_response_k`, :func:`dose_response_alpha`,
:func:`steering_experiment`, :func:`non_additivity`) build the conditions, run them in one batched sweep and turn
the label logits into tidy tables with :mod:`helpers.metrics.effects`, so the notebooks stay a few lines each.

Neuron sets everywhere are ``{label: LongTensor[m, 2]}`` of ``(layer, neuron)`` pairs, as returned by
:func:`helpers.identify.selectors.select` (best first, which :func:`dose_response_k` relies on), validated by
:func:`helpers.core.neuron_sets.as_pairs`; random controls come from :func:`helpers.core.neuron_sets.random_sets`.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.hooks import NonFiniteEditError, run_with_gate_edits
from ..core.models import gate_shape
from ..core.neuron_sets import as_mask, as_pairs, random_sets, selection_masks
from ..core.subject import Batch, Subject
from ..metrics import effects as M
from .evaluation import label_indices

Pairs = Any  # LongTensor[m, 2] | ndarray | nested list of (layer, neuron)
Selection = Mapping[str, Pairs]
Strategy = Literal["targeted", "oracle", "two_pass", "union", "mix"]
Mode = Literal["multiply", "add", "patch_mean"]

#: The steering strategies of :func:`steering_experiment`, in report order.
STRATEGIES: tuple[str, ...] = ("targeted", "oracle", "two_pass", "union", "mix")
#: Steering modes (how the selected gates are edited), see :func:`steer`.
MODES: tuple[str, ...] = ("multiply", "add", "patch_mean")
#: The random controls of :func:`deactivation_experiment` (uniform over all neurons; same count per layer).
CONTROLS: tuple[str, ...] = ("random", "random(layer-matched)")
#: The label-free strategies (no target emotion needed), see :func:`label_free`.
LABEL_FREE: tuple[str, ...] = ("two_pass", "union", "mix")

_DTYPE = torch.float32

#: Default cap on rows (conditions x items) per forward pass of :func:`run_conditions`. Measured on CPU
#: (``bench/benchmarks.py``): the cost per row is flat or *rises* beyond a few dozen rows (activations fall out of the
#: caches), so tiling only pays where per-call overhead dominates (small item batches, GPUs). Raise it on a GPU
#: with memory to spare (rows x sequence length x MLP width activations must fit).
DEFAULT_MAX_ROWS = 32


# ====================================================================================================================
# Conditions
# ====================================================================================================================


@dataclass(frozen=True, eq=False)
class ItemScale:
    """An item-dependent edit: ``scale[i] = 1 + coef[i] @ basis`` and ``add[i] = coef[i] @ add_basis``.

    ``basis`` [K, L, N] float (e.g. one 0/1 mask per emotion) or None (scale 1), ``add_basis`` [K, L, N] or None
    (add 0), ``coef`` [n_items, K] float, one row per item of the table the condition is run on, in table order.
    Only the rows of the current batch are ever expanded to ``[B, L, N]``, so a per-item edit costs no more memory
    than a shared one.
    """

    basis: torch.Tensor | None
    coef: torch.Tensor
    add_basis: torch.Tensor | None = None

    def __post_init__(self) -> None:
        bases = [b for b in (self.basis, self.add_basis) if b is not None]
        if not bases:
            raise ValueError("ItemScale needs a scale basis, an add basis or both")
        if self.coef.ndim != 2 or any(b.ndim != 3 or b.shape[0] != self.coef.shape[1] for b in bases) or (
            len(bases) == 2 and bases[0].shape != bases[1].shape
        ):
            raise ValueError(
                f"ItemScale needs bases [K, L, N] and coef [n_items, K]; got "
                f"{[tuple(b.shape) for b in bases]} and {tuple(self.coef.shape)}"
            )
        if not bool(torch.isfinite(self.coef).all()):
            raise ValueError("per-item scale coefficients contain NaN/inf (alpha too large?)")

    @property
    def n_items(self) -> int:
        return int(self.coef.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        b = self.basis if self.basis is not None else self.add_basis
        assert b is not None
        return int(b.shape[1]), int(b.shape[2])

    def _expand(self, basis: torch.Tensor, index: np.ndarray | Sequence[int]) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        c = self.coef.index_select(0, idx).to(_DTYPE)
        out = torch.einsum("bk,kln->bln", c, basis.to(_DTYPE))
        if not bool(torch.isfinite(out).all()):
            raise ValueError("a per-item gate edit is NaN/inf in float32 (alpha too large)")
        return out

    def rows(self, index: np.ndarray | Sequence[int]) -> torch.Tensor | None:
        """``[b, L, N]`` scales of the items at ``index`` (positions in the table); None without a scale basis."""
        return None if self.basis is None else 1.0 + self._expand(self.basis, index)

    def add_rows(self, index: np.ndarray | Sequence[int]) -> torch.Tensor | None:
        """``[b, L, N]`` additive terms of the items at ``index``; None without an add basis."""
        return None if self.add_basis is None else self._expand(self.add_basis, index)

    def is_identity(self) -> bool:
        return not bool((self.coef != 0).any()) or all(
            b is None or not bool((b != 0).any()) for b in (self.basis, self.add_basis))


@dataclass(frozen=True, eq=False)
class Condition:
    """One gate edit ``gate <- gate * scale + add``.

    ``scale`` / ``add``: ``[L, N]`` float tensors or None (= 1 / 0 everywhere). ``meta``: free-form record of what
    the condition is (``selector``, ``target``, ``alpha``, ``k``, ``seed``...) copied into result tables.
    ``per_item`` (optional, :class:`ItemScale`): an item-dependent edit used *instead of* ``scale`` and ``add``.
    """

    name: str
    scale: torch.Tensor | None = None
    add: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)
    per_item: ItemScale | None = None

    def __post_init__(self) -> None:
        if self.per_item is not None and (self.scale is not None or self.add is not None):
            raise ValueError(f"condition {self.name!r}: give either scale/add or per_item, not both")
        for what in ("scale", "add"):
            x = getattr(self, what)
            if x is None:
                continue
            x = torch.as_tensor(x, dtype=_DTYPE)
            if x.ndim != 2:
                raise ValueError(f"condition {self.name!r}: {what} must be [L, N], got shape {tuple(x.shape)}")
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"condition {self.name!r}: {what} contains NaN/inf values")
            object.__setattr__(self, what, x)
        object.__setattr__(self, "meta", dict(self.meta))

    @property
    def shape(self) -> tuple[int, int] | None:
        """``(L, N)`` of the edit, or None for a shapeless identity."""
        for x in (self.scale, self.add):
            if x is not None:
                return int(x.shape[0]), int(x.shape[1])
        if self.per_item is not None:
            return self.per_item.shape
        return None

    @property
    def is_identity(self) -> bool:
        """True when the edit changes nothing (scale all 1, add all 0, per-item coefficients all 0)."""
        if self.scale is not None and not bool((self.scale == 1).all()):
            return False
        if self.add is not None and not bool((self.add == 0).all()):
            return False
        return self.per_item is None or self.per_item.is_identity()

    def scale_for(self, index: np.ndarray | Sequence[int]) -> torch.Tensor | None:
        """Scale for the items at ``index``: ``[b, L, N]`` (per-item), ``[1, L, N]`` (shared) or None."""
        if self.per_item is not None:
            return self.per_item.rows(index)
        return None if self.scale is None else self.scale.unsqueeze(0)

    def add_for(self, index: np.ndarray | Sequence[int]) -> torch.Tensor | None:
        """Additive term for the items at ``index``: ``[b, L, N]`` (per-item), ``[1, L, N]`` (shared) or None."""
        if self.per_item is not None:
            return self.per_item.add_rows(index)
        return None if self.add is None else self.add.unsqueeze(0)

    def __repr__(self) -> str:
        kinds = [k for k in ("scale", "add", "per_item") if getattr(self, k) is not None]
        return f"Condition({self.name!r}, edits={kinds or 'none'}, shape={self.shape}, meta={self.meta})"


def _check_alpha(alpha: float, what: str) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"{what}: alpha must be a number, got {alpha!r}") from None
    s = torch.tensor(1.0 + a, dtype=_DTYPE) if math.isfinite(a) else torch.tensor(float("nan"))
    if not math.isfinite(a) or not bool(torch.isfinite(s)):
        raise ValueError(
            f"{what}: alpha={alpha!r} makes the gate scale 1 + alpha non-finite in float32; "
            "use a finite alpha (the paper's range is about -1 .. 10)"
        )
    return a


def identity(name: str = "baseline", meta: Mapping | None = None) -> Condition:
    """The no-op condition (the un-intervened model)."""
    return Condition(name, meta={"kind": "identity", **dict(meta or {})})


def deactivate(pairs: Pairs, n_layers: int, n_neurons: int, *, name: str | None = None,
               meta: Mapping | None = None) -> Condition:
    """Zero the gates of ``pairs`` (scale 0) at every edited position; an empty set is a valid no-op."""
    mask = as_mask(pairs, n_layers, n_neurons, what=name or "deactivate")
    scale = torch.ones(n_layers, n_neurons, dtype=_DTYPE)
    scale[mask] = 0.0
    return Condition(name or "deactivate", scale=scale,
                     meta={"kind": "deactivate", "n_neurons": int(mask.sum()), **dict(meta or {})})


def _check_mode(mode: str, constant: Any, n_layers: int, n_neurons: int, what: str) -> torch.Tensor | None:
    if mode not in MODES:
        raise ValueError(f"{what}: unknown steering mode {mode!r}; choose one of {list(MODES)}")
    if mode == "multiply":
        return None
    if constant is None:
        raise ValueError(f"{what}: mode {mode!r} needs a per-neuron constant [L, N] (see steering_constants)")
    c = torch.as_tensor(constant, dtype=_DTYPE)
    if tuple(c.shape) != (n_layers, n_neurons):
        raise ValueError(f"{what}: constant has shape {tuple(c.shape)}, the model has {n_layers} x {n_neurons} gates")
    if not bool(torch.isfinite(c).all()):
        raise ValueError(f"{what}: constant contains NaN/inf values")
    return c


def _mode_bases(masks: torch.Tensor, mode: str, constants: torch.Tensor | None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-set (scale basis, add basis), both [K, L, N], such that ``alpha`` times set k's row is its edit:
    ``scale = 1 + alpha * sb_k``, ``add = alpha * ab_k`` (multiply: m; add: c m; patch_mean: -m and mu m)."""
    m = masks.to(_DTYPE)
    if mode == "multiply":
        return m, None
    assert constants is not None
    if mode == "add":
        return None, constants.to(_DTYPE) * m
    return -m, constants.to(_DTYPE) * m


def steer(pairs: Pairs, n_layers: int, n_neurons: int, alpha: float, *, mode: Mode = "multiply",
          constant: Any = None, name: str | None = None, meta: Mapping | None = None) -> Condition:
    """Steer the gates ``a`` of ``pairs``; ``mode`` (:data:`MODES`) says how:

    * ``"multiply"`` (the paper's): ``a <- a * (1 + alpha)`` (``alpha < 0`` attenuates, ``-1`` zeroes them).
    * ``"add"``: ``a <- a + alpha * c`` with ``constant`` = ``c`` [L, N] (e.g. the target emotion's mean minus
      the overall mean, or the neuron's std: :func:`steering_constants`). Adds activation even where the neuron
      was silent, which multiplication cannot.
    * ``"patch_mean"``: ``a <- (1 - alpha) * a + alpha * mu`` with ``constant`` = ``mu`` [L, N], the target
      emotion's mean activation: ``alpha = 1`` sets the gates to that mean, ``0 < alpha < 1`` interpolates,
      ``alpha > 1`` extrapolates past it.

    Neurons outside ``pairs`` are untouched in every mode (the constant only matters on the set).
    """
    what = name or "steer"
    a = _check_alpha(alpha, what)
    c = _check_mode(mode, constant, n_layers, n_neurons, what)
    mask = as_mask(pairs, n_layers, n_neurons, what=what)
    sb, ab = _mode_bases(mask[None], mode, None if c is None else c[None])
    scale = None if sb is None else 1.0 + a * sb[0]
    add = None if ab is None else a * ab[0]
    label = f"steer(alpha={a:g})" if mode == "multiply" else f"steer({mode}, alpha={a:g})"
    return Condition(name or label, scale=scale, add=add,
                     meta={"kind": "steer", "mode": mode, "alpha": a, "n_neurons": int(mask.sum()),
                           **dict(meta or {})})


def joint(sets: Mapping[str, Pairs] | Sequence[Pairs], n_layers: int, n_neurons: int, alpha: float, *,
          name: str | None = None, meta: Mapping | None = None) -> Condition:
    """Joint amplification: scale ``1 + alpha`` on the union of several sets (shared neurons scaled once)."""
    a = _check_alpha(alpha, name or "joint")
    items = sets.items() if isinstance(sets, Mapping) else enumerate(sets)
    mask = torch.zeros(n_layers, n_neurons, dtype=torch.bool)
    keys = []
    for key, pairs in items:
        mask |= as_mask(pairs, n_layers, n_neurons, what=f"set {key!r}")
        keys.append(str(key))
    scale = torch.ones(n_layers, n_neurons, dtype=_DTYPE)
    scale[mask] = 1.0 + a
    return Condition(name or f"joint({'+'.join(keys)}, alpha={a:g})", scale=scale,
                     meta={"kind": "joint", "alpha": a, "members": "+".join(keys), "n_neurons": int(mask.sum()),
                           **dict(meta or {})})


def combine(*conditions: Condition, name: str | None = None, meta: Mapping | None = None) -> Condition:
    """Apply several shared (not per-item) conditions in order: ``(g * s1 + a1) * s2 + a2 = g * s1 s2 + a1 s2 + a2``."""
    if not conditions:
        return identity(name or "combine()")
    shapes = {c.shape for c in conditions if c.shape is not None}
    if len(shapes) > 1:
        raise ValueError(f"cannot combine conditions for different gate shapes {sorted(shapes)}")
    if any(c.per_item is not None for c in conditions):
        raise ValueError("combine() takes shared conditions only (no per-item scales)")
    scale = add = None
    for c in conditions:
        if c.scale is not None:
            scale = c.scale.clone() if scale is None else scale * c.scale
            add = None if add is None else add * c.scale
        if c.add is not None:
            add = c.add.clone() if add is None else add + c.add
    return Condition(name or "+".join(c.name for c in conditions), scale=scale, add=add,
                     meta={"kind": "combine", "parts": [c.name for c in conditions], **dict(meta or {})})


def softmax_np(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax_np(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def label_masks(sets: Selection, labels: Sequence[str], n_layers: int, n_neurons: int) -> torch.Tensor:
    """``[C, L, N]`` float 0/1 masks of each label's set, in ``labels`` order (a label absent from ``sets`` = empty)."""
    return selection_masks(sets, n_layers, n_neurons, labels).to(_DTYPE)


def _label_constants(constants: Mapping[str, Any] | None, labels: Sequence[str], mode: str, n_layers: int,
                     n_neurons: int, what: str) -> torch.Tensor | None:
    if mode == "multiply":
        return None
    if constants is None:
        raise ValueError(f"{what}: mode {mode!r} needs constants {{label: [L, N]}} (see steering_constants)")
    missing = [lbl for lbl in labels if lbl not in constants]
    if missing:
        raise ValueError(f"{what}: no steering constant for {missing}")
    # not "multiply" here, so _check_mode returns a tensor
    return torch.stack([cast(torch.Tensor, _check_mode(mode, constants[lbl], n_layers, n_neurons, what))
                        for lbl in labels])


def _per_item(masks: torch.Tensor, weights: np.ndarray, alpha: float, mode: str, consts: torch.Tensor | None,
              name: str, meta: dict) -> Condition:
    sb, ab = _mode_bases(masks, mode, consts)
    coef = torch.from_numpy(alpha * weights).to(_DTYPE)
    return Condition(name, per_item=ItemScale(basis=sb, coef=coef, add_basis=ab), meta=meta)


def label_free(strategy: str, sets: Selection, labels: Sequence[str], n_layers: int, n_neurons: int, alpha: float,
               *, first_pass: np.ndarray | torch.Tensor | None = None, mode: Mode = "multiply",
               constants: Mapping[str, Any] | None = None, name: str | None = None,
               meta: Mapping | None = None) -> Condition:
    """A steering condition that needs no target emotion. With ``S_e`` the set of emotion ``e`` (mask ``m_e``) and,
    in ``mode="multiply"`` (the other modes: the same weights on :func:`steer`'s edit of each set):

    * ``"union"``: scale ``1 + alpha`` on ``∪_e S_e``, the same for every item (a neuron in several sets is
      scaled once, as in :func:`joint`; in the other modes it gets the mean of its sets' edits).
    * ``"two_pass"``: run the model once (the baseline, ``first_pass`` = its label logits ``[n_items, C]``); for
      item ``i`` with first-pass prediction ``ê_i = argmax first_pass[i]``, scale ``1 + alpha`` on ``S_{ê_i}``
      only, i.e. ``scale_i = 1 + alpha * m_{ê_i}``.
    * ``"mix"``: with ``p_i = softmax(first_pass[i])`` over the labels (constrained-scoring probabilities),
      ``scale_i = 1 + alpha * sum_e p_{i,e} * m_e``: every emotion's neurons are amplified in proportion to the
      first pass's belief in it; a neuron in several sets gets the sum of their weights.

    ``first_pass`` rows are the items of the table the condition will be run on, in order. ``constants``:
    ``{label: [L, N]}`` for the ``add`` / ``patch_mean`` modes (:func:`steering_constants`).
    """
    what = name or strategy
    a = _check_alpha(alpha, what)
    masks = label_masks(sets, labels, n_layers, n_neurons)
    consts = _label_constants(constants, labels, mode, n_layers, n_neurons, what)
    base_meta = {"kind": "label_free", "strategy": strategy, "mode": mode, "alpha": a, **dict(meta or {})}
    suffix = f"alpha={a:g}" if mode == "multiply" else f"{mode}, alpha={a:g}"
    if strategy == "union":
        covered = masks.amax(0) > 0
        if mode == "multiply":
            scale: torch.Tensor | None = torch.where(covered, torch.tensor(1.0 + a, dtype=_DTYPE),
                                                     torch.tensor(1.0, dtype=_DTYPE))
            return Condition(name or f"union({suffix})", scale=scale, meta=base_meta)
        sb, ab = _mode_bases(masks, mode, consts)
        count = masks.sum(0).clamp(min=1.0)
        scale = None if sb is None else 1.0 + a * sb.sum(0) / count
        add = None if ab is None else a * ab.sum(0) / count
        return Condition(name or f"union({suffix})", scale=scale, add=add, meta=base_meta)
    if strategy not in ("two_pass", "mix"):
        raise ValueError(f"unknown label-free strategy {strategy!r}; choose one of {list(LABEL_FREE)}")
    if first_pass is None:
        raise ValueError(f"strategy {strategy!r} needs first_pass, the baseline label logits [n_items, {len(labels)}]")
    fp = first_pass.detach().cpu().numpy() if isinstance(first_pass, torch.Tensor) else np.asarray(first_pass)
    if fp.ndim != 2 or fp.shape[1] != len(labels):
        raise ValueError(f"first_pass must be [n_items, {len(labels)}] label logits, got shape {fp.shape}")
    if strategy == "two_pass":
        w = np.eye(len(labels), dtype=np.float64)[fp.argmax(1)]
    else:
        w = softmax_np(fp.astype(np.float64), axis=1)
    return _per_item(masks, w, a, mode, consts, name or f"{strategy}({suffix})", base_meta)


def oracle(sets: Selection, labels: Sequence[str], n_layers: int, n_neurons: int, alpha: float,
           y_true: Sequence[int] | np.ndarray, *, mode: Mode = "multiply", constants: Mapping[str, Any] | None = None,
           name: str | None = None, meta: Mapping | None = None) -> Condition:
    """Oracle-targeted steering: item ``i`` is steered toward its *true* emotion ``y_i`` (:func:`steer` on
    ``S_{y_i}``). Not a usable method (it needs the answer) but the upper bound of targeted steering: it shows
    how many errors the sets could fix if the target were always right. ``y_true``: label indices, table order."""
    what = name or "oracle"
    a = _check_alpha(alpha, what)
    y = np.asarray(y_true, dtype=np.int64)
    if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= len(labels))):
        raise ValueError(f"{what}: y_true must be label indices in [0, {len(labels)})")
    masks = label_masks(sets, labels, n_layers, n_neurons)
    consts = _label_constants(constants, labels, mode, n_layers, n_neurons, what)
    w = np.eye(len(labels), dtype=np.float64)[y]
    suffix = f"alpha={a:g}" if mode == "multiply" else f"{mode}, alpha={a:g}"
    return _per_item(masks, w, a, mode, consts, name or f"oracle({suffix})",
                     {"kind": "oracle", "strategy": "oracle", "mode": mode, "alpha": a, **dict(meta or {})})


@dataclass(frozen=True)
class SteeringSettings:
    """How :func:`steering_constants` builds the per-neuron constants of the ``add`` and ``patch_mean`` modes."""

    add_constant: Literal["mean_diff", "std"] = "mean_diff"
    """``add`` mode's ``c``: ``"mean_diff"`` = the target emotion's mean activation minus the mean over all
    counted tokens of all emotions (so ``alpha = 1`` adds the emotion's typical excess; ``alpha = 2`` twice it);
    ``"std"`` = the neuron's standard deviation over all counted tokens (a push of ``alpha`` standard deviations,
    the same for every target)."""
    modes: tuple[Mode, ...] = ("multiply",)
    """The steering modes to run (:data:`MODES`)."""

    def __post_init__(self) -> None:
        if self.add_constant not in ("mean_diff", "std"):
            raise ValueError(f"add_constant must be 'mean_diff' or 'std', got {self.add_constant!r}")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {list(MODES)}, got {list(self.modes)}")


def steering_constants(stats: Any, mode: str, settings: SteeringSettings = SteeringSettings()
                       ) -> dict[str, torch.Tensor] | None:
    """Per label, the ``[L, N]`` constant of steering ``mode`` from :class:`~helpers.log.stats.ActivationStats`
    (None for ``multiply``): ``add`` — see :attr:`SteeringSettings.add_constant`; ``patch_mean`` — the label's
    mean activation over its counted tokens. Use the identification stats, never the evaluation items'."""
    if mode == "multiply":
        return None
    if mode not in MODES:
        raise ValueError(f"unknown steering mode {mode!r}; choose one of {list(MODES)}")
    if stats is None:
        raise ValueError(f"steering mode {mode!r} needs the identification stats (ActivationStats)")
    mean = stats.mean.to(_DTYPE)  # [L, N, C]
    tokens = stats.tokens.sum()
    overall = (stats.total.sum(-1) / tokens).to(_DTYPE)
    if mode == "patch_mean":
        return {lbl: mean[..., c].clone() for c, lbl in enumerate(stats.labels)}
    if settings.add_constant == "mean_diff":
        return {lbl: mean[..., c] - overall for c, lbl in enumerate(stats.labels)}
    var = (stats.total_sq.sum(-1) / tokens - (stats.total.sum(-1) / tokens) ** 2).clamp_min(0.0)
    std = var.sqrt().to(_DTYPE)
    return dict.fromkeys(stats.labels, std)


# ====================================================================================================================
# Running conditions
# ====================================================================================================================


def _positions_for(subject: Subject, batch: Batch, positions: str) -> torch.Tensor | None:
    if positions == "all":
        return None
    masks = subject.position_masks(batch)
    if positions not in masks:
        raise ValueError(f"unknown position kind {positions!r}; this subject provides {sorted(masks)}")
    return masks[positions].bool()


def _check_conditions(conditions: Sequence[Condition], shape: tuple[int, int], n_items: int) -> None:
    for c in conditions:
        if not isinstance(c, Condition):
            raise TypeError(f"expected Condition objects, got {type(c).__name__}")
        if c.shape is not None and c.shape != shape:
            raise ValueError(
                f"condition {c.name!r} edits {c.shape[0]} x {c.shape[1]} gates but the model has "
                f"{shape[0]} x {shape[1]} (a neuron set from another model?)"
            )
        if c.per_item is not None and c.per_item.n_items != n_items:
            raise ValueError(
                f"condition {c.name!r} has per-item scales for {c.per_item.n_items} items but the table has {n_items}"
            )


def _stack_edits(parts: list[torch.Tensor | None], b: int, fill: float, shape: tuple[int, int]) -> torch.Tensor | None:
    """Rows of several conditions (each [1|b, L, N] or None) as one [len(parts) * b, L, N] tensor (None if none)."""
    if all(p is None for p in parts):
        return None
    out = torch.full((len(parts), b, *shape), fill, dtype=_DTYPE)
    for j, p in enumerate(parts):
        if p is not None:
            out[j] = p  # broadcasts a shared [1, L, N]
    return out.reshape(len(parts) * b, *shape)


def _forward(subject: Subject, batch: Batch, scale, add, positions, names: Sequence[str]) -> np.ndarray:
    try:
        logits = run_with_gate_edits(subject.model, batch.inputs, scale=scale, add=add, positions=positions,
                                     logits="last")
    except NonFiniteEditError as err:
        raise NonFiniteEditError(f"{err} (conditions in this forward pass: {list(names)})") from err
    return subject.label_logits(batch, cast(torch.Tensor, logits)).detach().float().cpu().numpy()  # logits="last"


def run_conditions(subject: Subject, df: pd.DataFrame, conditions: Sequence[Condition], *, batch_size: int = 32,
                   positions: str = "all", max_rows: int = DEFAULT_MAX_ROWS, reuse_identity: bool = True,
                   progress: bool = True) -> np.ndarray:
    """Label logits ``[n_conditions, n_items, n_labels]`` of every condition on every item of ``df``, batched.

    For each batch of ``batch_size`` items the inputs are built once, tiled over a chunk of conditions
    (``chunk * batch <= max_rows`` rows, at least one condition per chunk) and run in ONE forward pass whose row
    ``j * batch + i`` carries condition ``j``'s edit for item ``i``. Identity conditions (``is_identity``) share a
    single plain forward per batch when ``reuse_identity``. ``positions``: ``"all"`` edits every position; any other
    name is a kind of ``subject.position_masks`` (``"audio"``, ``"text"``, ``"last"``), outside which gates are
    left untouched. The answer is read at each row's last attended position (``logits="last"``) by
    ``subject.label_logits``.
    """
    conds = list(conditions)
    shape = gate_shape(subject.model)
    n = len(df)
    _check_conditions(conds, shape, n)
    n_labels = len(subject.labels)
    out = np.zeros((len(conds), n, n_labels), dtype=np.float32)
    if not conds or n == 0:
        return out
    if batch_size < 1 or max_rows < 1:
        raise ValueError(f"batch_size and max_rows must be >= 1, got {batch_size} and {max_rows}")
    ident = [j for j, c in enumerate(conds) if reuse_identity and c.is_identity]
    edited = [j for j in range(len(conds)) if j not in set(ident)]
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc=f"{len(conds)} conditions", disable=not progress, mininterval=2.0):
        rows = df.iloc[start : start + batch_size]
        b = len(rows)
        idx = np.arange(start, start + b)
        inputs = subject.batch_inputs(rows)
        pos = _positions_for(subject, inputs, positions)
        if ident:
            ll = _forward(subject, inputs, None, None, None, [conds[j].name for j in ident])
            out[ident, start : start + b] = ll[None]
        per_chunk = max(1, max_rows // b)
        for c0 in range(0, len(edited), per_chunk):
            chunk = edited[c0 : c0 + per_chunk]
            k = len(chunk)
            scale = _stack_edits([conds[j].scale_for(idx) for j in chunk], b, 1.0, shape)
            add = _stack_edits([conds[j].add_for(idx) for j in chunk], b, 0.0, shape)
            tiled = inputs.tile(k)
            p = pos.repeat(k, 1) if pos is not None else None
            ll = _forward(subject, tiled, scale, add, p, [conds[j].name for j in chunk])
            out[chunk, start : start + b] = ll.reshape(k, b, n_labels)
    return out


def run_conditions_sequential(subject: Subject, df: pd.DataFrame, conditions: Sequence[Condition], *,
                              batch_size: int = 32, positions: str = "all", reuse_inputs: bool = True,
                              progress: bool = True) -> np.ndarray:
    """Same result as :func:`run_conditions`, one forward pass per (condition, batch of items).

    With ``reuse_inputs`` the inputs of a batch (for the organism: cached audio through the projector) are built
    once and reused by every condition, so a comparison with the batched runner measures forward passes; without
    it each condition builds them again -- with a subject that caches nothing, the whole model (audio tower
    included) runs once per condition, the reference of ``make bench``'s sweep. Identity conditions are run like
    any other.
    """
    conds = list(conditions)
    shape = gate_shape(subject.model)
    n = len(df)
    _check_conditions(conds, shape, n)
    out = np.zeros((len(conds), n, len(subject.labels)), dtype=np.float32)
    for start in tqdm(range(0, n, batch_size), desc=f"{len(conds)} conditions (sequential)", disable=not progress,
                      mininterval=2.0):
        rows = df.iloc[start : start + batch_size]
        idx = np.arange(start, start + len(rows))
        inputs = subject.batch_inputs(rows)
        pos = _positions_for(subject, inputs, positions)
        for j, c in enumerate(conds):
            if j and not reuse_inputs:
                inputs = subject.batch_inputs(rows)
            out[j, start : start + len(rows)] = _forward(subject, inputs, c.scale_for(idx), c.add_for(idx), pos,
                                                         [c.name])
    return out


# ====================================================================================================================
# Experiments
# ====================================================================================================================


def _truth(subject: Subject, df: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    labels = list(subject.labels)
    return labels, label_indices(df["label"], labels)


def control_name(selector: str, kind: str) -> str:
    """Name of a random control in result tables: ``random(mad)``, ``random(mad, layer-matched)``."""
    if kind not in CONTROLS:
        raise ValueError(f"unknown control {kind!r}; choose from {list(CONTROLS)}")
    inner = selector or "set"
    return f"random({inner})" if kind == "random" else f"random({inner}, layer-matched)"


def _control_draw(selection: Selection, shape: tuple[int, int], kind: str, seed: int, salt: str
                  ) -> dict[str, torch.Tensor]:
    lm = kind == "random(layer-matched)"
    return random_sets(selection, shape, seed=seed, salt=salt + ("|layers" if lm else ""), match_layers=lm)


def _effect_cis(yt, yb, yi, t, labels, n_boot, seed) -> dict[str, tuple[float, float]]:
    """Stratified paired bootstrap intervals of SE/CE/gap (the flip variant that is always defined)."""
    if n_boot <= 0:
        return {k: (math.nan, math.nan) for k in ("self_effect", "cross_effect", "gap", "flip_rate")}
    return M.bootstrap_effects(yt, yb, yi, t, labels=labels, n_boot=n_boot, seed=seed, stratify=True,
                               among="all_non_target")


@dataclass
class DeactivationResult:
    """Output of :func:`deactivation_experiment`.

    * ``table``: one row per condition — ``selector`` (``"lape"``, or :func:`control_name` for a random control:
      ``"random(lape)"``, ``"random(lape, layer-matched)"``), ``like`` (the selector a control is matched to),
      ``control`` (bool), ``control_kind`` (:data:`CONTROLS` or None), ``target``, ``seed`` (controls only),
      ``n_neurons``, ``self_effect``, ``cross_effect``, ``gap`` with per-condition bootstrap intervals
      (``*_ci_low``/``*_ci_high``), ``uar_base``, ``uar_int`` and the per-class recall changes ``delta_<label>``.
    * ``comparison``: per (selector, target) the selector's gap next to each control's mean/std over seeds.
    * ``matrices``: ``{selector: effect matrix}`` (rows: deactivated emotion, columns: evaluated class; random
      controls averaged over seeds).
    * ``summary``: ``{name: mean gap over emotions}`` for every selector and control, plus the pooled controls
      ``"random"`` and ``"random(layer-matched)"`` (the mean over selectors of their controls' mean gaps): the
      ``gap`` table of ``metrics.json``.
    * ``gap_ci``: ``{name: (low, high)}`` for the same names, the joint stratified bootstrap of the mean gap
      (:func:`helpers.metrics.effects.bootstrap_mean_gap`; NaN with ``n_boot = 0``).
    * ``logits`` [n_conditions, n_items, C], ``conditions``, ``y_true``, ``y_base`` for further analysis.
    """

    table: pd.DataFrame
    comparison: pd.DataFrame
    matrices: dict[str, pd.DataFrame]
    summary: dict[str, float]
    gap_ci: dict[str, tuple[float, float]]
    logits: np.ndarray
    conditions: list[Condition]
    y_true: np.ndarray
    y_base: np.ndarray

    def layer_counts(self, seed: int | None = None) -> dict[str, dict[str, list[int]]]:
        """``{selector or control: {target: [zeroed neurons per layer]}}`` read off the conditions that were run
        (controls: the draw of ``seed``, default the first seed), e.g. to show that a layer-matched control has
        its selector's layer profile."""
        seeds = [c.meta["seed"] for c in self.conditions[1:] if "seed" in c.meta]
        pick = seeds[0] if seed is None and seeds else seed
        out: dict[str, dict[str, list[int]]] = {}
        for c in self.conditions[1:]:
            if "seed" in c.meta and c.meta["seed"] != pick:
                continue
            zeroed = (c.scale == 0) if c.scale is not None else torch.zeros(0, 0, dtype=torch.bool)
            out.setdefault(c.meta["selector"], {})[c.meta["target"]] = [int(v) for v in zeroed.sum(1).tolist()]
        return out


def deactivation_experiment(subject: Subject, df: pd.DataFrame, sets: Mapping[str, Selection], *,
                            random_seeds: Sequence[int] = (0, 1, 2, 3, 4), controls: Sequence[str] = CONTROLS,
                            batch_size: int = 32, positions: str = "all", max_rows: int = DEFAULT_MAX_ROWS,
                            n_boot: int = 1000, seed: int = 0, progress: bool = True) -> DeactivationResult:
    """Necessity test: zero each emotion's neurons (per selector) and measure per-class recall changes.

    ``sets``: ``{selector: {label: pairs}}``. Controls (``controls``, see :data:`CONTROLS`): for every selector,
    every kind and every seed in ``random_seeds``, :func:`helpers.core.neuron_sets.random_sets` draws per emotion as
    many random neurons as that selector chose for it — uniformly over all neurons (``"random"``) or with the same
    count in every layer (``"random(layer-matched)"``) — salted with the selector's name, so two selectors with
    equal sizes get independent draws. All conditions plus the baseline run in one batched sweep. Effects
    (self/cross/gap, paired stratified bootstrap CIs with ``n_boot`` resamples) come from
    :mod:`helpers.metrics.effects`; a successful deactivation has a negative gap (the target loses more than the
    rest). The mean gap's interval is a joint stratified bootstrap over items (``gap_ci``).
    """
    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    bad = [c for c in controls if c not in CONTROLS]
    if bad:
        raise ValueError(f"unknown controls {bad}; choose from {list(CONTROLS)}")
    conds: list[Condition] = [identity()]
    for sel_name, selection in sets.items():
        sel_name = str(sel_name)
        unknown = sorted(set(selection) - set(labels))
        if unknown:
            raise ValueError(f"selector {sel_name!r} has sets for {unknown}, not among the labels {labels}")
        draws: list[tuple[str, str | None, int | None, Selection]] = [(sel_name, None, None, selection)]
        for kind in controls:
            draws += [(control_name(sel_name, kind), kind, int(s), _control_draw(selection, (L, N), kind, int(s),
                                                                                 sel_name))
                      for s in random_seeds]
        for name, control, s, sel in draws:
            for target, pairs in sel.items():
                meta: dict[str, Any] = {"selector": name, "like": sel_name, "target": target, "control_kind": control}
                if s is not None:
                    meta["seed"] = s
                cname = f"deactivate[{name}:{target}" + (f":seed{s}]" if s is not None else "]")
                conds.append(deactivate(pairs, L, N, name=cname, meta=meta))
    logits = run_conditions(subject, df, conds, batch_size=batch_size, positions=positions, max_rows=max_rows,
                            progress=progress)
    preds = logits.argmax(-1)
    y_base = preds[0]
    uar_base = M.uar(y_true, y_base, labels=labels)
    rows = []
    by_selector: dict[str, dict[str, list[np.ndarray]]] = {}
    for j, c in enumerate(conds[1:], start=1):
        m = c.meta
        t = labels.index(m["target"])
        eff = M.effects(y_true, y_base, preds[j], t, labels=labels)
        iv = _effect_cis(y_true, y_base, preds[j], t, labels, n_boot, seed)
        row = {
            "selector": m["selector"], "like": m["like"], "target": m["target"], "seed": m.get("seed"),
            "control": m["control_kind"] is not None, "control_kind": m["control_kind"], "n_neurons": m["n_neurons"],
            "self_effect": eff.self_effect, "cross_effect": eff.cross_effect, "gap": eff.gap,
            "gap_ci_low": iv["gap"][0], "gap_ci_high": iv["gap"][1],
            "self_ci_low": iv["self_effect"][0], "self_ci_high": iv["self_effect"][1],
            "cross_ci_low": iv["cross_effect"][0], "cross_ci_high": iv["cross_effect"][1],
            "uar_base": uar_base, "uar_int": M.uar(y_true, preds[j], labels=labels), "n_items": len(y_true),
        }
        for lbl, d in zip(labels, eff.per_class_delta, strict=True):
            row[f"delta_{lbl}"] = float(d)
        rows.append(row)
        by_selector.setdefault(m["selector"], {}).setdefault(m["target"], []).append(preds[j])
    table = pd.DataFrame(rows)
    if len(table):
        table["seed"] = table["seed"].astype("Int64")

    matrices: dict[str, pd.DataFrame] = {}
    for sel_name, per_target in by_selector.items():
        n_draws = max(len(v) for v in per_target.values())
        mats = [M.effect_matrix(y_true, y_base, {t: v[i] for t, v in per_target.items() if i < len(v)}, labels)
                for i in range(n_draws)]
        matrices[sel_name] = sum(mats[1:], mats[0]) / len(mats) if len(mats) > 1 else mats[0]

    comp = []
    for sel_name in (str(s) for s in sets):
        real = table[(table["selector"] == sel_name)]
        for _, r in real.iterrows():
            rec = {"selector": sel_name, "target": r["target"], "n_neurons": r["n_neurons"], "gap": r["gap"],
                   "gap_ci_low": r["gap_ci_low"], "gap_ci_high": r["gap_ci_high"]}
            for kind, prefix in (("random", "random"), ("random(layer-matched)", "layer_random")):
                if kind not in controls:
                    continue
                ctrl = table[(table["selector"] == control_name(sel_name, kind)) & (table["target"] == r["target"])]
                recs = ctrl[["self_effect", "cross_effect", "gap"]].to_dict("records")
                g = (M.aggregate_random(recs) if recs else {}).get("gap", {"mean": math.nan, "std": math.nan})
                rec.update({f"{prefix}_gap_mean": g["mean"], f"{prefix}_gap_std": g["std"],
                            f"gap_minus_{prefix}": r["gap"] - g["mean"]})
                rec["n_seeds"] = len(ctrl)
            comp.append(rec)
    summary = M.summarise_gaps(table[["selector", "target", "gap"]]) if len(table) else {}
    for kind in controls:
        vals = [summary[control_name(str(s), kind)] for s in sets if control_name(str(s), kind) in summary]
        if vals:
            summary[kind] = float(np.mean(vals))
    gap_ci = _gap_intervals(y_true, y_base, by_selector, sets, controls, labels, n_boot, seed)
    return DeactivationResult(table=table, comparison=pd.DataFrame(comp), matrices=matrices, summary=summary,
                              gap_ci=gap_ci, logits=logits, conditions=conds, y_true=y_true, y_base=y_base)


def _gap_intervals(y_true: np.ndarray, y_base: np.ndarray, by_selector: Mapping[str, Mapping[str, list]],
                   sets: Mapping[str, Any], controls: Sequence[str], labels: Sequence[str], n_boot: int, seed: int
                   ) -> dict[str, tuple[float, float]]:
    """Joint stratified bootstrap interval of the mean gap for every selector, control and pooled control."""
    groups: dict[str, dict[str, list[np.ndarray]]] = {name: dict(v) for name, v in by_selector.items()}
    for kind in controls:
        pooled: dict[str, list[np.ndarray]] = {}
        for s in sets:
            for t, draws in by_selector.get(control_name(str(s), kind), {}).items():
                pooled.setdefault(t, []).extend(draws)
        if pooled:
            groups[kind] = pooled
    out: dict[str, tuple[float, float]] = {}
    for name, per_target in groups.items():
        if n_boot <= 0 or not per_target:
            out[name] = (math.nan, math.nan)
            continue
        stacked = {t: np.stack(v) for t, v in per_target.items()}
        out[name] = M.bootstrap_mean_gap(y_true, y_base, stacked, labels=labels, n_boot=n_boot, seed=seed)
    return out


def _prefix(pairs: Pairs, k: int, L: int, N: int, what: str) -> torch.Tensor:
    t = as_pairs(pairs, L, N, what=what)
    return t[: max(0, int(k))]


def dose_response_k(subject: Subject, df: pd.DataFrame, selection: Selection, ks: Iterable[int], *,
                    mode: Literal["deactivate", "steer"] = "deactivate", alpha: float = 1.0, selector: str = "",
                    random_seeds: Sequence[int] = (), match_layers: bool = False,
                    beyond: Literal["clamp", "skip"] = "clamp", batch_size: int = 32, positions: str = "all",
                    max_rows: int = DEFAULT_MAX_ROWS, n_boot: int = 1000, seed: int = 0,
                    progress: bool = True) -> pd.DataFrame:
    """Effects as a function of the number of neurons ``k``: the top-``k`` prefix of each emotion's ranked set.

    ``mode="deactivate"`` zeroes them; ``"steer"`` scales them by ``1 + alpha``. ``k = 0`` is the empty set, i.e.
    the baseline (all effects 0). A set never gives more neurons than it holds: for ``k`` beyond a set's size,
    ``beyond="clamp"`` (default) uses the whole set (``k_effective`` < ``k``, ``clamped`` True) and
    ``beyond="skip"`` drops the row. Each ``random_seeds`` entry adds a random control of exactly the
    ``k_effective`` neurons the selector got (never more): with ``match_layers=False`` the prefixes of one random
    draw matched to the whole set (so the random sets are nested in ``k`` like the ranked ones); with
    ``match_layers=True`` a fresh draw per ``k`` with the same count per layer as the selector's prefix.

    Returns :func:`helpers.metrics.effects.dose_response_table` (``param`` = k) with carried columns ``selector``,
    ``mode``, ``k_effective``, ``clamped``, ``control`` and ``seed`` (random rows).
    """
    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    ks = [int(k) for k in ks]
    if any(k < 0 for k in ks):
        raise ValueError(f"k must be >= 0, got {ks}")
    if mode not in ("deactivate", "steer"):
        raise ValueError(f"mode must be 'deactivate' or 'steer', got {mode!r}")
    if beyond not in ("clamp", "skip"):
        raise ValueError(f"beyond must be 'clamp' or 'skip', got {beyond!r}")
    salt = f"{selector or 'set'}|dose"
    kind = "random(layer-matched)" if match_layers else "random"
    rname = control_name(selector, kind) if selector else ("random" if not match_layers else "random(layer-matched)")
    conds = [identity()]
    for target, pairs in selection.items():
        if target not in labels:
            raise ValueError(f"set for {target!r} is not one of the labels {labels}")
        full = as_pairs(pairs, L, N, what=f"set {target!r}")
        size = int(full.shape[0])
        nested = {s: random_sets({target: full}, (L, N), seed=int(s), salt=salt)[target] for s in random_seeds}
        for k in ks:
            if k > size and beyond == "skip":
                continue
            k_eff = min(k, size)
            variants: list[tuple[int | None, torch.Tensor]] = [(None, full[:k_eff])]
            for s in random_seeds:
                if match_layers:
                    r = random_sets({target: full[:k_eff]}, (L, N), seed=int(s), salt=f"{salt}|k={k_eff}",
                                    match_layers=True)[target]
                else:
                    r = nested[s][:k_eff]
                variants.append((int(s), r))
            for rs, sub in variants:
                meta = {"target": target, "k": k, "k_effective": k_eff, "clamped": k > size,
                        "selector": selector if rs is None else rname}
                if rs is not None:
                    meta["seed"] = rs
                name = f"{mode}[{meta['selector']}:{target}:k={k}" + (f":seed{rs}]" if rs is not None else "]")
                c = deactivate(sub, L, N, name=name, meta=meta) if mode == "deactivate" else steer(
                    sub, L, N, alpha, name=name, meta=meta)
                conds.append(c)
    logits = run_conditions(subject, df, conds, batch_size=batch_size, positions=positions, max_rows=max_rows,
                            progress=progress)
    preds = logits.argmax(-1)
    records = []
    for j, c in enumerate(conds[1:], start=1):
        rec = {"target": c.meta["target"], "k": c.meta["k"], "y_true": y_true, "y_base": preds[0], "y_int": preds[j],
               "selector": c.meta["selector"], "mode": mode, "k_effective": c.meta["k_effective"],
               "clamped": c.meta["clamped"], "control": "seed" in c.meta}
        if mode == "steer":
            rec["alpha"] = float(alpha)
        if "seed" in c.meta:
            rec["seed"] = c.meta["seed"]
        records.append(rec)
    return _dose_table(records, labels, "k", n_boot, seed)


def _dose_table(records: list[dict], labels: Sequence[str], param_key: str, n_boot: int, seed: int) -> pd.DataFrame:
    """:func:`helpers.metrics.effects.dose_response_table` row by row (same seed, so rows share resamples), keeping a
    row whose flip rate is undefined in every resample (e.g. the baseline already predicts the target everywhere)
    with NaN intervals instead of failing the whole table."""
    import warnings

    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # undefined flip rates (NaN) are expected for some rows
        for rec in records:
            try:
                part = M.dose_response_table([rec], labels, param_key=param_key, n_boot=n_boot, seed=seed,
                                             stratify=True)
            except ValueError:
                if n_boot <= 0:
                    raise
                part = M.dose_response_table([rec], labels, param_key=param_key, n_boot=0, seed=seed)
            parts.append(part)
    if not parts:
        return pd.DataFrame(columns=list(M.DOSE_RESPONSE_COLUMNS))
    return pd.concat(parts, ignore_index=True)


def dose_response_alpha(subject: Subject, df: pd.DataFrame, selection: Selection, alphas: Iterable[float], *,
                        k: int | None = None, selector: str = "", mode: Mode = "multiply", stats: Any = None,
                        settings: SteeringSettings = SteeringSettings(), batch_size: int = 32, positions: str = "all",
                        max_rows: int = DEFAULT_MAX_ROWS, n_boot: int = 1000, seed: int = 0,
                        progress: bool = True) -> pd.DataFrame:
    """Steering strength: steer each emotion's neurons (top-``k`` prefix if given) with :func:`steer` in ``mode``
    (``stats``: the identification stats, needed for the ``add`` / ``patch_mean`` constants) on all items.

    ``alpha`` may be negative (attenuation; ``-1`` = deactivation in the multiply mode) or 0 (the baseline). Per
    (target, alpha) the row has the :func:`helpers.metrics.effects.dose_response_table` columns (``param`` = alpha;
    ``flip_rate`` = share of items of *other* emotions, not already predicted as the target, that flip to it)
    and ``mode`` plus:

    * ``acc_others_base`` / ``acc_others_int``: accuracy on the items of the other emotions before / after;
    * ``acc_target_base`` / ``acc_target_int``: recall of the target emotion before / after;
    * ``p_target_shift``: mean change, over other-emotion items, of the target's softmax probability (label logits).
    """
    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    alphas = [float(a) for a in alphas]
    consts = steering_constants(stats, mode, settings)
    conds = [identity()]
    for target, pairs in selection.items():
        if target not in labels:
            raise ValueError(f"set for {target!r} is not one of the labels {labels}")
        sub = _prefix(pairs, k, L, N, f"set {target!r}") if k is not None else pairs
        for a in alphas:
            conds.append(steer(sub, L, N, a, mode=mode, constant=None if consts is None else consts[target],
                               name=f"steer[{selector}:{target}:{mode}:alpha={a:g}]",
                               meta={"target": target, "selector": selector}))
    logits = run_conditions(subject, df, conds, batch_size=batch_size, positions=positions, max_rows=max_rows,
                            progress=progress)
    preds = logits.argmax(-1)
    prob = softmax_np(logits.astype(np.float64))
    records = []
    for j, c in enumerate(conds[1:], start=1):
        t = labels.index(c.meta["target"])
        others = y_true != t
        rec = {
            "target": c.meta["target"], "alpha": c.meta["alpha"], "y_true": y_true, "y_base": preds[0],
            "y_int": preds[j], "selector": selector, "mode": mode, "n_neurons": c.meta["n_neurons"],
            "acc_others_base": float((preds[0][others] == y_true[others]).mean()) if others.any() else math.nan,
            "acc_others_int": float((preds[j][others] == y_true[others]).mean()) if others.any() else math.nan,
            "acc_target_base": float((preds[0][~others] == t).mean()) if (~others).any() else math.nan,
            "acc_target_int": float((preds[j][~others] == t).mean()) if (~others).any() else math.nan,
            "p_target_shift": float((prob[j][others, t] - prob[0][others, t]).mean()) if others.any() else math.nan,
        }
        records.append(rec)
    return _dose_table(records, labels, "alpha", n_boot, seed)


def _rate_ci(hits: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of a proportion over the eligible items (NaN if none or n_boot = 0)."""
    if n_boot <= 0 or hits.size == 0:
        return math.nan, math.nan
    return M.bootstrap_ci(lambda h: h.mean(axis=1), hits.astype(np.float64), n_boot=n_boot, seed=seed, batched=True)


def steering_experiment(subject: Subject, df: pd.DataFrame, selection: Selection, alphas: Iterable[float], *,
                        strategies: Sequence[str] = STRATEGIES, settings: SteeringSettings = SteeringSettings(),
                        stats: Any = None, k: int | None = None, batch_size: int = 32, positions: str = "all",
                        max_rows: int = DEFAULT_MAX_ROWS, n_boot: int = 1000, seed: int = 0,
                        progress: bool = True) -> pd.DataFrame:
    """Targeted, oracle-targeted and label-free steering (:func:`label_free`), over ``alphas`` and the steering
    modes ``settings.modes`` (``stats``: the identification stats, for the ``add`` / ``patch_mean`` constants).

    One row per (mode, strategy, alpha, target): ``target`` is the steered emotion for ``targeted`` rows, plus
    one ``target="mean"`` row per (mode, alpha) averaging them; ``oracle`` rows (each item toward its own true
    emotion, :func:`oracle`) have ``target="true"``, label-free rows ``target="all"``. Every row is scored by
    the same outcome functions of :mod:`helpers.metrics.effects`, each under its own key:

    * ``corrections`` — share of the baseline's errors now correct (all items; for a targeted row most errors are
      of other emotions, which steering toward e cannot fix: see ``corrections_target_class`` and the oracle);
    * ``damage`` — share of the baseline's correct answers now wrong;
    * ``delta_uar`` — UAR change;
    * ``flip_rate_to_target`` — targeted: among items whose true emotion and baseline answer are not the target,
      the share now answered as the target; oracle: the target is the true label, so it equals ``corrections``;
      label-free: NaN (no target);
    * ``corrections_target_class`` (targeted only) — the baseline's errors on the target emotion's own items
      that are now correct;
    * intervals ``flip_ci_*`` (over the flip-eligible items) and ``corrections_ci_*`` (over the baseline's
      errors), counts ``n_eligible``, ``n_errors_base``, ``n_correct_base``, and ``acc_*``, ``uar_*``.

    The two-pass and mix strategies use the baseline of this same sweep as their first pass. :func:`steering_metrics`
    turns the table into ``metrics.json`` form.
    """
    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    alphas = [float(a) for a in alphas]
    strategies = list(strategies)
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    sel = {lbl: (_prefix(p, k, L, N, f"set {lbl!r}") if k is not None else p) for lbl, p in selection.items()}
    for target in sel:
        if target not in labels:
            raise ValueError(f"set for {target!r} is not one of the labels {labels}")
    kw: dict[str, Any] = {"batch_size": batch_size, "positions": positions, "max_rows": max_rows, "progress": progress}
    base_logits = run_conditions(subject, df, [identity()], **kw)[0]
    y_base = base_logits.argmax(-1)
    conds: list[Condition] = []
    for mode in settings.modes:
        consts = steering_constants(stats, mode, settings)
        for a in alphas:
            for strat in strategies:
                if strat == "targeted":
                    for target, pairs in sel.items():
                        const = None if consts is None else consts[target]
                        conds.append(steer(pairs, L, N, a, mode=mode, constant=const,
                                           name=f"targeted[{target}:{mode}:alpha={a:g}]",
                                           meta={"strategy": "targeted", "target": target}))
                elif strat == "oracle":
                    conds.append(oracle(sel, labels, L, N, a, y_true, mode=mode, constants=consts))
                else:
                    conds.append(label_free(strat, sel, labels, L, N, a, first_pass=base_logits, mode=mode,
                                            constants=consts))
    logits = run_conditions(subject, df, conds, **kw)
    preds = logits.argmax(-1)
    rows = []
    for j, c in enumerate(conds):
        strat, a, mode = c.meta["strategy"], c.meta["alpha"], c.meta["mode"]
        yi = preds[j]
        extra: dict[str, Any] = {}
        if strat == "targeted":
            t = labels.index(c.meta["target"])
            out = M.outcomes(y_true, y_base, yi, labels, target=t)
            elig = M.flip_eligible(y_true, y_base, t)
            flip_hits = yi[elig] == t
            own = (y_true == t) & (y_base != t)
            extra["corrections_target_class"] = float((yi[own] == t).mean()) if own.any() else math.nan
            target = c.meta["target"]
        elif strat == "oracle":
            out = M.outcomes(y_true, y_base, yi, labels, target=y_true, exclude_true_target=False)
            elig = y_base != y_true
            flip_hits = yi[elig] == y_true[elig]
            target = "true"
        else:
            out = M.outcomes(y_true, y_base, yi, labels)
            flip_hits = np.zeros(0, dtype=bool)
            target = "all"
        wrong = y_base != y_true
        lo, hi = _rate_ci(flip_hits, n_boot, seed)
        clo, chi = _rate_ci(yi[wrong] == y_true[wrong], n_boot, seed)
        rows.append({"mode": mode, "strategy": strat, "alpha": a, "target": target, **out,
                     "corrections_target_class": extra.get("corrections_target_class", math.nan),
                     "flip_ci_low": lo, "flip_ci_high": hi, "corrections_ci_low": clo, "corrections_ci_high": chi,
                     "acc_base": float((y_base == y_true).mean()), "acc_int": float((yi == y_true).mean()),
                     "uar_base": M.uar(y_true, y_base, labels=labels), "uar_int": M.uar(y_true, yi, labels=labels),
                     "n_items": len(y_true)})
    table = pd.DataFrame(rows)
    if "targeted" in strategies and len(table):
        tg = table[table["strategy"] == "targeted"]
        num = [c for c in tg.columns if c not in ("mode", "strategy", "alpha", "target")]
        mean = tg.groupby(["mode", "alpha"], sort=False)[num].mean().reset_index()
        mean["strategy"], mean["target"] = "targeted", "mean"
        for col in ("flip_ci_low", "flip_ci_high", "corrections_ci_low", "corrections_ci_high"):
            mean[col] = math.nan
        table = pd.concat([table, mean[table.columns]], ignore_index=True)
    table["_m"] = table["mode"].map({m: i for i, m in enumerate(MODES)})
    table["_o"] = table["strategy"].map({s: i for i, s in enumerate(STRATEGIES)})
    table = table.sort_values(["_m", "_o", "alpha"], kind="stable").drop(columns=["_m", "_o"]).reset_index(drop=True)
    return table


def _json_list(values: Iterable[Any]) -> list[float | None]:
    out = []
    for v in values:
        f = None if v is None else float(v)
        out.append(f if f is not None and math.isfinite(f) else None)
    return out


def steering_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """``metrics.json`` form of :func:`steering_experiment`, every list aligned with ``alpha``:

    * ``flip_rate``: ``{mode: [...]}`` — targeted steering's ``flip_rate_to_target`` (mean over targets);
    * ``corrections`` / ``damage`` / ``delta_uar``: ``{strategy: [...]}`` in the first mode of the table (the
      paper's ``multiply`` when it was run; ``targeted`` = the mean over targets);
    * ``by_mode``: ``{mode: {measure: {strategy: [...]}}}`` for every mode and the four measures.

    Missing values become ``None`` (valid JSON)."""
    alphas = sorted(table["alpha"].unique().tolist())
    modes = [m for m in MODES if m in set(table["mode"])]
    summary = table[table["target"].isin(["mean", "all", "true"])]
    by_mode: dict[str, dict[str, dict[str, list]]] = {}
    for mode in modes:
        sub = summary[summary["mode"] == mode]
        by_mode[mode] = {}
        for measure in M.OUTCOME_KEYS:
            by_mode[mode][measure] = {}
            for strat in [s for s in STRATEGIES if s in set(sub["strategy"])]:
                col = sub[sub["strategy"] == strat].set_index("alpha")[measure]
                by_mode[mode][measure][strat] = _json_list(col.get(a, math.nan) for a in alphas)
    out: dict[str, Any] = {"alpha": [float(a) for a in alphas],
                           "flip_rate": {m: by_mode[m]["flip_rate_to_target"].get("targeted", [None] * len(alphas))
                                         for m in modes}}
    first = modes[0] if modes else None
    for measure in ("corrections", "damage", "delta_uar"):
        out[measure] = by_mode[first][measure] if first else {}
    out["by_mode"] = by_mode
    return out


def non_additivity(subject: Subject, df: pd.DataFrame, selection: Selection, *,
                   pairs: Sequence[tuple[str, str]] | None = None, alpha: float | Sequence[float] = 1.0,
                   on: Literal["all", "non_target"] = "all", k: int | None = None, batch_size: int = 32,
                   positions: str = "all", max_rows: int = DEFAULT_MAX_ROWS, n_boot: int = 1000, seed: int = 0,
                   progress: bool = True) -> pd.DataFrame:
    """Is amplifying two emotions' neurons together the sum of amplifying each alone? At one or several ``alpha``.

    For each pair ``(a, b)`` (default: every pair of labels with a set) and each alpha three conditions run:
    ``steer(S_a)``, ``steer(S_b)`` and the joint ``joint([S_a, S_b])`` (union, scale ``1 + alpha``). For each
    target ``t in (a, b)`` and each measure — ``logprob`` (log-softmax of the label logits at ``t``) and ``prob``
    (softmax probability of ``t``) — the shift from the baseline is averaged over the items (``on="all"``, or
    ``"non_target"``: items whose true emotion is neither a nor b). Columns: ``pair, target, measure, alpha,
    effect_a, effect_b, additive`` (= a + b), ``joint, interaction`` (= joint − additive, with a paired
    item-bootstrap ``ci_low``/``ci_high``), ``ratio`` (joint / additive), ``n_overlap`` (neurons in both sets) and
    ``n_items``. All alphas run in one batched sweep.
    """
    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    alphas = [float(alpha)] if isinstance(alpha, numbers.Real) else [float(a) for a in cast(Iterable[float], alpha)]
    if not alphas:
        raise ValueError("give at least one alpha")
    if on not in ("all", "non_target"):
        raise ValueError(f"on must be 'all' or 'non_target', got {on!r}")
    sel = {lbl: (_prefix(p, k, L, N, f"set {lbl!r}") if k is not None else as_pairs(p, L, N, what=f"set {lbl!r}"))
           for lbl, p in selection.items()}
    if pairs is None:
        pairs = list(itertools.combinations([lbl for lbl in labels if lbl in sel], 2))
    for a_, b_ in pairs:
        for x in (a_, b_):
            if x not in sel:
                raise ValueError(f"no neuron set for {x!r} (sets: {sorted(sel)})")
    singles = sorted({x for p in pairs for x in p}, key=labels.index)
    conds = [identity()]
    for al in alphas:
        conds += [steer(sel[x], L, N, al, name=f"steer[{x}:alpha={al:g}]", meta={"members": x}) for x in singles]
        conds += [joint({a_: sel[a_], b_: sel[b_]}, L, N, al, name=f"joint[{a_}+{b_}:alpha={al:g}]")
                  for a_, b_ in pairs]
    logits = run_conditions(subject, df, conds, batch_size=batch_size, positions=positions, max_rows=max_rows,
                            progress=progress).astype(np.float64)
    logp = log_softmax_np(logits)
    measures = {"logprob": logp, "prob": np.exp(logp)}
    index = {c.name: j for j, c in enumerate(conds)}
    rows = []
    for al in alphas:
        for a_, b_ in pairs:
            ia, ib = index[f"steer[{a_}:alpha={al:g}]"], index[f"steer[{b_}:alpha={al:g}]"]
            ij = index[f"joint[{a_}+{b_}:alpha={al:g}]"]
            keep = np.ones(len(y_true), bool)
            if on == "non_target":
                keep = (y_true != labels.index(a_)) & (y_true != labels.index(b_))
            overlap = int((as_mask(sel[a_], L, N) & as_mask(sel[b_], L, N)).sum())
            for target in (a_, b_):
                t = labels.index(target)
                for mname, v in measures.items():
                    da = v[ia, keep, t] - v[0, keep, t]
                    db = v[ib, keep, t] - v[0, keep, t]
                    dj = v[ij, keep, t] - v[0, keep, t]
                    inter = dj - (da + db)
                    lo, hi = (math.nan, math.nan)
                    if n_boot > 0 and inter.size:
                        lo, hi = M.bootstrap_ci(lambda x: x.mean(axis=1), inter, n_boot=n_boot, seed=seed,
                                                batched=True)
                    add = float(da.mean() + db.mean()) if inter.size else math.nan
                    jm = float(dj.mean()) if inter.size else math.nan
                    rows.append({
                        "pair": f"{a_}+{b_}", "target": target, "measure": mname, "alpha": al,
                        "effect_a": float(da.mean()) if inter.size else math.nan,
                        "effect_b": float(db.mean()) if inter.size else math.nan,
                        "additive": add, "joint": jm, "interaction": jm - add, "ci_low": lo, "ci_high": hi,
                        "ratio": jm / add if add != 0.0 and math.isfinite(add) else math.nan,
                        "n_overlap": overlap, "n_items": int(keep.sum()),
                    })
    return pd.DataFrame(rows)


def identification_variability(subject: Subject, df: pd.DataFrame, replicates: Sequence[Mapping[str, Selection]], *,
                               reference: Mapping[str, Selection] | None = None, ci: float = 0.95,
                               batch_size: int = 32, positions: str = "all", max_rows: int = DEFAULT_MAX_ROWS,
                               progress: bool = True) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Variability over the identification sample: deactivate every replicate's sets (from
    :func:`helpers.identify.resampling.identification_resamples`: the identify split resampled, stats re-accumulated,
    neurons re-selected) on the same evaluation items ``df``, in one batched sweep.

    Returns ``(table, summary)``: ``table`` has one row per (replicate, selector) with the mean gap over emotions,
    the mean set size and, with ``reference`` (the sets found on the full identify split), the mean Jaccard
    overlap with them; ``summary`` is ``{selector: {"mean", "ci_low", "ci_high", "n_replicates"}}``, the
    percentile interval over replicates — the selection-variance interval to show next to the item bootstrap
    (which keeps the sets fixed).
    """
    from ..identify.selectors import jaccard

    labels, y_true = _truth(subject, df)
    L, N = gate_shape(subject.model)
    conds = [identity()]
    for r, sets in enumerate(replicates):
        for sel_name, selection in sets.items():
            for target, pairs in selection.items():
                if target not in labels:
                    raise ValueError(f"replicate {r}, selector {sel_name!r}: {target!r} is not one of {labels}")
                conds.append(deactivate(pairs, L, N, name=f"deactivate[r{r}:{sel_name}:{target}]",
                                        meta={"replicate": r, "selector": str(sel_name), "target": target}))
    preds = run_conditions(subject, df, conds, batch_size=batch_size, positions=positions, max_rows=max_rows,
                           progress=progress).argmax(-1)
    groups: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    sizes: dict[tuple[int, str], list[int]] = {}
    for j, c in enumerate(conds[1:], start=1):
        key = (c.meta["replicate"], c.meta["selector"])
        groups.setdefault(key, {})[c.meta["target"]] = preds[j]
        sizes.setdefault(key, []).append(c.meta["n_neurons"])
    rows = []
    for (r, sel_name), per_target in groups.items():
        row = {"replicate": r, "selector": sel_name,
               "gap": M.mean_gap(y_true, preds[0], per_target, labels=labels),
               "n_neurons": float(np.mean(sizes[(r, sel_name)]))}
        if reference is not None and sel_name in reference:
            overlap = jaccard({t: as_pairs(p, L, N) for t, p in replicates[r][sel_name].items()},
                              {t: as_pairs(p, L, N) for t, p in reference[sel_name].items()})
            row["jaccard_to_reference"] = float(np.mean(list(overlap.values()))) if overlap else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    alpha = (1.0 - ci) / 2.0
    summary = {}
    for sel_name, g in table.groupby("selector", sort=False) if len(table) else []:
        q = np.quantile(g["gap"], [alpha, 1 - alpha])
        summary[str(sel_name)] = {"mean": float(g["gap"].mean()), "ci_low": float(q[0]), "ci_high": float(q[1]),
                                  "n_replicates": len(g)}
    return table, summary


__all__ = [
    "CONTROLS",
    "DEFAULT_MAX_ROWS",
    "LABEL_FREE",
    "MODES",
    "STRATEGIES",
    "Condition",
    "DeactivationResult",
    "ItemScale",
    "SteeringSettings",
    "combine",
    "control_name",
    "deactivate",
    "deactivation_experiment",
    "dose_response_alpha",
    "dose_response_k",
    "identification_variability",
    "identity",
    "joint",
    "label_free",
    "label_masks",
    "non_additivity",
    "oracle",
    "run_conditions",
    "run_conditions_sequential",
    "steer",
    "steering_constants",
    "steering_experiment",
    "steering_metrics",
]
