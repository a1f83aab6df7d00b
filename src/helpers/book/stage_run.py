"""Running one stage: the stage name and its notebook source, the checks of its inputs before a kernel starts
(upstream outputs produced under the same lineage parameters, the model source and the datasets), and the
papermill run itself in a staging folder that replaces the stage folder only on success."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..core.io import STAGES, STAGING_ENV, ConfigError, atomic_save, atomic_write_text, load_config
from . import checkout
from .config import STAGE_NAME
from .config_messages import did_you_mean
from .lineage import lineage_mismatches, params_hash
from .resolution import resolve
from .run_folders import (
    STAGE_RECORD,
    STAGE_TIMING,
    _commit,
    _staging,
    _writable,
    check_run_dir,
    clean_stale,
    read_record,
    run_dir_for,
)
from .stage_params import StageInfo, stage_info


class InputError(RuntimeError):
    """An input of a stage (model weights, a dataset) is not usable; raised before the kernel starts."""


def check_stage(stage: Any) -> str:
    """The stage name, checked before anything is created: ``NN_name``, one of :data:`helpers.core.io.STAGES`."""
    if not isinstance(stage, str) or not STAGE_NAME.match(stage) or stage not in STAGES:
        shown = repr(stage) if len(repr(stage)) < 80 else repr(stage)[:77] + "..."
        raise ConfigError(
            f"unknown stage {shown}{did_you_mean(str(stage), STAGES)}; stages are {list(STAGES)} "
            "(NB=<stage> in `make run`)"
        )
    return stage


def notebook_source(stage: str) -> Path:
    check_stage(stage)
    path = checkout.NOTEBOOKS / f"{stage}.md"
    if not path.is_file():
        raise ConfigError(f"stage {stage!r} has no notebook source at {path}")
    return path


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


#: Lines the kernel process prints on every start (not about the notebook); dropped from its replayed stderr.
_KERNEL_NOISE = ("Kernel is running over TCP without encryption",)


def _kernel_manager(stderr: Any) -> type:
    """The kernel manager nbclient uses, with the kernel process's own stderr sent to ``stderr`` (a file): the
    kernel's start-up warnings and its shutdown traceback after Ctrl-C are not the user's business; a notebook's
    errors come back through papermill, and what a dying kernel printed is replayed by :func:`execute_stage`."""
    from jupyter_client import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            kw.setdefault("stderr", stderr)
            await super()._async_launch_kernel(kernel_cmd, **kw)

    return QuietKernelManager


def _replay(log: Any, limit: int = 20) -> None:
    log.seek(0)
    lines = [ln for ln in log.read().decode(errors="replace").splitlines()
             if ln.strip() and not any(n in ln for n in _KERNEL_NOISE)]
    if lines:
        print("kernel stderr (last lines):\n  " + "\n  ".join(lines[-limit:]), file=sys.stderr)


class _QuietUnknownParameters(logging.Filter):
    """The subject keys are read through ``config_params(globals())``, not the parameters cell; papermill's
    "Passed unknown parameter" for them is noise (every key was validated before). So is "Unable to parse line"
    from papermill's own reading of the parameters cell (a list followed by a comment), which it does only to
    find unknown parameters; :func:`helpers.book.stage_params.stage_info` parses the cell with ``ast``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.getMessage())
        return not (message.startswith("Passed unknown parameter") or message.startswith("Unable to parse line"))


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------


def _rerun(stage: str) -> str:
    return f"make run NB={stage} CONFIG=<this config> PARAMS='<the same -p parameters>'"


def check_inputs(rdir: Path, info: StageInfo, effective: Mapping[str, Any]) -> dict[str, str]:
    """Refuse upstream outputs produced under other parameters; return ``{upstream: params hash}`` to record.

    Walks the upstream stages and theirs (as recorded): each must exist, must have been produced with the same
    lineage parameters (:func:`helpers.book.lineage.lineage_mismatches`) and must not have been re-run since a stage
    that used it was produced.
    """
    inputs: dict[str, str] = {}
    todo: list[tuple[str, dict[str, Any]]] = []
    for up in info.upstream:
        folder = rdir / up
        if not folder.is_dir():
            raise ConfigError(f"stage {info.name} reads the outputs of {up}, which {rdir} does not have; run it "
                              f"first: {_rerun(up)}")
        rec = read_record(folder)
        if rec is None:
            print(f"note: {folder} has no {STAGE_RECORD} (made by hand or by an older version): its parameters "
                  "cannot be checked", file=sys.stderr)
            continue
        inputs[up] = str(rec.get("params_sha256"))
        todo.append((up, rec))
    seen: set[str] = set()
    while todo:
        name, rec = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        bad = lineage_mismatches(effective, rec["params"])
        if bad:
            raise ConfigError(
                f"stage {info.name}: the outputs of {name} in {rdir} were produced with other parameters "
                f"({'; '.join(bad)}); re-run {name} with this configuration first ({_rerun(name)}), or run "
                f"{info.name} with the parameters recorded in {rdir / name / STAGE_RECORD}"
            )
        for anc, sha in (rec.get("inputs") or {}).items():
            arec = read_record(rdir / anc)
            if arec is None:
                continue
            if arec.get("params_sha256") != sha:
                raise ConfigError(
                    f"stage {info.name}: {name} in {rdir} was computed from an earlier {anc} (re-run since with "
                    f"other parameters); re-run {name} first: {_rerun(name)}"
                )
            todo.append((anc, arec))
    return inputs


def preflight(info: StageInfo, effective: Mapping[str, Any]) -> None:
    """Model source and datasets, checked in seconds before a kernel loads anything (raises InputError)."""
    reads = info.reads
    if not ({"model_path", "datasets"} & reads):
        return
    from ..core.families import ModelNotAvailableError, RemoteCodeNotAllowedError, UnknownAdapterError
    from ..data.loading import DatasetNotAvailable
    from ..data.schema import SchemaError
    from ..subjects.run_items import check_datasets
    from ..subjects.subject_loading import check_model_source

    try:
        if {"model", "model_path"} <= reads and {"model", "model_path"} <= set(effective):
            check_model_source(effective)
        if "datasets" in reads and "datasets" in effective:
            check_datasets(effective)
    except (ModelNotAvailableError, RemoteCodeNotAllowedError, UnknownAdapterError, DatasetNotAvailable, SchemaError,
            FileNotFoundError) as exc:
        raise InputError(f"{type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------------------------------------------------
# Running a stage
# ---------------------------------------------------------------------------------------------------------------------


def execute_stage(stage: str, config_path: str | Path, overrides: Mapping[str, Any] | None = None,
                  *, run_dir: str | Path | None = None, log_output: bool = False) -> Path:
    """Run one stage notebook with papermill; returns the executed notebook's path inside the run folder.

    Everything is validated first (nothing is created before); the stage then runs in a staging folder that
    replaces its stage folder only on success. A failed stage keeps the previous result and leaves the partially
    executed notebook as ``<run>/<stage>/<stage>.failed.ipynb``.
    """
    check_stage(stage)
    source = notebook_source(stage)
    config = load_config(config_path)
    overrides = dict(overrides or {})
    if run_dir is not None:
        overrides["run_dir"] = str(run_dir)
    resolved = resolve(stage, config, overrides, notebooks=checkout.NOTEBOOKS, source=str(config_path))
    info = stage_info(stage, checkout.NOTEBOOKS)
    rdir = run_dir_for(resolved.merged, resolved.overrides)
    check_run_dir(rdir, stage)
    preflight(info, resolved.effective)
    clean_stale(rdir)
    inputs = check_inputs(rdir, info, resolved.effective)
    _writable(rdir)

    import jupytext
    import papermill as pm

    root = checkout.ROOT
    shown = rdir.relative_to(root) if rdir.is_relative_to(root) else rdir  # no machine paths in the book
    params = {**resolved.params, "run_dir": str(shown)}
    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    target = rdir / stage
    # where a result lies is not one of its parameters: a result copied to another run folder keeps its hash
    effective = {k: v for k, v in resolved.effective.items() if k != "run_dir"}
    record = {
        "stage": stage,
        "params": effective,
        "params_sha256": params_hash(effective),
        "explicit": list(resolved.explicit),
        "inputs": inputs,
    }
    quiet = _QuietUnknownParameters()
    pm_loggers = [logging.getLogger("papermill"), logging.getLogger("papermill.translators")]
    with _staging(rdir, stage) as (tmp, token):
        out_nb = tmp / f"{stage}.ipynb"
        spec = json.dumps({"run_dir": str(rdir), "stage": stage, "dir": str(tmp)})
        for lg in pm_loggers:
            lg.addFilter(quiet)
        kernel_log = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the kernel process, closed below
        extra = {} if log_output else {"kernel_manager_class": _kernel_manager(kernel_log)}
        try:
            t0 = time.perf_counter()
            with _env(STAGING_ENV, spec), _env("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "1")):
                pm.execute_notebook(nb, str(out_nb), parameters=params, cwd=str(checkout.ROOT), kernel_name="python3",
                                    log_output=log_output, progress_bar=False, **extra)
        except KeyboardInterrupt:
            raise
        except BaseException:
            _replay(kernel_log)
            if out_nb.exists():
                target.mkdir(exist_ok=True)
                atomic_save(target / f"{stage}.failed.ipynb", lambda p: shutil.copyfile(out_nb, p))
            raise
        finally:
            for lg in pm_loggers:
                lg.removeFilter(quiet)
            kernel_log.close()
        atomic_write_text(tmp / STAGE_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
        # kernel start to last cell, for the benchmarks page; apart from stage.json, which stays byte-identical
        atomic_write_text(tmp / STAGE_TIMING, json.dumps({"seconds": round(time.perf_counter() - t0, 1)}) + "\n")
        _commit(tmp, target, token)
    import yaml

    atomic_write_text(rdir / "config.yml", yaml.safe_dump(resolved.merged, sort_keys=True))
    return target / f"{stage}.ipynb"
