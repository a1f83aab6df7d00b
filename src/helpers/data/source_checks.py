"""Check a configured dataset source before a stage runs: the folder layout, metadata tables and columns a
loader needs, without loading any audio."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from .catalog import DATASETS, _canonical
from .loading import DatasetNotAvailable, LayoutError, _listing, _require, _root
from .meld import MELD_CSVS
from .schema import SchemaError

#: Metadata tables of the folder loaders and the columns they read: ``(option naming the file, default, columns)``.
_METADATA: dict[str, tuple[tuple[str | None, str, tuple[str, ...]], ...]] = {
    "meld": tuple((None, csv, ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID"))
                  for csv in MELD_CSVS.values()),
    "msp_podcast": (("labels_file", "Labels/labels_consensus.csv", ("FileName", "EmoClass", "SpkrID", "Split_Set")),),
}  # fmt: skip


#: Folders a loader cannot work without: ``(option naming the folder, default)``.
_FOLDERS: dict[str, tuple[tuple[str | None, str], ...]] = {
    "msp_podcast": (("audio_dir", "Audios"),),
    "crema_d": (("audio_dir", "AudioWAV"),),
}


def check_source(
    name: str,
    root: str | os.PathLike[str] | None = None,
    hub_id: str | None = None,
    *,
    labels: Sequence[str] | None = None,
    label_map: Mapping[str, str] | None = None,
    where: str | None = None,
    **options: Any,
) -> None:
    """What :func:`~helpers.data.catalog.load_dataset` would find wrong without reading any audio: no data on this
    machine, a folder
    that is not laid out as the corpus unpacks, metadata tables without their label columns, or configured
    ``labels`` that the label map cannot produce. Runs in milliseconds, so a stage checks it before its model loads.
    """
    info = DATASETS[_canonical(name)]
    where = where or info.name
    if label_map is None and labels is not None and hub_id is None:
        impossible = sorted(set(labels) - set(info.label_map.values()))
        if impossible:
            raise SchemaError(
                f"{where}: label(s) {impossible} cannot occur in {info.name} (its label map produces "
                f"{sorted(set(info.label_map.values()))}); fix `labels` or give the dataset entry a `label_map`"
            )
    elif label_map is not None and labels is not None:
        impossible = sorted(set(labels) - {str(v) for v in dict(label_map).values()})
        if impossible:
            raise SchemaError(f"{where}: label(s) {impossible} cannot occur: the entry's label_map produces only "
                              f"{sorted({str(v) for v in dict(label_map).values()})}; fix `labels` or `label_map`")
    if root is None and hub_id is None:
        root = os.environ.get(info.env_var) or None
    if root is None:
        if hub_id is not None:
            return
        raise DatasetNotAvailable(
            f"{where}: no data on this machine for {info.name}. Set `root: <folder>` in the dataset entry (or export "
            f"{info.env_var}) pointing at {info.layout}, or `hub_id: <id>` of a copy in the Hugging Face cache. "
            f"Obtain it from {info.source}."
        )
    folder = _root(root, info.name, info.layout)
    pattern = {"iemocap": "Session[1-5]", "ravdess": "Actor_*"}.get(info.name)
    if pattern and not any(p.is_dir() for p in folder.glob(pattern)):
        raise LayoutError(f"{where}: no {pattern} folder in {folder} (contains {_listing(folder)}); expected "
                          f"{info.layout}.")
    for option, default in _FOLDERS.get(info.name, ()):
        _require(folder / str(options.get(option or "", default) or default), info.name,
                 f"the audio folder (layout: {info.layout})")
    parts = options.get("parts")
    for option, default, columns in _METADATA.get(info.name, ()):
        rel = str(options.get(option or "", default) or default)
        if info.name == "meld" and parts is not None and not any(MELD_CSVS.get(p) == rel for p in parts):
            continue
        csv = _require(folder / rel, info.name, f"the metadata table (layout: {info.layout})")
        try:
            head = pd.read_csv(csv, nrows=0, encoding="utf-8", encoding_errors="replace").columns
        except (ValueError, OSError) as exc:
            raise LayoutError(f"{where}: cannot read {csv} ({exc}); re-extract it from the original archive") from None
        missing = [c for c in columns if c not in [h.strip() for h in head]]
        if missing:
            raise LayoutError(
                f"{where}: {csv} lacks the column(s) {missing} ({info.name} reads the labels and speakers from them); "
                f"found {list(head)}. Use the table of the official release ({info.source})"
            )


__all__ = [
    "check_source",
]
