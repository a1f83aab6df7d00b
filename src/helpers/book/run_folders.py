"""Run folders: their names (``runs/<name>`` or ``runs/<name>+<hash>``), the checks before anything is written,
and the scratch folders that make a stage's result replace the previous one in one step: staging, swapping, cleaning
up after crashes, and each stage folder's parameter record (``stage.json``)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..core.io import STAGES, ConfigError
from . import checkout
from .config import RUN_NAME
from .lineage import params_hash

#: The per-stage record of the parameters a result was produced with.
STAGE_RECORD = "stage.json"
STAGE_TIMING = "timing.json"
#: Hidden staging / replaced folders inside a run folder: ``.<stage>.<token>.tmp`` and ``.<stage>.<token>.old``.
_SCRATCH = re.compile(r"^\.(?P<stage>[0-9]{2}_[a-z0-9_]+)\.(?P<token>[0-9a-f]{8})\.(?P<kind>tmp|old)$")
#: Temporary files of the atomic writers (``.<stem>.<random>.tmp<suffix>``, ``.<name>.tmp-<pid>``).
_TMP_FILE = re.compile(r"^\..+\.tmp(-\d+)?(\.[A-Za-z0-9]+)?$")
_STALE_SECONDS = 60.0


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
    return ((checkout.ROOT if root is None else root) / "runs" / name).resolve()


def check_run_dir(rdir: Path, stage: str) -> None:
    """The run folder must be a folder we may fill: not a file, not the checkout or its parents, not someone's
    non-empty folder that is no run folder; inside the checkout only under runs/."""
    rdir = Path(rdir)
    fix = "pass -p run_dir <a new or existing run folder>"
    if rdir.exists() and not rdir.is_dir():
        raise ConfigError(f"run folder {rdir} is a file, not a folder; {fix}")
    root = checkout.ROOT
    if rdir == root or rdir in root.parents or rdir == Path.home().resolve() or rdir == Path(rdir.anchor):
        raise ConfigError(f"run folder {rdir} is the checkout, a parent of it or your home folder; {fix}")
    if rdir.is_relative_to(checkout.ROOT) and not rdir.is_relative_to(checkout.ROOT / "runs"):
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


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(checkout.ROOT)) if path.is_relative_to(checkout.ROOT) else str(path)


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
