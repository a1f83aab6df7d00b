"""The book as a course: every chapter has learning goals, at least two exercises with hidden solutions, a
parameter table, a link to the results page and a "Try this" command that `make run` accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import jupytext
import pytest

from helpers.book import pipeline, upstream_plan
from helpers.core.io import STAGES

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = [s for s in STAGES if (ROOT / "notebooks" / f"{s}.md").is_file()]


def markdown(stage: str) -> str:
    nb = jupytext.read(ROOT / "notebooks" / f"{stage}.md")
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def code(stage: str) -> list[str]:
    nb = jupytext.read(ROOT / "notebooks" / f"{stage}.md")
    return [c.source for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("stage", CHAPTERS)
def test_chapter_has_goals_exercises_solutions_and_a_results_link(stage):
    text = markdown(stage)
    assert ":::{admonition} Learning goals" in text.split("\n## ")[0], "learning goals belong at the top"
    exercises = re.findall(r"^:::\{exercise\}.*\n:label: (\S+)", text, flags=re.M)
    solutions = re.findall(r"^:::\{solution\} (\S+)\n:class: dropdown", text, flags=re.M)
    assert len(exercises) >= 2 and sorted(exercises) == sorted(solutions), (exercises, solutions)
    assert all(label.startswith(f"ex-{stage[:2]}-") for label in exercises)
    assert all("**Expected outcome.**" in block for block in text.split(":::{solution}")[1:])
    assert "{ref}`results`" in text


@pytest.mark.parametrize("stage", CHAPTERS)
def test_chapter_shows_its_parameter_table(stage):
    cells = code(stage)
    assert any(f'parameter_table("{stage}", globals())' in c for c in cells)


def try_this(stage: str) -> str:
    m = re.search(r":::\{admonition\} Try this.*?```bash\n(make run [^\n]+)\n```", markdown(stage), flags=re.S)
    assert m, f"{stage} has no Try this box with a make run command"
    return m[1]


@pytest.mark.parametrize("stage", CHAPTERS)
def test_try_this_command_is_accepted_by_make_run(stage):
    args = dict(a.split("=", 1) for a in shlex.split(try_this(stage))[2:])
    assert args["NB"] == stage and args["CONFIG"] == "configs/organism.yml"
    tokens = shlex.split(args["PARAMS"])
    overrides = {tokens[i + 1]: pipeline.parse_value(tokens[i + 2], tokens[i + 1]) for i in range(0, len(tokens), 3)}
    plan = upstream_plan.plan_run(stage, ROOT / args["CONFIG"], overrides)  # validated as make run validates it
    assert plan.run_dir.name.startswith("organism+")


def test_exercise_labels_are_unique_across_the_book():
    labels = [lbl for s in CHAPTERS for lbl in re.findall(r"^:label: (ex-\S+)", markdown(s), flags=re.M)]
    assert len(labels) == len(set(labels)) >= 2 * len(CHAPTERS)


def test_pages_workflow_builds_with_make_book_and_deploys_with_the_official_actions():
    import yaml

    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "pages.yml").read_text())
    steps = [st for job in wf["jobs"].values() for st in job["steps"]]
    uses = [st.get("uses", "").split("@")[0] for st in steps]
    assert "actions/upload-pages-artifact" in uses and "actions/deploy-pages" in uses
    assert any("make book" in st.get("run", "") for st in steps)
    upload = next(st for st in steps if st.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    assert wf["permissions"]["pages"] == "write" and wf["permissions"]["id-token"] == "write"
    assert all(job["runs-on"] == "ubuntu-latest" for job in wf["jobs"].values())


def test_config_names_the_repository_and_launch_buttons():
    import yaml

    conf = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert conf["repository"]["url"].startswith("https://github.com/")
    assert conf["launch_buttons"]["binderhub_url"] and conf["launch_buttons"]["colab_url"]
    assert "sphinx_exercise" in conf["sphinx"]["extra_extensions"]
    assert conf["bibtex_bibfiles"] == ["book/references.bib"]
