"""``make run``: a stage with the stages it needs (:data:`STAGE_NEEDS`), each kept, copied from the
configuration's own run folder or run under the overrides it reads, planned and validated before anything runs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.io import STAGES, ConfigError, atomic_write_text, load_config
from . import checkout
from .config_messages import did_you_mean
from .lineage import params_hash
from .resolution import Resolved, resolve
from .run_folders import (
    STAGE_RECORD,
    _commit,
    _shown,
    _staging,
    _writable,
    check_run_dir,
    clean_stale,
    read_record,
    run_dir_for,
)
from .stage_params import stage_infos
from .stage_run import check_stage, execute_stage

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


def upstream_order(stage: str, notebooks: str | Path | None = None) -> list[str]:
    """The stages ``stage`` needs, directly or through others, in the order they must run (``stage`` excluded).

    The graph is :data:`STAGE_NEEDS` joined with the stages each notebook opens (:attr:`StageInfo.upstream`);
    stages without a notebook source (stand-in notebook folders in tests) are left out.
    """
    check_stage(stage)
    nbdir = Path(notebooks if notebooks is not None else checkout.NOTEBOOKS)
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
    infos = stage_infos(checkout.NOTEBOOKS)
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
        resolved[name] = resolve(name, config, subs[name], notebooks=checkout.NOTEBOOKS, source=str(config_path))
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
