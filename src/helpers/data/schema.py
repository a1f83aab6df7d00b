"""The one table schema every speech-emotion dataset is loaded into.

Synthetic corpora and real datasets (IEMOCAP, MELD, ...) share it, so every stage reads the same columns.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

#: Columns every dataset table must have.
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "sampling_rate", "label", "speaker", "sentence_id", "text", "split")
#: Splits a dataset may use. Identification and evaluation items must be disjoint.
SPLITS: tuple[str, ...] = ("train", "identify", "evaluate")


class SchemaError(ValueError):
    """A dataset table does not follow the unified schema; the message says how to fix it."""


def validate(df: pd.DataFrame, *, root: Path | None = None, check_files: bool = False) -> pd.DataFrame:
    """Check a dataset table against the schema and return it unchanged.

    With ``check_files`` every ``path`` (relative to ``root``) must exist: a corpus folder with a missing file
    should fail here with the file's name, not deep inside a training loop.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise SchemaError(
            f"dataset table lacks column(s) {missing}; every dataset needs {list(REQUIRED_COLUMNS)} "
            "(see helpers.data.schema)."
        )
    if len(df) == 0:
        raise SchemaError("dataset table is empty: check the dataset folder and the split/label filters.")
    bad_splits = sorted(set(df["split"]) - set(SPLITS))
    if bad_splits:
        raise SchemaError(f"unknown split name(s) {bad_splits}; allowed: {list(SPLITS)}.")
    if df["label"].isna().any():
        n = int(df["label"].isna().sum())
        raise SchemaError(f"{n} row(s) have no label; drop them or map their label before loading.")
    if check_files:
        base = Path(root) if root is not None else Path(".")
        for p in df["path"].unique():
            if not (base / p).is_file():
                raise SchemaError(
                    f"audio file {base / p} is listed in the metadata but missing; "
                    "regenerate the corpus (`make corpus`) or fix the dataset folder."
                )
    return df
