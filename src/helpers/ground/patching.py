"""Activation patching between the runs of a pair, read at the answer position.

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

Why read at the answer position: it is patched by neither side, so its change can only arrive through attention
from the patched positions, which is exactly the question "where does this neuron get its input from". A
consequence for gate patching: a gate patch in layer l changes the residual stream only after layer l's MLP, so
the answer's neurons in layer l can only move through patches in layers < l. Layer-0 neurons therefore never move
under gate patching (both Δs are 0, coefficient NaN); read them under residual patching, or patch earlier layers.

"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch

from ..core.hooks import trace, trace_gates
from ..core.models import gate_shape
from ..core.neuron_sets import as_mask
from ..core.subject import Batch, Subject
from .cluster_masks import restrict_to_layers
from .pairing import GroundingDataError, pair_rows

Side = Literal["audio", "text", "all"]


Direction = Literal["denoise", "noise"]


What = Literal["gates", "residual"]


Where = Literal["answer", "side"]


#: Above this many read neurons per item, :func:`patch_run` asks for an explicit ``read`` mask (memory).
MAX_DEFAULT_READ = 1 << 16


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
    """:func:`patch_run` on a pair table from :func:`~helpers.ground.pairing.audio_pairs` /
    :func:`~helpers.ground.pairing.text_pairs` (``cf_emotion`` taken from
    the table)."""
    base, cf = pair_rows(pairs)
    kwargs.setdefault("cf_emotion", pairs["cf_emotion"].tolist())
    return patch_run(subject, base, cf, **kwargs)


__all__ = [
    "PatchResult",
    "patch_pairs",
    "patch_run",
    "total_effect",
]
