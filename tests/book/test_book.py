"""End to end: a stage notebook through papermill, the Jupyter Book build, and the page in a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.book import benchpage, book_export, claims, pipeline, stage_run

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def executed_00(small_corpora, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    overrides = {"datasets": {k: str(v) for k, v in small_corpora.items()}, "eval_limit": 16, "probe_epochs": 20}
    nb = stage_run.execute_stage("00_organism", ROOT / "configs" / "organism.yml", overrides, run_dir=run_dir)
    return nb


def test_stage_00_runs_through_papermill_and_writes_metrics(executed_00):
    metrics = json.loads((executed_00.parent / "metrics.json").read_text())
    assert set(metrics["accuracy"]) == {"A", "B"}
    for key in ("decoder_gates_zeroed_accuracy", "encoder_probe_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert all(0.0 <= v <= 1.0 for v in metrics["accuracy"].values())
    nb = json.loads(executed_00.read_text())
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])
    assert any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])
    assert (executed_00.parent / "confusion.png").stat().st_size > 1000


def test_unknown_stage_and_bad_config_fail_clearly(tmp_path):
    with pytest.raises(pipeline.ConfigError, match="unknown stage"):
        stage_run.notebook_source("07_nothing")
    bad = tmp_path / "bad.yml"
    bad.write_text("model: organism\n")
    with pytest.raises(pipeline.ConfigError, match="run_name"):
        stage_run.execute_stage("00_organism", bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(pipeline.ConfigError, match="mapping"):
        stage_run.execute_stage("00_organism", bad)
    assert pipeline.main(["run", "07_nothing"]) == 2


def test_failed_stage_leaves_no_finished_notebook(small_corpora, tmp_path):
    # a corpus table whose audio is missing passes the pipeline's pre-kernel checks and fails inside the notebook
    broken = tmp_path / "no-audio"
    broken.mkdir()
    shutil.copy(small_corpora["A"] / "metadata.csv", broken / "metadata.csv")
    overrides = {"datasets": {"A": str(broken), "B": str(broken)}}
    with pytest.raises(Exception, match="make corpus"):
        stage_run.execute_stage("00_organism", ROOT / "configs" / "organism.yml", overrides, run_dir=tmp_path / "r")
    stage = tmp_path / "r" / "00_organism"
    assert not (stage / "00_organism.ipynb").exists()
    assert not (stage / "metrics.json").exists()
    assert (stage / "00_organism.failed.ipynb").exists()


@pytest.fixture(scope="module")
def built_book(executed_00, tmp_path_factory) -> Path:
    """The book's real config and prose pages with the executed test notebook, built with warnings as errors."""
    src = tmp_path_factory.mktemp("book")
    for name in ("_config.yml", "_vendor", "bench", "src"):  # src: the method page includes its functions
        target = ROOT / name
        (shutil.copytree if target.is_dir() else shutil.copy)(target, src / name,
                                                                 **({"ignore": shutil.ignore_patterns("__pycache__")}
                                                                    if target.is_dir() else {}))
    shutil.copytree(ROOT / "book", src / "book", ignore=shutil.ignore_patterns("executed", "results.md", "generated"))
    (src / "book" / "executed").mkdir()
    book_export.book_copy(executed_00, src / "book" / "executed" / "00_organism.ipynb")  # as make book copies it
    claims.write_page(executed_00.parent.parent, src / "book" / "results.md")  # as make book generates it
    benchpage.write(ROOT / "bench" / "results.json", src / "book" / "generated")
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    for part in toc["parts"]:
        part["chapters"] = [c for c in part["chapters"]
                            if not c["file"].startswith("book/executed/") or c["file"].endswith("00_organism")]
    (src / "_toc.yml").write_text(yaml.safe_dump(toc))
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", str(src), "--builder", "html", "-W", "-n", "--keep-going"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return src / "_build" / "html"


def test_book_builds_with_chapter_and_vendored_mathjax(built_book):
    assert (built_book / "index.html").is_file()
    page = (built_book / "book" / "executed" / "00_organism.html").read_text()
    assert "model organism" in page
    assert page.count("<img") >= 4, "chapter 00 should show its figures (spectrograms, prosody, curves, confusion)"
    index = (built_book / "book" / "intro.html").read_text()
    assert "mathjax/tex-svg.js" in index and "cdn.jsdelivr" not in index
    assert index.count("_static/mathjax/") == 1, "only the one MathJax bundle may be loaded"
    assert (built_book / "_static" / "mathjax" / "tex-svg.js").is_file()


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    return exe


def test_index_page_renders_figure_and_math_in_headless_chromium(built_book, tmp_path):
    exe = _chromium()
    page = built_book / "book" / "intro.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000"]
    dom = subprocess.run([exe, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    html = dom.stdout
    assert "<mjx-container" in html, "MathJax did not typeset the math (vendored script not loaded?)"
    assert "<svg" in html.split("<mjx-container", 1)[1][:2000], "math was not rendered to SVG"
    assert 'src="../_images/pipeline.svg"' in html or "pipeline.svg" in html
    assert (built_book / "_images" / "pipeline.svg").is_file()
    shot = tmp_path / "intro.png"
    subprocess.run([exe, *flags, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    img = Image.open(shot).convert("L")
    assert len(set(img.getdata())) > 10, "the screenshot is blank"


def test_real_model_config_fails_fast_and_clearly_without_weights(capsys, tmp_path):
    """`make run NB=01_logging CONFIG=configs/<real>.yml` here: no weights, so a short message naming the fix."""
    rc = pipeline.main(["run", "01_logging", "--config", str(ROOT / "configs" / "qwen2-audio-iemocap.yml"),
                        "-p", "run_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "ModelNotAvailableError" in err and "hf download" in err
    assert len(err) < 2000


# ---------------------------------------------------------------------------------------------------------------------
# Chapters in a real browser: every figure has a caption, no output runs past the text column
# ---------------------------------------------------------------------------------------------------------------------

_PROBE = """
<script>
window.addEventListener('load', () => setTimeout(() => {
  const art = document.querySelector('article') || document.querySelector('main') || document.body;
  const edge = art.getBoundingClientRect().right;
  const scroller = (el) => { for (let p = el.parentElement; p && p !== art; p = p.parentElement) {
      const ox = getComputedStyle(p).overflowX; if (ox === 'auto' || ox === 'scroll') return true; } return false; };
  const over = [];
  document.querySelectorAll('.cell_output *').forEach(el => {
    const b = el.getBoundingClientRect();
    if (b.width > 0 && b.right > edge + 2 && !scroller(el))
      over.push(el.tagName.toLowerCase() + ' +' + Math.round(b.right - edge) + 'px');
  });
  const scrolls = [];  // boxes whose content is wider than the box: cut off, or readable only by scrolling
  document.querySelectorAll('.cell_output, .cell_output *').forEach(el => {
    if (el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 2)
      scrolls.push(el.tagName.toLowerCase() + '.' + String(el.className).split(' ')[0] + ' ' + el.scrollWidth + '>' +
                   el.clientWidth);
  });
  const imgs = [...document.querySelectorAll('.cell_output img')];
  const bare = imgs.filter(i => {
    const cap = i.closest('figure') && i.closest('figure').querySelector('figcaption');
    if (cap && cap.textContent.trim()) return false;
    const cell = i.closest('.cell'); const next = cell && cell.nextElementSibling;
    return !(next && next.textContent.trim().startsWith('Figure.'));
  }).map(i => i.getAttribute('src'));
  const out = document.createElement('pre');
  out.id = 'esn-probe';
  out.textContent = JSON.stringify({over: over.slice(0, 20), scrolls: scrolls.slice(0, 20), images: imgs.length,
                                    bare: bare, pageWidth: document.documentElement.scrollWidth,
                                    view: window.innerWidth});
  document.body.appendChild(out);
}, 500));
</script>
"""


def probe_page(page: Path, tmp_path: Path) -> dict:
    """Load ``page`` (a copy with a measuring script, next to the original so its assets resolve) in headless
    Chromium at a laptop's width and return what the script measured."""
    exe = _chromium()
    probe = page.resolve().with_name(f".probe-{page.name}")
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--window-size=1280,900"]
    try:
        dom = subprocess.run([exe, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                             timeout=180).stdout
    finally:
        probe.unlink(missing_ok=True)
    import html as html_lib
    import re

    m = re.search(r'<pre id="esn-probe">(.*?)</pre>', dom, flags=re.S)
    assert m, "the measuring script did not run"
    return json.loads(html_lib.unescape(m[1]))


def check_chapter(page: Path, tmp_path: Path) -> None:
    got = probe_page(page, tmp_path)
    assert got["images"] > 0, f"{page.name}: no figures found"
    assert not got["bare"], f"{page.name}: figures without a caption: {got['bare']}"
    assert not got["over"], f"{page.name}: outputs run past the text column: {got['over']}"
    # text and code lines wrap (book/_static/esn.css); only a wide table may scroll inside its own box
    cut = [s for s in got["scrolls"] if s.startswith("pre")]
    assert not cut, f"{page.name}: output lines wider than the column: {cut}"
    assert got["pageWidth"] <= got["view"], f"{page.name}: the page scrolls sideways ({got})"


def test_chapter_figures_have_captions_and_outputs_fit_the_column(built_book, tmp_path):
    check_chapter(built_book / "book" / "executed" / "00_organism.html", tmp_path)


BUILT = ROOT / "_build" / "html" / "book" / "executed"


@pytest.mark.parametrize("stage", list(pipeline.STAGES))
def test_every_chapter_of_the_built_book_has_captions_and_fits(stage, tmp_path):
    """The same on the book `make book` built in this checkout (skipped when there is none)."""
    page = BUILT / f"{stage}.html"
    if not page.is_file():
        pytest.skip("no built book here: run make book")
    check_chapter(page, tmp_path)
