"""Shared fixtures: a small generated corpus (deterministic, seconds) and the committed organism."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
ORGANISM_DIR = ROOT / "models" / "organism"


@pytest.fixture(scope="session")
def small_corpora(tmp_path_factory) -> dict[str, Path]:
    """Corpora A and B restricted to their first sentences: every split and emotion, few clips."""
    from helpers.data.corpus import CORPORA, generate

    root = tmp_path_factory.mktemp("corpus")
    for name, limit in (("A", 6), ("B", 4)):
        generate(CORPORA[name], root / name, limit=limit)
    return {name: root / name for name in ("A", "B")}


def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls are slower with several threads on a busy shared CPU (use via pytest.mark.usefixtures)."""
    yield from _torch_threads(1)


@pytest.fixture(scope="module")
def two_threads():
    """Two torch threads for the module (the Whisper encoder tests: real-size matmuls, a shared CPU)."""
    yield from _torch_threads(2)


@pytest.fixture(scope="session")
def organism():
    from helpers.subjects.organism import load_organism

    return load_organism(ORGANISM_DIR)
