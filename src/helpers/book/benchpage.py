"""The benchmarks page's table and figure, generated from ``bench/results.json`` when the book is built.

``python -m helpers.book.benchpage --results bench/results.json --runs runs/organism --out book/generated`` writes
``benchmarks.md`` (one row per measurement: what was measured, the value, the goal and whether it is met; then
the full sweep per model and the stage times of the run) and ``benchmarks.png`` (each
measurement against its goal), which ``book/benchmarks.md`` includes. Every number comes from the results file;
a measurement missing from it is left out, not guessed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.io import atomic_write_text

__all__ = ["rows", "render", "details", "stage_times", "figure", "write"]


def rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per measurement: ``measurement``, ``value`` (float), ``shown``, ``goal`` (text), ``goal_value``,
    ``higher_is_better``, ``met`` (bool or None when no goal applies)."""
    goals = results.get("goals", {})
    out: list[dict[str, Any]] = []
    for model, r in (results.get("logging_overhead") or {}).items():
        goal = float(r.get("goal", goals.get("logging_overhead_ratio", float("nan"))))
        ratio = float(r["ratio"])
        out.append({"measurement": f"logging overhead, {model} (log / plain forward, median)", "value": ratio,
                    "shown": f"{ratio:.3f}×", "goal": f"≤ {goal:g}×", "goal_value": goal,
                    "higher_is_better": False, "met": ratio <= goal})
    mem = results.get("memory") or {}
    if "tensor_peak_ratio" in mem:
        ratio = float(mem["tensor_peak_ratio"])
        what = f"tensor memory peak at {mem.get('factor', '?')}× the items ({mem.get('model', '')})"
        out.append({"measurement": what,
                    "value": ratio, "shown": f"{ratio:.2f}×", "goal": "flat (1×)", "goal_value": 1.0,
                    "higher_is_better": False, "met": bool(mem.get("flat", ratio <= 1.05))})
    batch = results.get("batching") or {}
    settings = batch.get("settings") or []
    if settings:
        best = max(settings, key=lambda s: s["speedup"])
        goal = float(batch.get("goal", goals.get("batching_speedup", float("nan"))))
        out.append({"measurement": f"batched interventions, best setting (item batch {best['batch_size']}, "
                                   f"{best['rows_per_forward']} rows per forward)",
                    "value": float(best["speedup"]), "shown": f"{best['speedup']:.2f}×", "goal": f"≥ {goal:g}×",
                    "goal_value": goal, "higher_is_better": True, "met": best["speedup"] >= goal})
        same = all(s.get("argmax_agreement", 1.0) == 1.0 for s in settings)
        out.append({"measurement": "batched interventions give the sequential answers", "value": float(same),
                    "shown": "yes" if same else "no", "goal": "yes", "goal_value": 1.0, "higher_is_better": True,
                    "met": same})
    sweep = results.get("sweep") or {}
    for model, r in (sweep.get("models") or {}).items():
        goal = float(sweep.get("goal", goals.get("sweep_speedup", float("nan"))))
        out.append({"measurement": f"full sweep, {model}: audio cached + batched vs uncached one at a time",
                    "value": float(r["speedup"]), "shown": f"{r['speedup']:.2f}×", "goal": f"≥ {goal:g}×",
                    "goal_value": goal, "higher_is_better": True, "met": r["speedup"] >= goal})
    if "identical" in sweep:
        out.append({"measurement": "full sweep: cached logits equal the uncached ones",
                    "value": float(sweep["identical"]),
                    "shown": "yes" if sweep["identical"] else f"no (max diff {sweep.get('max_abs_logit_diff')})",
                    "goal": "yes", "goal_value": 1.0, "higher_is_better": True, "met": bool(sweep["identical"])})
    shard = results.get("sharded") or {}
    if "counts_equal" in shard:
        out.append({"measurement": f"{shard.get('processes', '?')}-process logging: counts equal one process",
                    "value": float(bool(shard["counts_equal"])), "shown": "yes" if shard["counts_equal"] else "no",
                    "goal": "yes", "goal_value": 1.0, "higher_is_better": True, "met": bool(shard["counts_equal"])})
    if "identical" in shard:
        out.append({"measurement": f"{shard.get('processes', '?')}-process logging: every sum bit-for-bit equal to "
                                   "one process", "value": float(bool(shard["identical"])),
                    "shown": "yes" if shard["identical"] else f"no (max diff {shard.get('max_abs_diff')})",
                    "goal": "yes", "goal_value": 1.0, "higher_is_better": True, "met": bool(shard["identical"])})
    elif "max_abs_diff" in shard:
        out.append({"measurement": "sharded sums: largest difference from one process",
                    "value": shard["max_abs_diff"],
                    "shown": f"{shard['max_abs_diff']:.1e}", "goal": "float64 rounding (< 1e-12)",
                    "goal_value": 1e-12, "higher_is_better": False, "met": shard["max_abs_diff"] < 1e-12})
    return out


def stage_times(runs_dir: str | Path) -> list[tuple[str, float, dict[str, int]]]:
    """(stage, seconds, forward counts) from each stage folder's ``timing.json`` (the pipeline writes it when the
    stage runs) and ``usage.json`` (the stage's kernel writes it with its metrics; empty when it ran no forward)."""
    out = []
    for path in sorted(Path(runs_dir).glob("*/timing.json")):
        usage = path.parent / "usage.json"
        counts = json.loads(usage.read_text()) if usage.exists() else {}
        out.append((path.parent.name, float(json.loads(path.read_text())["seconds"]), counts))
    return out


def details(results: Mapping[str, Any], runs_dir: str | Path | None = None) -> str:
    """The full sweep per model and the stages' wall time in this build, as Markdown tables ('' when neither)."""
    lines: list[str] = []
    sweep = results.get("sweep") or {}
    if sweep.get("models"):
        lines += ["", f"**The full sweep** ({sweep.get('sweep', '')}): one condition at a time running the whole "
                  "model from the waveform, against the audio tower's output computed once per item and the "
                  "conditions batched. *Caching alone could give* is 1 / (1 − the share of the reference spent "
                  "building inputs), the most that skipping the inputs can save.", "",
                  "| model | uncached, one at a time | cached + batched | speedup | inputs' share | caching alone "
                  "could give | max abs logit diff |", "|---|---|---|---|---|---|---|"]
        for name, r in sweep["models"].items():
            lines.append(f"| {name} | {r['uncached_sequential_s']:.1f} s | {r['cached_batched_s']:.1f} s | "
                         f"{r['speedup']:.2f}× | {r['input_share']:.0%} | {r['caching_bound']:.2f}× | "
                         f"{r['max_abs_logit_diff']:.1e} |")
    times = stage_times(runs_dir) if runs_dir is not None else []
    if times:
        total = sum(t for _, t, _ in times)
        lines += ["", f"**Stages of this build** (kernel start to last cell, from each stage's `timing.json`; "
                  f"{total:.0f} s of stage time in all — `make book` runs independent stages two at a time, so "
                  "its wall time is less). Forward passes, item rows and rows per second count the decoder "
                  "passes through the one tracer (`usage.json`; one row = one item under one condition):", "",
                  "| stage | seconds | share | forward passes | item rows | rows per second |",
                  "|---|---|---|---|---|---|"]
        for stage, t, c in times:
            work = (f"{c['passes']:,} | {c['rows']:,} | {c['rows'] / t:,.0f}" if c.get("passes") and t > 0
                    else "— | — | —")
            lines.append(f"| {stage} | {t:.0f} | {t / total:.0%} | {work} |")
    return "\n".join(lines) + ("\n" if lines else "")


def render(table: Sequence[Mapping[str, Any]], results: Mapping[str, Any]) -> str:
    """The table as Markdown, headed by the machine and the number of goals met."""
    machine = results.get("machine", {})
    lines = [f"Measured {machine.get('date', '?')} on {machine.get('cpu_count', '?')} CPU cores "
             f"(torch {machine.get('torch', '?')}, {machine.get('torch_threads', '?')} thread(s)); "
             f"{sum(1 for r in table if r['met'])} of {len(table)} goals met.", "",
             "| measurement | this run | goal | met |", "|---|---|---|---|"]
    for r in table:
        met = "**yes**" if r["met"] else "**no**"
        lines.append(f"| {r['measurement']} | {r['shown']} | {r['goal']} | {met} |")
    return "\n".join(lines) + "\n"


def figure(table: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Each ratio measurement as a bar with its goal as a dashed mark; green when met. False when none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [r for r in table if r["shown"].endswith("×")]
    if not ratios:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(ratios) + 1.2))
    y = range(len(ratios))
    ax.barh(list(y), [r["value"] for r in ratios], color=["tab:green" if r["met"] else "tab:red" for r in ratios])
    for i, r in enumerate(ratios):
        ax.plot([r["goal_value"]] * 2, [i - 0.4, i + 0.4], color="black", ls="--", lw=1.2)
        ax.text(r["value"], i, f" {r['shown']}", va="center", fontsize=8)
    ax.set_yticks(list(y), [r["measurement"] for r in ratios], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (dashed: goal; green: met, red: not met)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(results_path: str | Path, out_dir: str | Path, runs_dir: str | Path | None = None) -> list[dict[str, Any]]:
    results = json.loads(Path(results_path).read_text())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = rows(results)
    figure(table, out / "benchmarks.png")
    atomic_write_text(out / "benchmarks.md", render(table, results) + details(results, runs_dir))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.book.benchpage", description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="bench/results.json")
    parser.add_argument("--out", default="book/generated")
    parser.add_argument("--runs", default=None, help="a run folder whose stage times to show (runs/organism)")
    args = parser.parse_args(argv)
    table = write(args.results, args.out, args.runs)
    print(f"{args.out}/benchmarks.md: {len(table)} measurements, {sum(r['met'] for r in table)} goals met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
