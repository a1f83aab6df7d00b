"""Where the checkout is: its root and the stage notebooks' sources.

Read as ``checkout.ROOT`` / ``checkout.NOTEBOOKS`` at call time (never imported by name), so a test can point the
pipeline at a stand-in checkout by setting them here.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
NOTEBOOKS = ROOT / "notebooks"
