"""The book as a course: every chapter has learning goals, at least two exercises with hidden solutions, a
parameter table, a link to the results page and a "Try this" command that `make run` accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import jupytext
import pytest

from helpers import pipeline
from helpers.io import STAGES

ROOT = Path(__file__).resolve().parents[1]
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
    plan = pipeline.plan_run(stage, ROOT / args["CONFIG"], overrides)  # validated as make run validates it
    assert plan.run_dir.name.startswith("organism+")


def test_exercise_labels_are_unique_across_the_book():
    labels = [lbl for s in CHAPTERS for lbl in re.findall(r"^:label: (ex-\S+)", markdown(s), flags=re.M)]
    assert len(labels) == len(set(labels)) >= 2 * len(CHAPTERS)
