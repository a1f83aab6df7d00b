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
import json
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.io import STAGES, ConfigError
from . import checkout
from .book_export import book_copy
from .config_messages import check_key
from .resolution import describe, known_keys, parse_override
from .stage_params import stage_infos
from .stage_run import InputError, check_stage, execute_stage
from .upstream_plan import run_with_upstream


def parse_value(text: str, name: str | None = None) -> Any:
    """``-p name value`` values are YAML (``5e-3`` is a number, ``[a, b]`` a list), as in papermill's ``-y``."""
    if name is not None:
        return parse_override(name, text, checkout.NOTEBOOKS)
    from ..core.io import yaml_load

    try:
        return yaml_load(text)
    except Exception:  # noqa: BLE001 - not YAML: the text itself
        return text


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
        check_key(name, f"-p {name}", known_keys(stage_infos(checkout.NOTEBOOKS)))
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
    print(f"executed {args.stage} -> {out.relative_to(checkout.ROOT) if out.is_relative_to(checkout.ROOT) else out}")
    if args.book_copy:
        book_copy(out, args.book_copy)


def _cmd_book_copy(args: argparse.Namespace) -> None:
    print(f"book copy -> {book_copy(args.source, args.dest)}")


def _cmd_keys(args: argparse.Namespace) -> None:
    for row in describe(checkout.NOTEBOOKS):
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
    p_run.add_argument("--config", default=str(checkout.ROOT / "configs" / "organism.yml"))
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
    p_corpus.add_argument("--out", default=str(checkout.ROOT / "data" / "corpus"))
    p_corpus.add_argument("--limit", type=int, default=None, help="only the first N sentences (previews)")
    p_corpus.set_defaults(func=_cmd_corpus)
    p_org = sub.add_parser("organism", help="retrain the model organism")
    p_org.add_argument("--corpus", default=str(checkout.ROOT / "data" / "corpus"))
    p_org.add_argument("--out", default=str(checkout.ROOT / "models" / "organism"))
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
