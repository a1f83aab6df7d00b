"""Run folders, atomic artifact writes and configuration checks shared by every stage.

Every stage writes into ``runs/<name>/<stage>/``; files are written to a temporary name and renamed, so an
interrupted stage never leaves a half-written artifact that a later stage would trust.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

#: The stages of the book, in order. Each is one notebook and one folder in a run.
STAGES: tuple[str, ...] = (
    "00_organism",
    "01_logging",
    "02_selectors",
    "03_deactivation",
    "04_steering",
    "05_transfer",
    "06_grounding",
    "07_sae",
)


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the key and the fix."""


#: The files that mark the book's project folder (the root of a checkout).
PROJECT_MARKERS: tuple[str, ...] = ("_config.yml", "pyproject.toml")
_PACKAGE_DIR = Path(__file__).resolve().parent


class ProjectRootNotFoundError(FileNotFoundError):
    """No folder holding :data:`PROJECT_MARKERS` above the working directory or the installed package."""


def project_root(start: str | Path | None = None) -> Path:
    """The book's project folder (a checkout's root: models/, data/, configs/, the git history).

    The nearest folder at or above ``start`` (default: the working directory) that holds ``_config.yml`` and
    ``pyproject.toml``; failing that, the one above this package's own files, which is the checkout an editable
    install points into. So it works from a checkout and from an installed (non-editable) package alike, as
    long as the command runs inside the checkout.
    """
    origin = Path(start) if start is not None else Path.cwd()
    for base in (origin.resolve(), _PACKAGE_DIR):
        for folder in (base, *base.parents):
            if all((folder / name).is_file() for name in PROJECT_MARKERS):
                return folder
    raise ProjectRootNotFoundError(
        f"no ESN companion checkout (a folder holding {' and '.join(PROJECT_MARKERS)}) at or above {origin} or "
        f"{_PACKAGE_DIR}: run this from inside the checkout (cd into it), or install the helpers from it with "
        "`pip install -e .`"
    )


#: Set by :mod:`helpers.book.pipeline` while a stage runs: ``{"run_dir": ..., "stage": ..., "dir": ...}``. The stage's
#: :func:`stage_dir` is then that fresh folder, which replaces ``<run_dir>/<stage>`` in one rename on success.
STAGING_ENV = "ESN_STAGE_STAGING"
#: Beside ``metrics.json``: the forward passes a stage ran (:func:`write_metrics`).
USAGE_FILE = "usage.json"


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 scalars: ``5e-3`` and ``1.0e30`` are floats (PyYAML's YAML 1.1 reads them as strings),
    only ``true``/``false`` are booleans (``yes``, ``no``, ``on``, ``off`` stay strings), ``012`` is 12, and a
    mapping may not repeat a key."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:
                continue
            if dup:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found the key {key!r} twice", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


_YAML_12 = {"tag:yaml.org,2002:float", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int"}
_Loader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] not in _YAML_12]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9][0-9_]*$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    return int(loader.construct_scalar(node).replace("_", ""))


_Loader.add_constructor("tag:yaml.org,2002:int", _yaml_int)


def yaml_load(text: str) -> Any:
    """Parse YAML the way configs and ``-p`` values are read (see :class:`_Loader`); never constructs objects."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def _atomic(path: Path, write: Callable[[Path], object]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the real extension last: writers such as savefig or to_parquet infer the format from it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text to ``path`` via a temporary file in the same folder and an atomic rename."""
    return _atomic(Path(path), lambda p: p.write_text(text))


def atomic_save(path: str | Path, save: Callable[[Path], object]) -> Path:
    """Call ``save(tmp_path)`` (e.g. ``df.to_parquet``, ``fig.savefig``) and rename the result into place."""
    return _atomic(Path(path), save)


def save_figure(fig: Any, path: str | Path, *, dpi: int = 110) -> Path:
    """Write a matplotlib figure atomically (format from the suffix), tightly cropped, for the stage folder."""
    target = Path(path)
    fmt = target.suffix.lstrip(".") or "png"
    return _atomic(target, lambda p: fig.savefig(p, format=fmt, dpi=dpi, bbox_inches="tight"))


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_metrics(stage_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write a stage's headline numbers to ``metrics.json`` (non-finite floats become null), and beside it
    ``usage.json``: the forward passes, item rows and tokens this process has run through the tracer so far
    (:func:`helpers.core.hooks.forward_counts`; written only where the tracer was loaded), so the benchmarks page can
    show each stage's work next to its time."""
    text = json.dumps(_jsonable(dict(metrics)), indent=2, sort_keys=True)
    path = atomic_write_text(Path(stage_dir) / "metrics.json", text + "\n")
    tracer = sys.modules.get(f"{__package__}.hooks")  # not loaded: this process ran no forward pass
    if tracer is not None:
        counts = tracer.forward_counts()
        if counts["passes"]:
            atomic_write_text(Path(stage_dir) / USAGE_FILE, json.dumps(counts, indent=2, sort_keys=True) + "\n")
    return path


def _staging() -> dict[str, str] | None:
    text = os.environ.get(STAGING_ENV)
    if not text:
        return None
    try:
        spec = json.loads(text)
    except ValueError:
        return None
    return spec if isinstance(spec, dict) and {"run_dir", "stage", "dir"} <= set(spec) else None


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    """The folder of ``stage`` inside ``run_dir``; refuses unknown stage names and escapes from the run folder.

    While :mod:`helpers.book.pipeline` runs ``stage`` (see :data:`STAGING_ENV`), its own folder is the pipeline's fresh
    staging folder, so a notebook writes a complete new result or nothing; other stages' folders are returned as
    they are, for reading, and not created.
    """
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    root = Path(run_dir).resolve()
    out = (root / stage).resolve()
    if root not in out.parents:
        raise ConfigError(f"stage folder {out} would lie outside the run folder {root}")
    staging = _staging()
    if staging is not None and Path(staging["run_dir"]).resolve() == root:
        if staging["stage"] != stage:
            return out  # an upstream stage: read only
        out = Path(staging["dir"])
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a papermill parameter file (YAML mapping) with a clear message when it is missing or malformed.

    Parsed with :func:`yaml_load` (``5e-3`` is a number, only ``true``/``false`` are booleans, no repeated keys);
    the keys and values are checked against the typed schema by :func:`helpers.book.resolution.resolve`.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; the shipped configs are in configs/")
    try:
        data = yaml_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must be a YAML mapping of parameter names to values")
    return data


def require(params: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str = "config") -> Any:
    """Fetch ``params[key]`` and check its type, naming the key and the expected type when it is wrong."""
    if key not in params or params[key] is None:
        raise ConfigError(f"{where} lacks the key {key!r}; add `{key}: ...` to it (see configs/organism.yml)")
    value = params[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where} key {key!r} must be {names}, got {type(value).__name__} ({value!r})")
    return value
