"""Parameter records (``stage.json``) and lineage: the hash of a stage's parameters and which keys must agree
between a stage and the stages whose outputs it reads."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .config import Config
from .config_messages import _schema_extra
from .resolution import _plain

__all__ = ["lineage_mismatches", "params_hash"]

# ---------------------------------------------------------------------------------------------------------------------
# Parameter records (stage.json) and lineage
# ---------------------------------------------------------------------------------------------------------------------


def params_hash(params: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``params`` (key order does not matter)."""
    text = json.dumps(_plain(dict(params)), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _lineage_rule(key: str) -> str | None:
    return _schema_extra(Config.model_fields.get(key)).get("lineage")


def lineage_mismatches(current: Mapping[str, Any], upstream: Mapping[str, Any]) -> list[str]:
    """Keys whose value in ``current`` cannot use outputs produced with ``upstream`` (each with both values).

    Only keys both read and that :class:`~helpers.book.config.Config` marks as lineage keys are compared:
    ``equal`` ones (labels, seed, model, ...) must match; ``subset`` ones (``selectors``, ``datasets``) may be a
    part of what was produced.
    Stage-local knobs (``batch_size``, ``split``, ``limit_per_class``, ``n_boot``, ...) need not agree.
    """
    out = []
    for key in sorted(set(current) & set(upstream)):
        rule = _lineage_rule(key)
        cur, up = _plain(current[key]), _plain(upstream[key])
        if rule == "equal" and cur != up:
            out.append(f"{key}: {up!r} there, {cur!r} here")
        elif rule == "subset":
            bad: Any
            if isinstance(cur, dict) and isinstance(up, dict):
                bad = {k: v for k, v in cur.items() if up.get(k, object()) != v}
            elif isinstance(cur, list) and isinstance(up, list):
                bad = [v for v in cur if v not in up]
            else:
                bad = cur if cur != up else None
            if bad:
                out.append(f"{key}: {up!r} there, {cur!r} here ({bad!r} not produced)")
    return out
