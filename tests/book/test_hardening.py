"""Bad inputs, interruptions and attempts at code execution: one test per case of issue 10.

Each test asserts that the message names the key or file *and* the fix, and that nothing outside its temporary
folder changed (``untouched``: no new entry in the checkout or in runs/). The stage tests run tiny stand-in
notebooks (``fake_notebooks``) through the real pipeline, so they test the run folder's transactions without the
model organism.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from helpers.book import checkout, config, lineage, pipeline, resolution, run_folders, stage_params
from helpers.core.io import ConfigError, load_config, yaml_load
from helpers.data.audio import AudioChannelWarning, AudioLoadError, load_audio

ROOT = Path(__file__).resolve().parents[2]
ORGANISM_CFG = ROOT / "configs" / "organism.yml"
QWEN_CFG = ROOT / "configs" / "qwen2-audio-iemocap.yml"
MAKE = shutil.which("make")


def _listing() -> tuple[frozenset[str], frozenset[str]]:
    runs = ROOT / "runs"
    return (frozenset(p.name for p in ROOT.iterdir()),
            frozenset(p.name for p in runs.iterdir()) if runs.is_dir() else frozenset())


@pytest.fixture
def untouched():
    """Nothing appears in (or disappears from) the checkout or runs/ during the test."""
    before = _listing()
    yield
    assert _listing() == before, "the test created or removed something in the checkout or runs/"


def write_config(path: Path, **keys) -> Path:
    base = load_config(ORGANISM_CFG)
    base.update(keys)
    path.write_text(json.dumps({k: v for k, v in base.items() if v is not ...}))  # JSON is YAML
    return path


def run_main(args: list[str], capsys) -> tuple[int, str]:
    rc = pipeline.main(args)
    return rc, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# Stand-in stage notebooks: the pipeline's transactions without the model
# ---------------------------------------------------------------------------------------------------------------------

_HEAD = "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\nkernelspec:\n" \
        "  display_name: Python 3\n  language: python\n  name: python3\n---\n\n"


def _nb(title: str, params: str, code: str) -> str:
    return (f"{_HEAD}# {title}\n\n```{{code-cell}} ipython3\n:tags: [parameters]\n\n{textwrap.dedent(params).strip()}"
            f"\n```\n\n```{{code-cell}} ipython3\n{textwrap.dedent(code).strip()}\n```\n")


FAKE_01 = _nb("fake log", '''
    run_dir = "runs/fake"
    labels = ["a", "b"]
    positions = "last"
    seed = 0
    sleep = 0.0
    fail = False
''', '''
    import time
    from helpers.core import io
    out = io.stage_dir(run_dir, "01_logging")
    (out / "partial.txt").write_text("started")
    time.sleep(sleep)
    if fail:
        raise RuntimeError("asked to fail")
    (out / "items.csv").write_text("label\\n" + "\\n".join(labels) + "\\n")
    io.write_metrics(out, {"labels": labels, "positions": positions, "seed": seed})
''')
FAKE_02 = _nb("fake select", '''
    run_dir = "runs/fake"
    labels = ["a", "b"]
    seed = 0
''', '''
    import json
    from helpers.core import io
    m = json.loads((io.stage_dir(run_dir, "01_logging") / "metrics.json").read_text())
    out = io.stage_dir(run_dir, "02_selectors")
    io.write_metrics(out, {"from_01": m["labels"], "labels": labels})
''')
FAKE_03 = _nb("fake deactivate", '''
    run_dir = "runs/fake"
    labels = ["a", "b"]
    seed = 0
''', '''
    import json
    from helpers.core import io
    m = json.loads((io.stage_dir(run_dir, "02_selectors") / "metrics.json").read_text())
    io.write_metrics(io.stage_dir(run_dir, "03_deactivation"), {"n": len(m["labels"])})
''')


@pytest.fixture
def fake_notebooks(tmp_path, monkeypatch) -> Path:
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    for stage, text in (("01_logging", FAKE_01), ("02_selectors", FAKE_02), ("03_deactivation", FAKE_03)):
        (nbdir / f"{stage}.md").write_text(text)
    monkeypatch.setattr(checkout, "NOTEBOOKS", nbdir)
    return nbdir


@pytest.fixture
def fake_config(tmp_path) -> Path:
    path = tmp_path / "fake.yml"
    path.write_text("run_name: fake\nlabels: [a, b]\nseed: 0\n")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def scratch(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".old")]


_SUBPROCESS = "import sys; from pathlib import Path; import helpers.book.pipeline as p; " \
              "import helpers.book.checkout as c; c.NOTEBOOKS = Path(sys.argv[1]); sys.exit(p.main(sys.argv[2:]))"


def start_stage(nbdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _SUBPROCESS, str(nbdir), "run", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(path_glob, folder: Path, timeout: float = 60.0) -> None:
    t0 = time.time()
    while not list(folder.glob(path_glob)):
        if time.time() - t0 > timeout:
            raise AssertionError(f"{path_glob} never appeared in {folder}")
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------------------------------
# Security: no code from config keys, no shell from make variables, no remote code by accident
# ---------------------------------------------------------------------------------------------------------------------


def test_config_key_that_is_python_code_is_refused_before_any_kernel(tmp_path, capsys, untouched):
    marker = tmp_path / "marker"
    key = f"x = 1\nimport pathlib; pathlib.Path({str(marker)!r}).touch()\ny"
    cfg = tmp_path / "evil.yml"
    cfg.write_text(json.dumps({**load_config(ORGANISM_CFG), key: 1}))
    rc, err = run_main(["run", "01_logging", "--config", str(cfg), "-p", "run_dir", str(tmp_path / "run")], capsys)
    assert rc == 2 and "not a valid parameter name" in err and "identifiers" in err
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_config_key_with_dash_suggests_the_identifier(tmp_path):
    with pytest.raises(ConfigError, match=r"'batch-size' is not a valid parameter name.*did you mean 'batch_size'"):
        resolution.resolve("01_logging", {**load_config(ORGANISM_CFG), "batch-size": 64}, notebooks=checkout.NOTEBOOKS)


@pytest.mark.skipif(MAKE is None, reason="needs GNU make")
@pytest.mark.parametrize("nb", ["07_x; touch {marker} #", "$(shell touch {marker})", "`touch {marker}`"])
def test_make_run_passes_nb_to_python_not_to_the_shell(tmp_path, nb, untouched):
    marker = tmp_path / "marker"
    # -o: treat the venv stamp and corpora as up to date (no install, no corpus generation in a test)
    cmd = [MAKE, "-s", "-o", ".venv/.installed", "-o", "data/corpus/A/manifest.json", "-o",
           "data/corpus/B/manifest.json", "run", f"NB={nb.format(marker=marker)}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "unknown stage" in proc.stderr and "NB=<stage>" in proc.stderr
    assert not marker.exists()


@pytest.mark.skipif(MAKE is None, reason="needs GNU make")
def test_make_run_stage_path_traversal_creates_nothing(untouched):
    outside = ROOT.parent / "tmp" / "x"
    existed = outside.exists()
    proc = subprocess.run([MAKE, "-s", "-o", ".venv/.installed", "-o", "data/corpus/A/manifest.json", "-o",
                           "data/corpus/B/manifest.json", "run", "NB=../../../tmp/x"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "unknown stage '../../../tmp/x'" in proc.stderr
    assert outside.exists() == existed


@pytest.mark.skipif(MAKE is None, reason="needs GNU make")
def test_make_run_config_path_with_a_space_reaches_python_whole(tmp_path, untouched):
    cfg = write_config(tmp_path / "my organism.yml", labels_=["a", "b"])
    proc = subprocess.run([MAKE, "-s", "-o", ".venv/.installed", "-o", "data/corpus/A/manifest.json", "-o",
                           "data/corpus/B/manifest.json", "run", "NB=01_logging", f"CONFIG={cfg}",
                           f"PARAMS=-p run_dir '{tmp_path / 'run'}'"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"config {cfg}: unknown key 'labels_' (did you mean 'labels'?)" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_run_name_and_stage_name_are_checked_before_anything_is_created(tmp_path, capsys, untouched):
    cfg = write_config(tmp_path / "c.yml", run_name="../../escape")
    rc, err = run_main(["run", "01_logging", "--config", str(cfg)], capsys)
    assert rc == 2 and "`run_name` must be a folder name" in err and "e.g. run_name: organism" in err
    rc, err = run_main(["run", "07_nothing"], capsys)
    assert rc == 2 and "unknown stage '07_nothing'" in err


def _fake_checkpoint(folder: Path, marker: Path) -> Path:
    """A checkpoint of a built-in family whose files point transformers at its own Python (which writes marker)."""
    folder.mkdir(parents=True)
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('remote code ran')\n"
    (folder / "evil.py").write_text(code)
    auto = {"AutoConfig": "evil.EvilConfig", "AutoProcessor": "evil.EvilProcessor", "AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_audio", "auto_map": auto}))
    (folder / "processor_config.json").write_text(json.dumps({"auto_map": {"AutoProcessor": "evil.EvilProcessor"}}))
    return folder


@pytest.mark.parametrize("value", ["false", "true", "False", 0, 1, None])
def test_remote_code_runs_only_on_an_explicit_boolean_true(tmp_path, value):
    from helpers.core.families import RemoteCodeNotAllowedError
    from helpers.subjects import subject_loading

    marker = tmp_path / "marker"
    ckpt = _fake_checkpoint(tmp_path / "ckpt", marker)
    params = {"model": "qwen2-audio", "model_path": str(ckpt), "labels": ["neutral", "happy"], "device": "cpu",
              "dtype": "float32", "trust_remote_code": value}
    if value is None:
        with pytest.raises(RemoteCodeNotAllowedError, match=r"config\.json \(auto_map\).*trust_remote_code: true"):
            subject_loading.load_subject(params)
    else:
        with pytest.raises(ConfigError, match=r"`trust_remote_code` must be true or false, written without quotes"):
            subject_loading.load_subject(params)
    assert not marker.exists()
    with pytest.raises(RemoteCodeNotAllowedError, match=r"evil\.py.*set `trust_remote_code: true`"):
        subject_loading.load_subject({**params, "trust_remote_code": False})
    assert not marker.exists()


def test_trust_remote_code_string_in_a_config_is_refused_before_any_kernel(tmp_path, capsys, untouched):
    cfg = tmp_path / "c.yml"
    cfg.write_text(QWEN_CFG.read_text().replace("trust_remote_code: false", 'trust_remote_code: "false"'))
    rc, err = run_main(["run", "01_logging", "--config", str(cfg), "-p", "run_dir", str(tmp_path / "run")], capsys)
    assert rc == 2
    assert "`trust_remote_code` must be true or false, got the string 'false'" in err
    assert "write true or false without quotes" in err and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Run folders: transactional stages, parameter records, interruptions
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_stage_replaces_its_folder_in_one_step_and_records_its_parameters(fake_notebooks, fake_config, tmp_path,
                                                                          capsys, untouched):
    rdir = tmp_path / "run"
    rc, err = run_main(["run", "01_logging", "--config", str(fake_config), "-p", "run_dir", str(rdir)], capsys)
    assert rc == 0, err
    assert "Passed unknown parameter" not in err
    stage = rdir / "01_logging"
    assert {p.name for p in stage.iterdir()} == {"01_logging.ipynb", "items.csv", "metrics.json", "partial.txt",
                                                 "stage.json", "timing.json"}
    assert json.loads((stage / "timing.json").read_text())["seconds"] > 0
    rec = json.loads((stage / "stage.json").read_text())
    assert rec["params"]["labels"] == ["a", "b"] and rec["params_sha256"] == lineage.params_hash(rec["params"])
    nb = json.loads((stage / "01_logging.ipynb").read_text())
    assert set(nb["metadata"]["papermill"]["parameters"]) == {"run_dir", "labels", "seed"}  # only what it reads
    assert not scratch(rdir) and (rdir / "config.yml").is_file()
    first = snapshot(stage)
    rc, err = run_main(["run", "01_logging", "--config", str(fake_config), "-p", "run_dir", str(rdir)], capsys)
    assert rc == 0, err
    again = snapshot(stage)
    volatile = {"01_logging.ipynb", "timing.json"}  # these hold timings; every artifact is byte-identical
    assert {k: v for k, v in first.items() if k not in volatile} == {k: v for k, v in again.items()
                                                                     if k not in volatile}
    assert not scratch(rdir)


@pytest.mark.slow
def test_failed_stage_keeps_the_previous_complete_result(fake_notebooks, fake_config, tmp_path, capsys, untouched):
    rdir = tmp_path / "run"
    assert run_main(["run", "01_logging", "--config", str(fake_config), "-p", "run_dir", str(rdir)], capsys)[0] == 0
    before = snapshot(rdir / "01_logging")
    rc, err = run_main(["run", "01_logging", "--config", str(fake_config), "-p", "run_dir", str(rdir),
                        "-p", "labels", "[c, d]", "-p", "fail", "true"], capsys)
    assert rc == 1 and "RuntimeError: asked to fail" in err and "previous result, if any, is unchanged" in err
    after = snapshot(rdir / "01_logging")
    assert {k: v for k, v in after.items() if k != "01_logging.failed.ipynb"} == before
    assert "01_logging.failed.ipynb" in after and not scratch(rdir)


@pytest.mark.slow
def test_ctrl_c_keeps_the_previous_result_and_prints_one_line(fake_notebooks, fake_config, tmp_path, capsys,
                                                               untouched):
    rdir = tmp_path / "run"
    assert run_main(["run", "01_logging", "--config", str(fake_config), "-p", "run_dir", str(rdir)], capsys)[0] == 0
    before = snapshot(rdir)
    proc = start_stage(fake_notebooks, "01_logging", "--config", str(fake_config), "-p", "run_dir", str(rdir),
                       "-p", "labels", "[c, d]", "-p", "sleep", "30")
    wait_for(".01_logging.*.tmp/partial.txt", rdir)  # the new run has written part of its result
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip() and "IPKernelApp" not in ln]
    assert lines == ["interrupted: stage 01_logging stopped; its folder still holds the previous complete result "
                     "(or nothing)"], err
    assert "Traceback" not in err
    assert snapshot(rdir) == before and not scratch(rdir)


@pytest.mark.slow
def test_killed_stage_leaves_the_previous_result_and_the_next_start_cleans_up(fake_notebooks, fake_config, tmp_path,
                                                                               capsys, untouched):
    rdir = tmp_path / "run"
    assert run_main(["run", "01_logging", "--config", str(fake_config), "-p", "run_dir", str(rdir)], capsys)[0] == 0
    before = snapshot(rdir / "01_logging")
    proc = start_stage(fake_notebooks, "01_logging", "--config", str(fake_config), "-p", "run_dir", str(rdir),
                       "-p", "labels", "[c, d]", "-p", "sleep", "30")
    wait_for(".01_logging.*.tmp/partial.txt", rdir)
    os.killpg(proc.pid, signal.SIGKILL)  # no handler runs: the staging folder stays behind
    proc.communicate(timeout=30)
    assert snapshot(rdir / "01_logging") == before
    assert scratch(rdir), "expected the killed run's staging folder"
    stray = rdir / "01_logging" / ".metrics.abcd1234.tmp.json"  # what the old atomic writer left after a kill
    stray.write_text("{")
    os.utime(stray, (time.time() - 3600, time.time() - 3600))
    removed = run_folders.clean_stale(rdir)  # what every stage start does first
    assert removed and not scratch(rdir)
    assert snapshot(rdir / "01_logging") == before


def test_clean_stale_restores_a_result_moved_aside_by_a_cut_swap(tmp_path):
    rdir = tmp_path / "run"
    old = rdir / ".01_logging.0123abcd.old"
    old.mkdir(parents=True)
    (old / "metrics.json").write_text("{}")
    assert run_folders.clean_stale(rdir) == ["restored 01_logging"]
    assert (rdir / "01_logging" / "metrics.json").read_text() == "{}" and not scratch(rdir)


@pytest.mark.slow
def test_downstream_stage_refuses_inputs_produced_under_other_parameters(fake_notebooks, fake_config, tmp_path,
                                                                        capsys, untouched):
    rdir = tmp_path / "run"
    base = ["--no-upstream", "--config", str(fake_config), "-p", "run_dir", str(rdir)]  # make run: test_rerun.py
    assert run_main(["run", "01_logging", *base], capsys)[0] == 0
    rc, err = run_main(["run", "02_selectors", *base, "-p", "labels", "[a, b, c]"], capsys)
    assert rc == 2
    assert "the outputs of 01_logging" in err and "labels: ['a', 'b'] there, ['a', 'b', 'c'] here" in err
    assert "re-run 01_logging with this configuration first" in err and not (rdir / "02_selectors").exists()
    assert run_main(["run", "02_selectors", *base], capsys)[0] == 0
    # 01 re-run with another lineage parameter: 02 is now stale, and 03 says which stage to re-run
    assert run_main(["run", "01_logging", *base, "-p", "positions", "all"], capsys)[0] == 0
    rc, err = run_main(["run", "03_deactivation", *base], capsys)
    assert rc == 2 and "02_selectors in" in err and "computed from an earlier 01_logging" in err
    assert "re-run 02_selectors first" in err and not (rdir / "03_deactivation").exists()


def test_downstream_stage_without_its_input_says_which_stage_to_run(fake_notebooks, fake_config, tmp_path, capsys,
                                                                    untouched):
    rdir = tmp_path / "run"
    rc, err = run_main(["run", "02_selectors", "--no-upstream", "--config", str(fake_config), "-p", "run_dir",
                        str(rdir)], capsys)
    assert rc == 2 and "reads the outputs of 01_logging" in err and "make run NB=01_logging" in err
    assert not rdir.exists()


def test_run_dir_that_is_a_file_gives_one_clear_error(tmp_path, capsys, untouched):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    rc, err = run_main(["run", "02_selectors", "-p", "run_dir", str(target)], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert f"run folder {target} is a file, not a folder; pass -p run_dir" in err
    assert target.read_text() == "not a folder"


def test_unwritable_run_folder_gives_one_clear_error(small_corpora, tmp_path, capsys, untouched):
    # /proc refuses new folders even to root: the same failure as a read-only checkout. The corpus must exist
    # (a fresh clone has none under data/), or the earlier dataset check answers first.
    cfg = write_config(tmp_path / "c.yml", datasets={k: str(v) for k, v in small_corpora.items()})
    rc, err = run_main(["run", "01_logging", "--config", str(cfg), "-p", "run_dir", "/proc/esn-run"], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "cannot write the run folder /proc/esn-run" in err and "pass -p run_dir <a writable folder>" in err


def test_run_dir_that_is_someone_elses_folder_is_refused(tmp_path, capsys, untouched):
    (tmp_path / "thesis.tex").write_text("precious")
    rc, err = run_main(["run", "02_selectors", "-p", "run_dir", str(tmp_path)], capsys)
    assert rc == 2 and "is not empty and holds no run" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]
    rc, err = run_main(["run", "02_selectors", "-p", "run_dir", str(ROOT / "src")], capsys)
    assert rc == 2 and "inside the checkout but not under runs/" in err


# ---------------------------------------------------------------------------------------------------------------------
# Silently ignored config: misspelled keys, keys no stage reads, `dataset`
# ---------------------------------------------------------------------------------------------------------------------


def test_misspelled_config_key_is_refused_with_a_suggestion(tmp_path, capsys, untouched):
    cfg = write_config(tmp_path / "c.yml", labels_=["neutral", "happy"])
    rc, err = run_main(["run", "01_logging", "--config", str(cfg), "-p", "run_dir", str(tmp_path / "r")], capsys)
    assert rc == 2 and "unknown key 'labels_' (did you mean 'labels'?)" in err and "no stage reads it" in err


def test_misspelled_override_is_refused_with_a_suggestion(tmp_path, capsys, untouched):
    rc, err = run_main(["run", "02_selectors", "-p", "fracton", "0.5", "-p", "run_dir", str(tmp_path / "r")], capsys)
    assert rc == 2 and "-p fracton: unknown key 'fracton' (did you mean 'fraction'?)" in err
    assert not (tmp_path / "r").exists()


def test_override_the_stage_does_not_read_is_refused(tmp_path, capsys, untouched):
    rc, err = run_main(["run", "02_selectors", "--no-upstream", "-p", "limit_per_class", "5", "-p", "run_dir",
                        str(tmp_path / "r")], capsys)
    assert rc == 2 and "stage 02_selectors does not read `limit_per_class`" in err and "01_logging" in err
    # make run also accepts what a stage it needs reads (02 needs 01, which reads limit_per_class), not more
    rc, err = run_main(["run", "01_logging", "-p", "n_boot", "5", "-p", "run_dir", str(tmp_path / "r")], capsys)
    assert rc == 2 and "stage 01_logging does not read `n_boot`, nor do the stages it needs (none)" in err
    assert "03_deactivation" in err and not (tmp_path / "r").exists()


def test_dataset_key_chooses_the_identification_dataset():
    cfg = {**load_config(ORGANISM_CFG), "dataset": "B"}
    res = resolution.resolve("03_deactivation", cfg, notebooks=checkout.NOTEBOOKS)
    assert next(iter(res.params["datasets"])) == "B"  # stages identify on the first dataset
    with pytest.raises(ConfigError, match=r"`dataset: C` is not one of the config's datasets \['A', 'B'\]"):
        resolution.resolve("03_deactivation", {**cfg, "dataset": "C"}, notebooks=checkout.NOTEBOOKS)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yml")), ids=lambda p: p.stem)
def test_every_shipped_config_validates_for_every_stage(path):
    """No shipped key is read by no stage (``random_draws`` was): each config validates for each stage."""
    cfg = load_config(path)
    for stage in stage_params.stage_infos(checkout.NOTEBOOKS):
        res = resolution.resolve(stage, cfg, notebooks=checkout.NOTEBOOKS, source=str(path))
        assert set(res.params) <= stage_params.stage_info(stage, checkout.NOTEBOOKS).reads
    assert "random_draws" not in cfg


def test_every_notebook_default_fits_the_schema():
    """The lead's defaults and the shared schema agree (a new parameter is typed by its default)."""
    model = resolution._model(stage_params.stage_infos(checkout.NOTEBOOKS))
    for stage, info in stage_params.stage_infos(checkout.NOTEBOOKS).items():
        defaults = {k: v for k, v in info.defaults.items() if v is not stage_params._NONLITERAL}
        try:
            model.model_validate(defaults)
        except Exception as exc:  # noqa: BLE001 - name the stage
            raise AssertionError(
                f"{stage}: its parameters cell does not fit helpers.book.config.Config: {exc}"
            ) from exc


def test_allowed_values_match_the_code():
    from helpers.data import schema
    from helpers.identify import selection
    from helpers.log import activation_log
    from helpers.subjects import item_prompts, subject_loading

    assert config.POSITION_KINDS == activation_log.POSITION_KINDS
    assert config.SELECTOR_METHODS == selection.METHODS
    assert config.PROMPT_STYLES == item_prompts.PROMPT_STYLES
    assert config.SPLITS == schema.SPLITS
    assert set(config.DTYPES) == {"auto", *subject_loading._DTYPES}
    assert subject_loading.SUBJECT_KEYS == config.SUBJECT_KEYS


# ---------------------------------------------------------------------------------------------------------------------
# Values: types, numbers, booleans, messages that name the fix
# ---------------------------------------------------------------------------------------------------------------------


def test_quoted_number_says_to_drop_the_quotes(tmp_path, capsys, untouched):
    cfg = write_config(tmp_path / "c.yml", batch_size="64")
    rc, err = run_main(["run", "01_logging", "--config", str(cfg), "-p", "run_dir", str(tmp_path / "r")], capsys)
    assert rc == 2
    assert "`batch_size` must be a whole number, got the string '64'; write it without quotes: `batch_size: 64`" in err


def test_exponent_notation_is_a_number_in_configs_and_overrides(tmp_path):
    assert yaml_load("fraction: 5e-3") == {"fraction": 0.005}
    assert pipeline.parse_value("5e-3", "fraction") == 0.005
    assert pipeline.parse_value("[1.0e30]", "alphas") == [1e30]
    res = resolution.resolve("02_selectors", load_config(ORGANISM_CFG), {"fraction": 5e-3},
                             notebooks=checkout.NOTEBOOKS)
    assert res.params["fraction"] == 0.005
    with pytest.raises(ConfigError, match=r"-p alphas\[0\] must be <= 1000, got float 1e\+30 \(steering strengths"):
        resolution.resolve("04_steering", load_config(ORGANISM_CFG), {"alphas": [1e30]}, notebooks=checkout.NOTEBOOKS)


def test_override_that_is_not_a_number_names_the_fix(tmp_path, capsys, untouched):
    rc, err = run_main(["run", "01_logging", "-p", "limit_per_class", "five", "-p", "run_dir", str(tmp_path / "r")],
                       capsys)
    assert rc == 2
    assert "-p limit_per_class must be a whole number, got the string 'five'; give a whole number, e.g. " \
           "-p limit_per_class 50" in err


@pytest.mark.parametrize("text, ok", [("false", True), ("true", True), ('"false"', False), ("yes", False),
                                      ("no", False), ("0", False)])
def test_booleans_are_strict(text, ok):
    cfg = {**load_config(ORGANISM_CFG), "only_correct": yaml_load(text)}
    if ok:
        res = resolution.resolve("01_logging", cfg, notebooks=checkout.NOTEBOOKS)
        assert res.params["only_correct"] is (text == "true")
    else:
        with pytest.raises(ConfigError, match=r"`only_correct` must be true or false"):
            resolution.resolve("01_logging", cfg, notebooks=checkout.NOTEBOOKS)


def test_real_model_config_without_model_names_the_family_to_add(tmp_path, capsys, untouched):
    cfg = tmp_path / "qwen.yml"
    cfg.write_text("\n".join(ln for ln in QWEN_CFG.read_text().splitlines() if not ln.startswith("model:")))
    rc, err = run_main(["run", "01_logging", "--config", str(cfg), "-p", "run_dir", str(tmp_path / "r")], capsys)
    assert rc == 2 and "sets `model_path: Qwen/Qwen2-Audio-7B-Instruct` but not `model`" in err
    assert "add `model: qwen2-audio` to the config" in err and "organism checkpoint" not in err


def test_unknown_choice_lists_the_allowed_values(tmp_path):
    with pytest.raises(ConfigError, match=r"`positions` must be one of \['all', 'audio', 'text', 'last'\] "
                                          r"\(did you mean 'last'\?\)"):
        resolution.resolve("01_logging", {**load_config(ORGANISM_CFG), "positions": "lst"},
                           notebooks=checkout.NOTEBOOKS)


def test_text_override_with_a_colon_stays_text():
    assert pipeline.parse_value("Transcript: {text}", "context_format") == "Transcript: {text}"
    assert pipeline.parse_value("[neutral, happy]", "labels") == ["neutral", "happy"]


def test_dataset_names_cannot_escape_the_stage_folder():
    cfg = {**load_config(ORGANISM_CFG), "datasets": {"../../x": "data/corpus/A"}, "dataset": "../../x"}
    with pytest.raises(ConfigError, match=r"`datasets\[\.\./\.\./x\]` may use letters"):
        resolution.resolve("01_logging", cfg, notebooks=checkout.NOTEBOOKS)


def _tiny_subject():
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from helpers.core.families import get_adapter
    from helpers.subjects import adapters, item_prompts

    from tiny_models import AUDIO_BOS_ID, AUDIO_EOS_ID, PAD_ID, build_tiny, tiny_inputs

    labels = ("neutral", "happy", "angry", "sad")
    model = build_tiny("qwen2-audio")

    def inputs_fn(rows):
        inputs = tiny_inputs("qwen2-audio", model, batch=len(rows), seed=0, ragged=True)
        prompts = [item_prompts.item_prompt(labels, seed=0, item_id=i) for i in rows["clip_id"]]
        return inputs, item_prompts.candidate_matrix(prompts, {"A": 40, "B": 41, "C": 42, "D": 43})

    return adapters.AdapterSubject(model=model, labels=labels, adapter=get_adapter("qwen2-audio"), inputs_fn=inputs_fn,
                                   special_ids=(PAD_ID, AUDIO_BOS_ID, AUDIO_EOS_ID), pad_token_id=PAD_ID)


@pytest.mark.usefixtures("one_thread")
def test_empty_class_says_no_items_not_no_correct_items():
    """Zero items of an emotion in the split, or `-p labels [neutral,happy]` on a 4-emotion subject."""
    from helpers.log.activation_log import log_activations

    subject = _tiny_subject()
    df = pd.DataFrame({"clip_id": [f"c{i}" for i in range(4)], "path": ["/x.wav"] * 4,
                       "label": ["neutral", "happy"] * 2})
    with pytest.raises(ValueError) as err:
        log_activations(subject, df, only_correct=False, batch_size=4, progress=False)
    msg = str(err.value)
    assert "there are no items of ['angry', 'sad'] among the 4 items given" in msg
    assert "answered none" not in msg and "`labels` in the config" in msg


# ---------------------------------------------------------------------------------------------------------------------
# Audio and dataset inputs
# ---------------------------------------------------------------------------------------------------------------------


def _wav(path: Path, data: np.ndarray, sr: int = 16_000, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, subtype=subtype)
    return path


def _tone(n: int = 1600) -> np.ndarray:
    return (0.3 * np.sin(np.arange(n) * 2 * np.pi * 220 / 16_000)).astype(np.float32)


def test_stereo_is_mixed_down(tmp_path):
    wav = _wav(tmp_path / "stereo.wav", np.stack([_tone(), 0.5 * _tone()], axis=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = load_audio(wav, 16_000)
    assert out.ndim == 1 and out.shape == (1600,) and np.abs(out).max() > 0.1


def test_opposite_phase_stereo_warns_naming_the_file_and_fix(tmp_path):
    wav = _wav(tmp_path / "phase.wav", np.stack([_tone(), -_tone()], axis=1))
    with pytest.warns(AudioChannelWarning, match=r"phase\.wav: its 2 channels cancel.*ffmpeg -i phase\.wav"):
        load_audio(wav, 16_000)


def test_nan_samples_are_refused_naming_the_file(tmp_path):
    data = _tone()
    data[10] = np.nan
    wav = _wav(tmp_path / "nan.wav", data, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match=r"nan\.wav contains 1 NaN/Inf sample.*Re-extract or re-export it"):
        load_audio(wav, 16_000)


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00garbage"])
def test_empty_or_corrupt_file_names_the_file_and_fix(tmp_path, content):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(content)
    with pytest.raises(AudioLoadError, match=r"broken\.wav.*re-extract it from the original archive"):
        load_audio(bad, 16_000)


def test_valid_header_with_no_samples_names_the_file(tmp_path):
    wav = _wav(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioLoadError, match=r"empty\.wav contains no samples"):
        load_audio(wav, 16_000)


def test_corrupt_and_empty_files_are_dropped_and_counted_at_load_time_by_default(tmp_path, caplog):
    from helpers.data.crema_d import load_crema_d

    from fixtures_datasets import make_crema_d

    root = make_crema_d(tmp_path / "crema")
    sf.write(root / "AudioWAV" / "1001_DFA_ANG_XX.wav", np.zeros(0, dtype=np.float32), 16_000)
    (root / "AudioWAV" / "1001_DFA_DIS_XX.wav").write_bytes(b"garbage")
    df = load_crema_d(root)  # no probe_audio=True needed
    assert len(df) == 46 and df.attrs["dropped"]["unreadable_audio"] == {"ANG": 1, "DIS": 1}
    assert "1001_DFA_DIS_XX.wav" in caplog.text and "re-extract" in caplog.text


def test_upper_case_extensions_are_found(tmp_path):
    from helpers.data.crema_d import load_crema_d
    from helpers.data.iemocap import load_iemocap

    from fixtures_datasets import make_crema_d, make_iemocap

    root = make_crema_d(tmp_path / "crema")
    for f in list((root / "AudioWAV").glob("*.wav")):
        f.rename(f.with_suffix(".WAV"))
    assert len(load_crema_d(root)) == 48
    iem = make_iemocap(tmp_path / "iemocap")
    n = len(load_iemocap(iem))
    for f in list(iem.rglob("*.wav")):
        f.rename(f.with_suffix(".WAV"))
    assert len(load_iemocap(iem)) == n


def test_dataset_paths_are_checked_before_the_model_loads(tmp_path, capsys, untouched):
    """A missing corpus fails in the pipeline, before a kernel (and the model) starts: no stage folder appears."""
    cfg = write_config(tmp_path / "c.yml", datasets={"A": str(tmp_path / "nowhere")}, dataset="A")
    t0 = time.perf_counter()
    rc, err = run_main(["run", "01_logging", "--config", str(cfg), "-p", "run_dir", str(tmp_path / "r")], capsys)
    assert rc == 1 and time.perf_counter() - t0 < 30
    assert f"datasets.A: no corpus at {tmp_path / 'nowhere'} (missing metadata.csv); generate it with `make corpus`" \
           in err
    assert not (tmp_path / "r").exists()


def test_real_dataset_label_columns_are_checked_before_the_model_loads(tmp_path):
    from helpers.data.loading import LayoutError
    from helpers.data.source_checks import check_source

    from fixtures_datasets import make_meld

    root = make_meld(tmp_path / "MELD.Raw")
    check_source("meld", root=root, labels=["neutral", "happy"])
    csv = root / "dev_sent_emo.csv"
    csv.write_text(csv.read_text().replace("Emotion", "Feeling", 1))
    with pytest.raises(LayoutError, match=r"dev_sent_emo\.csv lacks the column\(s\) \['Emotion'\]"):
        check_source("meld", root=root, labels=["neutral", "happy"])
    with pytest.raises(ValueError, match=r"label\(s\) \['calm'\] cannot occur in meld.*fix `labels`"):
        check_source("meld", root=root, labels=["neutral", "calm"])


def test_real_dataset_without_a_root_says_where_to_point_it(monkeypatch):
    from helpers.data.loading import DatasetNotAvailable
    from helpers.data.source_checks import check_source

    monkeypatch.delenv("ESN_IEMOCAP_ROOT", raising=False)
    with pytest.raises(DatasetNotAvailable, match=r"datasets\.iemocap: no data.*`root: <folder>`.*ESN_IEMOCAP_ROOT"):
        check_source("iemocap", where="datasets.iemocap", labels=["neutral", "happy"])


# ---------------------------------------------------------------------------------------------------------------------
# Deterministic artifacts
# ---------------------------------------------------------------------------------------------------------------------


def test_stats_files_are_byte_identical_across_saves_and_processes(tmp_path):
    from helpers.log.stats import ActivationStats

    g = torch.Generator().manual_seed(0)
    stats = ActivationStats(labels=["neutral", "happy"], tokens=torch.tensor([3.0, 4.0]),
                            items=torch.tensor([1.0, 2.0]), active=torch.rand(2, 5, 2, generator=g),
                            total=torch.rand(2, 5, 2, generator=g), total_sq=torch.rand(2, 5, 2, generator=g),
                            meta={"z": 1, "a": 2, "positions": "last"})
    blobs = {stats.save(tmp_path / f"s{i}.safetensors").read_bytes() for i in range(8)}
    assert len(blobs) == 1
    code = ("import sys, torch; from helpers.log.stats import ActivationStats as A; "
            "A.load(sys.argv[1]).save(sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "s0.safetensors"), str(tmp_path / "p.safetensors")],
                   check=True, cwd=ROOT, timeout=120)
    assert (tmp_path / "p.safetensors").read_bytes() in blobs
    back = ActivationStats.load(tmp_path / "p.safetensors")
    assert back.labels == ["neutral", "happy"] and back.meta == stats.meta
    torch.testing.assert_close(back.total, stats.total)


# ---------------------------------------------------------------------------------------------------------------------
# The project folder, from a checkout or an installed package
# ---------------------------------------------------------------------------------------------------------------------


def test_project_root_is_found_from_the_working_directory_or_the_package(tmp_path, monkeypatch):
    from helpers.book import report
    from helpers.core import io

    project = tmp_path / "book"
    (project / "notebooks" / "deep").mkdir(parents=True)
    for name in io.PROJECT_MARKERS:
        (project / name).write_text("")
    assert io.project_root(project / "notebooks" / "deep") == project.resolve()
    assert io.project_root(ROOT / "tests") == ROOT  # the checkout, as the editable install saw it
    # an installed package (site-packages, no checkout above it) run from inside a checkout finds the checkout
    monkeypatch.setattr(io, "_PACKAGE_DIR", tmp_path / "site-packages" / "helpers")
    monkeypatch.chdir(project / "notebooks")
    assert io.project_root() == project.resolve()
    # ... and from outside one says how to fix it; the version stamp then shows no commit instead of failing
    monkeypatch.chdir(tmp_path)
    with pytest.raises(io.ProjectRootNotFoundError, match=r"_config.yml and pyproject.toml.*cd into it.*pip install"):
        io.project_root()
    assert report._git_commit() == "unknown"


def test_the_public_api_is_importable_from_the_package_top():
    import helpers

    for name in helpers.__all__:
        assert getattr(helpers, name) is not None, name
    from helpers import ActivationStats, select
    from helpers.identify.selection import select as direct

    assert select is direct and ActivationStats.__module__ == "helpers.log.stats"
    with pytest.raises(AttributeError, match="no attribute 'selekt'"):
        helpers.selekt  # noqa: B018
