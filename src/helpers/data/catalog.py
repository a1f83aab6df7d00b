"""The catalogue of real corpora (how to load each, where to get it), :func:`load_dataset`, and copies of them
in the Hugging Face cache (:func:`load_from_hub`, offline only)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .crema_d import CREMA_D_LABEL_MAP, CREMA_D_LAYOUT, load_crema_d
from .iemocap import IEMOCAP_LABEL_MAP, IEMOCAP_LAYOUT, load_iemocap
from .loading import GENERIC_LABEL_MAP, DatasetNotAvailable, _finish
from .meld import MELD_LABEL_MAP, MELD_LAYOUT, load_meld
from .msp_podcast import MSP_PODCAST_LABEL_MAP, MSP_PODCAST_LAYOUT, load_msp_podcast
from .ravdess import RAVDESS_LABEL_MAP, RAVDESS_LAYOUT, load_ravdess
from .schema import SchemaError


# ------------------------------------------------------------------------------------------ Hugging Face
@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Force offline mode for one call: the env var alone is read only when the libraries are imported."""
    if not offline:
        yield
        return
    import datasets.config as dcfg
    import huggingface_hub.constants as hcon

    saved = (os.environ.get("HF_HUB_OFFLINE"), dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE, hcon.HF_HUB_OFFLINE)
    os.environ["HF_HUB_OFFLINE"] = "1"
    dcfg.HF_HUB_OFFLINE = dcfg.HF_DATASETS_OFFLINE = hcon.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[0]
        dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE, hcon.HF_HUB_OFFLINE = saved[1:]


def _pick(columns: Sequence[str], given: str | None, candidates: Sequence[str], what: str, hub_id: str) -> str | None:
    if given is not None:
        if given not in columns:
            raise SchemaError(
                f"{hub_id}: no column '{given}' for the {what}; columns are {list(columns)} (fix {what}_column=)."
            )
        return given
    lower = {c.lower(): c for c in columns}
    return next((lower[c.lower()] for c in candidates if c.lower() in lower), None)


def _materialise(entry: Mapping[str, Any], folder: Path) -> str:
    """Audio stored inside the Hub parquet files is written once to ``folder`` so the table can hold a path.

    Files are named by content hash, so re-loading another split or revision never reuses a stale file.
    """
    path = entry.get("path") or ""
    if path and os.path.isfile(path):
        return str(Path(path).absolute())
    data = entry.get("bytes")
    if not data:
        return str(path)  # reported as missing audio by _finish
    name = Path(path).name or "audio.wav"
    target = folder / f"{hashlib.sha1(data).hexdigest()[:16]}_{name}"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return str(target)


def load_from_hub(
    hub_id: str,
    *,
    dataset: str | None = None,
    split: str | None = None,
    audio_column: str = "audio",
    label_column: str | None = None,
    speaker_column: str | None = None,
    text_column: str | None = None,
    label_map: Mapping[str, str] | None = None,
    labels: Sequence[str] | None = None,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    keep_train: bool = False,
    strict: bool = False,
    probe_audio: bool = True,
    allow_hub: bool = False,
    audio_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    **load_kwargs: Any,
) -> pd.DataFrame:
    """Load a Hugging Face copy of a corpus (``datasets.load_dataset(hub_id)``) into the unified table.

    The audio column is cast to ``Audio(decode=False)``: decoding would need torchcodec (see
    :mod:`helpers.data.audio`), and we only need paths. Audio embedded in the parquet files is written once under
    ``audio_dir`` (default ``<HF datasets cache>/esn_audio/<hub_id>``). Unless ``allow_hub=True`` the Hub is
    not contacted (``HF_HUB_OFFLINE=1``), so an id that is not in the local cache fails at once with
    :class:`~helpers.data.loading.DatasetNotAvailable` instead of hanging on the network. Label, speaker and text
    columns are
    guessed from common names unless given; labels are matched case-insensitively against ``label_map``
    (default: :data:`~helpers.data.loading.GENERIC_LABEL_MAP` plus the map of ``dataset`` when named). Splits as in the
    folder
    loaders; with ``keep_train`` the Hub's ``train`` split stays ``train``.
    """
    import datasets as hf

    with _hub_offline(not allow_hub):
        try:
            loaded = hf.load_dataset(hub_id, split=split, revision=revision, **load_kwargs)
        except OSError as err:  # ConnectionError / OfflineModeIsEnabled / FileNotFoundError / DatasetNotFoundError
            how = (
                "the Hub could not be reached or the id does not exist"
                if allow_hub
                else "it is not in the local Hugging Face cache and the Hub is not contacted (HF_HUB_OFFLINE=1)"
            )
            local = (
                f"load_dataset({dataset!r}, root='/path/to/folder') with {DATASETS[dataset].layout}"
                if dataset in DATASETS
                else "one of the folder loaders (load_iemocap, load_meld, load_msp_podcast, load_crema_d, load_ravdess)"
            )
            raise DatasetNotAvailable(
                f"Hugging Face dataset '{hub_id}' is not available offline: {how}. Either copy a local folder and "
                f"use {local}, or fetch it once on a machine with internet (allow_hub=True) and copy the HF cache "
                f"(HF_HOME). Original error: {type(err).__name__}: {err}"
            ) from err
    parts = dict(loaded.items()) if isinstance(loaded, Mapping) else {split or "train": loaded}
    base = dict(GENERIC_LABEL_MAP)
    if dataset in DATASETS:
        base.update(DATASETS[dataset].label_map)
        base.update(DATASETS[dataset].hub_aliases)
    lmap = {str(k).strip().lower(): v for k, v in (label_map or base).items()}
    folder = Path(audio_dir) if audio_dir is not None else (
        Path(hf.config.HF_DATASETS_CACHE) / "esn_audio" / re.sub(r"[^A-Za-z0-9._-]+", "__", hub_id)
    )  # fmt: skip

    frames = []
    for part, ds in parts.items():
        cols = list(ds.column_names)
        if audio_column not in cols:
            raise SchemaError(f"{hub_id}: no audio column '{audio_column}'; columns are {cols} (pass audio_column=).")
        lcol = _pick(cols, label_column, ("label", "emotion", "emotions", "major_emotion", "EmoClass", "class"),
                     "label", hub_id)  # fmt: skip
        scol = _pick(cols, speaker_column, ("speaker", "speaker_id", "SpkrID", "actor", "actor_id", "client_id"),
                     "speaker", hub_id)  # fmt: skip
        tcol = _pick(cols, text_column, ("text", "transcription", "transcript", "utterance", "sentence"), "text",
                     hub_id)  # fmt: skip
        if lcol is None or scol is None:
            raise SchemaError(
                f"{hub_id}: cannot tell which column holds the {'label' if lcol is None else 'speaker'}; "
                f"columns are {cols}. Pass label_column= and speaker_column=."
            )
        ds = ds.cast_column(audio_column, hf.Audio(decode=False))
        feature = ds.features[lcol]
        names = getattr(feature, "names", None)
        keep = [c for c in dict.fromkeys([audio_column, lcol, scol, tcol]) if c is not None]
        records: list[dict[str, str]] = []
        for batch in ds.select_columns(keep).iter(batch_size=1000):
            for j in range(len(batch[audio_column])):
                index = len(records)
                raw = batch[lcol][j]
                label = names[raw] if names is not None and isinstance(raw, (int, np.integer)) else raw
                records.append({
                    "path": _materialise(batch[audio_column][j], folder),
                    "original_label": str(label).strip().lower(),
                    "speaker": str(batch[scol][j]),
                    "sentence_id": f"{part}_{index:07d}",
                    "text": "" if tcol is None or batch[tcol][j] is None else str(batch[tcol][j]),
                    "original_split": part,
                })  # fmt: skip
        frames.append(pd.DataFrame(records))
    rows = pd.concat(frames, ignore_index=True)
    return _finish(
        rows, dataset=dataset or hub_id, root=folder, label_map=lmap, labels=labels, strict=strict,
        fractions=fractions, seed=seed, keep_train=keep_train, probe_audio=probe_audio, nominal_sr=None,
        audio_hint=f"the paths stored in '{hub_id}' or {folder}",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class DatasetInfo:
    """What the book needs to know about one corpus: how to load it and where to get it."""

    name: str
    loader: Callable[..., pd.DataFrame]
    label_map: Mapping[str, str]
    sampling_rate: int
    layout: str
    source: str
    #: Environment variable read by :func:`load_dataset` when no ``root`` is given.
    env_var: str
    #: Extra label spellings for Hub copies (lower case).
    hub_aliases: Mapping[str, str] = field(default_factory=dict)


DATASETS: dict[str, DatasetInfo] = {
    "iemocap": DatasetInfo(
        "iemocap", load_iemocap, IEMOCAP_LABEL_MAP, 16_000, IEMOCAP_LAYOUT,
        "https://sail.usc.edu/iemocap/ (licence agreement required)", "ESN_IEMOCAP_ROOT", {"excited": "happy"},
    ),
    "meld": DatasetInfo(
        "meld", load_meld, MELD_LABEL_MAP, 16_000, MELD_LAYOUT,
        "https://affective-meld.github.io/ (MELD.Raw.tar.gz)", "ESN_MELD_ROOT",
    ),
    "msp_podcast": DatasetInfo(
        "msp_podcast", load_msp_podcast, MSP_PODCAST_LABEL_MAP, 16_000, MSP_PODCAST_LAYOUT,
        "https://ecs.utdallas.edu/research/researchlabs/msp-lab/MSP-Podcast.html (licence agreement required)",
        "ESN_MSP_PODCAST_ROOT",
    ),
    "crema_d": DatasetInfo(
        "crema_d", load_crema_d, CREMA_D_LABEL_MAP, 16_000, CREMA_D_LAYOUT,
        "https://github.com/CheyneyComputerScience/CREMA-D (ODbL)", "ESN_CREMA_D_ROOT",
    ),
    "ravdess": DatasetInfo(
        "ravdess", load_ravdess, RAVDESS_LABEL_MAP, 48_000, RAVDESS_LAYOUT,
        "https://zenodo.org/records/1188976 (Audio_Speech_Actors_01-24.zip, CC BY-NC-SA 4.0)", "ESN_RAVDESS_ROOT",
        {"fearful": "fear", "surprised": "surprise"},
    ),
}  # fmt: skip


def _canonical(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    for canonical in DATASETS:
        if re.sub(r"[^a-z0-9]", "", canonical) == key:
            return canonical
    raise KeyError(f"unknown dataset {name!r}; known: {list(DATASETS)}.")


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    hub_id: str | None = None,
    *,
    allow_hub: bool = False,
    **kwargs: Any,
) -> pd.DataFrame:
    """Load corpus ``name`` from a local folder (``root``, else ``$ESN_<NAME>_ROOT``) or a Hub copy (``hub_id``).

    Keyword arguments go to the corpus loader (``label_map``, ``labels``, ``fractions``, ``seed``, ...). With
    neither a folder nor a hub id this raises :class:`~helpers.data.loading.DatasetNotAvailable` saying where to get the
    data and how
    the folder must look, rather than trying to download anything.
    """
    info = DATASETS[_canonical(name)]
    if root is None and hub_id is None:
        root = os.environ.get(info.env_var) or None
    if root is not None:
        return info.loader(root, **kwargs)
    if hub_id is not None:
        return load_from_hub(hub_id, dataset=info.name, allow_hub=allow_hub, **kwargs)
    raise DatasetNotAvailable(
        f"{info.name}: no data on this machine. Pass root=<folder> (or set {info.env_var}) pointing at "
        f"{info.layout}, or hub_id=<id> of a copy in the Hugging Face cache. Obtain it from {info.source}."
    )


__all__ = [
    "DATASETS",
    "DatasetInfo",
    "load_dataset",
    "load_from_hub",
]
