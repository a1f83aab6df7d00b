"""Results against the paper: one row per claim, this run's number and a verdict computed by a stated rule.

The page ``book/results.md`` is generated from a run folder's ``<stage>/metrics.json`` files (``make book`` runs
``python -m helpers.book.claims --run runs/organism --out book/results.md`` before the HTML build), so no number on it
is typed by hand. Each :class:`Claim` names the paper's statement with its confidence mark (``[paper]`` from the
abstract, ``[notes]`` from secondary readings, ``[later]`` from the first author's follow-up work, ``[ours]`` for
this book's extension), the chapter that tests it, the rule, and a function from the metrics to an
:class:`Outcome`.

Verdicts: :data:`REPRODUCED`, :data:`NOT_REPRODUCED`, :data:`NOT_TESTABLE` (the organism cannot test it: the
claim is about a model size, a layer index or a number of a real model) and :data:`NOT_RUN` (the stage's metrics
are missing from the run folder).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.io import STAGES, atomic_write_text

__all__ = [
    "CLAIMS",
    "NOT_REPRODUCED",
    "NOT_RUN",
    "NOT_TESTABLE",
    "REPRODUCED",
    "Claim",
    "chi2_critical",
    "Outcome",
    "evaluate",
    "load_metrics",
    "render",
    "uniformity_chi2",
    "write_page",
]

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable on the organism"
NOT_RUN = "not run"

Metrics = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Outcome:
    """This run's number(s) as text, and the verdict."""

    value: str
    verdict: str


@dataclass(frozen=True)
class Claim:
    """One statement of the paper (or of the book's extension) and how this run tests it."""

    key: str
    mark: str
    statement: str
    stage: str
    rule: str
    check: Callable[[Metrics], Outcome]
    needs: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------------------------------


def _num(x: float, signed: bool = True) -> str:
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _ci(value: float, ci: Sequence[float] | None, signed: bool = True) -> str:
    if ci is None:
        return _num(value, signed)
    return f"{_num(value, signed)} [{_num(ci[0], signed)}, {_num(ci[1], signed)}]"


def _verdict(ok: bool) -> str:
    return REPRODUCED if ok else NOT_REPRODUCED


def _below(ci: Sequence[float], other: Sequence[float]) -> bool:
    """The interval ``ci`` lies entirely below ``other``."""
    return ci[1] < other[0]


# ---------------------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------------------


def _deactivation(selector: str, budget: str | None = None) -> Callable[[Metrics], Outcome]:
    def check(m: Metrics) -> Outcome:
        d = m["03_deactivation"]
        gap = d["gap"] if budget is None else d["gap_by_budget"][budget]
        ci = d["gap_ci"] if budget is None else d["gap_ci_by_budget"][budget]
        control = f"random({selector})" if f"random({selector})" in ci else "random"  # else the pooled control
        ok = ci[selector][1] < 0 and _below(ci[selector], ci[control])
        return Outcome(f"{selector.upper()} {_ci(gap[selector], ci[selector])}; {control} "
                       f"{_ci(gap[control], ci[control])}", _verdict(ok))
    return check


def _strong_selectors(m: Metrics) -> Outcome:
    d = m["03_deactivation"]
    gap, ci = d["gap"], d["gap_ci"]
    strong, weak = ("mad", "cas"), ("lap", "lape")
    ok = all(_below(ci[s], ci[w]) for s in strong for w in weak)
    return Outcome("; ".join(f"{s.upper()} {_ci(gap[s], ci[s])}" for s in (*strong, *weak)), _verdict(ok))


def _steering(m: Metrics) -> Outcome:
    d = m["04_steering"]
    alphas, flips = d["alpha"], d["flip_rate"]["multiply"]
    ok = bool(d["flip_rate_increasing"]["multiply"]) and flips[-1] > flips[0]
    shown = ", ".join(f"α={a:g}: {_num(f, False)}" for a, f in zip(alphas, flips, strict=True))
    return Outcome(f"flip rate toward the steered emotion (gates × (1+α)): {shown}", _verdict(ok))


def _dose(m: Metrics) -> Outcome:
    d = m["03_deactivation"]["dose_response"]
    sel = next(s for s in d if not s.startswith("random"))
    ks = sorted(d[sel], key=int)
    gaps = [d[sel][k] for k in ks]
    ctrl = d.get(f"random({sel})", {})
    ok = all(b < a for a, b in zip(gaps, gaps[1:], strict=False)) and (not ctrl or gaps[-1] < ctrl[ks[-1]])
    shown = ", ".join(f"k={k}: {_num(g)}" for k, g in zip(ks, gaps, strict=True))
    return Outcome(f"{sel.upper()} deactivation gap by neurons per emotion: {shown}", _verdict(ok))


def chi2_critical(df: int, z: float = 3.090) -> float:
    """The chi-square quantile for ``df`` degrees of freedom at the normal quantile ``z`` (3.090: 0.1 % upper
    tail), by the Wilson–Hilferty approximation (within 1 % of the exact value for df >= 3)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * a**0.5) ** 3


def uniformity_chi2(counts: Sequence[float]) -> float:
    """Pearson's chi-square statistic of ``counts`` against an even spread over their cells."""
    total = float(sum(counts))
    expected = total / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


def _layers(m: Metrics) -> Outcome:
    layers = m["02_selectors"]["layers"]
    out, ok = [], True
    for sel in ("mad", "cas"):
        if sel not in layers:
            continue
        per = [sum(v) for v in zip(*layers[sel].values(), strict=True)]
        stat, crit = uniformity_chi2(per), chi2_critical(len(per) - 1)
        ok &= stat > crit
        out.append(f"{sel.upper()}: neurons per layer {per}, chi-square {stat:.1f} (0.1 % critical value "
                   f"{crit:.1f})")
    return Outcome("; ".join(out), _verdict(ok and bool(out)))


def _transfer_partial(m: Metrics) -> Outcome:
    d = m["05_transfer"]
    gap, ci = d["gap"], d["gap_ci"]
    ok = all(ci[p][1] < 0 for p in ("A->B", "B->A")) and (gap["A->B"] > gap["B->B"] or gap["B->A"] > gap["A->A"])
    return Outcome("; ".join(f"{p} {_ci(gap[p], ci[p])}" for p in ("A->A", "A->B", "B->A", "B->B")), _verdict(ok))


def _transfer_asymmetric(m: Metrics) -> Outcome:
    d = m["05_transfer"]
    gap, ci = d["gap"], d["gap_ci"]
    ok = _below(ci["A->B"], ci["B->A"]) or _below(ci["B->A"], ci["A->B"])
    return Outcome(f"A->B {_ci(gap['A->B'], ci['A->B'])}; B->A {_ci(gap['B->A'], ci['B->A'])}", _verdict(ok))


def _label_free(m: Metrics) -> Outcome:
    d = m["04_steering"]
    corr, alphas = d["corrections"], d["alpha"]
    free = [s for s in ("two_pass", "mix", "union") if s in corr]
    ok = all(corr["targeted"][i] >= corr[s][i] for s in free for i in range(len(alphas)))
    shown = "; ".join(f"{s}: " + ", ".join(_num(v, False) for v in corr[s]) for s in ("targeted", *free))
    return Outcome(f"corrections at α = {', '.join(f'{a:g}' for a in alphas)}: {shown}", _verdict(ok))


def _non_additive(m: Metrics) -> Outcome:
    d = m["04_steering"]["non_additivity"]
    ref = "0.5" if "0.5" in d else sorted(d, key=float)[0]
    r = d[ref]
    ok = r["share_ci_excluding_0"] >= 0.5
    return Outcome(f"at α = {ref}: interaction {_num(r['interaction'])}, joint / sum of single effects "
                   f"{_num(r['ratio'], False)}, share of emotion pairs whose interaction interval excludes 0 "
                   f"{_num(r['share_ci_excluding_0'], False)}", _verdict(ok))


def _not_testable(reason: str) -> Callable[[Metrics], Outcome]:
    def check(m: Metrics) -> Outcome:
        return Outcome(reason, NOT_TESTABLE)

    check.reads_metrics = False  # type: ignore[attr-defined]
    return check


def _known_answer(m: Metrics) -> Outcome:
    k = m["06_grounding"]["known_answer"]
    ok = k["audio"] >= 0.7 and k["text"] <= 0.3 and k["text"] < k["random"] < k["audio"]
    return Outcome(f"g of planted neurons: audio-reading {_num(k['audio'], False)}, text-reading "
                   f"{_num(k['text'], False)}, random {_num(k['random'], False)}", _verdict(ok))


def _reliability(m: Metrics) -> Outcome:
    d = m["06_grounding"]
    g, ci = d["grounding_by_reliability"], d["grounding_by_reliability_ci"]
    levels = list(g)
    ok = _below(ci[levels[-1]], ci[levels[0]])
    return Outcome("; ".join(f"{lv} {_ci(g[lv], ci[lv], False)}" for lv in levels), _verdict(ok))


def _dissociation(m: Metrics) -> Outcome:
    d = m["06_grounding"]
    ok = bool(d["dissociation_established"])
    dis = d["dissociation"]
    shown = []
    for side, what in (("text_sets", "text_following"), ("audio_sets", "audio_following")):
        row = dis.get(side, {})
        if what in row:
            value = _ci(row[what], row.get(what + "_ci"))
            shown.append(f"{side.replace('_', '-')} zeroed: {what.replace('_', '-')} {value}")
    return Outcome("; ".join(shown) or "see chapter 06", _verdict(ok))


def _organism_listens(m: Metrics) -> Outcome:
    d = m["00_organism"]
    c = d["conflict_follows_audio"]
    ok = bool(d["conflict_follows_audio_monotone"]) and list(c.values())[0] > 0.5 > list(c.values())[-1]
    return Outcome("share of conflicting items answered by the audio: "
                   + ", ".join(f"{k} {_num(v, False)}" for k, v in c.items()), _verdict(ok))


CLAIMS: tuple[Claim, ...] = (
    Claim("deactivation", "[paper]",
          "Deactivating the neurons of an emotion degrades recognition of that emotion disproportionately, largely "
          "preserving the other classes.", "03_deactivation",
          "MAD's mean gap (SE − CE) has a 95 % interval below 0 and entirely below that of its random control",
          _deactivation("mad")),
    Claim("deactivation-paper-budget", "[paper][later]",
          "The same at the paper's budget of 0.5 % of all decoder neurons per emotion.", "03_deactivation",
          "as above, at the 0.5 % budget", _deactivation("mad", "0.5%")),
    Claim("selectors", "[paper][notes]",
          "Of the four selector families, MAD and CAS give much stronger causal effects than LAP and LAPE.",
          "03_deactivation", "the gap intervals of both MAD and CAS lie entirely below those of both LAP and LAPE",
          _strong_selectors),
    Claim("steering", "[paper]", "Amplifying an emotion's neurons steers predictions toward that emotion.",
          "04_steering", "the flip rate toward the steered emotion rises with every step of α (multiply mode)",
          _steering),
    Claim("dose", "[paper]", "Effects scale with intervention strength.", "03_deactivation",
          "the deactivation gap falls with every step of k (neurons per emotion) and ends below its random "
          "control", _dose),
    Claim("modest-data", "[paper]", "Effects appear with modest identification data (about 50 correct items per "
          "emotion saturate them [later]).", "01_logging",
          "needs identification sweeps over the number of items; the book does not vary it",
          _not_testable("not measured: run chapter 03 with `-p limit_per_class` (chapter 01 re-runs) to probe it")),
    Claim("layers", "[paper]", "Emotion-sensitive neurons cluster non-uniformly over layers.", "02_selectors",
          "for MAD and CAS, the neurons' spread over layers (all emotions pooled) differs from an even spread: "
          "Pearson's chi-square beyond its 0.1 % critical value", _layers),
    Claim("layer-indices", "[notes]", "The clusters sit at layer 0, layers 6–8 and 19–22.", "02_selectors",
          "layer indices of a 28-layer model", _not_testable("the organism's decoder has too few layers")),
    Claim("transfer-partial", "[paper]", "Cross-dataset transfer is partial.", "05_transfer",
          "both cross-dataset gaps have intervals below 0, and at least one is weaker than the gap found on the "
          "target dataset itself", _transfer_partial),
    Claim("transfer-asymmetric", "[paper]", "Cross-dataset transfer is asymmetric.", "05_transfer",
          "the intervals of the A->B and B->A gaps do not overlap", _transfer_asymmetric),
    Claim("label-free", "[notes]", "Label-free injection strategies (2-Pass, Mix, Union) are weaker than targeted "
          "steering.", "04_steering", "targeted steering corrects at least as many items as every label-free "
          "strategy at every α", _label_free),
    Claim("non-additive", "[notes]", "Jointly amplifying several emotions' neurons is non-additive.", "04_steering",
          "at α = 0.5, at least half of the emotion pairs have an interaction interval excluding 0", _non_additive),
    Claim("reference-numbers", "[later]", "Qwen2.5-Omni-7B on 5-class MSP-Podcast: UAR 36.93, deactivation gap "
          "−13.47, steering gap +4.60 (α = 0.5).", "03_deactivation", "numbers of a real model",
          _not_testable("a real model's numbers; see the chapter Reproducing on real models")),
    Claim("organism-listens", "[ours]", "The organism follows the audio when it is clear and the text hint when "
          "the audio carries no emotion (the reliability dial works).", "00_organism",
          "the share of conflicting items answered by the audio falls with reliability, from above 0.5 to below",
          _organism_listens),
    Claim("known-answer", "[ours]", "The grounding coefficient recovers planted audio- and text-reading neurons.",
          "06_grounding", "planted audio neurons g ≥ 0.7, planted text neurons g ≤ 0.3, random sets in between",
          _known_answer),
    Claim("grounding-reliability", "[ours]", "ESNs' grounding follows the reliability dial: g falls as the audio "
          "carries less emotion.", "06_grounding",
          "the interval of g at the least reliable level lies entirely below that at the clearest", _reliability),
    Claim("dissociation", "[ours]", "Double dissociation: zeroing text-grounded ESNs hurts following the text, "
          "zeroing audio-grounded ones following the audio.", "06_grounding",
          "chapter 06's `dissociation_established` (both effects beyond their random controls)", _dissociation),
)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation and the page
# ---------------------------------------------------------------------------------------------------------------------


def load_metrics(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{stage: metrics}`` for every stage of ``run_dir`` that has a ``metrics.json``."""
    out = {}
    for stage in STAGES:
        path = Path(run_dir) / stage / "metrics.json"
        if path.is_file():
            out[stage] = json.loads(path.read_text())
    return out


def evaluate(metrics: Metrics, claims: Sequence[Claim] = CLAIMS) -> list[dict[str, str]]:
    """One row per claim: key, mark, statement, stage, rule, value, verdict."""
    rows = []
    for c in claims:
        needs = set(c.needs) | {c.stage} if getattr(c.check, "reads_metrics", True) else set()
        if not needs <= set(metrics):
            outcome = Outcome("—", NOT_RUN)
        else:
            try:
                outcome = c.check(metrics)
            except (KeyError, IndexError, StopIteration, TypeError) as exc:
                outcome = Outcome(f"metrics lack {exc}", NOT_RUN)
        rows.append({"key": c.key, "mark": c.mark, "statement": c.statement, "stage": c.stage, "rule": c.rule,
                     "value": outcome.value, "verdict": outcome.verdict, "ran": str(c.stage in metrics)})
    return rows


_CHAPTER_TITLES = {
    "00_organism": "00", "01_logging": "01", "02_selectors": "02", "03_deactivation": "03",
    "04_steering": "04", "05_transfer": "05", "06_grounding": "06",
}  # fmt: skip


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(rows: Sequence[Mapping[str, str]], run: str = "runs/organism") -> str:
    """The MyST page: the rule for verdicts, a count per verdict, then one table row per claim."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    lines = [
        "(results)=",
        "# Results against the paper",
        "",
        f"Generated by `python -m helpers.book.claims` from `{run}/*/metrics.json` when the book is built; no number "
        "here is typed by hand. Each row is one claim of the paper {cite:p}`zhao2026esn` or of this book's "
        "extension, with its confidence mark (**[paper]** from the abstract, **[notes]** from secondary readings, "
        "**[later]** from the first author's follow-up work, **[ours]** this book's), this run's number(s) with "
        "95 % bootstrap intervals in brackets where the stage computes them, and a verdict computed by the rule "
        "listed under the table: *reproduced* when the rule holds on this run, *not reproduced* when it does not, *not "
        "testable on the organism* when the claim concerns a real model's size, layers or numbers, *not run* when "
        "the stage's metrics are missing. A verdict is about this organism and this run, not about the paper's "
        "models.",
        "",
        "Verdicts on this run: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".",
        "",
        "| # | claim | mark | this run | verdict | chapter |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        title = _CHAPTER_TITLES.get(r["stage"], r["stage"])
        # a chapter the run did not execute may not be in the book: no link to it
        chapter = f"[{title}](executed/{r['stage']}.ipynb)" if r.get("ran", "True") == "True" else title
        lines.append(f"| {i} | {_cell(r['statement'])} | {_cell(r['mark'])} | {_cell(r['value'])} | "
                     f"**{_cell(r['verdict'])}** | {chapter} |")
    lines += ["", "## The rules", "", "The verdict of row *n* is *reproduced* when rule *n* holds on this run:", ""]
    lines += [f"{i}. {r['rule']}." for i, r in enumerate(rows, 1)]
    lines.append("")
    return "\n".join(lines)


def write_page(run_dir: str | Path, out: str | Path, *, shown: str | None = None) -> list[dict[str, str]]:
    """Evaluate every claim on ``run_dir`` and write the page to ``out``; returns the rows."""
    rows = evaluate(load_metrics(run_dir))
    atomic_write_text(Path(out), render(rows, shown or str(run_dir)))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.book.claims", description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/organism", help="the run folder whose metrics.json files are read")
    parser.add_argument("--out", default="book/results.md")
    args = parser.parse_args(argv)
    rows = write_page(args.run, args.out)
    print(f"{args.out}: {len(rows)} claims, " + ", ".join(
        f"{sum(r['verdict'] == v for r in rows)} {v}" for v in dict.fromkeys(r["verdict"] for r in rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
