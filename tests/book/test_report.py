"""The parameter table each chapter shows: this run's values, the notebook's defaults, the paper's values."""

from __future__ import annotations

import pytest

from helpers.book import report


@pytest.fixture
def nbdir(tmp_path):
    (tmp_path / "03_deactivation.md").write_text(
        "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n---\n\n"
        "```{code-cell} ipython3\n:tags: [parameters]\n\nrun_dir = 'runs/x'\nfraction = 0.005\n"
        "random_seeds = [0]\nn_boot = 1000\nalpha = 0.5\n```\n")
    return tmp_path


def rows(nbdir, **namespace):
    ns = {"run_dir": "runs/x", "fraction": 0.005, "random_seeds": [0], "n_boot": 1000, "alpha": 0.5, **namespace}
    return {r["parameter"].strip("`"): r for r in report.parameter_rows("03_deactivation", ns, nbdir)}


def test_defaults_matching_the_paper_carry_no_note(nbdir):
    got = rows(nbdir)
    assert got["fraction"]["note"] == "" and got["fraction"]["paper"] == "0.005 (0.5 %) [later]"
    assert got["n_boot"]["paper"] == "—" and got["alpha"]["note"] == ""
    assert "differs from the paper" in got["random_seeds"]["note"]  # one draw, the paper averages five


def test_a_value_set_by_the_run_is_marked_and_compared_with_the_paper(nbdir):
    got = rows(nbdir, fraction=0.05, n_boot=200, random_seeds=[0, 1, 2, 3, 4])
    assert got["fraction"]["this run"] == "`0.05`" and got["fraction"]["notebook default"] == "`0.005`"
    assert "set by the config" in got["fraction"]["note"] and "differs from the paper" in got["fraction"]["note"]
    assert "paper_fraction" in got["fraction"]["note"]  # the reason is given
    assert got["n_boot"]["note"] == "set by the config or `-p`"
    assert "differs" not in got["random_seeds"]["note"]


def test_the_table_is_markdown_with_one_row_per_parameter(nbdir):
    md = report.parameter_table("03_deactivation", {"run_dir": "r", "fraction": 0.05, "random_seeds": [0],
                                                    "n_boot": 1, "alpha": 0.5}, nbdir).data
    assert md.splitlines()[0].startswith("| parameter | this run |") and len(md.splitlines()) == 2 + 5
