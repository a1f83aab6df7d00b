"""Small presentation helpers for notebooks: the version stamp every chapter opens with."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import pandas as pd

from ..core.io import project_root


def _git_commit() -> str:
    """The checkout's short commit, or "unknown" (not in a checkout, no git)."""
    try:
        root = project_root()
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):  # ProjectRootNotFoundError is an OSError
        return "unknown"


def versions() -> dict[str, str]:
    import nnsight
    import torch
    import transformers

    import helpers

    return {
        "helpers": helpers.__version__, "commit": _git_commit(), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__, "nnsight": nnsight.__version__,
    }


def version_stamp() -> pd.DataFrame:
    """The software this chapter was executed with, as a one-row table (nnsight-tutorial style)."""
    return pd.DataFrame([versions()], index=["executed with"])


# ---------------------------------------------------------------------------------------------------------------------
# The parameter table every chapter shows: the values this run used, the notebook's defaults, the paper's values
# ---------------------------------------------------------------------------------------------------------------------

#: The paper's setting for a parameter, its confidence mark, and why the book's default differs (when it does).
#: ``value`` is compared with the run's value; ``shown`` is how the paper's setting reads in the table.
PAPER_VALUES: dict[str, dict[str, object]] = {
    "fraction": {"value": 0.005, "shown": "0.005 (0.5 %)", "mark": "[later]",
                 "why": "the organism's decoder is tiny, so the paper's share is a handful of neurons per emotion; "
                        "the book's 5 % gives sets whose effects clear the random controls, and chapters 02-03 run "
                        "the paper's share (`paper_fraction`) next to it"},
    "paper_fraction": {"value": 0.005, "shown": "0.005 (0.5 %)", "mark": "[later]", "why": ""},
    "alpha": {"value": 0.5, "shown": "0.5", "mark": "[later]", "why": ""},
    "random_seeds": {"value": 5, "shown": "5 draws", "mark": "[later]", "len": True,
                     "why": "one draw per selector keeps `make book` short; the pooled `random` rows "
                            "average the draws of every selector"},
    "only_correct": {"value": True, "shown": "true", "mark": "[later]", "why": ""},
    "positions": {"value": "all", "shown": "all but padding and instruction tokens", "mark": "[later]",
                  "why": "the organism answers with one letter at the last prompt token, where chapter 01 finds its "
                         "emotion signal; `-p positions all` counts every token"},
    "prompt_style": {"value": "multiple_choice", "shown": "multiple choice, letters shuffled", "mark": "[later]",
                     "why": ""},
    "selectors": {"value": ["lap", "lape", "mad", "cas"], "shown": "LAP, LAPE, MAD, CAS", "mark": "[paper]",
                  "as_set": True, "why": "the book adds AAPE (an audio-model selector) and keeps the paper's four"},
}


def _short(value: object, width: int = 60) -> str:
    import json

    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


def _matches_paper(key: str, value: object) -> bool:
    ref = PAPER_VALUES[key]
    if ref.get("len"):
        return isinstance(value, list | tuple) and len(value) == ref["value"]
    if ref.get("as_set"):
        return isinstance(value, list | tuple) and set(value) == set(cast(Iterable[Any], ref["value"]))
    return value == ref["value"]


def parameter_rows(stage: str, namespace: dict, notebooks: str | Path | None = None) -> list[dict[str, str]]:
    """One row per parameter of ``stage``'s ``parameters`` cell: the value this run used (from ``namespace``, the
    notebook's globals after papermill injected the config and overrides), the notebook's default, the paper's
    value where the paper (or its follow-ups) fixes one, and a note on where they differ and why."""
    from .stage_params import _NONLITERAL, stage_info

    nbdir = Path(notebooks) if notebooks is not None else project_root() / "notebooks"
    info = stage_info(stage, nbdir)
    rows = []
    for key, default in info.defaults.items():
        if key not in namespace:
            continue
        value = namespace[key]
        notes = []
        changed = default is not _NONLITERAL and value != default
        if changed:
            notes.append("set by the config or `-p`")
        paper = "—"
        if key in PAPER_VALUES:
            ref = PAPER_VALUES[key]
            paper = f"{ref['shown']} {ref['mark']}"
            if not _matches_paper(key, value):
                notes.append("**differs from the paper**" + (f": {ref['why']}" if ref["why"] else ""))
        rows.append({"parameter": f"`{key}`", "this run": f"`{_short(value)}`",
                     "notebook default": "(computed)" if default is _NONLITERAL else f"`{_short(default)}`",
                     "paper": paper, "note": "; ".join(notes)})
    return rows


def parameter_table(stage: str, namespace: dict, notebooks: str | Path | None = None):
    """The chapter's parameter table as Markdown (see :func:`parameter_rows`)."""
    from IPython.display import Markdown

    rows = parameter_rows(stage, namespace, notebooks)
    head = ["parameter", "this run", "notebook default", "paper", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[h].replace("|", "\\|") for h in head) + " |" for r in rows]
    return Markdown("\n".join(lines))
