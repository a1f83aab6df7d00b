"""TopK sparse autoencoders on one layer's SwiGLU gates: configuration, the model, its deterministic training
and reconstruction quality (chapter 07).

Neurons are polysemantic; a sparse autoencoder (SAE) rewrites one layer's gate vector ``g`` as a sparse code
``z = TopK(ReLU((g - b_dec) W_enc + b_enc))`` whose decoder rows ``W_dec[f]`` are candidate monosemantic
directions, ``g ~ z W_dec + b_dec``; one SAE per decoder layer. Training is TopK (Gao et al. 2024) with the
auxiliary loss that lets dead latents reconstruct the residual, fully deterministic from ``SAEConfig.seed`` (one
``torch.Generator`` for init and batches). The data come from :mod:`helpers.sae.collect`, storage in SAELens'
layout is :mod:`helpers.sae.saelens_io`, edits and feature statistics :mod:`helpers.sae.features`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

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


__all__ = ["SAEConfig", "TopKSAE", "quality", "train_layers", "train_sae"]
