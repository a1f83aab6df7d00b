"""Execute stage notebooks with papermill into run folders; the command line the Makefile calls.

papermill cannot read jupytext sources directly, so each MyST source is read with jupytext and handed to
papermill as a notebook object. A run's folder is named by its configuration; extra ``-p`` parameters give a
folder of their own (``runs/<name>+<hash>``) so a re-run with new parameters never overwrites another
configuration's results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .io import STAGES, ConfigError, atomic_save, load_config, require

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"


def parse_value(text: str) -> Any:
    """``-p name value`` values are YAML scalars or collections, as in papermill's ``-y``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def run_dir_for(config: Mapping[str, Any], overrides: Mapping[str, Any], root: Path = ROOT) -> Path:
    """``runs/<run_name>`` for the config as shipped; ``runs/<run_name>+<hash>`` when parameters are overridden."""
    if "run_dir" in overrides:
        return Path(overrides["run_dir"]).resolve()
    name = require(config, "run_name", str)
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"run_name {name!r} may use letters, digits, '-', '_' and '.' only")
    if overrides:
        digest = hashlib.sha256(json.dumps(dict(overrides), sort_keys=True, default=str).encode()).hexdigest()[:8]
        name = f"{name}+{digest}"
    return (root / "runs" / name).resolve()


def notebook_source(stage: str) -> Path:
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages are {list(STAGES)} (NB=<stage> in `make run`)")
    path = NOTEBOOKS / f"{stage}.md"
    if not path.is_file():
        raise ConfigError(f"stage {stage!r} has no notebook source at {path}")
    return path


def execute_stage(stage: str, config_path: str | Path, overrides: Mapping[str, Any] | None = None,
                  *, run_dir: str | Path | None = None, log_output: bool = False) -> Path:
    """Run one stage notebook with papermill; returns the executed notebook's path inside the run folder.

    The executed notebook is written to a temporary name and renamed only on success, so a failed stage
    leaves no notebook that looks finished (papermill's own partial output is kept as ``*.failed.ipynb``).
    """
    import jupytext
    import papermill as pm

    overrides = dict(overrides or {})
    config = load_config(config_path)
    if run_dir is not None:
        overrides["run_dir"] = str(run_dir)
    rdir = run_dir_for(config, overrides)
    shown = rdir.relative_to(ROOT) if rdir.is_relative_to(ROOT) else rdir  # no machine paths in the book
    params = {**config, **overrides, "run_dir": str(shown)}
    out_dir = rdir / stage
    out_dir.mkdir(parents=True, exist_ok=True)
    (rdir / "config.yml").write_text(yaml.safe_dump({k: v for k, v in params.items()}, sort_keys=True))
    nb = jupytext.read(notebook_source(stage))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    target = out_dir / f"{stage}.ipynb"
    failed = out_dir / f"{stage}.failed.ipynb"
    env_before = os.environ.get("HF_HUB_OFFLINE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        def run(tmp: Path) -> None:
            try:
                pm.execute_notebook(nb, str(tmp), parameters=params, cwd=str(ROOT), kernel_name="python3",
                                    log_output=log_output, progress_bar=False)
            except BaseException:
                if tmp.exists():
                    shutil.copyfile(tmp, failed)
                raise

        atomic_save(target, run)
    finally:
        if env_before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
    failed.unlink(missing_ok=True)
    return target


def _cmd_run(args: argparse.Namespace) -> None:
    overrides = {k: parse_value(v) for k, v in (args.param or [])}
    out = execute_stage(args.stage, args.config, overrides, log_output=args.verbose)
    print(f"executed {args.stage} -> {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    if args.book_copy:
        dest = Path(args.book_copy)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, dest)


def _cmd_corpus(args: argparse.Namespace) -> None:
    from .corpus import CORPORA, generate

    for name in args.names:
        if name not in CORPORA:
            raise ConfigError(f"unknown corpus {name!r}; known corpora: {sorted(CORPORA)}")
        generate(CORPORA[name], Path(args.out) / name, limit=args.limit)
        print(f"corpus {name} -> {Path(args.out) / name}")


def _cmd_organism(args: argparse.Namespace) -> None:
    from .organism import train_organism

    dirs = {name: str(Path(args.corpus) / name) for name in ("A", "B")}
    org = train_organism(dirs, args.out)
    print(json.dumps({"accuracy_evaluate": org.card["accuracy_evaluate"],
                      "training_seconds": round(org.card["training_seconds"], 1)}))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="execute one stage notebook into its run folder")
    p_run.add_argument("stage", help=f"one of {', '.join(STAGES)}")
    p_run.add_argument("--config", default=str(ROOT / "configs" / "organism.yml"))
    p_run.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"))
    p_run.add_argument("--book-copy", help="also copy the executed notebook here (for the book)")
    p_run.add_argument("-v", "--verbose", action="store_true", help="stream the notebook's output")
    p_run.set_defaults(func=_cmd_run)
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

    try:
        args.func(args)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PapermillExecutionError as exc:
        # the notebook's own error, without papermill's copy of the whole traceback
        print(f"error: stage {getattr(args, 'stage', '?')} failed in cell {exc.exec_count}: {exc.ename}: "
              f"{exc.evalue}\n(the partially executed notebook is kept as <run folder>/<stage>/<stage>.failed.ipynb)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
