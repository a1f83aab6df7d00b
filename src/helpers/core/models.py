"""Where the SwiGLU gates live in each supported audio-language model.

The method reads and edits ``a = act_fn(gate_proj(x))`` in every decoder MLP. Because a SwiGLU MLP is
``down_proj(act_fn(gate_proj(x)) * up_proj(x))``, editing the *output* of the ``act_fn`` module at neuron ``j`` edits
neuron ``j`` exactly, and the ``act_fn`` module is a hookable ``nn.Module`` in every transformers SwiGLU MLP.

Module paths verified on transformers 5.23 by instantiating tiny configs (see ``tests/tiny_models.py``):

=================================================  ===================================================
Qwen2AudioForConditionalGeneration                 ``model.language_model.layers[i].mlp.act_fn``
Qwen2_5OmniThinkerForConditionalGeneration         ``model.language_model.layers[i].mlp.act_fn``
Qwen2_5OmniForConditionalGeneration (full)         ``thinker.model.language_model.layers[i].mlp.act_fn``
AudioFlamingo3ForConditionalGeneration             ``model.language_model.layers[i].mlp.act_fn``
VoxtralForConditionalGeneration                    ``model.language_model.layers[i].mlp.act_fn``
Kimi-Audio (remote code, MoonshotKimiaForCausalLM)  ``model.layers[i].mlp.act_fn`` (``mimo_layers`` ignored)
=================================================  ===================================================

Everything here works on the plain ``torch.nn.Module``; an nnsight wrapper is unwrapped first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

# --------------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------------


class UnsupportedModelError(ValueError):
    """The model has no dense SwiGLU gate the method can read and edit (MoE, fused gate_up_proj, no decoder...)."""


# --------------------------------------------------------------------------------------------------------------------
# Structure: language model, decoder layers, gate modules
# --------------------------------------------------------------------------------------------------------------------

SWIGLU_PARTS = ("gate_proj", "up_proj", "down_proj")


def unwrap(model: Any) -> nn.Module:
    """The plain torch module behind an nnsight wrapper (``Envoy``/``NNsight``), or the module itself."""
    inner = getattr(model, "_module", None)
    if isinstance(inner, nn.Module) and not isinstance(model, nn.Module):
        return inner
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module or an nnsight wrapper of one, got {type(model).__name__}")
    return model


def forward_model(model: Any) -> nn.Module:
    """The module whose forward returns the text logits.

    Qwen2.5-Omni's full model has no text forward of its own: the ``thinker`` produces the text (the talker only
    turns it into speech), so it is the thinker that gets traced and whose gates are the "decoder gates".
    """
    m = unwrap(model)
    thinker = getattr(m, "thinker", None)
    return thinker if isinstance(thinker, nn.Module) else m


def _is_decoder_stack(module: nn.Module) -> bool:
    layers = getattr(module, "layers", None)
    return isinstance(layers, nn.ModuleList) and len(layers) > 0 and all(hasattr(lay, "mlp") for lay in layers)


def find_language_model(model: Any) -> nn.Module:
    """The text decoder: the module that owns the decoder ``layers`` (and, normally, ``embed_tokens``).

    Found by structure rather than by a per-class path so that remote-code models (Kimi-Audio) work too. Audio and
    vision encoders are excluded naturally: their blocks have no ``mlp`` attribute (Whisper-style ``fc1/fc2``) or
    live under ``blocks``. Among several candidates the one named ``*language_model`` wins, then the one with an
    ``embed_tokens``, then the deepest stack.
    """
    root = forward_model(model)
    candidates = [(name, mod) for name, mod in root.named_modules() if _is_decoder_stack(mod)]
    if not candidates:
        raise UnsupportedModelError(
            f"{type(root).__name__}: found no decoder layer list (a module with `.layers` whose layers have `.mlp`); "
            "the method needs a decoder-only language model with dense SwiGLU MLPs"
        )

    def rank(item: tuple[str, nn.Module]) -> tuple[int, int, int, int]:
        name, mod = item
        return (
            int(name.split(".")[-1] == "language_model" if name else False),
            int(hasattr(mod, "embed_tokens")),
            len(cast(nn.ModuleList, mod.layers)),
            -name.count("."),
        )

    return max(candidates, key=rank)[1]


def decoder_layers(model: Any) -> nn.ModuleList:
    """The language model's decoder layers, in order."""
    return cast(nn.ModuleList, find_language_model(model).layers)  # checked by _is_decoder_stack


def decoder_mlps(model: Any) -> list[Any]:
    """The decoder layers' MLPs (``layer.mlp``), in order.

    Typed ``Any``: each is a transformers (or remote-code) SwiGLU MLP reached by duck typing (``gate_proj``,
    ``up_proj``, ``down_proj``, ``act_fn``), which ``nn.Module.__getattr__`` would type ``Tensor | Module``.
    """
    return [layer.mlp for layer in decoder_layers(model)]


def _check_swiglu_mlp(mlp: nn.Module, where: str) -> nn.Module:
    """Return ``mlp.act_fn`` after checking the MLP is a dense, unfused SwiGLU; raise a precise error otherwise."""
    kind = type(mlp).__name__
    if hasattr(mlp, "experts"):
        raise UnsupportedModelError(
            f"{where} is a mixture-of-experts block ({kind}, has `mlp.experts`): the method needs a dense SwiGLU MLP "
            "with one gate per neuron; MoE models are not supported"
        )
    if hasattr(mlp, "gate_up_proj"):
        raise UnsupportedModelError(
            f"{where} ({kind}) uses a fused `gate_up_proj` (as Phi-3/Phi-4-multimodal do): the gate is not a separate "
            "module output here, so this model is unsupported"
        )
    missing = [p for p in SWIGLU_PARTS if not isinstance(getattr(mlp, p, None), nn.Module)]
    if missing:
        raise UnsupportedModelError(
            f"{where} ({kind}) lacks {missing}: the method needs a SwiGLU MLP with gate_proj/up_proj/down_proj"
        )
    act = getattr(mlp, "act_fn", None)
    if not isinstance(act, nn.Module):
        raise UnsupportedModelError(
            f"{where} ({kind}) has no `act_fn` submodule (got {type(act).__name__}); the gate activation must be an "
            "nn.Module to be traced"
        )
    return act


def gate_modules(model: Any) -> list[nn.Module]:
    """The decoder layers' SwiGLU gate activation modules (``layer.mlp.act_fn``), in layer order.

    Raises :class:`UnsupportedModelError` for models without them (MoE MLPs, fused gate_up_proj, no decoder).
    """
    return [_check_swiglu_mlp(mlp, f"decoder layer {i} MLP") for i, mlp in enumerate(decoder_mlps(model))]


def gate_shape(model: Any) -> tuple[int, int]:
    """``(n_layers, n_neurons)``: decoder layers x MLP intermediate size (checked to be equal across layers)."""
    mlps = decoder_mlps(model)
    gate_modules(model)  # validates every MLP
    sizes: set[int] = {mlp.gate_proj.out_features for mlp in mlps}
    if len(sizes) != 1:
        raise UnsupportedModelError(f"decoder MLPs have different intermediate sizes {sorted(sizes)}")
    return len(mlps), sizes.pop()


def gate_paths(model: Any) -> list[str]:
    """Dotted names of the gate modules in the (unwrapped) model, e.g. ``thinker.model.language_model.layers.0...``."""
    root = unwrap(model)
    names = {id(m): n for n, m in root.named_modules()}
    return [names[id(m)] for m in gate_modules(model)]


def check_swiglu(model: Any, inputs: Mapping[str, torch.Tensor], layer: int = 0, atol: float = 1e-4) -> None:
    """Numerically confirm ``down_proj`` input == ``act_fn(gate) * up_proj(x)`` in one layer.

    Why: for remote-code models the structure search only sees module names; this checks that the forward really
    multiplies the act_fn output by up_proj, i.e. that editing act_fn's output edits the neuron. Raises on mismatch.
    """
    mlp = decoder_mlps(model)[layer]
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        mlp.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].detach())),
        mlp.act_fn.register_forward_hook(lambda m, a, o: seen.__setitem__("a", o.detach())),
        mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("d", a[0].detach())),
    ]
    try:
        with torch.no_grad():
            forward_model(model)(**inputs)
            expected = seen["a"] * mlp.up_proj(seen["x"])
    finally:
        for h in hooks:
            h.remove()
    if not torch.allclose(seen["d"].float(), expected.float(), atol=atol, rtol=1e-3):
        raise UnsupportedModelError(
            f"decoder layer {layer}: down_proj's input is not act_fn(gate_proj x) * up_proj x, so editing act_fn's "
            "output would not edit the neuron exactly"
        )

