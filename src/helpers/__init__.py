"""Tested code behind the ESN companion book: Log -> Identify -> Intervene on audio-language models.

Notebooks stay thin and call into these modules; every threshold is a named parameter here. The names a book
chapter or a researcher needs are importable from the package top (``from helpers import select``); they are
loaded on first use, so ``import helpers`` stays cheap (the pipeline's CLI does not pay for torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it, grouped by the method's stages.
_PUBLIC: dict[str, str] = {
    # subjects and the hooks (Log)
    "load_subject": "subjects.subject_loading", "load_items": "subjects.run_items",
    "Subject": "core.subject", "Batch": "core.subject",
    "gate_modules": "core.models", "gate_shape": "core.models",
    "trace_gates": "core.hooks", "run_with_gate_edits": "core.hooks",
    "log_activations": "log.activation_log", "ActivationStats": "log.stats", "StatsAccumulator": "log.stats",
    # Identify
    "select": "identify.selection", "select_many": "identify.selection",
    "as_pairs": "core.neuron_sets", "as_mask": "core.neuron_sets", "random_sets": "core.neuron_sets",
    "save_sets": "core.neuron_sets", "load_sets": "core.neuron_sets",
    # Intervene
    "run_conditions": "intervene.runner", "identity": "intervene.conditions",
    "deactivate": "intervene.conditions", "steer": "intervene.conditions",
    "label_free": "intervene.per_item",
    "deactivation_experiment": "intervene.deactivation", "steering_experiment": "intervene.steering",
    # Ground
    "patch_pairs": "ground.patching", "calibrated_coefficient": "ground.coefficients",
    "neuron_grounding": "ground.grounding_tables", "set_grounding": "ground.grounding_tables",
    "dissociation": "ground.dissociation",
    # scale
    "log_activations_sharded": "core.distributed", "run_conditions_sharded": "core.distributed",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'helpers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))

