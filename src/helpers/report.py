"""Small presentation helpers for notebooks: the version stamp every chapter opens with."""

from __future__ import annotations

import platform
import subprocess

import pandas as pd

from .io import project_root


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
