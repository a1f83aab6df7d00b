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
    "load_subject": "subjects", "load_items": "subjects", "Subject": "subject", "Batch": "subject",
    "gate_modules": "models", "gate_shape": "models", "trace_gates": "hooks", "run_with_gate_edits": "hooks",
    "log_activations": "activation_log", "ActivationStats": "stats", "StatsAccumulator": "stats",
    # Identify
    "select": "selectors", "select_many": "selectors", "as_pairs": "neuron_sets", "as_mask": "neuron_sets",
    "random_sets": "neuron_sets", "save_sets": "neuron_sets", "load_sets": "neuron_sets",
    # Intervene
    "run_conditions": "interventions", "identity": "interventions", "deactivate": "interventions",
    "steer": "interventions", "label_free": "interventions", "deactivation_experiment": "interventions",
    "steering_experiment": "interventions",
    # Ground
    "patch_pairs": "grounding", "calibrated_coefficient": "grounding", "neuron_grounding": "grounding",
    "set_grounding": "grounding", "dissociation": "grounding",
    # scale
    "log_activations_sharded": "distributed", "run_conditions_sharded": "distributed",
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

