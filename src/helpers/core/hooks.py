"""Reading and editing the SwiGLU gates through one nnsight trace per batch.

One tracer serves the whole method: :func:`trace` edits, patches and reads every layer's ``act_fn`` output and the
residual stream in one forward pass; :func:`trace_gates` (read: Log / Identify) and :func:`run_with_gate_edits`
(write: Intervene) are its two common shapes, the grounding patches call it directly, and
:func:`generate_with_gate_edits` applies the same edit plan at every generation step. Both open
``with nn_model.trace(...)`` on an ``nnsight.NNsight`` wrapper of the text-producing model and touch the gate envoys
in layer order (nnsight serves module outputs in execution order; visiting a later
layer first raises ``OutOfOrderError``).

nnsight 0.8.1 facts this relies on (checked in the installed source and by the tests):

* ``NNsight(module)`` instruments every submodule once, in place (a controller replaces ``forward`` in the module's
  ``__dict__``); outside a trace it is inert, so the wrapper is cached on the module and reused.
* ``root.trace(**inputs)`` runs ``module(**inputs)`` as a single invoke while the ``with`` body runs in a greenlet; the
  body is compiled from this file's source, so it must stay a literal ``with`` block.
* Inside the body ``envoy.output`` is the real tensor (not a proxy); assigning ``envoy.output = new`` swaps it into
  the forward pass. Only values marked with ``nnsight.save`` survive the block as *rebound names*; objects mutated in
  place (a list from ``nnsight.save([])``, a caller's accumulator) are simply shared.
* Generation: ``root.trace(fn="generate")`` + ``tracer.invoke(**inputs, max_new_tokens=n)`` with a ``tracer.iter[:n]``
  loop; the token ids are read in a second, empty invoke so they are returned even when EOS ends the loop early.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import nnsight
import torch
from torch import nn

from .gate_edits import GateFn, NonFiniteEditError, _as_gate_fns, _as_positions, _edit_layer, _plan, apply_gate_edit
from .models import decoder_layers, decoder_mlps, forward_model, gate_modules
from .nnsight_wrap import _batch_shape, _batch_size, _envoys

LogitsMode = Literal["all", "last", "none"]


Reduce = Callable[[int, torch.Tensor], Any]

#: Work done by :func:`trace` in this process: forward passes, item rows and token positions. Instrumentation
#: only (nothing reads it to decide anything): each stage reports its share of the book's work from it
#: (``helpers.core.io.write_metrics`` writes it to ``usage.json``; the benchmarks page shows it).
_FORWARDS: dict[str, int] = {"passes": 0, "rows": 0, "tokens": 0}


def forward_counts() -> dict[str, int]:
    """A copy of this process's :func:`trace` counters (``passes``, ``rows``, ``tokens``)."""
    return dict(_FORWARDS)


def last_positions(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Index of each row's last attended position (works for left and right padding); None = use -1."""
    if mask is None or mask.ndim != 2 or mask.shape[1] != length:
        return None
    m = mask.bool()
    idx = length - 1 - m.flip(-1).int().argmax(-1)
    return idx


def _logits_of(output: Any) -> torch.Tensor:
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)):
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model output ({type(output).__name__}) has no logits")
    return logits


def select_logits(output: Any, mode: LogitsMode, mask: torch.Tensor | None) -> torch.Tensor | None:
    """``"all"``: [B, T, V]; ``"last"``: [B, V] at each row's last attended position (a copy, so the full
    logits can be freed); ``"none"``: None."""
    if mode == "none":
        return None
    logits = _logits_of(output)
    if mode == "all":
        return logits
    if mode != "last":
        raise ValueError(f"logits must be 'all', 'last' or 'none', got {mode!r}")
    mask = getattr(output, "attention_mask", None) if getattr(output, "attention_mask", None) is not None else mask
    idx = last_positions(mask.to(logits.device) if mask is not None else None, logits.shape[1])
    if idx is None:
        return logits[:, -1].clone()
    return logits[torch.arange(logits.shape[0], device=logits.device), idx].clone()


def trace(
    model: Any,
    inputs: Mapping[str, Any],
    *,
    modules: Sequence[nn.Module] | None = None,
    scale: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    patch: Sequence[torch.Tensor | None] | Mapping[int, torch.Tensor] | None = None,
    patch_mask: torch.Tensor | None = None,
    gate_fns: Mapping[int, GateFn] | None = None,
    residual: Mapping[int, torch.Tensor] | None = None,
    residual_positions: torch.Tensor | None = None,
    read_residual: Iterable[int] = (),
    read_gates: bool = True,
    reduce: Reduce | None = None,
    logits: LogitsMode = "all",
    grad: bool = False,
) -> tuple[torch.Tensor | None, list[Any], dict[int, torch.Tensor]]:
    """One forward pass that edits, patches and reads the gates and the residual stream:
    ``(logits, per-layer gates or reduce(i, gate), {layer: hidden})``. Logging, editing and patching all go
    through it (:func:`trace_gates` and :func:`run_with_gate_edits` are its two common shapes).

    Gate edits (``scale``, ``add``, ``positions``, ``patch``, ``patch_mask``) follow :func:`run_with_gate_edits`
    and :func:`~helpers.core.gate_edits.apply_gate_edit`; ``gate_fns`` ``{layer: fn(gate, positions)}`` add
    input-dependent edits after them
    (see :func:`run_with_gate_edits`). With ``read_gates`` the (edited) gates are returned, one entry per module
    (``reduce(layer_index, gate)`` runs inside the trace and its value replaces the gate; None entries stay);
    without it only the edited layers are touched at all. ``residual``: ``{layer: [B|1, T, H]}`` source hidden
    states written into that decoder layer's output at ``residual_positions`` [B, T] (all positions when None);
    ``read_residual``: layers whose (possibly patched) output hidden states are returned.
    """
    envoys, plan, root = _plan(model, inputs, modules, scale, add, positions, patch, patch_mask)
    edits: dict[int, dict[str, torch.Tensor | None] | None] = dict(plan)
    fns = _as_gate_fns(gate_fns, len(envoys))
    pos_t = _as_positions(positions, _batch_size(inputs)) if fns else None
    for i in fns:
        edits.setdefault(i, None)
    reads = {int(x) for x in read_residual}
    res_plan = _residual_plan(model, residual, residual_positions)
    touch = sorted(set(res_plan) | reads)
    if touch and modules is not None:
        raise ValueError("residual patching or reading needs the default modules (every decoder gate)")
    layers = list(decoder_layers(model))
    layer_envs = dict(zip(touch, _envoys(root, [layers[i] for i in touch]), strict=True))
    mask = inputs.get("attention_mask")
    with torch.set_grad_enabled(grad), root.trace(**inputs):
        gates = nnsight.save([])
        hidden = nnsight.save([])
        for i in range(len(envoys)):
            if read_gates or i in edits:
                value = envoys[i].output
                if i in edits:
                    value = _edit_layer(value, edits[i], fns.get(i), pos_t)
                    envoys[i].output = value
                if read_gates:
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
    rows, length = _batch_shape(inputs)
    _FORWARDS["passes"] += 1
    _FORWARDS["rows"] += rows
    _FORWARDS["tokens"] += int(mask.sum()) if isinstance(mask, torch.Tensor) else rows * length
    return out, list(gates), dict(hidden)


def _residual_plan(model: Any, residual: Mapping[int, torch.Tensor] | None, residual_positions: torch.Tensor | None
                   ) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
    """Validated ``{layer: (source [B|1, T, H] on that layer's device, positions [B, T, 1] or None)}``."""
    mlps = decoder_mlps(model)
    out: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for layer, src in (residual or {}).items():
        layer = int(layer)
        if not 0 <= layer < len(mlps):
            raise ValueError(f"residual patch for layer {layer} but the model has {len(mlps)} layers")
        dev: torch.device = mlps[layer].gate_proj.weight.device
        pos = None
        if residual_positions is not None:
            p = torch.as_tensor(residual_positions)
            if p.dtype != torch.bool or p.ndim != 2:
                raise TypeError("`residual_positions` must be a bool tensor [B, T]")
            pos = p[:, :, None].to(dev)
        src = torch.as_tensor(src)
        if src.ndim != 3:
            raise ValueError(f"residual source for layer {layer} must be [B|1, T, H], got shape {tuple(src.shape)}")
        out[layer] = (src.to(dev), pos)
    return out


def trace_gates(
    model: Any,
    inputs: Mapping[str, Any],
    modules: Sequence[nn.Module] | None = None,
    *,
    reduce: Reduce | None = None,
    logits: LogitsMode = "all",
    grad: bool = False,
) -> tuple[torch.Tensor | None, list[Any]]:
    """One forward pass that reads every gate: ``(logits, [per-layer gate [B, T, N]])``.

    ``reduce(layer_index, gate)`` runs *inside* the trace right after that layer's gate is computed; its return value
    replaces the raw gate in the returned list (``None`` drops it). Use it to stream statistics or to shrink a batch
    (e.g. ``lambda i, g: g[mask].float().cpu()``) so no more than one layer's raw activations are alive at once.
    To stream a dataset, call once per batch and fold the result into an accumulator; nothing is kept between calls::

        for inputs, mask, cls in batches:
            _, gates = trace_gates(model, inputs, logits="none")
            acc.update(gates, mask, cls)  # StatsAccumulator; `gates` freed on the next iteration

    ``modules`` (default: every decoder gate) must be given in execution order. ``logits``: ``"all"`` [B, T, V],
    ``"last"`` [B, V] (each row's last attended position) or ``"none"``.
    """
    out, gates, _ = trace(model, inputs, modules=modules, reduce=reduce, logits=logits, grad=grad)
    return out, [g for g in gates if g is not None]


def hook_gates(model: Any, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Reference reader with plain torch forward hooks (no nnsight): ``(logits [B, T, V], gates)``.

    Kept as an independent check of the nnsight path (the tests compare the two) and as a fallback for
    environments where nnsight cannot wrap a model.
    """
    mods = gate_modules(model)
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _a, o: seen.append(o.detach())) for m in mods]
    try:
        with torch.no_grad():
            out = forward_model(model)(**inputs)
    finally:
        for h in handles:
            h.remove()
    return _logits_of(out), seen


def run_with_gate_edits(
    model: Any,
    inputs: Mapping[str, Any],
    *,
    scale: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    patch: Sequence[torch.Tensor | None] | Mapping[int, torch.Tensor] | None = None,
    patch_mask: torch.Tensor | None = None,
    modules: Sequence[nn.Module] | None = None,
    logits: LogitsMode = "all",
    check_finite: bool = True,
    gate_fns: Mapping[int, GateFn] | None = None,
) -> torch.Tensor | None:
    """Forward pass with batched gate edits; returns logits (``"all"`` [B, T, V] by default).

    Every row has its own edit, so many conditions run in one forward (repeat the inputs with
    :func:`~helpers.core.gate_edits.tile_inputs`):
    ``gate <- gate * scale[b, l] + add[b, l]`` at the ``positions`` [B, T] selected (default all), after optionally
    patching the neurons in ``patch_mask`` [B|1, L, N] to values from another run (``patch``: per layer [B|1, T, N],
    as a list of L entries or a dict ``{layer: tensor}``, e.g. from :func:`trace_gates`). Layers whose scale is all
    ones, add all zeros and patch empty are not touched at all.

    ``gate_fns`` ``{layer: fn}``: an input-dependent edit (e.g. removing sparse-autoencoder features, whose codes
    depend on the gate itself), ``gate <- fn(gate, positions)`` after the tensor edits of that layer; ``positions``
    is the validated [B|1, T] bool mask (None = every position) and ``fn`` must leave the other positions alone.
    """
    out, _, _ = trace(model, inputs, modules=modules, scale=scale, add=add, positions=positions, patch=patch,
                      patch_mask=patch_mask, gate_fns=gate_fns, read_gates=False, logits=logits)
    if check_finite and out is not None and not bool(torch.isfinite(out).all()):
        raise NonFiniteEditError(
            "the gate edit produced NaN/inf logits: the amplification (alpha) is too large for this model/dtype; "
            "lower alpha or run in float32"
        )
    return out


def generate_with_gate_edits(
    model: Any,
    inputs: Mapping[str, Any],
    *,
    scale: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    modules: Sequence[nn.Module] | None = None,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """``generate`` with the same per-row gate edit applied at every position, prompt and generated tokens alike.

    Returns the token ids [B, T + new] exactly as ``model.generate`` would (greedy unless sampling is requested).
    """
    envoys, plan, root = _plan(model, inputs, modules, scale, add, None, None, None)
    gen = {"max_new_tokens": max_new_tokens, "do_sample": False, **generate_kwargs}
    with warnings.catch_warnings():
        # A loop bounded by max_new_tokens that EOS cuts short ends by design; nnsight warns about it.
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        with torch.no_grad(), root.trace(fn="generate") as tracer:
            with tracer.invoke(**inputs, **gen):
                for _step in tracer.iter[:max_new_tokens]:
                    for i, edit in plan:
                        envoys[i].output = apply_gate_edit(envoys[i].output, **edit)
            with tracer.invoke():
                ids = nnsight.save(tracer.result)
    return ids


__all__ = [
    "forward_counts",
    "generate_with_gate_edits",
    "hook_gates",
    "last_positions",
    "run_with_gate_edits",
    "select_logits",
    "trace_gates",
]
