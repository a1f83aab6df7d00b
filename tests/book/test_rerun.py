"""Re-running with other parameters (issue 13): ``make run`` makes a complete run folder.

A stage asked for with ``-p`` overrides runs in a run folder of its own; the stages it needs are kept when that
folder already holds them with the same parameters, copied from ``runs/<run_name>`` when that one does, and run
otherwise, each with only the overrides it reads. The fast tests use stand-in notebooks; the slow ones run the
README's and the re-running page's own commands with ``make``.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from test_hardening import _nb  # the stand-in notebook writer

from helpers.book import book_export, checkout, lineage, pipeline, resolution, run_folders, stage_params, upstream_plan
from helpers.core.io import STAGES, load_config

ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")

# ---------------------------------------------------------------------------------------------------------------------
# The stage graph
# ---------------------------------------------------------------------------------------------------------------------


def makefile_needs() -> dict[str, set[str]]:
    """The Makefile's prerequisites between stage results: ``$(RUN)/<a>/metrics.json ...: $(RUN)/<b>/metrics.json``."""
    needs: dict[str, set[str]] = {s: set() for s in STAGES}
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^((?:\$\(RUN\)/[0-9]{2}_[a-z_]+/metrics\.json\s*)+):\s*((?:\$\(RUN\)/[0-9]{2}_[a-z_]+/metrics"
                     r"\.json\s*)+)$", line)
        if m:
            targets = re.findall(r"([0-9]{2}_[a-z_]+)/", m[1])
            for t in targets:
                needs[t] |= set(re.findall(r"([0-9]{2}_[a-z_]+)/", m[2]))
    return needs


def test_stage_graph_is_the_makefiles():
    assert {s: set(v) for s, v in upstream_plan.STAGE_NEEDS.items()} == makefile_needs()


def test_every_stage_a_notebook_opens_is_run_before_it():
    for stage, info in stage_params.stage_infos(checkout.NOTEBOOKS).items():
        assert set(info.upstream) <= set(upstream_plan.upstream_order(stage)), stage


def test_upstream_order():
    assert upstream_plan.upstream_order("00_organism") == []
    assert upstream_plan.upstream_order("02_selectors") == ["01_logging"]
    assert upstream_plan.upstream_order("03_deactivation") == ["01_logging", "02_selectors"]
    assert upstream_plan.upstream_order("06_grounding") == ["01_logging", "02_selectors"]


# ---------------------------------------------------------------------------------------------------------------------
# Stand-in stages: kept, copied, run
# ---------------------------------------------------------------------------------------------------------------------

_WRITE = '''
    import json
    from helpers.core import io
    out = io.stage_dir(run_dir, "{stage}")
    {read}
    io.write_metrics(out, {{"labels": labels, "value": {value}}})
'''
_READ = 'up = json.loads((io.stage_dir(run_dir, "{}") / "metrics.json").read_text())'
FAKES = {
    "01_logging": _nb("fake log", 'run_dir = "runs/x"\nlabels = ["a", "b"]\nseed = 0\nlimit = 0\n',
                      _WRITE.format(stage="01_logging", read="", value="limit")),
    "02_selectors": _nb("fake select", 'run_dir = "runs/x"\nlabels = ["a", "b"]\nseed = 0\n',
                        _WRITE.format(stage="02_selectors", value='up["value"]',
                                      read=_READ.format("01_logging"))),
    "03_deactivation": _nb("fake deactivate", 'run_dir = "runs/x"\nlabels = ["a", "b"]\nseed = 0\nn_boot = 10\n',
                           _WRITE.format(stage="03_deactivation", value='[up["value"], n_boot]',
                                         read=_READ.format("02_selectors"))),
    "04_steering": _nb("fake steer", 'run_dir = "runs/x"\nalpha = 0.5\n',
                       _WRITE.format(stage="04_steering", value="alpha",
                                     read=_READ.format("02_selectors"))
                       .replace("labels", '"x"')),
}


@pytest.fixture
def fake_checkout(tmp_path, monkeypatch) -> Path:
    """A checkout of three stand-in stages: checkout.ROOT is ``tmp_path`` (runs go to ``tmp_path/runs``)."""
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    for stage, text in FAKES.items():
        (nbdir / f"{stage}.md").write_text(text)
    (tmp_path / "fake.yml").write_text("run_name: fake\nlabels: [a, b]\nseed: 0\n")
    monkeypatch.setattr(checkout, "NOTEBOOKS", nbdir)
    monkeypatch.setattr(checkout, "ROOT", tmp_path)
    return tmp_path


def run(root: Path, capsys, *params: str) -> tuple[int, str, str]:
    rc = pipeline.main(["run", "03_deactivation", "--config", str(root / "fake.yml"), *params])
    out = capsys.readouterr()
    return rc, out.out, out.err


def rec(folder: Path) -> dict:
    return json.loads((folder / "stage.json").read_text())


def value(folder: Path):
    return json.loads((folder / "metrics.json").read_text())["value"]


@pytest.mark.slow
def test_a_stage_with_overrides_runs_its_upstream_stages_in_its_own_folder(fake_checkout, capsys):
    rc, out, err = run(fake_checkout, capsys, "-p", "n_boot", "5", "-p", "limit", "3")
    assert rc == 0, err
    (rdir,) = (fake_checkout / "runs").iterdir()
    assert rdir.name == f"fake+{lineage.params_hash({'n_boot': 5, 'limit': 3})[:8]}"
    assert "01_logging: ran" in out and "02_selectors: ran" in out
    assert value(rdir / "03_deactivation") == [3, 5]  # the override reached the stage that reads it, upstream
    # only the parameters a stage reads are passed to it, and papermill has nothing to warn about
    assert rec(rdir / "02_selectors")["params"] == {"labels": ["a", "b"], "seed": 0}
    assert "Passed unknown parameter" not in out + err and "Traceback" not in err
    # again: nothing upstream is recomputed
    rc, out, err = run(fake_checkout, capsys, "-p", "n_boot", "5", "-p", "limit", "3")
    assert rc == 0, err
    assert "01_logging: kept" in out and "02_selectors: kept" in out and "ran" not in out


@pytest.mark.slow
def test_upstream_stages_an_override_does_not_touch_are_copied_from_the_configs_run(fake_checkout, capsys):
    assert run(fake_checkout, capsys)[0] == 0  # the configuration's own run: runs/fake
    home = fake_checkout / "runs" / "fake"
    assert value(home / "03_deactivation") == [0, 10]
    rc, out, err = run(fake_checkout, capsys, "-p", "n_boot", "7")  # read by 03 only
    assert rc == 0, err
    rdir = fake_checkout / "runs" / f"fake+{lineage.params_hash({'n_boot': 7})[:8]}"
    assert "01_logging: copied from runs/fake" in out and "02_selectors: copied from runs/fake" in out
    for up in ("01_logging", "02_selectors"):
        assert rec(rdir / up)["copied_from"] == "runs/fake"
        assert rec(rdir / up)["params_sha256"] == rec(home / up)["params_sha256"]
    assert value(rdir / "03_deactivation") == [0, 7]
    assert rec(rdir / "03_deactivation")["inputs"] == {"02_selectors": rec(home / "02_selectors")["params_sha256"]}
    # an override 01 reads: 01 is run, and 02, made from the other 01, is run again (not copied)
    rc, out, err = run(fake_checkout, capsys, "-p", "n_boot", "7", "-p", "limit", "2")
    assert rc == 0, err
    assert "01_logging: ran" in out and "02_selectors: ran" in out
    assert value(fake_checkout / "runs" / f"fake+{lineage.params_hash({'n_boot': 7, 'limit': 2})[:8]}"
                 / "03_deactivation") == [2, 7]


@pytest.mark.slow
def test_an_upstream_result_made_under_other_parameters_is_rerun(fake_checkout, capsys):
    rdir = fake_checkout / "runs" / "mine"
    assert run(fake_checkout, capsys, "-p", "run_dir", str(rdir))[0] == 0
    rc, out, err = run(fake_checkout, capsys, "-p", "run_dir", str(rdir), "-p", "labels", "[a, b, c]")
    assert rc == 0, err
    assert "01_logging: ran" in out and "02_selectors: ran" in out
    assert rec(rdir / "01_logging")["params"]["labels"] == ["a", "b", "c"]


def test_no_upstream_keeps_the_single_stage_refusal(fake_checkout, capsys):
    rc, _, err = run(fake_checkout, capsys, "--no-upstream", "-p", "n_boot", "5")
    assert rc == 2 and "reads the outputs of 02_selectors" in err
    assert not (fake_checkout / "runs").exists()


def test_an_override_no_needed_stage_reads_is_refused_before_anything_runs(fake_checkout, capsys):
    rc, out, err = run(fake_checkout, capsys, "-p", "n_boot", "5", "-p", "alpha", "1.0")  # 04 reads alpha
    assert rc == 2 and "stage 03_deactivation does not read `alpha`, nor do the stages it needs" in err
    assert "read by ['04_steering']" in err and not (fake_checkout / "runs").exists()


# ---------------------------------------------------------------------------------------------------------------------
# The documented commands, end to end with make
# ---------------------------------------------------------------------------------------------------------------------


def documented_commands() -> list[tuple[str, str]]:
    """Every ``make run ...`` line of the README and of the re-running page."""
    found = []
    for page in ("README.md", "book/rerun.md"):
        for line in (ROOT / page).read_text().splitlines():
            command = line.split("#")[0].strip()
            if command.startswith("make run NB=") and command not in {c for _, c in found}:
                found.append((page, command))
    return found


def test_the_pages_show_make_run_commands():
    pages = {page for page, _ in documented_commands()}
    assert pages == {"README.md", "book/rerun.md"}


def _parse(command: str) -> tuple[str, dict]:
    args = dict(a.split("=", 1) for a in shlex.split(command)[2:])
    tokens = shlex.split(args.get("PARAMS", ""))
    overrides = {tokens[i + 1]: pipeline.parse_value(tokens[i + 2], tokens[i + 1]) for i in range(0, len(tokens), 3)}
    return args["NB"], overrides


@pytest.mark.slow
@pytest.mark.skipif(MAKE is None, reason="needs make")
@pytest.mark.parametrize("page,command", documented_commands(), ids=lambda x: x.replace(" ", "_")[:60])
def test_documented_make_run_command_gives_a_complete_run(page, command):
    stage, overrides = _parse(command)
    config = resolution.resolve(stage, load_config(ROOT / "configs" / "organism.yml"), overrides,
                       notebooks=checkout.NOTEBOOKS)
    rdir = run_folders.run_dir_for(config.merged, config.overrides)
    assert rdir.parent == ROOT / "runs" and "+" in rdir.name
    shutil.rmtree(rdir, ignore_errors=True)  # a folder of these parameters only: start from nothing
    try:
        proc = subprocess.run(shlex.split(command), cwd=ROOT, capture_output=True, text=True, timeout=1200)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        assert "Passed unknown parameter" not in log and "Kernel is running" not in log and "Traceback" not in log
        assert "Unable to parse line" not in log and "TqdmWarning" not in log, log[-3000:]
        for name in [*upstream_plan.upstream_order(stage), stage]:
            folder = rdir / name
            assert (folder / "metrics.json").is_file() and (folder / f"{name}.ipynb").is_file(), name
            record = run_folders.read_record(folder)
            reads = stage_params.stage_info(name, checkout.NOTEBOOKS).reads
            for key, val in overrides.items():  # the overrides a stage reads reached it; the others did not
                if key in reads:
                    assert record["params"][key] == val, (name, key)
            nb = json.loads((folder / f"{name}.ipynb").read_text())
            passed = set(nb["metadata"]["papermill"]["parameters"]) - {"run_dir"}
            assert passed <= reads, (name, passed - reads)
        assert f"executed {stage} -> runs/{rdir.name}/{stage}/{stage}.ipynb" in proc.stdout
    finally:
        shutil.rmtree(rdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------------
# The book's copy of an executed notebook
# ---------------------------------------------------------------------------------------------------------------------


def test_the_books_copy_hides_parameter_cells_and_drops_paths_and_progress_bars(tmp_path):
    root = checkout.ROOT
    home = Path.home()
    nb = {"metadata": {"papermill": {"output_path": f"{root}/runs/organism/.03_deactivation.0123abcd.tmp/x.ipynb"}},
          "nbformat": 4, "nbformat_minor": 5, "cells": [
              {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "n_boot = 1000", "outputs": []},
              {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "source": "n_boot = 200",
               "outputs": []},
              {"cell_type": "code", "metadata": {}, "source": "run()", "outputs": [
                  {"output_type": "stream", "name": "stderr", "text": f"{root}/.venv/lib/tqdm/auto.py:21: TqdmWarning"},
                  {"output_type": "display_data", "metadata": {}, "data": {
                      "application/vnd.jupyter.widget-view+json": {"model_id": "x"}, "text/plain": "HBox()"}},
                  {"output_type": "stream", "name": "stdout", "text": f"read {root}/data/corpus/A and {home}/x"}]},
              {"cell_type": "markdown", "metadata": {}, "source": "text"}]}
    src = tmp_path / "in.ipynb"
    src.write_text(json.dumps(nb))
    out = json.loads(book_export.book_copy(src, tmp_path / "book" / "out.ipynb").read_text())
    text = json.dumps(out)
    assert str(root) not in text and str(home) not in text and ".tmp" not in text
    assert out["metadata"]["papermill"]["output_path"] == "runs/organism/03_deactivation/x.ipynb"
    tags = [c["metadata"].get("tags", []) for c in out["cells"]]
    assert tags[0] == ["parameters", "remove-cell"] and tags[1] == ["injected-parameters", "remove-cell"]
    assert tags[2] == [] and "tags" not in out["cells"][3]["metadata"]
    assert out["cells"][2]["outputs"] == [{"output_type": "stream", "name": "stdout",
                                           "text": "read data/corpus/A and ~/x"}]
    assert json.loads(src.read_text()) == nb  # the run's own notebook is unchanged
