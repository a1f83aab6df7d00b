"""Sparse autoencoders (TopK) on the SwiGLU gates: the method of chapters 01-03 in feature space (chapter 07).

Neurons are polysemantic; a sparse autoencoder (SAE) rewrites one layer's gate vector ``g`` as a sparse code
``z = TopK(ReLU((g - b_dec) W_enc + b_enc))`` whose decoder rows ``W_dec[f]`` are candidate monosemantic
directions, ``g ~ z W_dec + b_dec``. Here, per decoder layer:

* **Data** — the gate vector at the answer position (``positions="last"``, as chapter 01 logs) of correctly
  answered identification items, streamed from the one logging loop (:func:`helpers.log.activation_log.gate_batches`)
  into a bounded :class:`Reservoir` (never the activations of every position).
* **Training** — TopK (Gao et al. 2024) with the auxiliary loss that lets dead latents reconstruct the residual;
  full determinism from ``SAEConfig.seed`` (one ``torch.Generator`` for init and batches).
* **Storage** — SAELens' layout (``cfg.json`` + ``sae_weights.safetensors`` with ``W_enc``, ``b_enc``, ``W_dec``,
  ``b_dec``), so the weights load elsewhere without this package.
* **Editing** — :func:`feature_edit_fn` removes features *with the reconstruction error kept*:
  ``g' = g - sum_{f in S} z_f W_dec[f]``, so an empty edit is exactly the identity, and the edit runs inside the
  one tracer (:func:`helpers.core.hooks.run_with_gate_edits` ``gate_fns``).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.hooks import run_with_gate_edits
from ..core.io import atomic_save, atomic_write_text
from ..core.models import gate_shape
from ..core.subject import Subject
from ..log.activation_log import counted, gate_batches
from ..log.stats import ActivationStats, StatsAccumulator, row_sums

#: File names of SAELens' on-disk layout.
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"


# --------------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------------


def _int(name: str, value: Any, low: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise ValueError(f"SAEConfig.{name} must be an integer >= {low}, got {value!r}; {fix}")
    return int(value)


def _float(name: str, value: Any, low: float, strict: bool, fix: str) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok or (float(value) <= low if strict else float(value) < low):
        raise ValueError(f"SAEConfig.{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}; "
                         f"{fix}")
    return float(value)


@dataclass(frozen=True)
class SAEConfig:
    """Hyper-parameters of one layer's TopK SAE, validated on construction (each error names the fix)."""

    d_in: int
    """Width of the input: the layer's gate neurons (512 on the organism)."""
    expansion: int = 4
    """Latents per input dimension; ``d_sae = expansion * d_in`` (4-8x is the usual range for small models)."""
    k: int = 16
    """Active latents per input (TopK): the L0 of the code by construction, an upper bound after the ReLU."""
    aux_k: int = 64
    """Dead latents allowed to reconstruct the residual in the auxiliary loss (0 turns it off)."""
    aux_coef: float = 1 / 32
    """Weight of the auxiliary loss (Gao et al. use 1/32)."""
    dead_steps: int = 20
    """A latent that fired in none of the last ``dead_steps`` batches counts as dead for the auxiliary loss."""
    lr: float = 2e-3
    """Adam learning rate."""
    steps: int = 150
    """Optimiser steps (mini-batches): ~150 suffice for a few hundred answer positions (tens of epochs)."""
    batch_size: int = 64
    """Rows per mini-batch, drawn with replacement from the training rows."""
    seed: int = 0
    """Seeds initialisation and mini-batches; same data + same seed gives identical weights."""

    def __post_init__(self) -> None:
        _int("d_in", self.d_in, 1, "pass the layer's number of gate neurons")
        _int("expansion", self.expansion, 1, "use e.g. 4 or 8 (d_sae = expansion * d_in)")
        _int("k", self.k, 1, "use a small positive number of active latents, e.g. 16")
        if self.k > self.d_sae:
            raise ValueError(f"SAEConfig.k = {self.k} exceeds d_sae = {self.d_sae}; lower k or raise expansion")
        _int("aux_k", self.aux_k, 0, "use 0 to switch the auxiliary loss off")
        if self.aux_k > self.d_sae:
            raise ValueError(f"SAEConfig.aux_k = {self.aux_k} exceeds d_sae = {self.d_sae}; lower aux_k")
        _float("aux_coef", self.aux_coef, 0.0, False, "use 0 to switch the auxiliary loss off, 1/32 by default")
        _int("dead_steps", self.dead_steps, 1, "use e.g. 50 batches")
        _float("lr", self.lr, 0.0, True, "use e.g. 1e-3")
        _int("steps", self.steps, 1, "use at least one step, a few hundred in practice")
        _int("batch_size", self.batch_size, 1, "use e.g. 128")
        _int("seed", self.seed, 0, "use a non-negative integer")

    @property
    def d_sae(self) -> int:
        return int(self.expansion) * int(self.d_in)


# --------------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------------


class TopKSAE(nn.Module):
    """``z = TopK(ReLU((x - b_dec) W_enc + b_enc))``, ``x_hat = z W_dec + b_dec``; decoder rows have unit norm, so
    a latent's activation is the length of its contribution."""

    def __init__(self, cfg: SAEConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        w = torch.randn(cfg.d_sae, cfg.d_in, generator=generator)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.t().clone())  # tied init: each latent starts reading its own direction
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Sparse code ``[..., d_sae]`` (at most ``k`` non-zeros per row)."""
        pre = self.pre_acts(x)
        vals, idx = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, vals.relu())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))


def train_sae(x: torch.Tensor, cfg: SAEConfig) -> tuple[TopKSAE, dict[str, list[float]]]:
    """Train a TopK SAE on rows ``x [n, d_in]``; returns the SAE and per-step ``{"mse", "aux"}`` losses.

    Deterministic: initialisation and mini-batches come from one generator seeded with ``cfg.seed`` (with the same
    number of torch threads, two runs give bit-identical weights). ``b_dec`` starts at the data mean, so the
    latents only have to explain the variation around it. The auxiliary loss (Gao et al. 2024, section A.2):
    the ``aux_k`` dead latents with the largest pre-activations reconstruct the main residual, which gives a
    dead latent a gradient toward some direction the live ones miss.
    """
    x = torch.as_tensor(x).detach().float()
    if x.ndim != 2 or x.shape[1] != cfg.d_in:
        raise ValueError(f"training rows must be [n, d_in={cfg.d_in}], got {tuple(x.shape)}")
    if x.shape[0] < 2 or not bool(torch.isfinite(x).all()):
        raise ValueError(f"need at least 2 finite training rows, got {x.shape[0]} rows (all finite: "
                         f"{bool(torch.isfinite(x).all())}); log more items or drop non-finite rows")
    gen = torch.Generator().manual_seed(int(cfg.seed))
    sae = TopKSAE(cfg, gen)
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
    try:  # the fused CPU kernel is ~4x faster than the loop over parameters, which dominates these small steps
        opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError):  # an older torch without it
        opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    since_fired = torch.zeros(cfg.d_sae)
    scale = x.var(0).sum().clamp_min(1e-12)  # losses relative to the data's variance (an FVU per batch)
    hist: dict[str, list[float]] = {"mse": [], "aux": []}
    for _ in range(cfg.steps):
        xb = x[torch.randint(0, x.shape[0], (cfg.batch_size,), generator=gen)]
        pre = sae.pre_acts(xb)
        vals, idx = pre.topk(cfg.k, dim=-1)
        vals = vals.relu()
        # sparse decode: only the k chosen rows of W_dec (a dense z @ W_dec would cost d_sae / k times more)
        recon = torch.einsum("bk,bkd->bd", vals, sae.W_dec[idx]) + sae.b_dec
        resid = xb - recon
        mse = resid.pow(2).sum(-1).mean() / scale
        fired = torch.zeros(cfg.d_sae, dtype=torch.bool)
        fired[idx[vals > 0]] = True
        since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + 1)
        dead = since_fired >= cfg.dead_steps
        aux = torch.zeros(())
        n_aux = min(cfg.aux_k, int(dead.sum()))
        if cfg.aux_coef > 0 and n_aux > 0:
            av, ai = pre.masked_fill(~dead, -torch.inf).topk(n_aux, dim=-1)
            target = resid.detach()
            aux_recon = torch.einsum("bk,bkd->bd", av.relu(), sae.W_dec[ai])
            aux = (target - aux_recon).pow(2).sum(-1).mean() / target.pow(2).sum(-1).mean().clamp_min(1e-12)
        loss = mse + cfg.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sae.normalise_decoder()
        hist["mse"].append(float(mse.detach()))
        hist["aux"].append(float(aux.detach()))
    sae.eval()
    return sae, hist


# --------------------------------------------------------------------------------------------------------------------
# SAELens layout
# --------------------------------------------------------------------------------------------------------------------


def save_sae(sae: TopKSAE, folder: str | Path, *, hook_name: str = "", meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``cfg.json`` + ``sae_weights.safetensors`` (SAELens' names and shapes: ``W_enc [d_in, d_sae]``,
    ``W_dec [d_sae, d_in]``); the training config is kept under ``"metadata"`` / ``"training"`` in ``cfg.json``.
    Not checked by loading with SAELens itself (it is not a dependency)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = sae.cfg
    cfg = {
        "architecture": "topk", "d_in": c.d_in, "d_sae": c.d_sae, "k": c.k, "activation_fn": "topk",
        "activation_fn_kwargs": {"k": c.k}, "apply_b_dec_to_input": True, "normalize_activations": "none",
        "dtype": "float32", "device": "cpu", "hook_name": hook_name, "model_name": "", "hook_layer": -1,
        # SAELens v6 keeps provenance under "metadata"; our training config and notes go there too
        "metadata": {"hook_name": hook_name, "training": asdict(c), **dict(meta or {})},
    }
    tensors = {n: getattr(sae, n).detach().contiguous().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    atomic_save(folder / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
    atomic_write_text(folder / CFG_FILE, json.dumps(cfg, indent=2) + "\n")
    return folder


def load_sae(folder: str | Path) -> TopKSAE:
    """Read a folder written by :func:`save_sae` (or any SAELens TopK SAE with ``d_in``, ``d_sae`` and ``k``)."""
    folder = Path(folder)
    if not (folder / CFG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"no SAE in {folder}: expected {CFG_FILE} and {WEIGHTS_FILE} (run stage 07_sae)")
    raw = json.loads((folder / CFG_FILE).read_text())
    if raw.get("architecture") not in ("topk", "batchtopk"):
        raise ValueError(f"{folder / CFG_FILE}: architecture {raw.get('architecture')!r} is not a TopK SAE")
    train = dict((raw.get("metadata") or {}).get("training") or {})
    k = raw.get("k", (raw.get("activation_fn_kwargs") or {}).get("k"))
    expansion, rem = divmod(int(raw["d_sae"]), int(raw["d_in"]))
    if rem:
        raise ValueError(f"{folder / CFG_FILE}: d_sae = {raw['d_sae']} is not a multiple of d_in = {raw['d_in']}")
    train.update(d_in=int(raw["d_in"]), expansion=expansion, k=int(k))
    train["aux_k"] = min(int(train.get("aux_k", 0)), expansion * int(raw["d_in"]))
    sae = TopKSAE(SAEConfig(**train))
    weights = load_file(str(folder / WEIGHTS_FILE))
    with torch.no_grad():
        for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
            if tuple(weights[n].shape) != tuple(getattr(sae, n).shape):
                raise ValueError(f"{folder}: {n} has shape {tuple(weights[n].shape)}, expected "
                                 f"{tuple(getattr(sae, n).shape)}")
            getattr(sae, n).copy_(weights[n].float())
    return sae.eval()


def save_saes(saes: Sequence[TopKSAE], folder: str | Path, **kw: Any) -> list[Path]:
    """One SAELens folder per layer: ``<folder>/layer_<i>``."""
    return [save_sae(s, Path(folder) / f"layer_{i}", hook_name=f"layers.{i}.mlp.act_fn", **kw)
            for i, s in enumerate(saes)]


def load_saes(folder: str | Path) -> list[TopKSAE]:
    paths = sorted(Path(folder).glob("layer_*"), key=lambda p: int(p.name.split("_")[1]))
    if not paths:
        raise FileNotFoundError(f"no layer_<i> SAE folders in {folder} (run stage 07_sae)")
    return [load_sae(p) for p in paths]


# --------------------------------------------------------------------------------------------------------------------
# Streaming the answer-position gates
# --------------------------------------------------------------------------------------------------------------------


class Reservoir:
    """A uniform sample of at most ``capacity`` rows of a stream (Vitter's algorithm R), each with a label.

    Memory is ``capacity x shape`` whatever the stream's length; with a capacity at least the stream's length
    it keeps every row, in order. Seeded: the same stream and seed keep the same rows.
    """

    def __init__(self, capacity: int, shape: Sequence[int], *, seed: int = 0) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, numbers.Integral) or capacity < 1:
            raise ValueError(f"reservoir capacity must be a positive integer, got {capacity!r}")
        self.capacity: int = int(capacity)
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self.rows: torch.Tensor = torch.zeros(self.capacity, *self.shape)
        self.labels: torch.Tensor = torch.zeros(self.capacity, dtype=torch.long)
        self.seen: int = 0
        self._gen: torch.Generator = torch.Generator().manual_seed(int(seed))

    def add(self, rows: torch.Tensor, labels: torch.Tensor) -> None:
        rows, labels = torch.as_tensor(rows).float(), torch.as_tensor(labels).long()
        if tuple(rows.shape[1:]) != self.shape or len(labels) != len(rows):
            raise ValueError(f"rows must be [B, {list(self.shape)}] with B labels, got {tuple(rows.shape)} and "
                             f"{len(labels)} labels")
        for r, y in zip(rows, labels, strict=True):
            if self.seen < self.capacity:
                slot = self.seen
            else:
                slot = int(torch.randint(0, self.seen + 1, (1,), generator=self._gen))
            if slot < self.capacity:
                self.rows[slot], self.labels[slot] = r, y
            self.seen += 1

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows [n, *shape], labels [n])`` kept so far."""
        return self.rows[: len(self)], self.labels[: len(self)]


@dataclass
class AnswerGates:
    """Answer-position gates of a pass over items: the reservoir of counted rows (``[n, L, N]`` + labels) and
    each item's true label and prediction (the un-intervened model's, for the baseline of an intervention)."""

    reservoir: Reservoir
    y_true: np.ndarray
    y_pred: np.ndarray


@torch.no_grad()
def answer_gates(subject: Subject, df: pd.DataFrame, *, capacity: int, seed: int = 0, only_correct: bool = True,
                 batch_size: int = 64, progress: bool = False) -> AnswerGates:
    """Stream the gates at the answer position (``positions="last"``) into a bounded reservoir.

    Uses chapter 01's logging loop: with one counted position per row its per-row sums *are* the gate values, so
    no other trace is needed; rows the model answers wrongly are left out when ``only_correct``.
    """
    n_layers, n_neurons = gate_shape(subject.model)
    res = Reservoir(capacity, (n_layers, n_neurons), seed=seed)
    y_true, y_pred = [], []
    for gb in gate_batches(subject, df, positions="last", batch_size=batch_size, progress=progress,
                           desc="answer-position gates"):
        if not bool((gb.n_tokens == 1).all()):
            raise ValueError("the 'last' position mask must count exactly one position per row")
        keep = counted(gb, only_correct)
        rows = torch.stack([s[1] for s in gb.sums], dim=1)  # [B, L, N]: the sums over one position
        res.add(rows[keep], gb.y[keep])
        y_true.append(gb.y.numpy())
        y_pred.append(gb.pred.numpy())
    return AnswerGates(res, np.concatenate(y_true), np.concatenate(y_pred))


def train_layers(rows: torch.Tensor, cfg: SAEConfig) -> list[TopKSAE]:
    """One SAE per layer on ``rows [n, L, N]`` (layer ``i`` seeded with ``cfg.seed + i``)."""
    from dataclasses import replace

    return [train_sae(rows[:, i], replace(cfg, seed=cfg.seed + i))[0] for i in range(rows.shape[1])]


# --------------------------------------------------------------------------------------------------------------------
# Quality
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def quality(sae: TopKSAE, x: torch.Tensor, dead_rows: torch.Tensor | None = None) -> dict[str, float]:
    """``l0`` (mean active latents), ``fvu`` (sum of squared errors / total variance around the mean) of one SAE
    on rows ``x [n, d_in]``, and ``dead_fraction``: latents active on none of ``dead_rows`` (default ``x``).

    Pass the (larger) training rows as ``dead_rows`` when ``x`` is a small held-out set: with ``n * k`` active
    slots for ``d_sae`` latents, few rows leave latents silent that are merely rare."""
    x = torch.as_tensor(x).float()
    z = sae.encode(x)
    err = (x - sae.decode(z)).pow(2).sum()
    var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    zd = z if dead_rows is None else sae.encode(torch.as_tensor(dead_rows).float())
    return {"l0": float((z > 0).sum(-1).float().mean()), "fvu": float(err / var),
            "dead_fraction": float(((zd > 0).sum(0) == 0).float().mean())}


# --------------------------------------------------------------------------------------------------------------------
# Feature statistics and sets
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def feature_stats(saes: Sequence[TopKSAE], rows: torch.Tensor, labels_idx: torch.Tensor, labels: Sequence[str],
                  *, meta: Mapping[str, Any] | None = None) -> ActivationStats:
    """Per-class statistics of the latents, ``[layer, feature, class]``, through the neurons' own
    :class:`~helpers.log.stats.StatsAccumulator`: every selector of :mod:`helpers.identify.methods` runs on them
    unchanged.
    ``rows [n, L, N]``: one answer-position gate vector per counted item (one token each)."""
    if not saes:
        raise ValueError("need at least one SAE")
    d_sae = saes[0].cfg.d_sae
    if any(s.cfg.d_sae != d_sae for s in saes):
        raise ValueError("feature statistics need the same d_sae in every layer")
    acc = StatsAccumulator(len(saes), d_sae, list(labels))
    n = rows.shape[0]
    one = torch.ones(n, 1, dtype=torch.bool)
    layer_rows = [row_sums(s.encode(rows[:, i])[:, None, :], one) for i, s in enumerate(saes)]
    acc.update_rows(layer_rows, torch.ones(n), torch.as_tensor(labels_idx).long())
    return acc.result(meta={"units": "sae_features", "positions": "last", **dict(meta or {})})


def decoder_mass(saes: Sequence[TopKSAE], features: Mapping[str, torch.Tensor], neurons: Mapping[str, torch.Tensor]
                 ) -> pd.DataFrame:
    """How much of each emotion's feature set writes onto that emotion's neurons.

    Per label: ``mass`` = share of the squared decoder norm of the feature set that falls on the label's neuron
    set in the same layer, ``chance`` = the same share for a neuron set of the same size per layer spread evenly
    (``|neurons in layer| / N``): 1 = the features write only onto the ESNs, ``chance`` = no preference.
    """
    out = []
    for label, pairs in features.items():
        pairs = torch.as_tensor(pairs).long().reshape(-1, 2)
        npairs = torch.as_tensor(neurons.get(label, torch.zeros(0, 2))).long().reshape(-1, 2)
        tot = on = chance = 0.0
        for layer, f in pairs.tolist():
            w2 = saes[layer].W_dec[f].detach().pow(2)
            cols = npairs[npairs[:, 0] == layer, 1]
            tot += float(w2.sum())
            on += float(w2[cols].sum())
            chance += float(w2.sum()) * len(cols) / w2.numel()
        out.append({"label": label, "n_features": len(pairs), "n_neurons": len(npairs),
                    "mass": on / tot if tot else math.nan, "chance": chance / tot if tot else math.nan})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------------------------------
# Editing through the SAE
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class FeatureEdit:
    """One condition of :func:`run_feature_edits`: per layer, features to remove (``remove`` ``{layer: feature
    indices}``), layers whose gate is replaced by the SAE's reconstruction (``splice``, no error term) and layers
    zeroed (``zero``), all at the edited positions. An empty edit is the un-intervened model."""

    name: str
    remove: dict[int, torch.Tensor] = field(default_factory=dict)
    splice: tuple[int, ...] = ()
    zero: tuple[int, ...] = ()
    meta: dict = field(default_factory=dict)


def removal(pairs: torch.Tensor, *, name: str, meta: Mapping[str, Any] | None = None) -> FeatureEdit:
    """A :class:`FeatureEdit` removing the ``(layer, feature)`` pairs of a feature set."""
    pairs = torch.as_tensor(pairs).long().reshape(-1, 2)
    remove = {int(layer): pairs[pairs[:, 0] == layer, 1] for layer in pairs[:, 0].unique().tolist()}
    return FeatureEdit(name, remove=remove, meta={"n_units": len(pairs), **dict(meta or {})})


def feature_edit_fn(sae: TopKSAE, remove: torch.Tensor | None = None, splice: torch.Tensor | None = None,
                    zero: torch.Tensor | None = None):
    """The ``gate_fns`` entry of one layer for a tiled batch (row ``r`` carries its own edit).

    ``remove [R, d_sae]`` (0/1): ``g' = g - (z * remove) W_dec`` with ``z = encode(g)`` — the reconstruction error
    ``g - x_hat`` stays in, so a zero row is exactly ``g``; ``splice [R]`` bool: ``g' = x_hat``; ``zero [R]`` bool:
    ``g' = 0``. Only the positions of the mask change; the SAE runs only there.
    """

    def fn(gate: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        pos = positions if positions is not None else torch.ones(gate.shape[:2], dtype=torch.bool)
        pos = pos.expand(gate.shape[0], -1) if pos.shape[0] == 1 else pos
        r, t = pos.to(gate.device).nonzero(as_tuple=True)
        x = gate[r, t].float()
        z = sae.encode(x)
        new = x
        if remove is not None:
            new = new - (z * remove.to(z)[r]) @ sae.W_dec
        if splice is not None:
            new = torch.where(splice.to(gate.device)[r, None], sae.decode(z), new)
        if zero is not None:
            new = torch.where(zero.to(gate.device)[r, None], torch.zeros_like(new), new)
        out = gate.clone()
        out[r, t] = new.to(gate.dtype)
        return out

    return fn


@torch.no_grad()
def run_feature_edits(subject: Subject, df: pd.DataFrame, saes: Sequence[TopKSAE], edits: Sequence[FeatureEdit], *,
                      positions: str = "last", batch_size: int = 64, max_rows: int = 2048) -> np.ndarray:
    """Label logits ``[n_edits, n_items, n_labels]`` of every edit on every item, batched like
    :func:`helpers.intervene.runner.run_conditions` (one forward per batch and chunk of edits, row
    ``j * b + i`` = edit ``j`` on item ``i``), with the edits applied through ``gate_fns`` of the one tracer."""
    edits = list(edits)
    n_labels = len(subject.labels)
    out = np.zeros((len(edits), len(df), n_labels), dtype=np.float32)
    if not edits or not len(df):
        return out
    for j, e in enumerate(edits):
        for layer, f in e.remove.items():
            if not 0 <= layer < len(saes) or (len(f) and (int(f.min()) < 0 or int(f.max()) >= saes[layer].cfg.d_sae)):
                raise ValueError(f"edit {e.name!r} (#{j}) removes features outside layer {layer}'s SAE")
    for start in range(0, len(df), batch_size):
        rows = df.iloc[start : start + batch_size]
        b = len(rows)
        batch = subject.batch_inputs(rows)
        masks = subject.position_masks(batch)
        if positions != "all" and positions not in masks:
            raise ValueError(f"unknown position kind {positions!r}; this subject provides {sorted(masks)}")
        pos = masks[positions].bool() if positions != "all" else None
        per_chunk = max(1, max_rows // b)
        for c0 in range(0, len(edits), per_chunk):
            chunk = edits[c0 : c0 + per_chunk]
            k = len(chunk)
            fns = {}
            for layer, sae in enumerate(saes):
                rem = torch.zeros(k, b, sae.cfg.d_sae)
                spl = torch.zeros(k, b, dtype=torch.bool)
                zer = torch.zeros(k, b, dtype=torch.bool)
                for j, e in enumerate(chunk):
                    if layer in e.remove and len(e.remove[layer]):
                        rem[j, :, e.remove[layer]] = 1.0
                    spl[j] = layer in e.splice
                    zer[j] = layer in e.zero
                if rem.any() or spl.any() or zer.any():
                    fns[layer] = feature_edit_fn(sae, rem.reshape(k * b, -1) if rem.any() else None,
                                                 spl.reshape(-1) if spl.any() else None,
                                                 zer.reshape(-1) if zer.any() else None)
            tiled = batch.tile(k)
            p = pos.repeat(k, 1) if pos is not None else None
            logits = run_with_gate_edits(subject.model, tiled.inputs, positions=p, gate_fns=fns, logits="last")
            ll = subject.label_logits(tiled, cast(torch.Tensor, logits)).float().cpu().numpy()
            out[c0 : c0 + k, start : start + b] = ll.reshape(k, b, n_labels)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Grounding of feature sets (chapter 06's calibrated coefficient, total effects at the answer position)
# --------------------------------------------------------------------------------------------------------------------


def total_effect_runs(subject: Subject, pairs: pd.DataFrame, side: str, saes: Sequence[TopKSAE], *,
                      live: torch.Tensor | None = None, batch_size: int = 64) -> dict[str, Any]:
    """``{"neurons": PatchResult, "features": PatchResult}`` of the *total* effect of one side, as chapter 06's
    :func:`~helpers.ground.patching.total_effect`: ``before`` = the base prompt, ``after`` = ``source`` = the
    counterfactual prompt, both read at the answer position, as gate values and as SAE codes (one pass each).

    ``live`` [L, d_sae] bool: the features read (default all); the null of
    :func:`helpers.ground.grounding_tables.set_grounding` draws random sets among the read units, so pass the live
    features
    (dead ones never move and would make a typical feature look still). The label logits are one-hot
    predictions (``set_grounding`` reads only the activations and the number of items).
    """
    from ..ground.pairing import pair_rows
    from ..ground.patching import PatchResult

    base, cf = pair_rows(pairs)
    runs = [answer_gates(subject, rows, capacity=max(len(rows), 1), only_correct=False, batch_size=batch_size)
            for rows in (base, cf)]
    gates = [r.reservoir.data()[0] for r in runs]  # [n, L, N] in row order (the capacity holds every row)
    with torch.no_grad():
        codes = [torch.stack([s.encode(g[:, i]) for i, s in enumerate(saes)], 1) for g in gates]
    n_labels = len(subject.labels)
    onehot = [torch.nn.functional.one_hot(torch.from_numpy(r.y_pred).long(), n_labels).float() for r in runs]
    out = {}
    for kind, (a0, a1), read in (("neurons", gates, None), ("features", codes, live)):
        index = (read if read is not None else torch.ones(a0.shape[1], a0.shape[2], dtype=torch.bool)).nonzero()
        before, after = (a[:, index[:, 0], index[:, 1]].float() for a in (a0, a1))
        out[kind] = PatchResult(side=side, direction="denoise", what="input", layers=list(range(a0.shape[1])),
                                labels=tuple(subject.labels), base_rows=base, cf_rows=cf,
                                cf_emotion=pairs["cf_emotion"].tolist(), read_index=index, n_patched=0,
                                logits_before=onehot[0], logits_after=onehot[1], logits_source=onehot[1],
                                act_before={"answer": before}, act_after={"answer": after},
                                act_source={"answer": after.clone()})
    return out


def accuracy_recovered(acc_clean: float, acc_spliced: float, acc_zero: float) -> dict[str, float]:
    """``ratio`` = acc_spliced / acc_clean (1 = no loss; the headline) and ``vs_zero`` = (spliced - zero) /
    (clean - zero), the share of the zero-ablation loss the reconstruction avoids (NaN when zeroing the layer
    costs less than one point of accuracy: a ratio of near-zeros says nothing)."""
    ratio = acc_spliced / acc_clean if acc_clean > 0 else math.nan
    drop = acc_clean - acc_zero
    return {"ratio": ratio, "vs_zero": (acc_spliced - acc_zero) / drop if drop >= 0.01 else math.nan}


__all__ = [
    "AnswerGates", "FeatureEdit", "Reservoir", "SAEConfig", "TopKSAE", "accuracy_recovered", "answer_gates",
    "decoder_mass", "feature_edit_fn", "feature_stats", "load_sae", "load_saes", "quality", "removal",
    "run_feature_edits", "save_sae", "save_saes", "total_effect_runs", "train_layers", "train_sae",
]
