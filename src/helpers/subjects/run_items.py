""":func:`load_items`: a run's items from its config's dataset entries (synthetic corpus or a real SER dataset),
with the configured labels and a report of what was filtered."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pandas as pd

from ..core.io import ConfigError
from .subject_loading import _flag, _require

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Config -> items
# ---------------------------------------------------------------------------------------------------------------------

#: Loader names for the synthetic corpora (``helpers.data.corpus``) in a ``datasets`` mapping entry.
CORPUS_LOADERS = ("corpus", "synthetic")


@dataclass(frozen=True)
class DatasetSpec:
    """One ``datasets`` entry, normalised: which loader, where the data are, and extra loader options."""

    name: str
    loader: str  # "corpus" or a key of helpers.data.catalog.DATASETS
    root: str | None = None
    hub_id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _expand(path: Any, where: str) -> str | None:
    if path in (None, ""):
        return None
    text = os.path.expanduser(os.path.expandvars(str(path)))
    if "$" in text:
        raise ConfigError(f"{where}: {path!r} names an environment variable that is not set ({text!r})")
    return text


def dataset_spec(name: str, entry: Any) -> DatasetSpec:
    """Normalise a ``datasets`` entry: a folder string, or ``{loader:, root:, hub_id:, ...loader options}``.

    A folder string is a synthetic corpus when it holds ``metadata.csv`` (or when ``name`` is no known dataset);
    otherwise the entry's name picks the real loader (``iemocap: /data/IEMOCAP_full_release``). In a mapping,
    ``root: null`` lets the loader read its environment variable (``ESN_IEMOCAP_ROOT``, ...).
    """
    from ..data.catalog import DATASETS, _canonical

    where = f"datasets.{name}"
    if isinstance(entry, (str, os.PathLike)):
        root = _expand(entry, where)
        assert root is not None
        if (Path(root) / "metadata.csv").is_file():
            return DatasetSpec(name, "corpus", root)
        try:
            return DatasetSpec(name, _canonical(name), root)
        except KeyError:
            return DatasetSpec(name, "corpus", root)  # corpus.load then says how to generate it
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a folder or a mapping with `loader` and `root`, got {type(entry).__name__}")
    opts = dict(entry)
    loader = str(opts.pop("loader", None) or name).lower()
    root = _expand(opts.pop("root", None) or opts.pop("path", None), where)
    hub_id = opts.pop("hub_id", None)
    if loader in CORPUS_LOADERS:
        if root is None:
            raise ConfigError(f"{where}: a synthetic corpus needs `root: <folder>`")
        return DatasetSpec(name, "corpus", root, None, opts)
    try:
        loader = _canonical(loader)
    except KeyError as exc:
        raise ConfigError(f"{where}: unknown loader {loader!r}; known: {[*CORPUS_LOADERS, *DATASETS]}") from exc
    return DatasetSpec(name, loader, root, hub_id, opts)


def filter_labels(df: pd.DataFrame, labels: Sequence[str], what: str = "dataset") -> pd.DataFrame:
    """Keep rows whose label is configured; report (log + ``df.attrs["dropped"]``) what was dropped, never silently.

    Raises when a configured label has no item at all: every stage would fail later on an empty class.
    """
    labels = list(labels)
    attrs = dict(df.attrs)
    outside = ~df["label"].isin(labels)
    if outside.any():
        counts = df.loc[outside, "label"].value_counts().sort_index()
        dropped = {str(k): int(v) for k, v in counts.items()}
        logger.warning(
            "%s: dropped %d item(s) whose label is not in the configured labels %s: %s",
            what,
            int(outside.sum()),
            labels,
            dropped,
        )
        attrs["dropped"] = {**attrs.get("dropped", {}), "not_in_config_labels": dropped}
        df = df.loc[~outside].reset_index(drop=True)
    absent = [lbl for lbl in labels if not (df["label"] == lbl).any()]
    if absent:
        raise ValueError(
            f"{what}: configured label(s) {absent} have no items (labels present: "
            f"{sorted(set(df['label']))}); fix `labels` or the dataset's label_map"
        )
    df.attrs = attrs
    return df


def check_datasets(params: Mapping[str, Any]) -> None:
    """The dataset checks that need no model and no audio decoding, run before a stage loads its model.

    Every ``datasets`` entry must resolve to a loader and an existing folder (or a set environment variable, or a
    hub id); a synthetic corpus must have its ``metadata.csv`` with the schema's columns and an item of every
    configured label; a real corpus must be laid out as its loader expects, its metadata files must have the label
    columns, and its label map must be able to produce every configured label.
    """
    from ..data.schema import REQUIRED_COLUMNS, SchemaError
    from ..data.source_checks import check_source

    datasets = params.get("datasets") or {}
    if not isinstance(datasets, Mapping) or not datasets:
        raise ConfigError("config lacks `datasets: {name: folder or {loader:, root:}}`")
    labels = [str(x) for x in _require(params, "labels")]
    for name, entry in datasets.items():
        spec = dataset_spec(str(name), entry)
        where = f"datasets.{name}"
        if spec.loader != "corpus":
            check_source(spec.loader, root=spec.root, hub_id=spec.hub_id, labels=labels, where=where, **spec.options)
            continue
        meta = Path(str(spec.root)) / "metadata.csv"
        if not meta.is_file():
            raise SchemaError(
                f"{where}: no corpus at {spec.root} (missing metadata.csv); generate it with `make corpus` or point "
                f"`{where}` at a corpus folder"
            )
        try:
            head = pd.read_csv(meta, nrows=0).columns
            missing = [c for c in REQUIRED_COLUMNS if c not in head]
            present = set() if missing else set(pd.read_csv(meta, usecols=["label"], dtype=str)["label"])
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            raise SchemaError(f"{where}: cannot read {meta} ({exc}); regenerate the corpus (`make corpus`)") from None
        if missing:
            raise SchemaError(
                f"{where}: {meta} lacks the column(s) {missing}; every dataset needs {list(REQUIRED_COLUMNS)} "
                "(regenerate it with `make corpus` or fix the table)"
            )
        absent = [lbl for lbl in labels if lbl not in present]
        if absent:
            raise SchemaError(
                f"{where}: configured label(s) {absent} have no items in {meta} (labels present: {sorted(present)}); "
                "fix `labels` in the config or the dataset"
            )


def load_items(
    params: Mapping[str, Any], name: str | None = None, *, split: str | None = None, **kwargs: Any
) -> pd.DataFrame:
    """Items of dataset ``name`` (default: the config's ``dataset``) in the unified schema, labels checked.

    Synthetic corpora go through :func:`helpers.data.corpus.load` (``kwargs`` e.g. ``context=None``), real corpora
    through :func:`helpers.data.catalog.load_dataset` with the entry's root / hub id and options; the configured
    ``labels`` and ``seed`` are passed on unless the entry sets them. ``split`` keeps one split.
    """
    datasets = params.get("datasets") or {}
    if not isinstance(datasets, Mapping) or not datasets:
        raise ConfigError("config lacks `datasets: {name: folder or {loader:, root:}}`")
    name = name or str(_require(params, "dataset"))
    if name not in datasets:
        raise ConfigError(f"dataset {name!r} is not in the config's datasets {list(datasets)}")
    spec = dataset_spec(name, datasets[name])
    labels = list(_require(params, "labels"))
    if spec.loader == "corpus":
        from ..data import corpus

        df = corpus.load(cast(str, spec.root), **{**spec.options, **kwargs})  # dataset_spec gives corpora a root
    else:
        from ..data.catalog import load_dataset

        # `context` selects a synthetic corpus's text-context rows; a real dataset has one row per clip
        kwargs = {k: v for k, v in kwargs.items() if k != "context"}
        opts = {"labels": labels, "seed": int(params.get("seed", 0) or 0), **spec.options, **kwargs}
        df = load_dataset(spec.loader, root=spec.root, hub_id=spec.hub_id, allow_hub=_flag(params, "allow_hub"), **opts)
    df = filter_labels(df, labels, f"{name} ({spec.loader})")
    if split is not None:
        splits = sorted(set(df["split"]))
        attrs = dict(df.attrs)
        df = df[df["split"] == split].reset_index(drop=True)
        if df.empty:
            raise ValueError(f"{name}: no items in split {split!r}; splits present: {splits}")
        df.attrs = attrs
    return df


__all__ = [
    "DatasetSpec",
    "check_datasets",
    "dataset_spec",
    "filter_labels",
    "load_items",
]
