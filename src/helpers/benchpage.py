"""The benchmarks page's table and figure, generated from ``bench/results.json`` when the book is built.

``python -m helpers.benchpage --results bench/results.json --out book/generated`` writes ``benchmarks.md`` (one
row per measurement: what was measured, the value, the goal and whether it is met) and ``benchmarks.png`` (each
measurement against its goal), which ``book/benchmarks.md`` includes. Every number comes from the results file;
a measurement missing from it is left out, not guessed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .io import atomic_write_text

__all__ = ["rows", "render", "figure", "write"]


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
    shard = results.get("sharded") or {}
    if "counts_equal" in shard:
        out.append({"measurement": f"{shard.get('processes', '?')}-process logging: counts equal one process",
                    "value": float(bool(shard["counts_equal"])), "shown": "yes" if shard["counts_equal"] else "no",
                    "goal": "yes", "goal_value": 1.0, "higher_is_better": True, "met": bool(shard["counts_equal"])})
    if "max_abs_diff" in shard:
        out.append({"measurement": "sharded sums: largest difference from one process",
                    "value": shard["max_abs_diff"],
                    "shown": f"{shard['max_abs_diff']:.1e}", "goal": "float64 rounding (< 1e-12)",
                    "goal_value": 1e-12, "higher_is_better": False, "met": shard["max_abs_diff"] < 1e-12})
    return out


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


def write(results_path: str | Path, out_dir: str | Path) -> list[dict[str, Any]]:
    results = json.loads(Path(results_path).read_text())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = rows(results)
    figure(table, out / "benchmarks.png")
    atomic_write_text(out / "benchmarks.md", render(table, results))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.benchpage", description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="bench/results.json")
    parser.add_argument("--out", default="book/generated")
    args = parser.parse_args(argv)
    table = write(args.results, args.out)
    print(f"{args.out}/benchmarks.md: {len(table)} measurements, {sum(r['met'] for r in table)} goals met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
