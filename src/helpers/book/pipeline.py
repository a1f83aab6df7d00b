"""Execute stage notebooks with papermill into run folders; the command line the Makefile calls.

papermill cannot read jupytext sources directly, so each MyST source is read with jupytext and handed to
papermill as a notebook object. A run's folder is named by its configuration; extra ``-p`` parameters give a
folder of their own (``runs/<name>+<hash>``) so a re-run with new parameters never overwrites another
configuration's results.

Before a kernel starts, everything that can be checked without one is (:mod:`helpers.book.config`): the stage name,
every key and value of the config and the ``-p`` overrides, the run folder, the model source and the datasets, and
that the upstream stages' outputs were produced with the same parameters (each stage folder holds a
``stage.json`` with the parameters it ran with and their hash). A stage then runs *transactionally*: it writes
into a fresh hidden folder ``<run>/.<stage>.<token>.tmp`` (:func:`helpers.core.io.stage_dir` points there while it
runs) that replaces ``<run>/<stage>`` in one rename when the notebook succeeded. An interrupted or failed stage
leaves the previous complete result (or nothing); leftovers of a killed run are removed at the next start.

``make run`` (:func:`run_with_upstream`) makes a run complete: before the stage asked for, it keeps, copies from
``runs/<run_name>`` or runs each stage it needs (:data:`STAGE_NEEDS`), under the overrides that stage reads, so a
re-run with new parameters never stops on a missing upstream folder. ``make book`` passes ``--no-upstream``: make
orders the stages itself.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.io import STAGES, STAGING_ENV, ConfigError, atomic_save, atomic_write_text, load_config
from .config import RUN_NAME, STAGE_NAME
from .config_messages import check_key, did_you_mean
from .lineage import lineage_mismatches, params_hash
from .resolution import Resolved, describe, known_keys, parse_override, resolve
from .stage_params import StageInfo, stage_info, stage_infos

ROOT = Path(__file__).resolve().parents[3]
NOTEBOOKS = ROOT / "notebooks"
#: The per-stage record of the parameters a result was produced with.
STAGE_RECORD = "stage.json"
STAGE_TIMING = "timing.json"
#: Which stages' outputs each stage needs in its run folder: the Makefile's prerequisites between stages (a test
#: checks that they agree, and that every stage a notebook opens is among them or theirs).
STAGE_NEEDS: dict[str, tuple[str, ...]] = {
    "00_organism": (),
    "01_logging": (),
    "02_selectors": ("01_logging",),
    "03_deactivation": ("02_selectors",),
    "04_steering": ("02_selectors",),
    "05_transfer": ("02_selectors",),
    "06_grounding": ("02_selectors",),
    "07_sae": ("01_logging", "02_selectors"),
}
#: Hidden staging / replaced folders inside a run folder: ``.<stage>.<token>.tmp`` and ``.<stage>.<token>.old``.
_SCRATCH = re.compile(r"^\.(?P<stage>[0-9]{2}_[a-z0-9_]+)\.(?P<token>[0-9a-f]{8})\.(?P<kind>tmp|old)$")
#: Temporary files of the atomic writers (``.<stem>.<random>.tmp<suffix>``, ``.<name>.tmp-<pid>``).
_TMP_FILE = re.compile(r"^\..+\.tmp(-\d+)?(\.[A-Za-z0-9]+)?$")
_STALE_SECONDS = 60.0


class InputError(RuntimeError):
    """An input of a stage (model weights, a dataset) is not usable; raised before the kernel starts."""


def parse_value(text: str, name: str | None = None) -> Any:
    """``-p name value`` values are YAML (``5e-3`` is a number, ``[a, b]`` a list), as in papermill's ``-y``."""
    if name is not None:
        return parse_override(name, text, NOTEBOOKS)
    from ..core.io import yaml_load

    try:
        return yaml_load(text)
    except Exception:  # noqa: BLE001 - not YAML: the text itself
        return text


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
    path = NOTEBOOKS / f"{stage}.md"
    if not path.is_file():
        raise ConfigError(f"stage {stage!r} has no notebook source at {path}")
    return path


def run_dir_for(config: Mapping[str, Any], overrides: Mapping[str, Any], root: Path | None = None) -> Path:
    """``runs/<run_name>`` for the config as shipped; ``runs/<run_name>+<hash>`` when parameters are overridden."""
    if "run_dir" in overrides:
        return Path(str(overrides["run_dir"])).expanduser().resolve()
    name = config.get("run_name")
    if not isinstance(name, str) or not RUN_NAME.match(name) or ".." in name:
        raise ConfigError(
            f"config key `run_name` must be a folder name of letters, digits, '.', '_' and '-' (results go to "
            f"runs/<run_name>/), got {name!r}; add e.g. `run_name: my-run` to the config"
        )
    rest = {k: v for k, v in overrides.items() if k != "run_dir"}
    if rest:
        name = f"{name}+{params_hash(rest)[:8]}"
    return ((ROOT if root is None else root) / "runs" / name).resolve()


def check_run_dir(rdir: Path, stage: str) -> None:
    """The run folder must be a folder we may fill: not a file, not the checkout or its parents, not someone's
    non-empty folder that is no run folder; inside the checkout only under runs/."""
    rdir = Path(rdir)
    fix = "pass -p run_dir <a new or existing run folder>"
    if rdir.exists() and not rdir.is_dir():
        raise ConfigError(f"run folder {rdir} is a file, not a folder; {fix}")
    if rdir == ROOT or rdir in ROOT.parents or rdir == Path.home().resolve() or rdir == Path(rdir.anchor):
        raise ConfigError(f"run folder {rdir} is the checkout, a parent of it or your home folder; {fix}")
    if rdir.is_relative_to(ROOT) and not rdir.is_relative_to(ROOT / "runs"):
        raise ConfigError(f"run folder {rdir} lies inside the checkout but not under runs/; {fix}")
    if (rdir / stage).exists() and not (rdir / stage).is_dir():
        raise ConfigError(f"{rdir / stage} is a file, not a stage folder; remove it or {fix}")
    if rdir.is_dir():
        names = {p.name for p in rdir.iterdir()}
        looks_like_run = bool(names & ({"config.yml"} | set(STAGES))) or any(_SCRATCH.match(n) for n in names)
        if names and not looks_like_run:
            raise ConfigError(
                f"run folder {rdir} is not empty and holds no run (no config.yml, no stage folder): refusing to "
                f"write into it; {fix}"
            )


def _writable(rdir: Path) -> None:
    try:
        rdir.mkdir(parents=True, exist_ok=True)
        probe = rdir / f".write-test.{secrets.token_hex(4)}.tmp"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"cannot write the run folder {rdir} ({exc.strerror or exc}); make it writable or pass "
            "-p run_dir <a writable folder>"
        ) from None


# ---------------------------------------------------------------------------------------------------------------------
# Scratch folders: staging, swapping, cleaning up after crashes
# ---------------------------------------------------------------------------------------------------------------------


def _locked_elsewhere(path: Path) -> bool:
    """Whether a live process holds the lock of a staging folder (the lock dies with its process, even on kill)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def clean_stale(rdir: Path) -> list[str]:
    """Remove what killed runs left in ``rdir``: staging folders no live process holds, replaced stage folders
    (restored if the swap was cut between its two renames) and temporary files of the atomic writers. Returns the
    names removed or restored."""
    done: list[str] = []
    if not Path(rdir).is_dir():
        return done
    now = time.time()
    for entry in sorted(Path(rdir).iterdir()):
        m = _SCRATCH.match(entry.name)
        if m and entry.is_dir() and not _locked_elsewhere(entry):
            target = Path(rdir) / m["stage"]
            if m["kind"] == "old" and not target.exists():
                os.rename(entry, target)  # the previous complete result, moved aside just before a crash
                done.append(f"restored {target.name}")
                continue
            shutil.rmtree(entry, ignore_errors=True)
            done.append(entry.name)
    for folder in [Path(rdir), *(Path(rdir) / s for s in STAGES)]:
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if f.is_file() and _TMP_FILE.match(f.name) and now - f.stat().st_mtime > _STALE_SECONDS:
                f.unlink(missing_ok=True)
                done.append(str(f.relative_to(rdir)))
    return done


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _commit(tmp: Path, target: Path, token: str) -> None:
    """Make ``tmp`` the stage folder ``target`` in one rename (swap with the old one, which ``tmp`` then holds)."""
    if not target.exists():
        os.rename(tmp, target)
        return
    if _exchange(tmp, target):
        return
    old = target.with_name(f".{target.name}.{token}.old")  # fallback: two renames; clean_stale repairs a cut
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _staging(rdir: Path, stage: str) -> Iterator[tuple[Path, str]]:
    token = secrets.token_hex(4)
    tmp = rdir / f".{stage}.{token}.tmp"
    tmp.mkdir()
    fd = os.open(tmp, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield tmp, token
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after a commit it holds the replaced result (or is gone)
        os.close(fd)


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
# Parameter records
# ---------------------------------------------------------------------------------------------------------------------


def read_record(stage_folder: Path) -> dict[str, Any] | None:
    """A stage folder's ``stage.json`` (None when it has none: made by hand or by an older version)."""
    path = Path(stage_folder) / STAGE_RECORD
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); re-run stage {Path(stage_folder).name}") from None
    return rec if isinstance(rec, dict) and isinstance(rec.get("params"), dict) else None


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
    resolved = resolve(stage, config, overrides, notebooks=NOTEBOOKS, source=str(config_path))
    info = stage_info(stage, NOTEBOOKS)
    rdir = run_dir_for(resolved.merged, resolved.overrides)
    check_run_dir(rdir, stage)
    preflight(info, resolved.effective)
    clean_stale(rdir)
    inputs = check_inputs(rdir, info, resolved.effective)
    _writable(rdir)

    import jupytext
    import papermill as pm

    shown = rdir.relative_to(ROOT) if rdir.is_relative_to(ROOT) else rdir  # no machine paths in the book
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
                pm.execute_notebook(nb, str(out_nb), parameters=params, cwd=str(ROOT), kernel_name="python3",
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


def upstream_order(stage: str, notebooks: str | Path | None = None) -> list[str]:
    """The stages ``stage`` needs, directly or through others, in the order they must run (``stage`` excluded).

    The graph is :data:`STAGE_NEEDS` joined with the stages each notebook opens (:attr:`StageInfo.upstream`);
    stages without a notebook source (stand-in notebook folders in tests) are left out.
    """
    check_stage(stage)
    nbdir = Path(notebooks if notebooks is not None else NOTEBOOKS)
    infos = stage_infos(nbdir)
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise ConfigError(f"stage dependency cycle: {' -> '.join((*path, name))}")
        needs = set(STAGE_NEEDS.get(name, ())) | set(infos[name].upstream if name in infos else ())
        for up in sorted(needs, key=STAGES.index):
            if up in infos and up not in order:
                visit(up, (*path, name))
        if name != stage and name not in order:
            order.append(name)

    visit(stage, ())
    return order


def _matches(folder: Path, params_sha256: str, rdir: Path) -> bool:
    """Whether ``folder`` holds a complete result made with these parameters from the upstream results that
    ``rdir`` holds now (every input recorded in its ``stage.json`` has the hash of ``rdir``'s copy)."""
    rec = read_record(folder)
    if rec is None or rec.get("params_sha256") != params_sha256 or not (folder / "metrics.json").is_file():
        return False
    for up, sha in (rec.get("inputs") or {}).items():
        urec = read_record(rdir / up)
        if urec is None or urec.get("params_sha256") != sha:
            return False
    return True


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _copy_stage(source: Path, rdir: Path, stage: str) -> None:
    """Copy a complete stage folder from another run folder into ``rdir`` (transactionally, like a run)."""
    check_run_dir(rdir, stage)
    _writable(rdir)
    clean_stale(rdir)
    with _staging(rdir, stage) as (tmp, token):
        shutil.copytree(source, tmp, dirs_exist_ok=True,
                        ignore=lambda _d, names: [n for n in names if n.endswith(".failed.ipynb")])
        rec = json.loads((tmp / STAGE_RECORD).read_text())
        rec["copied_from"] = _shown(source.parent)  # the run folder it came from
        atomic_write_text(tmp / STAGE_RECORD, json.dumps(rec, indent=2, sort_keys=True) + "\n")
        _commit(tmp, rdir / stage, token)


@dataclass(frozen=True)
class RunPlan:
    """What :func:`run_with_upstream` will do, validated before anything runs."""

    stage: str
    run_dir: Path
    #: the configuration's own run folder (``runs/<run_name>``), where unchanged upstream results may come from
    home: Path | None
    upstream: list[str]
    #: per stage of the chain: the overrides it reads
    overrides: dict[str, dict[str, Any]]
    resolved: dict[str, Resolved]
    given: dict[str, Any]


def plan_run(stage: str, config_path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunPlan:
    """Validate ``stage`` with its overrides and every stage it needs (raises :class:`ConfigError`), and name the
    run folder; nothing is created."""
    check_stage(stage)
    overrides = dict(overrides or {})
    config = load_config(config_path)
    infos = stage_infos(NOTEBOOKS)
    order = upstream_order(stage)
    chain = [*order, stage]
    unread = [k for k in overrides if k != "run_dir" and not any(k in infos[s].reads for s in chain)]
    if unread:
        readers = {k: sorted(s for s, i in infos.items() if k in i.reads) for k in unread}
        needed = ", ".join(order) or "none"
        raise ConfigError("; ".join(
            f"-p {k}: stage {stage} does not read `{k}`, nor do the stages it needs ({needed})"
            f"{did_you_mean(k, infos[stage].reads)}; `{k}` is read by {readers[k] or 'no stage'}" for k in unread))
    subs: dict[str, dict[str, Any]] = {}
    resolved: dict[str, Resolved] = {}
    for name in chain:  # validate every override for every stage that reads it, before anything runs
        subs[name] = {k: v for k, v in overrides.items() if k in infos[name].reads and k != "run_dir"}
        resolved[name] = resolve(name, config, subs[name], notebooks=NOTEBOOKS, source=str(config_path))
    given = {k: v for name in chain for k, v in resolved[name].overrides.items()}
    if "run_dir" in overrides:
        given["run_dir"] = overrides["run_dir"]
    rdir = run_dir_for(resolved[stage].merged, given)
    check_run_dir(rdir, stage)
    try:
        home: Path | None = run_dir_for(resolved[stage].merged, {})
    except ConfigError:
        home = None
    return RunPlan(stage, rdir, home, order, subs, resolved, given)


def run_with_upstream(stage: str, config_path: str | Path, overrides: Mapping[str, Any] | None = None, *,
                      log_output: bool = False, report: Any = None) -> tuple[Path, list[tuple[str, str]]]:
    """Run ``stage`` in its run folder after making sure every stage it needs is there, under the same overrides.

    Every override must be read by ``stage`` or by a stage it needs (:func:`upstream_order`); the overrides name
    the run folder (:func:`run_dir_for`), and each stage gets the ones it reads and no others. Each upstream
    stage's result is

    * **kept** when the run folder already holds it with the same effective parameters, made from the upstream
      results the folder holds now;
    * **copied** from the configuration's own run folder (``runs/<run_name>``) when that one holds it under the
      same conditions (an override that a stage does not read leaves it unchanged: no need to recompute it);
    * **run** otherwise.

    ``stage`` itself always runs. Returns the executed notebook's path and ``[(stage, "kept" | "copied from
    <folder>" | "ran")]`` for the upstream stages; ``report`` (e.g. ``print``) is called with one line per stage.
    """
    plan = plan_run(stage, config_path, overrides)
    rdir, home, order, subs, resolved, given = (plan.run_dir, plan.home, plan.upstream, plan.overrides,
                                                plan.resolved, plan.given)
    done: list[tuple[str, str]] = []
    for up in order:
        sha = params_hash(resolved[up].effective)
        if _matches(rdir / up, sha, rdir):
            how = "kept"
        elif home is not None and home != rdir and _matches(home / up, sha, rdir):
            _copy_stage(home / up, rdir, up)
            how = f"copied from {_shown(home)}"
        else:
            if report is not None:
                report(f"{up}: running (needed by {stage}) ...")
            execute_stage(up, config_path, subs[up], run_dir=rdir, log_output=log_output)
            how = "ran"
        done.append((up, how))
        if report is not None:
            report(f"{up}: {how} -> {_shown(rdir / up)}")
    out = execute_stage(stage, config_path, subs[stage], run_dir=rdir, log_output=log_output)
    import yaml

    merged = {**resolved[stage].merged, **{k: v for k, v in given.items() if k != "run_dir"}}
    atomic_write_text(rdir / "config.yml", yaml.safe_dump(merged, sort_keys=True))
    return out, done


_WIDGET = "application/vnd.jupyter.widget-view+json"


def clean_for_book(nb: dict[str, Any], *, root: Path | None = None) -> dict[str, Any]:
    """An executed notebook as readers download it from the book (a new dict; ``nb`` is unchanged).

    * papermill's injected-parameters cell and the notebook's own defaults cell are tagged ``remove-cell``: the
      chapter's parameter table shows the values used instead (both cells stay in the file, so the notebook
      still runs and papermill still finds its ``parameters`` cell);
    * progress bars and library warnings are dropped: ``stderr`` streams and progress-bar widgets;
    * paths of the build machine become relative: the checkout (``root``) and the home folder.
    """
    root = Path(root if root is not None else ROOT).resolve()
    out = json.loads(json.dumps(nb))
    for cell in out.get("cells", []):
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if ({"injected-parameters", "parameters"} & set(tags)) and "remove-cell" not in tags:
            tags.append("remove-cell")
        if not tags:
            del cell["metadata"]["tags"]
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stderr":
                continue
            data = o.get("data")
            if isinstance(data, dict) and _WIDGET in data:
                data.pop(_WIDGET)
                data.pop("text/plain", None)  # a widget's text fallback is its repr: "HBox(children=...)"
                if not data:
                    continue
            kept.append(o)
        cell["outputs"] = kept
    text = json.dumps(out)
    for prefix, repl in ((f"{root}/", ""), (str(root), "."), (f"{Path.home()}/", "~/")):
        text = text.replace(json.dumps(prefix)[1:-1], json.dumps(repl)[1:-1])
    text = re.sub(r"/\.([0-9]{2}_[a-z0-9_]+)\.[0-9a-f]{8}\.tmp/", r"/\1/", text)  # a stage's staging folder
    return json.loads(text)


def book_copy(source: str | Path, dest: str | Path) -> Path:
    """Write the book's copy of an executed notebook (:func:`clean_for_book`), atomically."""
    nb = json.loads(Path(source).read_text())
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(dest, json.dumps(clean_for_book(nb), indent=1, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write the book copy {dest} ({exc.strerror or exc}); make it writable") from None
    return dest


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = [tuple(p) for p in (args.param or [])]
    if args.params:
        tokens = shlex.split(args.params)
        if len(tokens) % 3 or any(t not in ("-p", "--param") for t in tokens[::3]):
            raise ConfigError(
                f"PARAMS must be '-p name value' triples (quote a value with spaces or brackets), got {args.params!r}"
            )
        pairs += [(tokens[i + 1], tokens[i + 2]) for i in range(0, len(tokens), 3)]
    out: dict[str, Any] = {}
    for name, text in pairs:
        check_key(name, f"-p {name}", known_keys(stage_infos(NOTEBOOKS)))
        if name in out:
            raise ConfigError(f"-p {name} is given twice; give each parameter once")
        out[name] = parse_value(text, name)
    return out


def _cmd_run(args: argparse.Namespace) -> None:
    check_stage(args.stage)
    if args.no_upstream:
        out = execute_stage(args.stage, args.config, _overrides(args), log_output=args.verbose)
    else:
        out, _ = run_with_upstream(args.stage, args.config, _overrides(args), log_output=args.verbose,
                                   report=lambda line: print(line, flush=True))
    print(f"executed {args.stage} -> {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    if args.book_copy:
        book_copy(out, args.book_copy)


def _cmd_book_copy(args: argparse.Namespace) -> None:
    print(f"book copy -> {book_copy(args.source, args.dest)}")


def _cmd_keys(args: argparse.Namespace) -> None:
    for row in describe(NOTEBOOKS):
        print(f"{row['key']:<18} {row['description']}  (e.g. {row['example']})\n{'':<18} read by: "
              f"{', '.join(row['stages'])}")


def _cmd_corpus(args: argparse.Namespace) -> None:
    from ..data.corpus import CORPORA, generate

    for name in args.names:
        if name not in CORPORA:
            raise ConfigError(f"unknown corpus {name!r}; known corpora: {sorted(CORPORA)}")
        generate(CORPORA[name], Path(args.out) / name, limit=args.limit)
        print(f"corpus {name} -> {Path(args.out) / name}")


def _cmd_organism(args: argparse.Namespace) -> None:
    from ..subjects.organism_training import train_organism

    dirs = {name: str(Path(args.corpus) / name) for name in ("A", "B")}
    # the frozen Whisper tower's outputs of the training clips are kept next to the corpus for retrains
    org = train_organism(dirs, args.out, cache_dir=Path(args.corpus).parent / "cache")
    print(json.dumps({"accuracy_evaluate": org.card["accuracy_evaluate"],
                      "training_seconds": round(org.card["training_seconds"], 1)}))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.book.pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="execute one stage notebook into its run folder")
    p_run.add_argument("stage", help=f"one of {', '.join(STAGES)}")
    p_run.add_argument("--config", default=str(ROOT / "configs" / "organism.yml"))
    p_run.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"))
    p_run.add_argument("--params", default="", help="'-p name value ...' as one string (the Makefile's PARAMS)")
    p_run.add_argument("--book-copy", help="also copy the executed notebook here (for the book)")
    p_run.add_argument("-v", "--verbose", action="store_true", help="stream the notebook's output")
    p_run.add_argument("--no-upstream", action="store_true",
                       help="run only this stage; refuse missing or mismatched upstream outputs (make book: make "
                            "orders the stages itself)")
    p_run.set_defaults(func=_cmd_run)
    p_copy = sub.add_parser("book-copy", help="the book's copy of an executed notebook (no build-machine paths, no "
                                              "progress bars, parameter cells hidden)")
    p_copy.add_argument("source")
    p_copy.add_argument("dest")
    p_copy.set_defaults(func=_cmd_book_copy)
    p_keys = sub.add_parser("keys", help="every config key: which stages read it and what it means")
    p_keys.set_defaults(func=_cmd_keys)
    p_corpus = sub.add_parser("corpus", help="generate the synthetic corpora")
    p_corpus.add_argument("names", nargs="*", default=["A", "B"])
    p_corpus.add_argument("--out", default=str(ROOT / "data" / "corpus"))
    p_corpus.add_argument("--limit", type=int, default=None, help="only the first N sentences (previews)")
    p_corpus.set_defaults(func=_cmd_corpus)
    p_org = sub.add_parser("organism", help="retrain the model organism")
    p_org.add_argument("--corpus", default=str(ROOT / "data" / "corpus"))
    p_org.add_argument("--out", default=str(ROOT / "models" / "organism"))
    p_org.set_defaults(func=_cmd_organism)
    args = parser.parse_args(argv)
    from papermill.exceptions import PapermillExecutionError

    stage = getattr(args, "stage", "?")
    interrupted = (f"interrupted: stage {stage} stopped; its folder still holds the previous complete result (or "
                   "nothing)")
    previous = signal.getsignal(signal.SIGTERM)
    with contextlib.suppress(ValueError):  # not in the main thread: leave SIGTERM alone
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except InputError as exc:
        print(f"error: stage {stage} cannot start: {exc}", file=sys.stderr)
        return 1
    except PapermillExecutionError as exc:
        if exc.ename == "KeyboardInterrupt":
            print(interrupted, file=sys.stderr)
            return 130
        # the notebook's own error, without papermill's copy of the whole traceback
        print(f"error: stage {stage} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n(the partially "
              f"executed notebook is kept as <run folder>/{stage}/{stage}.failed.ipynb; the stage's previous "
              "result, if any, is unchanged)", file=sys.stderr)
        return 1
    except (FileNotFoundError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}", file=sys.stderr)
        return 2
    finally:
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
