"""Small presentation helpers for notebooks: the version stamp every chapter opens with."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import pandas as pd


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
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
