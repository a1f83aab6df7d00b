"""Streaming per-class statistics of SwiGLU gate activations: the only thing the Log stage keeps.

For every decoder layer ``l``, gate neuron ``n`` and emotion class ``c`` we add up, over the *counted* token
positions of the items of class ``c``: the number of tokens, how often the activation ``a = act_fn(gate_proj(x))``
was > 0, the sum of ``a`` and the sum of ``a**2``. Raw activations are never kept: a 7B model with 28 x 18944
gates would need gigabytes per item, while these sums are a few megabytes for a whole data set and are all the
selectors in :mod:`helpers.identify.methods` need (activation probability, mean, variance per class).

Everything is accumulated in float64, so streaming over batches gives the same numbers as one pass over the
concatenated activations (up to float rounding), whatever the batch size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

#: Written into the safetensors metadata so that a wrong file fails with a clear message on load.
FORMAT_NAME = "esn-activation-stats"
FORMAT_VERSION = "1"

_TENSOR_FIELDS = ("tokens", "items", "active", "total", "total_sq")


@dataclass(eq=False)  # tensors have no single truth value; compare fields explicitly
class ActivationStats:
    """Per-class sufficient statistics of gate activations, shape convention ``[layer, neuron, class]``.

    Fields: ``labels`` (class names, in class-index order), ``tokens[C]`` (counted token positions per class),
    ``items[C]`` (items that contributed at least one counted token), ``active[L, N, C]`` (count of activation
    > 0), ``total[L, N, C]`` (sum of activations), ``total_sq[L, N, C]`` (sum of squared activations) and an
    optional free-form ``meta`` dict of JSON-serialisable provenance (model id, token mask, data set, ...).

    All tensors are converted to float64 on the CPU (counts stay exact up to 2**53), so stats built directly
    from tensors, streamed by :class:`StatsAccumulator` or loaded from disk behave identically.
    """

    labels: list[str]
    tokens: torch.Tensor
    items: torch.Tensor
    active: torch.Tensor
    total: torch.Tensor
    total_sq: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = list(self.labels)
        if not all(isinstance(x, str) for x in self.labels):
            raise ValueError(f"labels must be strings, got {self.labels!r}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {self.labels!r}")
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
            setattr(self, name, value.detach().to(device="cpu", dtype=torch.float64))
        n_classes = len(self.labels)
        for name in ("tokens", "items"):
            shape = tuple(getattr(self, name).shape)
            if shape != (n_classes,):
                raise ValueError(
                    f"{name} must have shape [C] = ({n_classes},) for {n_classes} labels {self.labels}, got {shape}"
                )
        if self.active.ndim != 3:
            raise ValueError(f"active must have shape [L, N, C], got {tuple(self.active.shape)}")
        if self.active.shape[-1] != n_classes:
            raise ValueError(
                f"active has {self.active.shape[-1]} classes in its last dimension but there are "
                f"{n_classes} labels {self.labels}"
            )
        for name in ("total", "total_sq"):
            shape = tuple(getattr(self, name).shape)
            if shape != tuple(self.active.shape):
                raise ValueError(f"{name} has shape {shape} but active has shape {tuple(self.active.shape)}")
        for name in ("tokens", "items", "active", "total_sq"):
            if bool((getattr(self, name) < 0).any()):
                raise ValueError(f"{name} has negative entries; counts and sums of squares cannot be negative")
        # An activation probability above 1 means arguments were swapped or a file was corrupted.
        if bool((self.active > self.tokens + 1e-6).any()):
            raise ValueError(
                "active exceeds tokens for some neuron/class: a neuron cannot fire on more tokens "
                "than were counted (were tokens and active swapped?)"
            )
        json.dumps(self.meta)  # fail now, not at save time, if meta is not JSON-serialisable

    # ------------------------------------------------------------------ shapes
    @property
    def n_layers(self) -> int:
        return int(self.active.shape[0])

    @property
    def n_neurons(self) -> int:
        """Gate neurons per layer (the MLP intermediate size)."""
        return int(self.active.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    # ------------------------------------------------------------------ derived statistics
    @property
    def prob(self) -> torch.Tensor:
        """Activation probability P(a > 0 | class), ``[L, N, C]``; NaN for a class with no counted tokens."""
        return self.active / self.tokens

    @property
    def mean(self) -> torch.Tensor:
        """Mean activation per class, ``[L, N, C]``; NaN for a class with no counted tokens."""
        return self.total / self.tokens

    @property
    def var(self) -> torch.Tensor:
        """Population variance per class (E[a^2] - E[a]^2, clamped at 0 against rounding), ``[L, N, C]``."""
        mean = self.mean
        return (self.total_sq / self.tokens - mean * mean).clamp_min(0.0)

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()

    # ------------------------------------------------------------------ checks
    def check_compatible(self, n_layers: int, n_neurons: int) -> None:
        """Raise if these stats do not fit a model with ``n_layers`` x ``n_neurons`` gates.

        Catches the easy mistake of loading a stats file logged on another model (or another checkpoint size)
        before any intervention silently indexes the wrong neurons.
        """
        if (self.n_layers, self.n_neurons) != (int(n_layers), int(n_neurons)):
            source = f" (meta: {self.meta})" if self.meta else ""
            raise ValueError(
                f"stats were logged on a model with {self.n_layers} x {self.n_neurons} gates (layers x neurons) "
                f"but this model has {n_layers} x {n_neurons}; the stats file comes from another model{source}. "
                "Re-run the Log stage for this model."
            )

    def empty_classes(self) -> list[str]:
        """Labels with zero counted tokens (their probabilities are undefined)."""
        return [lab for lab, t in zip(self.labels, self.tokens.tolist(), strict=True) if t <= 0]

    # ------------------------------------------------------------------ combining
    def merge(self, other: ActivationStats) -> ActivationStats:
        """Sum two stats over disjoint data (e.g. two shards or two runs) into one."""
        if not isinstance(other, ActivationStats):
            raise TypeError(f"can only merge ActivationStats, got {type(other).__name__}")
        if self.labels != other.labels:
            raise ValueError(f"cannot merge stats with different labels: {self.labels} vs {other.labels}")
        if self.active.shape != other.active.shape:
            raise ValueError(
                f"cannot merge stats of shape {tuple(self.active.shape)} and {tuple(other.active.shape)} "
                "(logged on different models?)"
            )
        meta = {k: v for k, v in self.meta.items() if other.meta.get(k) == v}
        return ActivationStats(
            labels=list(self.labels),
            meta=meta,
            **{name: getattr(self, name) + getattr(other, name) for name in _TENSOR_FIELDS},
        )

    def __add__(self, other: ActivationStats) -> ActivationStats:
        return self.merge(other)

    def __radd__(self, other: object) -> ActivationStats:
        # Lets ``sum(list_of_stats)`` work: the built-in starts from 0.
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    def __repr__(self) -> str:  # the default dataclass repr would print megabytes of tensors
        counts = ", ".join(
            f"{lab}: {int(t)} tok/{int(i)} items"
            for lab, t, i in zip(self.labels, self.tokens.tolist(), self.items.tolist(), strict=True)
        )
        return f"ActivationStats(layers={self.n_layers}, neurons={self.n_neurons}, {counts})"

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write to a safetensors file (tensors + JSON metadata; no pickle, so loading runs no code).

        Writes to a temporary name in the same folder and then renames, so an interrupted save never leaves a
        half-written file under ``path``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        metadata = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "labels": json.dumps(self.labels),
            "meta": json.dumps(self.meta, sort_keys=True),
        }
        tensors = {name: getattr(self, name).contiguous() for name in _TENSOR_FIELDS}
        try:
            save_file(tensors, str(tmp), metadata=metadata)
            # safetensors writes its header from a hash map, so the key order (and the file's bytes) vary between
            # runs; rewrite the header with sorted keys: same statistics, same bytes. Data offsets are relative to
            # the end of the header, so they stay valid; the header is padded with spaces to 8 bytes as usual.
            blob = tmp.read_bytes()
            n = int.from_bytes(blob[:8], "little")
            header = json.dumps(json.loads(blob[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
            header += b" " * (-len(header) % 8)
            tmp.write_bytes(len(header).to_bytes(8, "little") + header + blob[8 + n :])
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActivationStats:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no stats file at {path}; run the Log stage first")
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT_NAME:
                raise ValueError(
                    f"{path} is not an activation-stats file (metadata format={metadata.get('format')!r}, "
                    f"expected {FORMAT_NAME!r})"
                )
            missing = [name for name in _TENSOR_FIELDS if name not in set(f.keys())]
            if missing:
                raise ValueError(f"{path} lacks tensor(s) {missing}; the file is incomplete or from another tool")
            tensors = {name: f.get_tensor(name) for name in _TENSOR_FIELDS}
        return cls(labels=json.loads(metadata["labels"]), meta=json.loads(metadata.get("meta", "{}")), **tensors)


#: The five running sums of :class:`StatsAccumulator` (and fields of :class:`ActivationStats`).
SUM_NAMES: tuple[str, ...] = ("tokens", "items", "active", "total", "total_sq")


class StatsAccumulator:
    """Streams batches of gate activations into :class:`ActivationStats` without keeping them.

    The reduction runs on the activations' own device (so a GPU batch never goes to the CPU); only the small
    ``[N, C]`` per-layer results move to the accumulators on ``device``. Per layer the counted positions are
    gathered once into ``[P, N]`` and reduced against a one-hot class matrix ``[P, C]`` with a float64 matmul:
    no Python loop over items or neurons.
    """

    def __init__(
        self,
        n_layers: int,
        n_neurons: int,
        labels: Sequence[str],
        device: str | torch.device = "cpu",
        *,
        max_chunk_elements: int = 2**25,
    ) -> None:
        """``max_chunk_elements`` bounds the float64 scratch copy of counted activations (default 2**25
        elements = 256 MiB) by processing counted positions in chunks; it does not change the result."""
        if n_layers < 1 or n_neurons < 1:
            raise ValueError(f"need at least one layer and one neuron, got {n_layers} x {n_neurons}")
        self.labels = list(labels)
        if not self.labels:
            raise ValueError("need at least one class label")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {self.labels}")
        self.n_layers, self.n_neurons, self.n_classes = int(n_layers), int(n_neurons), len(self.labels)
        self.device = torch.device(device)
        self.max_chunk_elements = int(max_chunk_elements)
        shape = (self.n_layers, self.n_neurons, self.n_classes)
        kw: dict[str, Any] = {"dtype": torch.float64, "device": self.device}
        self.tokens = torch.zeros(self.n_classes, **kw)
        self.items = torch.zeros(self.n_classes, **kw)
        self.active = torch.zeros(shape, **kw)
        self.total = torch.zeros(shape, **kw)
        self.total_sq = torch.zeros(shape, **kw)

    def update(self, layer_acts: Sequence[torch.Tensor], mask: torch.Tensor, class_idx: torch.Tensor) -> None:
        """Add one batch.

        ``layer_acts``: one ``[B, T, N]`` tensor per layer (any float dtype, any device; layers may live on
        different devices). ``mask``: bool ``[B, T]``, True where a position counts. ``class_idx``: long ``[B]``.

        ``items`` grows by one per row whose mask has at least one True position. A row with an empty mask
        (e.g. an item that was not answered correctly, or whose mask kind selects nothing in it) contributes no
        token, so counting it would overstate how much evidence stands behind a class's probabilities.
        """
        if len(layer_acts) != self.n_layers:
            raise ValueError(f"got activations for {len(layer_acts)} layers, expected {self.n_layers}")
        mask = torch.as_tensor(mask)
        class_idx = torch.as_tensor(class_idx)
        if mask.ndim != 2:
            raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
        batch, seq = mask.shape
        if tuple(class_idx.shape) != (batch,):
            raise ValueError(f"class_idx must have shape [B] = ({batch},), got {tuple(class_idx.shape)}")
        if class_idx.dtype.is_floating_point or class_idx.dtype == torch.bool:
            raise ValueError(f"class_idx must be an integer tensor, got {class_idx.dtype}")
        if batch and (int(class_idx.min()) < 0 or int(class_idx.max()) >= self.n_classes):
            raise ValueError(
                f"class_idx values must be in [0, {self.n_classes}) for labels {self.labels}, "
                f"got range [{int(class_idx.min())}, {int(class_idx.max())}]"
            )
        for layer, acts in enumerate(layer_acts):
            if tuple(acts.shape) != (batch, seq, self.n_neurons):
                raise ValueError(
                    f"layer {layer} activations have shape {tuple(acts.shape)}, expected [B, T, N] = "
                    f"({batch}, {seq}, {self.n_neurons}) from the mask and the model's gate count"
                )
            if not acts.dtype.is_floating_point:
                raise ValueError(f"layer {layer} activations must be floating point, got {acts.dtype}")

        onehot = torch.nn.functional.one_hot(class_idx.long(), self.n_classes).to(torch.float64)  # [B, C]
        mask_c = mask.to(onehot.device)
        self.items += onehot[mask_c.any(dim=1)].sum(dim=0).to(self.device)
        self.tokens += (mask_c.sum(dim=1, dtype=torch.float64)[:, None] * onehot).sum(dim=0).to(self.device)

        per_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer, acts in enumerate(layer_acts):
            dev = acts.device
            if dev not in per_device:
                flat_mask = mask.to(dev).reshape(-1)
                pos = flat_mask.nonzero().squeeze(1)  # counted positions in the flattened [B*T]
                weights = onehot.to(dev)[pos // seq]  # [P, C] one-hot class of each counted position
                per_device[dev] = (pos, weights)
            pos, weights = per_device[dev]
            if pos.numel() == 0:
                continue
            flat = acts.detach().reshape(batch * seq, self.n_neurons)
            chunk = max(1, self.max_chunk_elements // self.n_neurons)
            for start in range(0, pos.numel(), chunk):
                idx, w = pos[start : start + chunk], weights[start : start + chunk]
                a = flat.index_select(0, idx)  # [P, N], still in the model's dtype
                wt = w.T  # [C, P]
                self.active[layer] += (wt @ (a > 0).to(torch.float64)).T.to(self.device)
                a = a.to(torch.float64)
                self.total[layer] += (wt @ a).T.to(self.device)
                self.total_sq[layer] += (wt @ (a * a)).T.to(self.device)

    def update_rows(self, layer_rows: Sequence[torch.Tensor], n_tokens: torch.Tensor, class_idx: torch.Tensor,
                    keep: torch.Tensor | None = None) -> None:
        """Add one batch given per-row sums from :func:`row_sums` (one ``[3, B, N]`` tensor per layer).

        This is what the Log stage uses: the rows are reduced inside the forward pass, and only once the answer is
        known does ``keep`` (e.g. "answered correctly") decide which rows count. Equivalent to :meth:`update` with
        the mask of dropped rows cleared, without holding every layer's raw activations until the logits exist.
        """
        self.add(self.contribution(layer_rows, n_tokens, class_idx, keep))

    def contribution(self, layer_rows: Sequence[torch.Tensor], n_tokens: torch.Tensor, class_idx: torch.Tensor,
                     keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One batch's terms of the five sums (``tokens``, ``items``, ``active``, ``total``, ``total_sq``),
        without adding them: :meth:`update_rows` is ``add(contribution(...))``. A data-parallel run exchanges
        these terms and adds them in the one-process order, so its float64 sums are bit-for-bit the same."""
        if len(layer_rows) != self.n_layers:
            raise ValueError(f"got row sums for {len(layer_rows)} layers, expected {self.n_layers}")
        class_idx = torch.as_tensor(class_idx).long()
        n_tokens = torch.as_tensor(n_tokens).to(torch.float64)
        keep = torch.ones_like(class_idx, dtype=torch.bool) if keep is None else torch.as_tensor(keep).bool()
        keep = keep & (n_tokens > 0)
        onehot = torch.nn.functional.one_hot(class_idx, self.n_classes).to(torch.float64) * keep[:, None]  # [B, C]
        shape = (self.n_layers, self.n_neurons, self.n_classes)
        out = {"items": onehot.sum(dim=0).to(self.device),
               "tokens": (n_tokens[:, None] * onehot).sum(dim=0).to(self.device),
               **{k: torch.zeros(shape, dtype=torch.float64, device=self.device) for k in ("active", "total",
                                                                                           "total_sq")}}
        for layer, rows in enumerate(layer_rows):
            if tuple(rows.shape) != (3, class_idx.shape[0], self.n_neurons):
                raise ValueError(f"layer {layer} row sums have shape {tuple(rows.shape)}, expected "
                                 f"(3, {class_idx.shape[0]}, {self.n_neurons})")
            w = onehot.to(rows.device).T  # [C, B]
            r = rows.to(torch.float64)
            for k, name in enumerate(("active", "total", "total_sq")):
                out[name][layer] = (w @ r[k]).T.to(self.device)
        return out

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        """Add one batch's :meth:`contribution` to the running sums."""
        for name in SUM_NAMES:
            getattr(self, name).add_(terms[name].to(self.device))

    def result(self, meta: dict | None = None) -> ActivationStats:
        """The statistics so far, on the CPU (the accumulator stays usable)."""
        # A NaN/inf activation at a counted position turns its neuron's sums non-finite (0 * inf = NaN too), so
        # checking the sums here catches it without an extra pass over every batch.
        finite = torch.isfinite(self.total).all(dim=(1, 2)) & torch.isfinite(self.total_sq).all(dim=(1, 2))
        if not bool(finite.all()):
            layers = (~finite).nonzero().squeeze(1).tolist()
            raise ValueError(
                f"non-finite (NaN/inf) activations at counted positions in layer(s) {layers}; check the model "
                "dtype (fp16 overflow?) and the token mask, then log again (these sums are unusable)"
            )
        return ActivationStats(
            labels=list(self.labels),
            tokens=self.tokens.cpu(),
            items=self.items.cpu(),
            active=self.active.cpu(),
            total=self.total.cpu(),
            total_sq=self.total_sq.cpu(),
            meta=dict(meta or {}),
        )


def row_sums(acts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row sufficient statistics over the counted positions: ``[3, B, N]`` = (# active, sum, sum of squares).

    Cheap enough to run inside the forward pass for every layer: only the token columns some row counts are
    touched (one column for the "last" mask) and the sums are matrix products, so no full-size temporaries are
    built. The row dimension is kept so that which items count (e.g. only correct answers) can be decided after
    the logits are known.
    """
    mask = mask.to(acts.device)
    cols = mask.any(0).nonzero().squeeze(1)
    a = acts.index_select(1, cols).float()
    m = mask.index_select(1, cols).float()
    return torch.stack([torch.einsum("bt,btn->bn", m, (a > 0).float()), torch.einsum("bt,btn->bn", m, a),
                        torch.einsum("bt,btn->bn", m, a * a)])
