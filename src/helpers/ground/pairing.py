"""Item pairs for grounding: prompts that differ in one modality only.

This is the book's own extension, not the paper's. We use activation patching at the level of neuron sets and
layer clusters, with pairs of prompts that differ in one modality only:

* **audio pairs** (:func:`audio_pairs`): the same sentence and voice spoken in two emotions, with the *same*
  prompt text (the counterfactual keeps the base's text), so only the audio differs;
* **text pairs** (:func:`text_pairs`): the same clip with a neutral context ("someone is talking") versus a
  context that states an emotion (conflicting by default), so only the text differs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

#: What each pairing needs beyond the unified schema, and why (used in the error message).
_COLUMN_MEANING = {
    "matched_id": "same sentence and voice across emotions (to pair clips that differ only in emotion)",
    "clip_id": "one id per audio clip (to pair the same clip under different text contexts)",
    "context": "which text context the row carries: none / congruent / conflict",
    "context_label": "the emotion the context text states ('none' for a neutral context)",
    "label": "the emotion of the audio",
    "text": "the prompt text",
    "path": "the audio file",
}


class GroundingDataError(ValueError):
    """The dataset cannot support the grounding analysis (missing columns or no usable pairs)."""


# ------------------------------------------------------------------------------------------------------ pairing
def require_columns(df: pd.DataFrame, needed: Iterable[str], purpose: str) -> None:
    """Raise :class:`GroundingDataError` naming the missing columns and what grounding needs them for."""
    missing = [c for c in needed if c not in df.columns]
    if missing:
        what = "; ".join(f"`{c}`: {_COLUMN_MEANING.get(c, 'required')}" for c in missing)
        raise GroundingDataError(
            f"{purpose} needs the columns {missing}, which this dataset lacks ({what}). Grounding needs matched "
            "items that differ in one modality only: the synthetic corpora (helpers.data.corpus) provide matched_id, "
            "clip_id, context and context_label; real emotion datasets do not, so the grounding analysis is skipped "
            "for them."
        )


def _restrict_labels(df: pd.DataFrame, col: str, labels: Sequence[str] | None) -> pd.DataFrame:
    return df if labels is None else df[df[col].isin(list(labels))]


def _pair_frame(base: pd.DataFrame, cf: pd.DataFrame, kind: str, cf_emotion: Sequence[str]) -> pd.DataFrame:
    base = base.reset_index(drop=True)
    cf = cf.reset_index(drop=True)
    out = pd.concat([base.add_prefix("base_"), cf.add_prefix("cf_")], axis=1)
    out.insert(0, "kind", kind)
    out.insert(1, "base_emotion", base["label"].to_numpy())
    out.insert(2, "cf_emotion", list(cf_emotion))
    return out


def pair_rows(pairs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a pair table into aligned ``(base_rows, cf_rows)`` in the unified schema (for
    :func:`~helpers.ground.patching.patch_run`)."""
    base_cols = [c for c in pairs.columns if c.startswith("base_") and c != "base_emotion"]
    cf_cols = [c for c in pairs.columns if c.startswith("cf_") and c != "cf_emotion"]
    base = pairs[base_cols].rename(columns=lambda c: c[len("base_") :]).reset_index(drop=True)
    cf = pairs[cf_cols].rename(columns=lambda c: c[len("cf_") :]).reset_index(drop=True)
    return base, cf


def audio_pairs(df: pd.DataFrame, labels: Sequence[str] | None = None, *, context: str = "none") -> pd.DataFrame:
    """Every ordered (base, counterfactual) pair of clips with the same ``matched_id`` and different emotions.

    Both come from ``context`` rows (neutral text by default), and the counterfactual row takes the base row's
    ``text``: the synthetic corpus draws the neutral phrase per clip, so without this the pair could differ in its
    text too. Result: one row per pair with every input column prefixed ``base_`` / ``cf_``, plus ``kind``,
    ``base_emotion`` and ``cf_emotion`` (the counterfactual audio's emotion). Split it with :func:`pair_rows`.
    """
    require_columns(df, ("matched_id", "context", "label", "text", "path"), "audio pairing (grounding)")
    sub = _restrict_labels(df[df["context"] == context], "label", labels).reset_index(drop=True)
    sub = sub.drop_duplicates(["matched_id", "label", "path"]).reset_index(drop=True)
    order = {lbl: i for i, lbl in enumerate(labels)} if labels is not None else None
    pos = np.arange(len(sub))
    left = pd.DataFrame({"matched_id": sub["matched_id"].to_numpy(), "b": pos})
    right = pd.DataFrame({"matched_id": sub["matched_id"].to_numpy(), "c": pos})
    m = left.merge(right, on="matched_id")
    m = m[sub["label"].to_numpy()[m["b"]] != sub["label"].to_numpy()[m["c"]]]
    if m.empty:
        raise GroundingDataError(
            f"no audio pairs: no matched_id has clips of two emotions among the {context!r}-context rows "
            f"({len(sub)} rows{', labels ' + str(list(labels)) if labels is not None else ''})"
        )
    key = sub["label"].map(order) if order is not None else sub["label"]
    m = m.assign(_mid=sub["matched_id"].to_numpy()[m["b"]], _kb=key.to_numpy()[m["b"]], _kc=key.to_numpy()[m["c"]])
    m = m.sort_values(["_mid", "_kb", "_kc", "b", "c"], kind="stable")
    base = sub.iloc[m["b"].to_numpy()].reset_index(drop=True)
    cf = sub.iloc[m["c"].to_numpy()].reset_index(drop=True).copy()
    for col in ("text", "context", "context_label"):
        if col in cf.columns:
            cf[col] = base[col].to_numpy()
    return _pair_frame(base, cf, "audio", cf["label"].tolist())


def text_pairs(
    df: pd.DataFrame, labels: Sequence[str] | None = None, *, contexts: Sequence[str] = ("conflict",)
) -> pd.DataFrame:
    """(base, counterfactual) pairs of the *same clip*: base with the neutral context, counterfactual with a
    context stating an emotion (``contexts``: ``"conflict"`` by default, ``"congruent"`` allowed too).

    ``cf_emotion`` is the emotion the counterfactual's text states (``context_label``). With ``labels`` given, pairs
    whose audio or text emotion is outside them are dropped.
    """
    require_columns(df, ("clip_id", "context", "context_label", "label", "text", "path"), "text pairing (grounding)")
    bad = sorted(set(contexts) - {"conflict", "congruent"})
    if bad:
        raise ValueError(f"contexts must be 'conflict' and/or 'congruent', got {bad}")
    base = _restrict_labels(df[df["context"] == "none"], "label", labels).drop_duplicates("clip_id")
    cf = df[df["context"].isin(list(contexts))]
    cf = _restrict_labels(_restrict_labels(cf, "label", labels), "context_label", labels)
    b = base.reset_index(drop=True).assign(_b=lambda x: np.arange(len(x)))
    c = cf.reset_index(drop=True).assign(_c=lambda x: np.arange(len(x)))
    m = b[["clip_id", "_b"]].merge(c[["clip_id", "_c"]], on="clip_id").sort_values(["_b", "_c"], kind="stable")
    if m.empty:
        raise GroundingDataError(
            f"no text pairs: no clip appears both with the 'none' context and with a {list(contexts)} context "
            "(identify/evaluate splits of the synthetic corpus carry all three contexts; train rows carry one)"
        )
    base_rows = b.iloc[m["_b"].to_numpy()].drop(columns="_b")
    cf_rows = c.iloc[m["_c"].to_numpy()].drop(columns="_c")
    return _pair_frame(base_rows, cf_rows, "text", cf_rows["context_label"].tolist())


def conflict_items(df: pd.DataFrame, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows whose text states an emotion other than the audio's (``context == "conflict"``)."""
    require_columns(df, ("context", "context_label", "label"), "the conflict analysis (grounding)")
    sub = df[(df["context"] == "conflict") & (df["context_label"] != df["label"])]
    sub = _restrict_labels(_restrict_labels(sub, "label", labels), "context_label", labels)
    if sub.empty:
        raise GroundingDataError("no conflict items: no row has context == 'conflict' with a differing context_label")
    return sub.reset_index(drop=True)


__all__ = [
    "GroundingDataError",
    "audio_pairs",
    "conflict_items",
    "pair_rows",
    "require_columns",
    "text_pairs",
]
