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
:func:`helpers.core.hooks.run_with_gate_edits`; a neuron mask and a layer cluster choose *which* gates) or the residual
stream at the output of chosen decoder layers (``what="residual"``; everything the position carries from that layer
on). Gate patching leaves ``up_proj``, attention and the residual stream of the target run in place, so even a
patch of every gate at every position does *not* reproduce the counterfactual's logits; residual patching does.

**Grounding coefficient** (our definition): for a neuron (or the mean of a neuron set) read at the answer position,
``Δ_audio`` is the mean over audio pairs of ``|activation after patching the audio side − before|`` and ``Δ_text``
the same over text pairs with the text side patched. The raw ratio ``Δ_audio / (Δ_audio + Δ_text)`` measures which
perturbation is larger, not which modality drives the neuron (a planted neuron that reads only the text shift
scored 0.90 on the organism, whose audio pairs move the MLP input 8.6x more than its text pairs). So each side's Δ
is divided by that side's *null* — the mean Δ of the neurons of the same layer (neurons), or of random sets of the
same size and per-layer counts (sets), or the side's total effect (predictions) — and
``g = r_audio / (r_audio + r_text)`` with ``r = Δ / null`` (:func:`calibrated_coefficient`): 1 = only the audio
moves it (relative to a typical neuron), 0 = only the text, 0.5 = like a typical neuron. ``g`` is NaN
(undetermined) when the neuron moves with neither side or less than :attr:`GroundingThresholds.floor` times its
null on both; every table keeps the raw Δs, nulls, ratios and the raw ratio (``coefficient_raw``).
:func:`known_answer_table` validates the definition with planted neurons (text reader, audio reader, random
directions) and :func:`dissociation` tests it causally on conflict items. Bootstrap intervals resample the audio
pairs and the text pairs independently (they are two samples), each side's Δ together with its null.

Why read at the answer position: it is patched by neither side, so its change can only arrive through attention
from the patched positions, which is exactly the question "where does this neuron get its input from". A
consequence for gate patching: a gate patch in layer l changes the residual stream only after layer l's MLP, so
the answer's neurons in layer l can only move through patches in layers < l. Layer-0 neurons therefore never move
under gate patching (both Δs are 0, coefficient NaN); read them under residual patching, or patch earlier layers.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core.hooks import run_with_gate_edits, trace, trace_gates
from ..core.models import decoder_mlps, forward_model, gate_shape
from ..core.neuron_sets import as_mask, random_sets, stable_seed
from ..core.subject import Batch, Subject

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
            "items that differ in one modality only: the synthetic corpora (helpers.data.corpus) provide matched_id, "
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


def random_mask_like(mask: torch.Tensor, seed: int = 0, exclude: torch.Tensor | None = None, *,
                     salt: str = "grounding") -> torch.Tensor:
    """A random neuron set with the same number of neurons per layer as ``mask`` (avoiding ``exclude``), drawn by
    :func:`helpers.core.neuron_sets.random_sets` (``match_layers=True``; give each compared set its own ``salt``).

    Why: the audio- and text-grounded sets differ in size and layer profile; deactivating a size- and layer-matched
    random set tells how much of a shift any deactivation of that size causes.
    """
    n_layers, n_neurons = mask.shape
    pairs = random_sets({"set": mask}, (n_layers, n_neurons), seed=seed, salt=salt, match_layers=True,
                        exclude=exclude)["set"]
    return as_mask(pairs, n_layers, n_neurons)


# ----------------------------------------------------------------------------------------------- patched tracing
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


def _side_positions(subject: Subject, base: Batch, cf: Batch, side: str,
                    exclude_answer: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(patched positions, answer positions) [B, T]; refuses prompts that do not align position by position."""
    mb, mc = subject.position_masks(base), subject.position_masks(cf)
    if mb["all"].shape != mc["all"].shape:
        raise ValueError(
            f"base and counterfactual prompts have different token shapes {tuple(mb['all'].shape)} vs "
            f"{tuple(mc['all'].shape)}: patching by position needs prompts that align position by position "
            "(the organism's fixed-length prompts do; for a real model use texts of equal token length)"
        )
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
        tgt, src = (b_in, c_in) if direction == "denoise" else (c_in, b_in)
        target, source = tgt.inputs, src.inputs
        pos, answer = _side_positions(subject, b_in, c_in, side, exclude_answer)
        readout = _Readout(read_index, n_layers, answer, pos)
        batch = len(b_rows)

        # before: the target run as it is
        lg, outs = trace_gates(model, target, reduce=readout, logits="last")
        acc["lb"].append(subject.label_logits(tgt, cast(torch.Tensor, lg)).float().cpu())  # logits="last"
        acc["ab"].append(_Readout.collect(outs, batch))

        if what == "gates":
            keep = set(patch_layers)

            def both(i: int, g: torch.Tensor, keep: set = keep, readout: _Readout = readout) -> tuple:
                return (i, g if i in keep else None, readout(i, g))

            lg, outs = trace_gates(model, source, reduce=both, logits="last")
            src_gates = {i: g for i, g, _ in outs if g is not None}
            src_read = [r for _, _, r in outs]
            lg_after, after, _ = trace(
                model, target, positions=pos, patch=src_gates or None, patch_mask=nmask if src_gates else None,
                reduce=readout, logits="last",
            )
        else:
            lg, src_read, hidden = trace(model, source, read_residual=patch_layers, reduce=readout, logits="last")
            lg_after, after, _ = trace(
                model, target, residual=hidden, residual_positions=pos, reduce=readout, logits="last"
            )
        acc["ls"].append(subject.label_logits(src, cast(torch.Tensor, lg)).float().cpu())
        acc["as"].append(_Readout.collect(src_read, batch))
        acc["la"].append(subject.label_logits(tgt, cast(torch.Tensor, lg_after)).float().cpu())
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
@dataclass(frozen=True)
class GroundingThresholds:
    """Thresholds of the grounding coefficient (one object shared by every grounding table)."""

    audio_min: float = AUDIO_GROUNDED_MIN
    """A coefficient at or above this is ``"audio"``-grounded."""
    text_max: float = TEXT_GROUNDED_MAX
    """A coefficient at or below this is ``"text"``-grounded (``"mixed"`` in between)."""
    floor: float = 0.25
    """Neurons and sets: the coefficient is undetermined (NaN, grounding ``"none"``) unless the neuron (set) moves
    at least ``floor`` times its null on one side (``max(ratio_audio, ratio_text) >= floor``): a neuron that
    neither side moves more than a quarter as much as a typical neuron has no grounding to report."""
    prediction_floor: float = 0.05
    """Predictions: undetermined unless the patch carries at least this share of one side's total effect on the
    probability of the counterfactual's emotion."""
    min_delta: float = 1e-6
    """Undetermined when both raw Δs are at most this (nothing moved at all, e.g. layer-0 neurons under gate
    patching)."""
    null: Literal["layer", "all"] = "layer"
    """Neurons: the null of a side is the mean Δ of that side over the read neurons of the same layer
    (``"layer"``; each layer's input moves by a different amount) or over all read neurons (``"all"``)."""
    n_null_sets: int = 200
    """Sets: random layer-matched sets of the same size (from the read neurons) whose mean Δ is the set's null."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.text_max < self.audio_min <= 1.0:
            raise ValueError(f"need 0 <= text_max < audio_min <= 1, got text_max={self.text_max}, "
                             f"audio_min={self.audio_min}")
        for name in ("floor", "prediction_floor", "min_delta"):
            if not float(getattr(self, name)) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.null not in ("layer", "all"):
            raise ValueError(f"null must be 'layer' or 'all', got {self.null!r}")
        if isinstance(self.n_null_sets, bool) or not isinstance(self.n_null_sets, int) or self.n_null_sets < 1:
            raise ValueError(f"n_null_sets must be an integer >= 1, got {self.n_null_sets!r}")


def _thresholds(thresholds: GroundingThresholds | None, audio_min: float | None, text_max: float | None
                ) -> GroundingThresholds:
    th = thresholds or GroundingThresholds()
    if audio_min is not None or text_max is not None:
        changes: dict[str, Any] = {"audio_min": audio_min} if audio_min is not None else {}
        if text_max is not None:
            changes["text_max"] = text_max
        th = dataclasses.replace(th, **changes)
    return th


def grounding_coefficient(delta_audio: Any, delta_text: Any) -> np.ndarray:
    """The *raw* ratio ``Δ_audio / (Δ_audio + Δ_text)`` elementwise, on absolute values; NaN where both are 0.

    Kept for reference (``coefficient_raw`` in the tables): it measures which perturbation is larger, not which
    modality drives a neuron — if the audio pairs move the MLP input 8.6x more than the text pairs, a neuron that
    reads only the text shift still scores about 0.9. :func:`calibrated_coefficient` is the one to use.
    """
    a = np.abs(np.asarray(delta_audio, dtype=np.float64))
    t = np.abs(np.asarray(delta_text, dtype=np.float64))
    total = a + t
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, a / np.where(total > 0, total, 1.0), np.nan)


def _ratio(delta: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Δ / null with 0 / anything = 0 and positive / 0 = inf."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(null > 0, delta / np.where(null > 0, null, 1.0), np.inf)
    return np.where(delta > 0, r, 0.0)


def calibrated_coefficient(delta_audio: Any, delta_text: Any, null_audio: Any, null_text: Any, *,
                           floor: float = 0.25, min_delta: float = 1e-6
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The grounding coefficient, invariant to how large each side's perturbation is.

    Each side's Δ is divided by that side's *null* — what the same perturbation does to a typical neuron (the
    mean Δ over the neurons of the layer) or to a random set of the same size and layer profile — giving
    ``r_audio = Δ_audio / null_audio`` and ``r_text = Δ_text / null_text``, and ``g = r_audio / (r_audio +
    r_text)``. Scaling every text Δ by 0.1 (a weaker text manipulation) scales the text null by 0.1 too and
    leaves ``g`` unchanged. ``g`` is NaN (undetermined) where both raw Δs are ``<= min_delta`` or neither ratio
    reaches ``floor``; a side whose null is 0 while the neuron moves gives ``r = inf`` (the neuron alone moves).

    Returns ``(g, r_audio, r_text, reason)`` with ``reason`` ``""`` where ``g`` is determined.
    """
    da = np.abs(np.asarray(delta_audio, dtype=np.float64))
    dt = np.abs(np.asarray(delta_text, dtype=np.float64))
    na = np.abs(np.asarray(null_audio, dtype=np.float64))
    nt = np.abs(np.asarray(null_text, dtype=np.float64))
    ra, rt = _ratio(da, na), _ratio(dt, nt)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.where(np.isinf(ra) & ~np.isinf(rt), 1.0,
                     np.where(np.isinf(rt) & ~np.isinf(ra), 0.0, ra / (ra + rt)))
    reason = np.full(g.shape, "", dtype=object)
    low = np.maximum(ra, rt) < floor
    reason[low] = f"moves less than {floor:g}x its null on both sides"
    both_inf = np.isinf(ra) & np.isinf(rt)
    reason[both_inf] = "both sides' nulls are 0 while it moves"
    still = (da <= min_delta) & (dt <= min_delta)
    reason[still] = f"moves with neither side (|Δ| <= {min_delta:g})"
    g = np.where(reason == "", g, np.nan)
    return g.astype(np.float64), ra, rt, reason


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
    :attr:`GroundingThresholds.null`), ``ratio_audio, ratio_text, coefficient`` (:func:`calibrated_coefficient`),
    ``coefficient_raw``, ``[ci_low, ci_high]`` (bootstrap when ``n_boot``), ``grounding``, ``undetermined``.

    The null is taken over the *read* neurons: read every neuron of the layers of interest (the default of
    :func:`patch_run` without a ``neuron_mask``), not just a selected set, or the null is the set itself.
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
    the signed mean effects toward the counterfactual. For :func:`total_effect` runs the patch *is* the total
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
    :func:`dissociation`).

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
    from ..metrics.effects import bootstrap_ci

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
        batch = subject.batch_inputs(rows)
        for c in conds:
            scale = None if c == baseline else (~masks[c]).float()[None]
            lg = run_with_gate_edits(model, batch.inputs, scale=scale, logits="last")
            p = torch.softmax(subject.label_logits(batch, cast(torch.Tensor, lg)).float(), -1).cpu().numpy()
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


# ------------------------------------------------------------------------------------------------ known answers
def _mlp_inputs(subject: Subject, rows: pd.DataFrame, layer: int, batch_size: int) -> torch.Tensor:
    """The input of decoder layer ``layer``'s MLP at each item's answer position, [n_items, hidden] (float32)."""
    model = subject.model
    mlp = decoder_mlps(model)[layer]
    seen: list[torch.Tensor] = []
    handle = mlp.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = subject.batch_inputs(rows.iloc[start : start + batch_size])
            seen.clear()
            with torch.no_grad():
                forward_model(model)(**batch.inputs)
            last = subject.position_masks(batch)["last"].bool()
            if not bool((last.sum(1) == 1).all()):
                raise ValueError("the 'last' mask must mark exactly one answer position per item")
            x = seen[0]
            out.append(x[last.to(x.device)].float().cpu())
    finally:
        handle.remove()
    return torch.cat(out)


def _reader_direction(num: np.ndarray, den: np.ndarray, reg: float) -> np.ndarray:
    """The unit direction ``w`` maximising ``E[(w·δ_num)²] / (E[(w·δ_den)²] + ε|w|²)`` over the shifts of two
    kinds of pairs: what the first kind moves most *relative to* the second (a generalised eigenvector)."""
    h = num.shape[1]
    a = num.T @ num / len(num)
    b = den.T @ den / len(den)
    b = b + reg * (np.trace(b) / h + 1e-12) * np.eye(h)
    chol_inv = np.linalg.inv(np.linalg.cholesky(b))
    _, vecs = np.linalg.eigh(chol_inv @ a @ chol_inv.T)
    w = chol_inv.T @ vecs[:, -1]
    return w / np.linalg.norm(w)


def known_answer_table(subject: Subject, audio_pairs: pd.DataFrame, text_pairs: pd.DataFrame, layer: int, *,
                       neurons: Sequence[int] | None = None, n_random: int = 8, gain: float | None = None,
                       reg: float = 1e-2, seed: int = 0, thresholds: GroundingThresholds | None = None,
                       batch_size: int = 32) -> pd.DataFrame:
    """Score planted neurons with the grounding coefficient: the known-answer check of the definition.

    In decoder layer ``layer``, ``2 + n_random`` neurons (``neurons``, default the layer's last ones) get a new
    ``gate_proj`` row and a zero ``down_proj`` column (so nothing downstream changes, and the MLP input of this
    layer, which the readers read, is untouched):

    * ``"text"``: reads what the text pairs move and the audio pairs do not — the direction ``w`` of the MLP input
      at the answer position maximising ``E[(w·δ_text)²] / E[(w·δ_audio)²]`` over the pairs' shifts ``δ``
      (:func:`_reader_direction`, ridge ``reg``);
    * ``"audio"``: the same with the roles swapped;
    * ``"random"``: ``n_random`` seeded random directions, pooled (``r`` = the mean of their ratios), since one
      random direction's response to a low-rank shift varies a lot. It should land near the null, 0.5, where
      the layer's own neurons are random directions (an untrained model), or be undetermined; in a trained model
      the null is the layer's *typical neuron*, which need not be a random direction.

    Each row is scaled so that ``w·x`` has the standard deviation ``gain`` over the items (default: the median
    over the layer's neurons of their own pre-activation standard deviation, so the readers operate where the
    layer's neurons do; sign: mean ≥ 0). The neurons are then read through the normal path — :func:`patch_pairs`
    on both pair tables, :func:`total_effect`, :func:`neuron_grounding` with the layer's other neurons as the
    null — and the weights are restored. Rows ``kind`` = ``text``, ``audio``, ``random`` (pooled) and
    ``random:<i>``, with the :func:`neuron_grounding` columns, the root-mean-square norms of the pairs' shifts of
    the MLP input (``shift_rms_audio``, ``shift_rms_text``: how much larger one perturbation is) and the cosine
    between the two mean shifts (``shift_cosine``; near 0 when the pairs are ordered both ways).
    """
    th = thresholds or GroundingThresholds()
    model = subject.model
    n_layers, n_neurons = gate_shape(model)
    if not 0 <= int(layer) < n_layers:
        raise ValueError(f"layer {layer} outside the model's {n_layers} layers")
    layer = int(layer)
    n_plant = 2 + int(n_random)
    planted = list(range(n_neurons - n_plant, n_neurons)) if neurons is None else [int(j) for j in neurons]
    if int(n_random) < 1 or len(planted) != n_plant or len(set(planted)) != n_plant or not all(
            0 <= j < n_neurons for j in planted):
        raise ValueError(f"need n_random >= 1 and {n_plant} distinct neuron indices in [0, {n_neurons}), "
                         f"got {planted}")
    xs = {}
    for kind, pairs in (("audio", audio_pairs), ("text", text_pairs)):
        base, cf = pair_rows(pairs)
        xs[kind] = (_mlp_inputs(subject, base, layer, batch_size).double().numpy(),
                    _mlp_inputs(subject, cf, layer, batch_size).double().numpy())
    d_a, d_t = xs["audio"][1] - xs["audio"][0], xs["text"][1] - xs["text"][0]
    every = np.concatenate([*xs["audio"], *xs["text"]])
    rng = np.random.default_rng(stable_seed(seed, "known-answer"))
    kinds = ["text", "audio", *[f"random:{i}" for i in range(int(n_random))]]
    dirs = {"text": _reader_direction(d_t, d_a, reg), "audio": _reader_direction(d_a, d_t, reg)}
    dirs.update({k: rng.standard_normal(int(every.shape[1])) for k in kinds[2:]})
    mlp = decoder_mlps(model)[layer]
    gate_w: nn.Parameter = mlp.gate_proj.weight
    down_w: nn.Parameter = mlp.down_proj.weight
    if gain is None:
        gain = float(np.median((every @ gate_w.detach().double().cpu().numpy().T).std(0)))
    saved_gate, saved_down = gate_w.data[planted].clone(), down_w.data[:, planted].clone()
    try:
        with torch.no_grad():
            for j, kind in zip(planted, kinds, strict=True):
                w = dirs[kind] / np.linalg.norm(dirs[kind])
                z = every @ w
                w = w * (gain / max(float(z.std()), 1e-12)) * (1.0 if z.mean() >= 0 else -1.0)
                gate_w.data[j] = torch.as_tensor(w, dtype=gate_w.dtype, device=gate_w.device)
                down_w.data[:, j] = 0
        read = torch.zeros(n_layers, n_neurons, dtype=torch.bool)
        read[layer] = True
        runs = {kind: total_effect(patch_pairs(subject, pairs, side=kind, read=read, batch_size=batch_size))
                for kind, pairs in (("audio", audio_pairs), ("text", text_pairs))}
        table = neuron_grounding(runs["audio"], runs["text"], thresholds=th)
    finally:
        with torch.no_grad():
            gate_w.data[planted] = saved_gate
            down_w.data[:, planted] = saved_down
    rows = table.set_index("neuron").loc[planted].reset_index()
    rows.insert(0, "kind", kinds)
    rnd = rows[rows["kind"].str.startswith("random:")]
    ra, rt = float(rnd["ratio_audio"].mean()), float(rnd["ratio_text"].mean())
    g, _, _, why = calibrated_coefficient(ra, rt, 1.0, 1.0, floor=th.floor, min_delta=0.0)
    pooled = {"kind": "random", "layer": layer, "neuron": -1, "delta_audio": float(rnd["delta_audio"].mean()),
              "delta_text": float(rnd["delta_text"].mean()), "null_audio": float(rnd["null_audio"].mean()),
              "null_text": float(rnd["null_text"].mean()), "ratio_audio": ra, "ratio_text": rt,
              "coefficient": float(g), "coefficient_raw": float(grounding_coefficient(rnd["delta_audio"].mean(),
                                                                                      rnd["delta_text"].mean())),
              "grounding": classify_grounding(g, audio_min=th.audio_min, text_max=th.text_max).item(),
              "undetermined": str(why.item())}
    rows = pd.concat([rows.iloc[:2], pd.DataFrame([pooled]), rows.iloc[2:]], ignore_index=True)
    ma, mt = d_a.mean(0), d_t.mean(0)
    rows["shift_rms_audio"] = float(np.sqrt((d_a**2).sum(1).mean()))
    rows["shift_rms_text"] = float(np.sqrt((d_t**2).sum(1).mean()))
    rows["shift_cosine"] = float(ma @ mt / max(np.linalg.norm(ma) * np.linalg.norm(mt), 1e-12))
    rows["gain"] = gain
    return rows


def known_answer_check(subject: Subject, audio_pairs: pd.DataFrame, text_pairs: pd.DataFrame, layer: int,
                       **kwargs: Any) -> dict[str, float]:
    """``{"text": g, "audio": g, "random": g}``: the calibrated coefficients of :func:`known_answer_table`'s
    planted neurons (NaN where undetermined). A valid definition gives text ≤ ``text_max``, audio ≥
    ``audio_min`` and random in between (or undetermined)."""
    rows = known_answer_table(subject, audio_pairs, text_pairs, layer, **kwargs).set_index("kind")
    return {kind: float(rows.loc[kind, "coefficient"]) for kind in ("text", "audio", "random")}


# -------------------------------------------------------------------------------------------- double dissociation
@dataclass
class DissociationResult:
    """Output of :func:`dissociation`.

    * ``table``: one row per condition (``baseline``, ``text_sets``, ``audio_sets`` and their random controls per
      seed) with ``n_neurons``, ``follows_text``, ``follows_audio`` and the changes against the baseline
      ``delta_text_following`` / ``delta_audio_following`` with paired bootstrap intervals.
    * ``summary``: ``{"text_sets": {...}, "audio_sets": {...}, "double_dissociation": bool}``; per set
      ``text_following`` and ``audio_following`` (the Δs), their ``*_ci``, the random controls' mean Δs
      (``random_text_following`` / ``random_audio_following``), the set minus its control with intervals
      (``*_minus_random``, ``*_minus_random_ci``) and ``n_neurons``. ``double_dissociation``: the text sets lower
      text-following more than audio-following and the audio sets lower audio-following more than text-following.
    * ``predictions``: ``[n_conditions, n_items]`` predicted label indices.
    """

    table: pd.DataFrame
    summary: dict[str, Any]
    predictions: np.ndarray


def _union(neurons: Any, n_layers: int, n_neurons: int) -> torch.Tensor:
    if isinstance(neurons, Mapping):
        return union_mask(neurons, n_layers, n_neurons)
    return as_mask(neurons, n_layers, n_neurons)


def dissociation(subject: Subject, conflict: pd.DataFrame, text_sets: Any, audio_sets: Any, *,
                 random_seeds: Sequence[int] = (0, 1, 2, 3, 4), positions: str = "all", batch_size: int = 32,
                 n_boot: int = 1000, ci: float = 0.95, seed: int = 0, progress: bool = True) -> DissociationResult:
    """Double dissociation on conflict items (the audio says one emotion, the text another).

    Deactivates (gate × 0) the text-grounded neurons (``text_sets``: a set, a mask or ``{name: set}`` whose union
    is used) and, separately, the audio-grounded ones, and measures the change of text-following (the share of
    conflict items answered with the text's emotion) and of audio-following (answered with the audio's
    emotion) against the unedited model. Controls: per seed, random sets with the same per-layer counts
    (:func:`helpers.core.neuron_sets.random_sets`, salted per set so the two controls are independent). Intervals:
    paired percentile bootstrap over items, stratified by the audio emotion. If the grounding coefficient
    means what it says, the text sets lower text-following more than audio-following and the audio sets the
    reverse (``summary["double_dissociation"]``).
    """
    from ..intervene.interventions import deactivate, identity, run_conditions
    from ..metrics.effects import bootstrap_ci

    require_columns(conflict, ("label", "context_label"), "the dissociation analysis (grounding)")
    if conflict.empty:
        raise GroundingDataError("no conflict items")
    model = subject.model
    n_layers, n_neurons = gate_shape(model)
    masks = {"text_sets": _union(text_sets, n_layers, n_neurons), "audio_sets": _union(audio_sets, n_layers, n_neurons)}
    df = conflict.reset_index(drop=True)
    pos = {lbl: i for i, lbl in enumerate(subject.labels)}
    y_audio = np.array([pos.get(x, -1) for x in df["label"]])
    y_text = np.array([pos.get(x, -1) for x in df["context_label"]])
    conds = [identity()]
    for name, mask in masks.items():
        conds.append(deactivate(mask, n_layers, n_neurons, name=name, meta={"set": name}))
        for s in random_seeds:
            r = random_sets({name: mask}, (n_layers, n_neurons), seed=int(s), salt=f"dissociation|{name}",
                            match_layers=True)[name]
            conds.append(deactivate(r, n_layers, n_neurons, name=f"random({name})#{s}",
                                    meta={"set": f"random({name})", "seed": int(s)}))
    preds = run_conditions(subject, df, conds, batch_size=batch_size, positions=positions, progress=progress
                           ).argmax(-1)
    ft = (preds == y_text[None]).astype(np.float64)
    fa = (preds == y_audio[None]).astype(np.float64)

    def interval(x: np.ndarray) -> tuple[float, float]:
        if n_boot <= 0:
            return (np.nan, np.nan)
        return bootstrap_ci(lambda v: v.mean(axis=1), x, n_boot=n_boot, ci=ci, seed=seed, batched=True,
                            strata=y_audio)

    rows = []
    for j, c in enumerate(conds):
        dt_, da_ = ft[j] - ft[0], fa[j] - fa[0]
        row = {"condition": c.name, "set": c.meta.get("set", "baseline"), "seed": c.meta.get("seed"),
               "n_neurons": int(c.meta.get("n_neurons", 0)), "follows_text": ft[j].mean(),
               "follows_audio": fa[j].mean(), "delta_text_following": dt_.mean(),
               "delta_audio_following": da_.mean()}
        if j and "seed" not in c.meta:
            row["text_ci_low"], row["text_ci_high"] = interval(dt_)
            row["audio_ci_low"], row["audio_ci_high"] = interval(da_)
        rows.append(row)
    table = pd.DataFrame(rows)
    summary: dict[str, Any] = {}
    for name in masks:
        j = next(i for i, c in enumerate(conds) if c.name == name)
        ctrl = [i for i, c in enumerate(conds) if c.meta.get("set") == f"random({name})"]
        out: dict[str, Any] = {"n_neurons": int(conds[j].meta["n_neurons"])}
        for key, follow in (("text_following", ft), ("audio_following", fa)):
            d = follow[j] - follow[0]
            out[key] = float(d.mean())
            out[f"{key}_ci"] = list(interval(d))
            if ctrl:
                dr = follow[ctrl].mean(0) - follow[0]
                out[f"random_{key}"] = float(dr.mean())
                out[f"{key}_minus_random"] = float((d - dr).mean())
                out[f"{key}_minus_random_ci"] = list(interval(d - dr))
        summary[name] = out
    summary["double_dissociation"] = bool(
        summary["text_sets"]["text_following"] < summary["text_sets"]["audio_following"]
        and summary["audio_sets"]["audio_following"] < summary["audio_sets"]["text_following"]
    )
    return DissociationResult(table=table, summary=summary, predictions=preds)


def dissociation_by_group(result: DissociationResult, conflict: pd.DataFrame, labels: Sequence[str], column: str
                          ) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`dissociation`'s Δs within each value of a column of the conflict items (e.g. the reliability
    level), from the predictions it already made: ``{group: {"baseline": {"follows_text", "follows_audio"},
    "text_sets": {"text_following", "audio_following", "random_text_following", "random_audio_following"},
    "audio_sets": {...}, "n_items": n}}``. ``conflict`` and ``labels`` must be those the result was computed on."""
    df = conflict.reset_index(drop=True)
    if column not in df.columns:
        raise ValueError(f"cannot group by {column!r}: not a column of the conflict items")
    if len(df) != result.predictions.shape[1]:
        raise ValueError(f"{len(df)} conflict items but the result has predictions for {result.predictions.shape[1]}")
    pos = {lbl: i for i, lbl in enumerate(labels)}
    y_audio = np.array([pos.get(x, -1) for x in df["label"]])
    y_text = np.array([pos.get(x, -1) for x in df["context_label"]])
    ft = (result.predictions == y_text[None]).astype(np.float64)
    fa = (result.predictions == y_audio[None]).astype(np.float64)
    sets_of = result.table["set"].tolist()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for g in pd.unique(df[column]):
        sel = (df[column] == g).to_numpy()
        entry: dict[str, Any] = {"baseline": {"follows_text": float(ft[0, sel].mean()),
                                              "follows_audio": float(fa[0, sel].mean())}, "n_items": int(sel.sum())}
        for name in ("text_sets", "audio_sets"):
            j = sets_of.index(name)
            ctrl = [i for i, s in enumerate(sets_of) if s == f"random({name})"]
            d = {"text_following": float((ft[j, sel] - ft[0, sel]).mean()),
                 "audio_following": float((fa[j, sel] - fa[0, sel]).mean())}
            if ctrl:
                d["random_text_following"] = float((ft[ctrl][:, sel].mean(0) - ft[0, sel]).mean())
                d["random_audio_following"] = float((fa[ctrl][:, sel].mean(0) - fa[0, sel]).mean())
            entry[name] = d
        out[str(g)] = entry
    return out


__all__ = [
    "AUDIO_GROUNDED_MIN",
    "TEXT_GROUNDED_MAX",
    "ConflictResult",
    "DissociationResult",
    "GroundingDataError",
    "GroundingThresholds",
    "PatchResult",
    "audio_pairs",
    "calibrated_coefficient",
    "classify_grounding",
    "cluster_of_layers",
    "conflict_analysis",
    "conflict_items",
    "dissociation",
    "dissociation_by_group",
    "extreme_sets",
    "grounded_sets",
    "grounding_coefficient",
    "known_answer_check",
    "known_answer_table",
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
    "total_effect",
    "union_mask",
]
