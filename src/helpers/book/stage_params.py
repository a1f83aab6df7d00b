"""Stage notebooks' parameters, read at run time: the names and literal defaults of each notebook's
``parameters`` cell, whether it takes the :data:`~helpers.book.config.SUBJECT_KEYS`, and the stages it reads."""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.io import STAGES, ConfigError
from .config import SUBJECT_KEYS

__all__ = ["StageInfo", "stage_info", "stage_infos"]

_NONLITERAL = object()
_STAGE_LITERAL = re.compile(r"""["']([0-9]{2}_[a-z][a-z0-9_]*)["']""")


@dataclass(frozen=True)
class StageInfo:
    """What a stage notebook reads: its ``parameters`` cell (names and literal defaults), whether it takes the
    :data:`~helpers.book.config.SUBJECT_KEYS` through ``config_params``, and the stages whose outputs it opens."""

    name: str
    defaults: Mapping[str, Any]
    subject_keys: bool
    upstream: tuple[str, ...]

    @property
    def reads(self) -> frozenset[str]:
        return frozenset(self.defaults) | (frozenset(SUBJECT_KEYS) if self.subject_keys else frozenset())


_CACHE: dict[tuple[str, int], StageInfo] = {}


def _parameters(source: str, where: str) -> dict[str, Any]:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ConfigError(f"{where}: the parameters cell is not valid Python ({exc})") from exc
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value = node.target.id, node.value
        else:
            continue
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError):
            out[name] = _NONLITERAL
    return out


def stage_info(stage: str, notebooks: str | Path) -> StageInfo:
    """Parse ``notebooks/<stage>.md`` (cached while the file is unchanged)."""
    import jupytext

    path = Path(notebooks) / f"{stage}.md"
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key in _CACHE:
        return _CACHE[key]
    nb = jupytext.read(path)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in cells if "parameters" in (c.metadata.get("tags") or [])]
    defaults = _parameters(tagged[0].source, str(path)) if tagged else {}
    code = "\n".join(c.source for c in cells if c not in tagged)
    upstream = tuple(s for s in STAGES if s != stage and s in set(_STAGE_LITERAL.findall(code)))
    info = StageInfo(stage, defaults, "config_params(" in code, upstream)
    _CACHE[key] = info
    return info


def stage_infos(notebooks: str | Path) -> dict[str, StageInfo]:
    """Every stage that has a notebook source."""
    return {s: stage_info(s, notebooks) for s in STAGES if (Path(notebooks) / f"{s}.md").is_file()}
