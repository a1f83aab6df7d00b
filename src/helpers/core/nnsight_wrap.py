"""The cached ``nnsight.NNsight`` wrapper of a model and its gate envoys (one wrapper per module, reused)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import nnsight
import torch
from torch import nn

from .models import forward_model

_WRAPPER_ATTR = "_esn_nnsight_wrapper"


def nnsight_model(model: Any) -> nnsight.NNsight:
    """The cached ``nnsight.NNsight`` wrapper of :func:`~helpers.core.models.forward_model` (the thinker for Omni).

    Cached in the module's ``__dict__`` (a reference cycle the garbage collector frees with the model), so repeated
    traces neither re-instrument the model nor leak it. A wrapper passed in is used as is when it wraps the
    forward model; a wrapper of a full Qwen2.5-Omni is narrowed to its thinker's envoy.
    """
    target = forward_model(model)
    if isinstance(model, nnsight.Envoy):
        if model._module is target:
            return model
        env = model.interleaver.envoys.get(id(target))
        if env is not None:
            return env
    holder = target.__dict__.get(_WRAPPER_ATTR)
    if holder is None:
        holder = _WrapperCache()
        object.__setattr__(target, _WRAPPER_ATTR, holder)
    if holder.envoy is None:
        holder.envoy = nnsight.NNsight(target)
    return holder.envoy


class _WrapperCache:
    """Holds a model's nnsight wrapper; copies and pickles of the model get an empty one (re-wrapped on first use)
    instead of dragging the wrapper, and through it a second reference to the model, along."""

    __slots__ = ("envoy",)

    def __init__(self) -> None:
        self.envoy: nnsight.NNsight | None = None

    def __deepcopy__(self, memo: dict) -> _WrapperCache:
        return _WrapperCache()

    def __reduce__(self) -> tuple:
        return (_WrapperCache, ())


def _envoys(root: nnsight.Envoy, modules: Sequence[nn.Module]) -> list[nnsight.Envoy]:
    """Envoys of ``modules`` under ``root`` (looked up before the trace, as nnsight requires)."""
    out = []
    for i, mod in enumerate(modules):
        env = root.interleaver.envoys.get(id(mod))
        if env is None:
            raise ValueError(f"gate module {i} ({type(mod).__name__}) is not part of the traced model")
        out.append(env)
    return out


def _batch_shape(inputs: Mapping[str, Any]) -> tuple[int, int]:
    """(rows, positions) of a batch, from ``input_ids`` or ``inputs_embeds``."""
    for key in ("input_ids", "inputs_embeds"):
        if isinstance(inputs.get(key), torch.Tensor):
            return int(inputs[key].shape[0]), int(inputs[key].shape[1])
    raise ValueError("inputs need `input_ids` (or `inputs_embeds`) to define the batch")


def _batch_size(inputs: Mapping[str, Any]) -> int:
    return _batch_shape(inputs)[0]


__all__ = [
    "nnsight_model",
]
