"""Speaker-disjoint ``identify`` / ``evaluate`` splits of a real corpus, and its rows per split x label."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .schema import SPLITS

#: Default speaker-disjoint split of everything not kept as ``train``.
DEFAULT_FRACTIONS: dict[str, float] = {"identify": 0.5, "evaluate": 0.5}


# ------------------------------------------------------------------------------------------------ splits
def _allocate(sizes: pd.Series, fractions: Mapping[str, float], rng: np.random.Generator) -> dict[str, str]:
    """Greedy speaker -> split allocation that tracks the row fractions (speakers differ a lot in size)."""
    groups = sorted(sizes.index, key=str)
    order = [groups[i] for i in rng.permutation(len(groups))]
    order.sort(key=lambda g: -int(sizes[g]))  # stable: ties keep the seeded order
    total = float(sizes.sum())
    targets = {s: f * total for s, f in fractions.items() if f > 0}
    rows = dict.fromkeys(targets, 0.0)
    n_groups = dict.fromkeys(targets, 0)
    out: dict[str, str] = {}
    for i, g in enumerate(order):
        empty = [s for s in targets if n_groups[s] == 0]
        candidates = empty if len(order) - i <= len(empty) else list(targets)
        best = max(candidates, key=lambda s: (targets[s] - rows[s]) / targets[s])
        out[g] = best
        rows[best] += float(sizes[g])
        n_groups[best] += 1
    return out


def split_speakers(
    df: pd.DataFrame,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    *,
    by: str = "speaker",
    rows: pd.Series | np.ndarray | None = None,
) -> pd.DataFrame:
    """Return a copy of ``df`` whose ``split`` column assigns whole speakers (or ``by`` groups) to splits.

    Neuron identification and evaluation must not share speakers, or "emotion" neurons could be speaker
    neurons. Groups are shuffled with ``seed`` and then allocated greedily, largest first, so that the *row*
    shares approach ``fractions`` (default identify/evaluate 50/50) and every split gets at least one group.
    ``rows`` (a boolean mask) restricts the assignment to those rows; the others keep their ``split``.
    ``by="session"`` gives IEMOCAP's leave-sessions-out protocol.
    """
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown} in fractions; allowed: {list(SPLITS)}.")
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ValueError(f"fractions must be non-negative with a positive sum, got {fractions}.")
    total = sum(fractions.values())
    fractions = {k: v / total for k, v in fractions.items()}
    if by not in df.columns:
        raise KeyError(f"cannot split by '{by}': the table has no such column (columns: {list(df.columns)}).")
    out = df.copy()
    mask = np.ones(len(out), dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    if "split" not in out.columns:
        out["split"] = pd.Series([None] * len(out), index=out.index, dtype=object)
    if not mask.any():
        return out
    keys = out.loc[mask, by].astype(str)
    sizes = keys.value_counts()
    n_needed = sum(1 for f in fractions.values() if f > 0)
    if len(sizes) < n_needed:
        raise ValueError(
            f"only {len(sizes)} distinct '{by}' value(s) to share among {n_needed} splits {list(fractions)}; "
            "speaker-disjoint splits need at least one per split (use fewer splits or more data)."
        )
    assignment = _allocate(sizes, fractions, np.random.default_rng(seed))
    out.loc[mask, "split"] = keys.map(assignment).to_numpy()
    return out


def check_speaker_disjoint(
    df: pd.DataFrame, splits: Sequence[str] = ("identify", "evaluate"), *, by: str = "speaker"
) -> None:
    """Raise ``ValueError`` naming the shared speakers if any two of ``splits`` share a ``by`` value."""
    groups = {s: set(df.loc[df["split"] == s, by].astype(str)) for s in splits}
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            shared = sorted(groups[a] & groups[b])
            if shared:
                raise ValueError(f"splits '{a}' and '{b}' share {len(shared)} {by}(s): {shared[:10]}.")


# --------------------------------------------------------------------------------------------- summary
def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Rows per split x label, with row and speaker totals: the table to eyeball before any experiment."""
    counts = pd.crosstab(df["split"], df["label"])
    order = [s for s in SPLITS if s in counts.index] + [s for s in counts.index if s not in SPLITS]
    counts = counts.reindex(order)
    counts["total"] = counts.sum(axis=1)
    counts["speakers"] = df.groupby("split")["speaker"].nunique().reindex(order)
    all_row = counts.drop(columns="speakers").sum()
    all_row["speakers"] = df["speaker"].nunique()
    counts.loc["all"] = all_row
    counts.index.name = "split"
    counts.columns.name = None
    return counts.astype(int)


__all__ = [
    "DEFAULT_FRACTIONS",
    "check_speaker_disjoint",
    "split_speakers",
    "summary",
]
