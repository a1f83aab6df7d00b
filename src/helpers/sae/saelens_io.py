"""SAEs on disk in SAELens' layout (``cfg.json`` + ``sae_weights.safetensors`` with ``W_enc``, ``b_enc``,
``W_dec``, ``b_dec``), so the weights load elsewhere without this package; one folder per layer."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..core.io import atomic_save, atomic_write_text
from .training import SAEConfig, TopKSAE

#: File names of SAELens' on-disk layout.
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"


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


__all__ = ["CFG_FILE", "WEIGHTS_FILE", "load_sae", "load_saes", "save_sae", "save_saes"]
