"""Grounding: does an emotion-sensitive neuron respond to what the model *hears* or to what it *reads*?

This is the book's own extension, not the paper's. We use activation patching at the level of neuron sets and
layer clusters, with pairs of prompts that differ in one modality only:

* **audio pairs** (:func:`audio_pairs`): the same sentence and voice spoken in two emotions, with the *same*
  prompt text (the counterfactual keeps the base's text), so only the audio differs;
* **text pairs** (:func:`text_pairs`): the same clip with a neutral context ("someone is talking") versus a
  context that states an emotion (conflicting by default), so only the text differs.

Patching copies values at one *position class* (the audio tokens or the context tokens) from a source run into a
target run, in two directions:

* **denoise** (sufficiency): target = base, source = counterfactual. Does the counterfactual's audio (text)
  alone carry the change?
* **noise** (necessity): target = counterfactual, source = base. Is the counterfactual's audio (text) needed?

Two things can be patched: the SwiGLU gates (``what="gates"``, through the same edit rule and nnsight envoys as
:func:`helpers.hooks.run_with_gate_edits`; a neuron mask and a layer cluster choose *which* gates) or the residual
stream at the output of chosen decoder layers (``what="residual"``; everything the position carries from that layer
on). Gate patching leaves ``up_proj``, attention and the residual stream of the target run in place, so even a
patch of every gate at every position does *not* reproduce the counterfactual's logits; residual patching does.

**Grounding coefficient** (our definition): for a neuron (or the mean of a neuron set) read at the answer position,
``Δ_audio`` is the mean over audio pairs of ``|activation after patching the audio side − before|`` and ``Δ_text``
the same over text pairs with the text side patched; ``coefficient = Δ_audio / (Δ_audio + Δ_text)`` in [0, 1]
(1: only the audio moves it; 0: only the text). It is NaN when both Δs are 0 (the neuron moves with neither, so it
has no grounding to report). The same ratio on the change of the probability of the counterfactual's emotion gives
the *prediction* coefficient of a patched set. Bootstrap intervals resample the audio pairs and the text pairs
independently (they are two samples).

Why read at the answer position: it is patched by neither side, so its change can only arrive through attention
from the patched positions, which is exactly the question "where does this neuron get its input from". A
consequence for gate patching: a gate patch in layer l changes the residual stream only after layer l's MLP, so
the answer's neurons in layer l can only move through patches in layers < l. Layer-0 neurons therefore never move
under gate patching (both Δs are 0, coefficient NaN); read them under residual patching, or patch earlier layers.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import nnsight
import numpy as np
import pandas as pd
import torch

from .hooks import LogitsMode, Reduce, _envoys, _plan, apply_gate_edit, run_with_gate_edits, select_logits, trace_gates
from .models import decoder_layers, gate_shape
from .subject import Subject

Side = Literal["audio", "text", "all"]
Direction = Literal["denoise", "noise"]
What = Literal["gates", "residual"]
Where = Literal["answer", "side"]

#: Default thresholds on the grounding coefficient (named so notebooks can vary them).
AUDIO_GROUNDED_MIN = 0.7
TEXT_GROUNDED_MAX = 0.3

#: Above this many read neurons per item, :func:`patch_run` asks for an explicit ``read`` mask (memory).
MAX_DEFAULT_READ = 1 << 16

#: What each pairing needs beyond the unified schema, and why (used in the error message).
_COLUMN_MEANING = {
    "matched_id": "same sentence and voice across emotions (to pair clips that differ only in emotion)",
    "clip_id": "one id per audio clip (to pair the same clip under different text contexts)",
    "context": "which text context the row carries: none / congruent / conflict",
    "context_label": "the emotion the context text states ('none' for a neutral context)",
    "label": "the emotion of the audio",
    "text": "the prompt text",
    "path": "the audio file",
}


class GroundingDataError(ValueError):
    """The dataset cannot support the grounding analysis (missing columns or no usable pairs)."""


# ------------------------------------------------------------------------------------------------------ pairing
def require_columns(df: pd.DataFrame, needed: Iterable[str], purpose: str) -> None:
    """Raise :class:`GroundingDataError` naming the missing columns and what grounding needs them for."""
    missing = [c for c in needed if c not in df.columns]
    if missing:
        what = "; ".join(f"`{c}`: {_COLUMN_MEANING.get(c, 'required')}" for c in missing)
        raise GroundingDataError(
            f"{purpose} needs the columns {missing}, which this dataset lacks ({what}). Grounding needs matched "
            "items that differ in one modality only: the synthetic corpora (helpers.corpus) provide matched_id, "
            "clip_id, context and context_label; real emotion datasets do not, so the grounding analysis is skipped "
            "for them."
        )


def _restrict_labels(df: pd.DataFrame, col: str, labels: Sequence[str] | None) -> pd.DataFrame:
    return df if labels is None else df[df[col].isin(list(labels))]


def _pair_frame(base: pd.DataFrame, cf: pd.DataFrame, kind: str, cf_emotion: Sequence[str]) -> pd.DataFrame:
    base = base.reset_index(drop=True)
    cf = cf.reset_index(drop=True)
    out = pd.concat([base.add_prefix("base_"), cf.add_prefix("cf_")], axis=1)
    out.insert(0, "kind", kind)
    out.insert(1, "base_emotion", base["label"].to_numpy())
    out.insert(2, "cf_emotion", list(cf_emotion))
    return out


def pair_rows(pairs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a pair table into aligned ``(base_rows, cf_rows)`` in the unified schema (for :func:`patch_run`)."""
    base_cols = [c for c in pairs.columns if c.startswith("base_") and c != "base_emotion"]
    cf_cols = [c for c in pairs.columns if c.startswith("cf_") and c != "cf_emotion"]
    base = pairs[base_cols].rename(columns=lambda c: c[len("base_") :]).reset_index(drop=True)
    cf = pairs[cf_cols].rename(columns=lambda c: c[len("cf_") :]).reset_index(drop=True)
    return base, cf


def audio_pairs(df: pd.DataFrame, labels: Sequence[str] | None = None, *, context: str = "none") -> pd.DataFrame:
    """Every ordered (base, counterfactual) pair of clips with the same ``matched_id`` and different emotions.

    Both come from ``context`` rows (neutral text by default), and the counterfactual row takes the base row's
    ``text``: the synthetic corpus draws the neutral phrase per clip, so without this the pair could differ in its
    text too. Result: one row per pair with every input column prefixed ``base_`` / ``cf_``, plus ``kind``,
    ``base_emotion`` and ``cf_emotion`` (the counterfactual audio's emotion). Split it with :func:`pair_rows`.
    """
    require_columns(df, ("matched_id", "context", "label", "text", "path"), "audio pairing (grounding)")
    sub = _restrict_labels(df[df["context"] == context], "label", labels).reset_index(drop=True)
    sub = sub.drop_duplicates(["matched_id", "label", "path"]).reset_index(drop=True)
    order = {lbl: i for i, lbl in enumerate(labels)} if labels is not None else None
    pos = np.arange(len(sub))
    left = pd.DataFrame({"matched_id": sub["matched_id"].to_numpy(), "b": pos})
    right = pd.DataFrame({"matched_id": sub["matched_id"].to_numpy(), "c": pos})
    m = left.merge(right, on="matched_id")
    m = m[sub["label"].to_numpy()[m["b"]] != sub["label"].to_numpy()[m["c"]]]
    if m.empty:
        raise GroundingDataError(
            f"no audio pairs: no matched_id has clips of two emotions among the {context!r}-context rows "
            f"({len(sub)} rows{', labels ' + str(list(labels)) if labels is not None else ''})"
        )
    key = sub["label"].map(order) if order is not None else sub["label"]
    m = m.assign(_mid=sub["matched_id"].to_numpy()[m["b"]], _kb=key.to_numpy()[m["b"]], _kc=key.to_numpy()[m["c"]])
    m = m.sort_values(["_mid", "_kb", "_kc", "b", "c"], kind="stable")
    base = sub.iloc[m["b"].to_numpy()].reset_index(drop=True)
    cf = sub.iloc[m["c"].to_numpy()].reset_index(drop=True).copy()
    for col in ("text", "context", "context_label"):
        if col in cf.columns:
            cf[col] = base[col].to_numpy()
    return _pair_frame(base, cf, "audio", cf["label"].tolist())


def text_pairs(
    df: pd.DataFrame, labels: Sequence[str] | None = None, *, contexts: Sequence[str] = ("conflict",)
) -> pd.DataFrame:
    """(base, counterfactual) pairs of the *same clip*: base with the neutral context, counterfactual with a
    context stating an emotion (``contexts``: ``"conflict"`` by default, ``"congruent"`` allowed too).

    ``cf_emotion`` is the emotion the counterfactual's text states (``context_label``). With ``labels`` given, pairs
    whose audio or text emotion is outside them are dropped.
    """
    require_columns(df, ("clip_id", "context", "context_label", "label", "text", "path"), "text pairing (grounding)")
    bad = sorted(set(contexts) - {"conflict", "congruent"})
    if bad:
        raise ValueError(f"contexts must be 'conflict' and/or 'congruent', got {bad}")
    base = _restrict_labels(df[df["context"] == "none"], "label", labels).drop_duplicates("clip_id")
    cf = df[df["context"].isin(list(contexts))]
    cf = _restrict_labels(_restrict_labels(cf, "label", labels), "context_label", labels)
    b = base.reset_index(drop=True).assign(_b=lambda x: np.arange(len(x)))
    c = cf.reset_index(drop=True).assign(_c=lambda x: np.arange(len(x)))
    m = b[["clip_id", "_b"]].merge(c[["clip_id", "_c"]], on="clip_id").sort_values(["_b", "_c"], kind="stable")
    if m.empty:
        raise GroundingDataError(
            f"no text pairs: no clip appears both with the 'none' context and with a {list(contexts)} context "
            "(identify/evaluate splits of the synthetic corpus carry all three contexts; train rows carry one)"
        )
    base_rows = b.iloc[m["_b"].to_numpy()].drop(columns="_b")
    cf_rows = c.iloc[m["_c"].to_numpy()].drop(columns="_c")
    return _pair_frame(base_rows, cf_rows, "text", cf_rows["context_label"].tolist())


def conflict_items(df: pd.DataFrame, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows whose text states an emotion other than the audio's (``context == "conflict"``)."""
    require_columns(df, ("context", "context_label", "label"), "the conflict analysis (grounding)")
    sub = df[(df["context"] == "conflict") & (df["context_label"] != df["label"])]
    sub = _restrict_labels(_restrict_labels(sub, "label", labels), "context_label", labels)
    if sub.empty:
        raise GroundingDataError("no conflict items: no row has context == 'conflict' with a differing context_label")
    return sub.reset_index(drop=True)


# ------------------------------------------------------------------------------------------------- layer clusters
_CLUSTER_NAMES = {1: ("all",), 2: ("early", "late"), 3: ("early", "middle", "late")}


def layer_clusters(n_layers: int, n_clusters: int = 3) -> dict[str, list[int]]:
    """Contiguous, near-equal layer ranges: ``{"early": [...], "middle": [...], "late": [...]}`` for 3 clusters
    (earlier clusters get the extra layer when ``n_layers`` does not divide); ``c0, c1, ...`` beyond 3."""
    if n_clusters < 1 or n_layers < n_clusters:
        raise ValueError(f"cannot split {n_layers} layers into {n_clusters} non-empty clusters")
    names = _CLUSTER_NAMES.get(n_clusters, tuple(f"c{i}" for i in range(n_clusters)))
    parts = np.array_split(np.arange(n_layers), n_clusters)
    return {name: [int(x) for x in part] for name, part in zip(names, parts, strict=True)}


def cluster_of_layers(n_layers: int, clusters: Mapping[str, Sequence[int]]) -> np.ndarray:
    """Cluster name of every layer (``""`` for a layer in no cluster)."""
    out = np.full(n_layers, "", dtype=object)
    for name, layers in clusters.items():
        out[list(layers)] = name
    return out


# ---------------------------------------------------------------------------------------------------- neuron sets
def as_mask(neurons: torch.Tensor | np.ndarray | Sequence, n_layers: int, n_neurons: int) -> torch.Tensor:
    """A neuron set as a bool mask [L, N]: accepts a mask or ``(layer, neuron)`` pairs ``[m, 2]``."""
    t = neurons if isinstance(neurons, torch.Tensor) else torch.as_tensor(np.array(neurons))
    if t.dtype == torch.bool:
        if tuple(t.shape) != (n_layers, n_neurons):
            raise ValueError(f"neuron mask has shape {tuple(t.shape)}, the model has {n_layers} x {n_neurons} gates")
        return t.clone()
    pairs = t.long().reshape(-1, 2)
    if pairs.numel() and (
        pairs.min() < 0 or int(pairs[:, 0].max()) >= n_layers or int(pairs[:, 1].max()) >= n_neurons
    ):
        raise ValueError(f"neuron pairs outside the model's {n_layers} x {n_neurons} gates")
    mask = torch.zeros(n_layers, n_neurons, dtype=torch.bool)
    mask[pairs[:, 0], pairs[:, 1]] = True
    return mask


def union_mask(sets: Mapping[str, Any], n_layers: int, n_neurons: int) -> torch.Tensor:
    """Union of several neuron sets as one mask [L, N] (e.g. the ``read`` mask covering every set)."""
    out = torch.zeros(n_layers, n_neurons, dtype=torch.bool)
    for s in sets.values():
        out |= as_mask(s, n_layers, n_neurons)
    return out


def restrict_to_layers(mask: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """The part of a neuron mask [L, N] that lies in ``layers``."""
    keep = torch.zeros(mask.shape[0], dtype=torch.bool)
    keep[list(layers)] = True
    return mask & keep[:, None]


def split_by_cluster(
    sets: Mapping[str, Any], clusters: Mapping[str, Sequence[int]], n_layers: int, n_neurons: int, sep: str = "/"
) -> dict[str, torch.Tensor]:
    """``{f"{set}{sep}{cluster}": mask}`` for every non-empty part of every set (per-cluster grounding)."""
    out = {}
    for name, s in sets.items():
        m = as_mask(s, n_layers, n_neurons)
        for cname, layers in clusters.items():
            part = restrict_to_layers(m, layers)
            if part.any():
                out[f"{name}{sep}{cname}"] = part
    return out


def random_mask_like(mask: torch.Tensor, seed: int = 0, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """A random neuron set with the same number of neurons per layer as ``mask`` (avoiding ``exclude``).

    Why: the audio- and text-grounded sets differ in size and layer profile; deactivating a size- and layer-matched
    random set tells how much of a shift any deactivation of that size causes.
    """
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros_like(mask, dtype=torch.bool)
    for layer in range(mask.shape[0]):
        k = int(mask[layer].sum())
        if k == 0:
            continue
        allowed = torch.ones(mask.shape[1], dtype=torch.bool) if exclude is None else ~exclude[layer]
        idx = allowed.nonzero().flatten()
        if len(idx) < k:
            raise ValueError(f"layer {layer}: cannot draw {k} random neurons from {len(idx)} allowed ones")
        out[layer, idx[torch.randperm(len(idx), generator=g)[:k]]] = True
    return out


# ----------------------------------------------------------------------------------------------- patched tracing
def trace_patched(
    model: Any,
    inputs: Mapping[str, Any],
    *,
    scale: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    patch: Sequence[torch.Tensor | None] | Mapping[int, torch.Tensor] | None = None,
    patch_mask: torch.Tensor | None = None,
    residual: Mapping[int, torch.Tensor] | None = None,
    residual_positions: torch.Tensor | None = None,
    read_residual: Iterable[int] = (),
    reduce: Reduce | None = None,
    logits: LogitsMode = "last",
) -> tuple[torch.Tensor | None, list[Any], dict[int, torch.Tensor]]:
    """:func:`~helpers.hooks.run_with_gate_edits` that also *reads* the edited gates, and can patch or read the
    residual stream at decoder-layer outputs: ``(logits, per-layer gates or reduce(i, gate), {layer: hidden})``.

    Gate edits use the hooks' own validation (``_plan``) and edit rule (``apply_gate_edit``) on the same nnsight
    envoys, so the result equals ``run_with_gate_edits`` (the tests check it); this function only adds reading.
    ``residual``: ``{layer: [B|1, T, H]}`` source hidden states written into that layer's output at
    ``residual_positions`` [B, T] (all positions when None). ``read_residual``: layers whose (possibly patched)
    output hidden states are returned. The gate list always has one entry per layer (``None`` where ``reduce``
    returned None).
    """
    envoys, plan, root = _plan(model, inputs, None, scale, add, positions, patch, patch_mask)
    edits = dict(plan)
    layers = list(decoder_layers(model))
    n_layers = len(layers)
    res_plan: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for layer, src in (residual or {}).items():
        layer = int(layer)
        if not 0 <= layer < n_layers:
            raise ValueError(f"residual patch for layer {layer} but the model has {n_layers} layers")
        dev = layers[layer].mlp.gate_proj.weight.device
        pos = None
        if residual_positions is not None:
            p = torch.as_tensor(residual_positions)
            if p.dtype != torch.bool or p.ndim != 2:
                raise TypeError("`residual_positions` must be a bool tensor [B, T]")
            pos = p[:, :, None].to(dev)
        src = torch.as_tensor(src)
        if src.ndim != 3:
            raise ValueError(f"residual source for layer {layer} must be [B|1, T, H], got shape {tuple(src.shape)}")
        res_plan[layer] = (src.to(dev), pos)
    reads = {int(x) for x in read_residual}
    touch = sorted(set(res_plan) | reads)
    layer_envs = dict(zip(touch, _envoys(root, [layers[i] for i in touch]), strict=True))
    mask = inputs.get("attention_mask")
    with torch.no_grad(), root.trace(**inputs):
        gates = nnsight.save([])
        hidden = nnsight.save([])
        for i in range(n_layers):
            value = envoys[i].output
            if i in edits:
                value = apply_gate_edit(value, **edits[i])
                envoys[i].output = value
            gates.append(reduce(i, value) if reduce is not None else value)
            if i in layer_envs:
                raw = layer_envs[i].output
                h = raw[0] if isinstance(raw, tuple) else raw
                if i in res_plan:
                    src, pos = res_plan[i]
                    h = src.to(h.dtype).expand_as(h) if pos is None else torch.where(pos, src.to(h.dtype), h)
                    layer_envs[i].output = (h, *raw[1:]) if isinstance(raw, tuple) else h
                if i in reads:
                    hidden.append((i, h))
        out = nnsight.save(select_logits(root.output, logits, mask) if logits != "none" else None)
    return out, list(gates), dict(hidden)


class _Readout:
    """Per-layer reduce that keeps the read neurons' value at the answer position and their mean over the side's
    positions: ``{"answer": [B, k_l], "side": [B, k_l]}`` (float32, CPU)."""

    def __init__(self, read_index: torch.Tensor, n_layers: int, answer: torch.Tensor, side: torch.Tensor) -> None:
        self.per_layer = [read_index[read_index[:, 0] == i, 1] for i in range(n_layers)]
        self.answer = answer
        self.side = side

    def __call__(self, i: int, g: torch.Tensor) -> dict[str, torch.Tensor] | None:
        idx = self.per_layer[i]
        if idx.numel() == 0:
            return None
        sel = g[..., idx.to(g.device)].float()
        ans = self.answer.to(g.device)[..., None].float()
        side = self.side.to(g.device)[..., None].float()
        return {
            "answer": (sel * ans).sum(1).cpu(),
            "side": ((sel * side).sum(1) / side.sum(1).clamp(min=1.0)).cpu(),
        }

    @staticmethod
    def collect(outs: Sequence[Any], batch: int) -> dict[str, torch.Tensor]:
        kept = [o for o in outs if o is not None]
        if not kept:
            return {k: torch.zeros(batch, 0) for k in ("answer", "side")}
        return {k: torch.cat([o[k] for o in kept], dim=1) for k in ("answer", "side")}


# ---------------------------------------------------------------------------------------------------- patch runs
@dataclass
class PatchResult:
    """One patching experiment over aligned (base, counterfactual) items.

    ``before`` is the target run unpatched (base for denoise, counterfactual for noise), ``after`` the target run
    with the side patched, ``source`` the run the values came from. Activations are the read neurons'
    (``read_index`` [K, 2] as (layer, neuron)) value at the answer position (``"answer"``) and their mean over the
    side's positions (``"side"``), each [n_items, K]. Label logits are [n_items, n_labels].
    """

    side: str
    direction: str
    what: str
    layers: list[int]
    labels: tuple[str, ...]
    base_rows: pd.DataFrame
    cf_rows: pd.DataFrame
    cf_emotion: list[str]
    read_index: torch.Tensor
    n_patched: int
    logits_before: torch.Tensor
    logits_after: torch.Tensor
    logits_source: torch.Tensor
    act_before: dict[str, torch.Tensor] = field(repr=False)
    act_after: dict[str, torch.Tensor] = field(repr=False)
    act_source: dict[str, torch.Tensor] = field(repr=False)

    @property
    def n_items(self) -> int:
        return int(self.logits_before.shape[0])

    def probs(self, which: Literal["before", "after", "source"] = "after") -> torch.Tensor:
        """Softmax over the label logits (constrained scoring), [n_items, n_labels]."""
        return torch.softmax(getattr(self, f"logits_{which}").float(), dim=-1)

    def cf_index(self) -> np.ndarray:
        """Index of each item's counterfactual emotion in ``labels`` (-1 when it is not one of them)."""
        pos = {lbl: i for i, lbl in enumerate(self.labels)}
        return np.array([pos.get(e, -1) for e in self.cf_emotion], dtype=np.int64)

    def p_cf(self, which: Literal["before", "after", "source"] = "after") -> np.ndarray:
        """Probability of the counterfactual's emotion per item (NaN where it is not a label)."""
        idx = self.cf_index()
        p = self.probs(which).numpy()
        out = np.full(len(idx), np.nan)
        ok = idx >= 0
        out[ok] = p[np.flatnonzero(ok), idx[ok]]
        return out

    def pred_effect(self) -> np.ndarray:
        """Signed change of p(counterfactual emotion) *towards the counterfactual*: after − before for denoise
        (how much of it the patch brings in), before − after for noise (how much of it the patch removes)."""
        d = self.p_cf("after") - self.p_cf("before")
        return d if self.direction == "denoise" else -d

    def activation_change(self, where: Where = "answer") -> torch.Tensor:
        """after − before per item and read neuron, [n_items, K]."""
        return self.act_after[where] - self.act_before[where]

    def columns_of(self, neurons: Any, n_layers: int, n_neurons: int) -> np.ndarray:
        """Columns of the read neurons that belong to a set; raises if the set has unread neurons."""
        mask = as_mask(neurons, n_layers, n_neurons)
        in_set = mask[self.read_index[:, 0], self.read_index[:, 1]]
        missing = int(mask.sum()) - int(in_set.sum())
        if missing:
            raise ValueError(f"{missing} neurons of the set were not read in this patch run; pass read= covering it")
        return in_set.nonzero().flatten().numpy()

    def set_activation(
        self, sets: Mapping[str, Any], n_layers: int, n_neurons: int, which: str = "before", where: Where = "answer"
    ) -> dict[str, np.ndarray]:
        """Mean activation of each set per item (NaN for an empty set)."""
        act = getattr(self, f"act_{which}")[where].numpy()
        out = {}
        for name, s in sets.items():
            cols = self.columns_of(s, n_layers, n_neurons)
            out[name] = act[:, cols].mean(1) if len(cols) else np.full(self.n_items, np.nan)
        return out

    def item_table(self, sets: Mapping[str, Any] | None = None, *, n_layers: int = 0, n_neurons: int = 0,
                   where: Where = "answer") -> pd.DataFrame:
        """One row per item: ids, emotions, predictions and p(cf emotion) before/after, and each set's mean
        activation before/after (``sets`` needs the model's ``n_layers`` / ``n_neurons``)."""
        lab = np.array(self.labels)
        df = pd.DataFrame({
            "base_path": self.base_rows["path"].to_numpy(),
            "cf_path": self.cf_rows["path"].to_numpy(),
            "base_emotion": self.base_rows["label"].to_numpy(),
            "cf_emotion": self.cf_emotion,
            "pred_before": lab[self.logits_before.argmax(-1).numpy()],
            "pred_after": lab[self.logits_after.argmax(-1).numpy()],
            "p_cf_before": self.p_cf("before"),
            "p_cf_after": self.p_cf("after"),
            "pred_effect": self.pred_effect(),
        })
        for name in ("clip_id", "matched_id"):
            if name in self.base_rows.columns:
                df.insert(0, f"base_{name}", self.base_rows[name].to_numpy())
        if sets:
            before = self.set_activation(sets, n_layers, n_neurons, "before", where)
            after = self.set_activation(sets, n_layers, n_neurons, "after", where)
            for name in sets:
                df[f"{name}:before"] = before[name]
                df[f"{name}:after"] = after[name]
        return df


def _cf_emotions(base: pd.DataFrame, cf: pd.DataFrame) -> list[str]:
    """What the counterfactual changes: its audio emotion where the labels differ, else the emotion its text
    states (``context_label``), else its label."""
    out = []
    ctx = cf["context_label"].tolist() if "context_label" in cf.columns else [None] * len(cf)
    for b, c, t in zip(base["label"].tolist(), cf["label"].tolist(), ctx, strict=True):
        out.append(c if c != b or t in (None, "none", "") else t)
    return out


def _side_positions(subject: Subject, base_ids: torch.Tensor, cf_ids: torch.Tensor, side: str,
                    exclude_answer: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(patched positions, answer positions) [B, T]; refuses prompts that do not align position by position."""
    if base_ids.shape != cf_ids.shape:
        raise ValueError(
            f"base and counterfactual prompts have different token shapes {tuple(base_ids.shape)} vs "
            f"{tuple(cf_ids.shape)}: patching by position needs prompts that align position by position "
            "(the organism's fixed-length prompts do; for a real model use texts of equal token length)"
        )
    mb, mc = subject.position_masks(base_ids), subject.position_masks(cf_ids)
    for key in {side, "last"}:
        if key not in mb:
            raise ValueError(f"the subject has no {key!r} position mask (it has {sorted(mb)})")
        if not torch.equal(mb[key], mc[key]):
            raise ValueError(
                f"the {key!r} positions differ between base and counterfactual prompts; patching needs them aligned"
            )
    pos = mb[side].bool().clone()
    if side != "all" and exclude_answer:
        pos &= ~mb["last"].bool()
    if not bool(pos.any(dim=1).all()):
        raise ValueError(f"some items have no {side!r} positions to patch")
    if not bool((mb["last"].sum(1) == 1).all()):
        raise ValueError("the 'last' mask must mark exactly one answer position per item")
    return pos, mb["last"].bool()


def patch_run(
    subject: Subject,
    base_rows: pd.DataFrame,
    cf_rows: pd.DataFrame,
    *,
    side: Side,
    direction: Direction = "denoise",
    neuron_mask: Any = None,
    layers: Sequence[int] | None = None,
    what: What = "gates",
    read: Any = None,
    batch_size: int = 32,
    exclude_answer: bool = True,
    cf_emotion: Sequence[str] | None = None,
) -> PatchResult:
    """Patch one position class (``side``) from the source run into the target run, item by item.

    ``direction="denoise"``: target = base, source = counterfactual (sufficiency); ``"noise"``: the reverse
    (necessity). ``what="gates"``: the gates of ``neuron_mask`` ([L, N] mask or (layer, neuron) pairs; None = every
    neuron) in ``layers`` (None = all) are replaced at the side's positions. ``what="residual"``: the hidden states
    at the output of each layer in ``layers`` (required) are replaced at the side's positions. ``read`` picks the
    neurons whose activations are recorded (default: ``neuron_mask``, else every neuron up to
    :data:`MAX_DEFAULT_READ`). ``exclude_answer`` keeps the answer position out of the audio/text side (so what is
    read there can only change through attention); ``side="all"`` patches every position.
    """
    if side not in ("audio", "text", "all"):
        raise ValueError(f"side must be 'audio', 'text' or 'all', got {side!r}")
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    if len(base_rows) != len(cf_rows):
        raise ValueError(f"base_rows ({len(base_rows)}) and cf_rows ({len(cf_rows)}) must be aligned item by item")
    if len(base_rows) == 0:
        raise GroundingDataError("no items to patch")
    model = subject.model
    n_layers, n_neurons = gate_shape(model)
    if what == "gates":
        chosen = list(range(n_layers)) if layers is None else sorted({int(x) for x in layers})
        nmask = torch.ones(n_layers, n_neurons, dtype=torch.bool) if neuron_mask is None else as_mask(
            neuron_mask, n_layers, n_neurons)
        nmask = restrict_to_layers(nmask, chosen)
        patch_layers = [i for i in chosen if bool(nmask[i].any())]
        n_patched = int(nmask.sum())
    elif what == "residual":
        if not layers:
            raise ValueError("residual patching needs `layers` (the decoder layers whose output is patched)")
        if neuron_mask is not None:
            raise ValueError("neuron_mask applies to gate patching only; residual patching replaces whole vectors")
        patch_layers = sorted({int(x) for x in layers})
        if patch_layers[0] < 0 or patch_layers[-1] >= n_layers:
            raise ValueError(f"layers {patch_layers} outside the model's {n_layers} layers")
        nmask, n_patched = None, 0
    else:
        raise ValueError(f"what must be 'gates' or 'residual', got {what!r}")

    if read is not None:
        rmask = as_mask(read, n_layers, n_neurons)
    elif neuron_mask is not None:
        rmask = as_mask(neuron_mask, n_layers, n_neurons)
    else:
        if n_layers * n_neurons > MAX_DEFAULT_READ:
            raise ValueError(
                f"reading all {n_layers * n_neurons} neurons per item would take too much memory; pass `read` "
                "(e.g. union_mask of the neuron sets)"
            )
        rmask = torch.ones(n_layers, n_neurons, dtype=torch.bool)
    read_index = rmask.nonzero()

    base_rows = base_rows.reset_index(drop=True)
    cf_rows = cf_rows.reset_index(drop=True)
    acc: dict[str, list] = {k: [] for k in ("lb", "la", "ls", "ab", "aa", "as")}
    for start in range(0, len(base_rows), batch_size):
        b_rows = base_rows.iloc[start : start + batch_size]
        c_rows = cf_rows.iloc[start : start + batch_size]
        b_in, c_in = subject.batch_inputs(b_rows), subject.batch_inputs(c_rows)
        target, source = (b_in, c_in) if direction == "denoise" else (c_in, b_in)
        pos, answer = _side_positions(subject, b_in["input_ids"], c_in["input_ids"], side, exclude_answer)
        readout = _Readout(read_index, n_layers, answer, pos)
        batch = len(b_rows)

        # before: the target run as it is
        lg, outs = trace_gates(model, target, reduce=readout, logits="last")
        acc["lb"].append(subject.label_logits(lg).float().cpu())
        acc["ab"].append(_Readout.collect(outs, batch))

        if what == "gates":
            keep = set(patch_layers)

            def both(i: int, g: torch.Tensor, keep: set = keep, readout: _Readout = readout) -> tuple:
                return (i, g if i in keep else None, readout(i, g))

            lg, outs = trace_gates(model, source, reduce=both, logits="last")
            src_gates = {i: g for i, g, _ in outs if g is not None}
            src_read = [r for _, _, r in outs]
            lg_after, after, _ = trace_patched(
                model, target, positions=pos, patch=src_gates or None, patch_mask=nmask if src_gates else None,
                reduce=readout, logits="last",
            )
        else:
            lg, src_read, hidden = trace_patched(model, source, read_residual=patch_layers, reduce=readout)
            lg_after, after, _ = trace_patched(
                model, target, residual=hidden, residual_positions=pos, reduce=readout, logits="last"
            )
        acc["ls"].append(subject.label_logits(lg).float().cpu())
        acc["as"].append(_Readout.collect(src_read, batch))
        acc["la"].append(subject.label_logits(lg_after).float().cpu())
        acc["aa"].append(_Readout.collect(after, batch))

    def cat_acts(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {k: torch.cat([p[k] for p in parts]) for k in ("answer", "side")}

    return PatchResult(
        side=side, direction=direction, what=what, layers=patch_layers, labels=tuple(subject.labels),
        base_rows=base_rows, cf_rows=cf_rows,
        cf_emotion=list(cf_emotion) if cf_emotion is not None else _cf_emotions(base_rows, cf_rows),
        read_index=read_index, n_patched=n_patched,
        logits_before=torch.cat(acc["lb"]), logits_after=torch.cat(acc["la"]), logits_source=torch.cat(acc["ls"]),
        act_before=cat_acts(acc["ab"]), act_after=cat_acts(acc["aa"]), act_source=cat_acts(acc["as"]),
    )


def total_effect(res: PatchResult) -> PatchResult:
    """The input-level version of a patching result: "after" := the source run itself.

    For audio pairs (same text, other audio emotion) and text pairs (same audio, other text), the whole source run
    differs from the target only on one side, so source − target is that side's *total* effect on every neuron,
    including layer-0 neurons at the answer position, which no gate or residual patch inside the decoder reaches.
    """
    import dataclasses

    return dataclasses.replace(res, what="input", logits_after=res.logits_source,
                               act_after={k: v.clone() for k, v in res.act_source.items()})


def patch_pairs(subject: Subject, pairs: pd.DataFrame, **kwargs: Any) -> PatchResult:
    """:func:`patch_run` on a pair table from :func:`audio_pairs` / :func:`text_pairs` (``cf_emotion`` taken from
    the table)."""
    base, cf = pair_rows(pairs)
    kwargs.setdefault("cf_emotion", pairs["cf_emotion"].tolist())
    return patch_run(subject, base, cf, **kwargs)


# ------------------------------------------------------------------------------------------- grounding coefficient
def grounding_coefficient(delta_audio: Any, delta_text: Any) -> np.ndarray:
    """``Δ_audio / (Δ_audio + Δ_text)`` elementwise, on absolute values; NaN where both are 0.

    1 = only patching the audio moves it, 0 = only patching the text does. NaN (not 0.5) when neither moves it:
    a neuron untouched by both has no grounding to report, and averaging it in as "mixed" would hide that.
    """
    a = np.abs(np.asarray(delta_audio, dtype=np.float64))
    t = np.abs(np.asarray(delta_text, dtype=np.float64))
    total = a + t
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, a / np.where(total > 0, total, 1.0), np.nan)


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


def _boot_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, K] means of ``x`` [n, K] over items resampled with replacement (multinomial weights @ x)."""
    n = x.shape[0]
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64) / n
    return w @ x


def _coef_interval(da: np.ndarray, dt: np.ndarray, n_boot: int, ci: float, seed: int,
                   chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the coefficient per column, resampling audio and text pairs independently."""
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must lie strictly between 0 and 1, got {ci}")
    k = da.shape[1]
    lo, hi = np.full(k, np.nan), np.full(k, np.nan)
    alpha = (1.0 - ci) / 2.0
    for s in range(0, k, chunk):
        # the same seeds in every chunk: every column sees the same resamples (a joint bootstrap over neurons)
        rng_a, rng_t = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
        coef = grounding_coefficient(_boot_means(da[:, s : s + chunk], n_boot, rng_a),
                                     _boot_means(dt[:, s : s + chunk], n_boot, rng_t))
        ok = ~np.isnan(coef).all(0)
        if ok.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                q = np.nanquantile(coef[:, ok], [alpha, 1 - alpha], axis=0)
            lo[s : s + chunk][ok], hi[s : s + chunk][ok] = q[0], q[1]
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


def _coef_rows(da: np.ndarray, dt: np.ndarray, n_boot: int, ci: float, seed: int, audio_min: float,
               text_max: float, prefix: str = "") -> dict[str, np.ndarray]:
    ma, mt = da.mean(0), dt.mean(0)
    coef = grounding_coefficient(ma, mt)
    out = {f"{prefix}delta_audio": ma, f"{prefix}delta_text": mt, f"{prefix}coefficient": coef}
    if n_boot > 0:
        lo, hi = _coef_interval(da, dt, n_boot, ci, seed)
        out[f"{prefix}ci_low"], out[f"{prefix}ci_high"] = lo, hi
    out[f"{prefix}grounding"] = classify_grounding(coef, audio_min=audio_min, text_max=text_max)
    return out


def neuron_grounding(
    audio: PatchResult,
    text: PatchResult,
    *,
    where: Where = "answer",
    clusters: Mapping[str, Sequence[int]] | None = None,
    n_boot: int = 0,
    ci: float = 0.95,
    seed: int = 0,
    audio_min: float = AUDIO_GROUNDED_MIN,
    text_max: float = TEXT_GROUNDED_MAX,
) -> pd.DataFrame:
    """Per read neuron: ``layer, neuron, [cluster], delta_audio, delta_text, coefficient, [ci_low, ci_high],
    grounding``. Δ = mean over pairs of |after − before| (vectorised over neurons; bootstrap when ``n_boot``)."""
    _check_pair(audio, text)
    da = audio.activation_change(where).abs().double().numpy()
    dt = text.activation_change(where).abs().double().numpy()
    idx = audio.read_index.numpy()
    df = pd.DataFrame({"layer": idx[:, 0], "neuron": idx[:, 1]})
    if clusters is not None:
        df["cluster"] = cluster_of_layers(int(idx[:, 0].max()) + 1 if len(idx) else 0, clusters)[idx[:, 0]]
    for k, v in _coef_rows(da, dt, n_boot, ci, seed, audio_min, text_max).items():
        df[k] = v
    return df


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
    audio_min: float = AUDIO_GROUNDED_MIN,
    text_max: float = TEXT_GROUNDED_MAX,
) -> pd.DataFrame:
    """Per neuron set (and per item group, e.g. ``group_by="base_emotion"``): Δ = mean over pairs of
    |mean activation of the set after − before|, the coefficient with its bootstrap interval and its class."""
    _check_pair(audio, text)
    ga, gt = _groups(audio, group_by), _groups(text, group_by)
    names = list(sets)
    def deltas(result: PatchResult) -> dict[str, np.ndarray]:
        after = result.set_activation(sets, n_layers, n_neurons, "after", where)
        before = result.set_activation(sets, n_layers, n_neurons, "before", where)
        return {n: np.abs(after[n] - before[n]) for n in names}

    da_all, dt_all = deltas(audio), deltas(text)
    sizes = [int(as_mask(sets[n], n_layers, n_neurons).sum()) for n in names]
    rows = []
    for g in [x for x in pd.unique(ga) if x in set(gt)]:
        sa, st = ga == g, gt == g
        da = np.stack([da_all[n][sa] for n in names], axis=1)
        dt = np.stack([dt_all[n][st] for n in names], axis=1)
        cols = _coef_rows(da, dt, n_boot, ci, seed, audio_min, text_max)
        for j, n in enumerate(names):
            row = {"set": n, "group": g, "n_neurons": sizes[j], "n_audio_pairs": int(sa.sum()),
                   "n_text_pairs": int(st.sum())}
            row.update({k: v[j] for k, v in cols.items()})
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
    audio_min: float = AUDIO_GROUNDED_MIN,
    text_max: float = TEXT_GROUNDED_MAX,
) -> pd.DataFrame:
    """The coefficient on the answer: Δ = mean over pairs of |change of p(counterfactual emotion)|, for the
    patched set and layers of the two runs; also the signed mean effects towards the counterfactual."""
    if audio.side != "audio" or text.side != "text" or audio.direction != text.direction:
        raise ValueError("expected an audio-side and a text-side patch run in the same direction")
    ea, et = audio.pred_effect(), text.pred_effect()
    ga, gt = _groups(audio, group_by), _groups(text, group_by)
    rows = []
    for g in [x for x in pd.unique(ga) if x in set(gt)]:
        sa, st = (ga == g) & ~np.isnan(ea), (gt == g) & ~np.isnan(et)
        if not sa.any() or not st.any():
            continue
        cols = _coef_rows(np.abs(ea[sa])[:, None], np.abs(et[st])[:, None], n_boot, ci, seed, audio_min, text_max)
        row = {"group": g, "n_audio_pairs": int(sa.sum()), "n_text_pairs": int(st.sum()),
               "effect_audio": float(ea[sa].mean()), "effect_text": float(et[st].mean())}
        row.update({k: v[0] for k, v in cols.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def grounded_sets(table: pd.DataFrame, n_layers: int, n_neurons: int) -> dict[str, torch.Tensor]:
    """Masks of the audio-, text-grounded and mixed neurons of a :func:`neuron_grounding` table."""
    out = {}
    for kind in ("audio", "text", "mixed"):
        sub = table[table["grounding"] == kind]
        out[f"{kind}-grounded" if kind != "mixed" else "mixed"] = as_mask(
            sub[["layer", "neuron"]].to_numpy(dtype=np.int64).reshape(-1, 2), n_layers, n_neurons)
    return out


# ------------------------------------------------------------------------------------------------ conflict analysis
@dataclass
class ConflictResult:
    """Answers on conflict items (the audio says one emotion, the text another) under each deactivation.

    ``table``: one row per condition with the fractions following the audio / the text / neither, bootstrap
    intervals, and the shift of each fraction against the baseline (paired over items). ``predictions``: the
    predicted label per item (rows) and condition (columns).
    """

    table: pd.DataFrame
    predictions: pd.DataFrame


def conflict_analysis(
    subject: Subject,
    df_conflict: pd.DataFrame,
    sets: Mapping[str, Any],
    *,
    batch_size: int = 32,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    baseline: str = "baseline",
) -> ConflictResult:
    """Which modality wins on conflict items, and how deactivating (gate × 0 at every position) each neuron set
    shifts that. ``sets``: ``{name: mask [L, N] or (layer, neuron) pairs}``, e.g. :func:`grounded_sets` plus a
    :func:`random_mask_like` control."""
    from .metrics import bootstrap_ci

    require_columns(df_conflict, ("label", "context_label"), "the conflict analysis (grounding)")
    if df_conflict.empty:
        raise GroundingDataError("no conflict items")
    if baseline in sets:
        raise ValueError(f"a set is named {baseline!r}, which is reserved for the unedited run")
    model = subject.model
    n_layers, n_neurons = gate_shape(model)
    masks = {name: as_mask(s, n_layers, n_neurons) for name, s in sets.items()}
    df = df_conflict.reset_index(drop=True)
    pos = {lbl: i for i, lbl in enumerate(subject.labels)}
    y_audio = np.array([pos.get(x, -1) for x in df["label"]])
    y_text = np.array([pos.get(x, -1) for x in df["context_label"]])
    conds = [baseline, *masks]
    preds: dict[str, list[np.ndarray]] = {c: [] for c in conds}
    probs: dict[str, list[np.ndarray]] = {c: [] for c in conds}
    for start in range(0, len(df), batch_size):
        rows = df.iloc[start : start + batch_size]
        inputs = subject.batch_inputs(rows)
        for c in conds:
            scale = None if c == baseline else (~masks[c]).float()[None]
            lg = run_with_gate_edits(model, inputs, scale=scale, logits="last")
            p = torch.softmax(subject.label_logits(lg).float(), -1).cpu().numpy()
            preds[c].append(p.argmax(-1))
            probs[c].append(p)
    pred = {c: np.concatenate(preds[c]) for c in conds}
    prob = {c: np.concatenate(probs[c]) for c in conds}
    n = len(df)
    ia, it = np.flatnonzero(y_audio >= 0), np.flatnonzero(y_text >= 0)

    def frac(x: np.ndarray) -> float:
        return float(np.mean(x))

    def mean_b(x: np.ndarray) -> np.ndarray:
        return x.mean(axis=-1)

    table = []
    base_a, base_t = pred[baseline] == y_audio, pred[baseline] == y_text
    for c in conds:
        fa, ft = pred[c] == y_audio, pred[c] == y_text
        neither = ~(fa | ft)
        row: dict[str, Any] = {"condition": c, "n_neurons": 0 if c == baseline else int(masks[c].sum()), "n_items": n,
                               "follows_audio": frac(fa), "follows_text": frac(ft), "follows_neither": frac(neither)}
        row["p_audio"] = float(np.mean(prob[c][ia, y_audio[ia]])) if len(ia) else np.nan
        row["p_text"] = float(np.mean(prob[c][it, y_text[it]])) if len(it) else np.nan
        if n_boot > 0:
            for key, arr in (("follows_audio", fa), ("follows_text", ft)):
                lo, hi = bootstrap_ci(mean_b, arr.astype(float), n_boot=n_boot, ci=ci, seed=seed, batched=True)
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = lo, hi
        row["shift_audio"] = frac(fa) - frac(base_a)
        row["shift_text"] = frac(ft) - frac(base_t)
        if n_boot > 0 and c != baseline:
            for key, arr in (("shift_audio", fa.astype(float) - base_a), ("shift_text", ft.astype(float) - base_t)):
                lo, hi = bootstrap_ci(mean_b, arr, n_boot=n_boot, ci=ci, seed=seed, batched=True)
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = lo, hi
        table.append(row)
    lab = np.array(subject.labels)
    predictions = pd.DataFrame({c: lab[pred[c]] for c in conds})
    predictions.insert(0, "text_emotion", df["context_label"].to_numpy())
    predictions.insert(0, "audio_emotion", df["label"].to_numpy())
    return ConflictResult(table=pd.DataFrame(table), predictions=predictions)


__all__ = [
    "AUDIO_GROUNDED_MIN",
    "TEXT_GROUNDED_MAX",
    "ConflictResult",
    "GroundingDataError",
    "PatchResult",
    "as_mask",
    "audio_pairs",
    "classify_grounding",
    "cluster_of_layers",
    "conflict_analysis",
    "conflict_items",
    "grounded_sets",
    "grounding_coefficient",
    "layer_clusters",
    "neuron_grounding",
    "pair_rows",
    "patch_pairs",
    "patch_run",
    "prediction_grounding",
    "random_mask_like",
    "require_columns",
    "restrict_to_layers",
    "set_grounding",
    "split_by_cluster",
    "text_pairs",
    "trace_patched",
    "union_mask",
]
