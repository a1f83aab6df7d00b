"""Gate-edit *conditions* of the Intervene stage and the constructors of the paper's edits.

A :class:`Condition` is one edit of the SwiGLU gates ``a = act_fn(gate_proj x)`` of every decoder MLP,
``a <- a * scale + add`` with ``scale``/``add`` of shape ``[L, N]`` (layers x neurons). The constructors build the
edits of the paper:

* :func:`deactivate` — scale 0 on an emotion's neurons (necessity test);
* :func:`steer` — in the paper's ``mode="multiply"``, scale ``1 + alpha`` on them (amplification for ``alpha > 0``,
  attenuation for ``-1 < alpha < 0``; ``alpha = -1`` equals deactivation); ``"add"`` adds ``alpha`` times a
  per-neuron constant, ``"patch_mean"`` moves the gates toward the target emotion's mean (see :data:`MODES`);
* :func:`joint` — scale ``1 + alpha`` on the *union* of several emotions' sets (a neuron in two sets is scaled once);
* :func:`combine` — several conditions applied one after the other;
* :func:`~helpers.intervene.per_item.label_free` — the per-item strategies ``two_pass``, ``union`` and ``mix``
  (defined there) that need no target emotion; :func:`~helpers.intervene.per_item.oracle` — each item steered
  toward its own true emotion (an upper bound);
* :func:`identity` — no edit (the baseline).

Neuron sets everywhere are ``{label: LongTensor[m, 2]}`` of ``(layer, neuron)`` pairs, as returned by
:func:`helpers.identify.selection.select` (best first, which :func:`~helpers.intervene.dose_response.dose_response_k`
relies on), validated by
:func:`helpers.core.neuron_sets.as_pairs`; random controls come from :func:`helpers.core.neuron_sets.random_sets`.

"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ..core.neuron_sets import as_mask

Pairs = Any  # LongTensor[m, 2] | ndarray | nested list of (layer, neuron)


Selection = Mapping[str, Pairs]


Mode = Literal["multiply", "add", "patch_mean"]


#: Steering modes (how the selected gates are edited), see :func:`steer`.
MODES: tuple[str, ...] = ("multiply", "add", "patch_mean")


_DTYPE = torch.float32


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


__all__ = [
    "MODES",
    "Condition",
    "ItemScale",
    "SteeringSettings",
    "combine",
    "deactivate",
    "identity",
    "joint",
    "steer",
    "steering_constants",
]
