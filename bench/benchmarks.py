"""Benchmarks of the Log and Intervene machinery: ``python bench/benchmarks.py --out bench/results.json``.

Five questions, each answered on CPU with modest sizes (the whole run takes a few minutes on 2 cores):

1. **Logging overhead** — how much slower is the Log stage's per-batch work (one nnsight trace reading every
   gate, reduced in the trace to per-row sums by :func:`helpers.log.stats.row_sums`, answer read at the last
   position, folded into a :class:`~helpers.log.stats.StatsAccumulator` with ``update_rows``; exactly what
   :func:`helpers.log.activation_log.log_activations` does per batch) than a plain ``model(**inputs)`` on the same
   batches? Repetitions are interleaved (plain/log, then log/plain) and summarised by medians.
2. **Memory** — does peak memory stay flat when logging ``N`` vs ``10 x N`` items with the real
   :func:`~helpers.log.activation_log.log_activations`? ``tracemalloc`` only sees Python-level allocations (numpy,
   pandas, Python objects), *not* torch's CPU tensor storage, so tensors are measured separately with the torch
   profiler's memory events (peak of live tensor bytes allocated during the run), plus the size of the
   accumulated statistics and, for information, the process RSS growth (psutil, sampled).
3. **Batching** — a sweep of emotions x selectors x alphas steering conditions run by
   :func:`helpers.intervene.runner.run_conditions` (conditions tiled into shared forward passes) vs
   :func:`~helpers.intervene.runner.run_conditions_sequential` (one forward per condition and batch), same items;
   the results must agree (checked, the bench fails otherwise) and the speedup is reported.
4. **The full sweep** — the same sweep cached + batched (audio tower once per item, conditions tiled) against
   one condition at a time that runs the whole model from the waveform each time (no cache): the speedup a
   sweep gets from computing once what no gate edit can change, and the max |logit difference| between them.
5. **Data-parallel logging** — the Log stage on 2 gloo processes against 1 (``torchrun -m
   helpers.core.distributed``): the statistics must be bit-for-bit equal.

Models: the committed organism (``models/organism``) when present, else that entry is skipped with a note; an
*organism-shaped* random model (the organism's exact config and prompt layout, random weights, synthetic audio
features); and a *wide* random model (decoder hidden 512, 8 layers, intermediate 1536, same prompt layout).
No timing is asserted anywhere: the numbers are reported as measured, goals alongside.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from helpers.core.io import project_root
from helpers.core.subject import Batch
from helpers.data.corpus import EMOTIONS
from helpers.subjects.organism import Organism
from helpers.subjects.organism_inputs import AudioCache, merge_audio
from helpers.subjects.organism_model import OrganismConfig, build_feature_extractor, build_model, build_tokenizer

ROOT = project_root()  # the checkout (from the working directory), not this file's location
ORGANISM_DIR = ROOT / "models" / "organism"
CORPUS_A = ROOT / "data" / "corpus" / "A"

WIDE: dict[str, Any] = {"hidden_size": 512, "decoder_layers": 8, "intermediate_size": 1536, "decoder_heads": 8,
                        "decoder_kv_heads": 4}
GOALS = {"logging_overhead_ratio": 1.15, "batching_speedup": 3.0, "sweep_speedup": 3.0}


# --------------------------------------------------------------------------------------------------------------------
# Subjects
# --------------------------------------------------------------------------------------------------------------------


class SyntheticOrganism(Organism):
    """An :class:`~helpers.subjects.organism.Organism` whose items are synthetic: ``batch_inputs`` makes deterministic
    random audio embeddings per ``item`` id (no audio files; the organism caches its real ones the same way),
    with the organism's prompt and a neutral context."""

    def batch_inputs(self, rows: pd.DataFrame) -> Batch:
        items = rows["item"].tolist()
        ids, cand = self.encode(["someone is talking"] * len(rows), items)
        config: Any = self.model.config  # a transformers Qwen2AudioConfig
        hidden = int(config.text_config.hidden_size)
        emb = torch.stack([torch.randn(self.n_audio, hidden, generator=torch.Generator().manual_seed(int(i)))
                           for i in items])
        with torch.no_grad():
            embeds = merge_audio(self.model, ids, emb)
        return Batch(inputs={"inputs_embeds": embeds, "attention_mask": torch.ones_like(ids)}, candidates=cand,
                     masks=self.masks(ids), meta={"input_ids": ids})


def synthetic_items(n: int) -> pd.DataFrame:
    return pd.DataFrame({"item": np.arange(n), "clip_id": [f"synthetic-{i}" for i in range(n)],
                         "label": [EMOTIONS[i % len(EMOTIONS)] for i in range(n)]})


def random_subject(cfg: OrganismConfig) -> SyntheticOrganism:
    tok = build_tokenizer()
    model = build_model(cfg, tok)
    return SyntheticOrganism(model=model, tokenizer=tok, feature_extractor=build_feature_extractor(),
                             labels=tuple(EMOTIONS), card={"random_init": True, "config": vars(cfg)})


def organism_subject(n_items: int) -> tuple[Organism | None, pd.DataFrame | None, str]:
    """The committed organism and ``n_items`` evaluation items of corpus A, or a note why not."""
    if not (ORGANISM_DIR / "config.json").is_file():
        return None, None, f"skipped: no organism checkpoint at {ORGANISM_DIR.relative_to(ROOT)} (make organism)"
    if not (CORPUS_A / "metadata.csv").is_file():
        return None, None, f"skipped: no corpus at {CORPUS_A.relative_to(ROOT)} (make corpus)"
    from helpers.data.corpus import load
    from helpers.subjects.organism import load_organism

    org = load_organism(ORGANISM_DIR)
    df = load(CORPUS_A, split="evaluate")
    per = max(1, n_items // len(org.labels))
    df = df.groupby("label", group_keys=False).head(per).reset_index(drop=True)
    return org, df, "committed organism, corpus A evaluation items"


def sharded_logging(n_processes: int = 2) -> dict[str, Any]:
    """The Log stage of chapter 01 (the organism's config, corpus A identify split) through
    ``torchrun -m helpers.core.distributed`` on ``n_processes`` gloo processes and on 1: are the statistics identical?

    Counts must match exactly; the float64 sums are compared bit for bit (``identical``) and by max |diff|."""
    import subprocess
    import sys
    import tempfile

    from helpers.log.stats import ActivationStats

    if not (ORGANISM_DIR / "config.json").is_file() or not (CORPUS_A / "metadata.csv").is_file():
        return {"note": "skipped: needs the committed organism and corpus A (make corpus)"}
    out: dict[str, Any] = {"processes": n_processes, "backend": "gloo", "items": "corpus A identify split"}
    with tempfile.TemporaryDirectory() as tmp:
        stats = {}
        for n in (1, n_processes):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                   "-m", "helpers.core.distributed", "--config", str(ROOT / "configs" / "organism.yml"),
                   "--out", f"{tmp}/{n}"]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
            if done.returncode:
                return {**out, "error": done.stderr[-2000:]}
            out[f"seconds_{n}"] = time.perf_counter() - t0
            stats[n] = ActivationStats.load(f"{tmp}/{n}/stats_A.safetensors")
    a, b = stats[1], stats[n_processes]
    names = ("tokens", "items", "active", "total", "total_sq")
    out["counts_equal"] = all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("tokens", "items", "active"))
    out["identical"] = all(torch.equal(getattr(a, k), getattr(b, k)) for k in names)
    out["max_abs_diff"] = max(float((getattr(a, k) - getattr(b, k)).abs().max()) for k in names)
    return out


def model_info(subject: Organism) -> dict[str, Any]:
    from helpers.core.models import gate_shape

    L, N = gate_shape(subject.model)
    config: Any = subject.model.config  # a transformers Qwen2AudioConfig
    text = config.text_config
    return {"decoder_layers": L, "intermediate": N, "hidden": int(text.hidden_size),
            "parameters": int(sum(p.numel() for p in subject.model.parameters()))}


# --------------------------------------------------------------------------------------------------------------------
# 1. Logging overhead
# --------------------------------------------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def logging_overhead(subject: Organism, df: pd.DataFrame, *, batch_size: int, reps: int) -> dict[str, Any]:
    """Median wall time of a pass over the same batches: plain forward vs the Log stage's per-batch work.

    Variants, timed interleaved (the order rotates every repetition): ``plain`` (``model(**inputs)``),
    ``trace_only`` (the nnsight trace reading every gate, nothing computed from it), ``log`` (what
    :func:`~helpers.log.activation_log.log_activations` does per batch: ``row_sums`` in the trace, answer, and
    ``update_rows``).
    """
    from helpers.core.hooks import trace_gates
    from helpers.core.models import gate_shape
    from helpers.intervene.evaluation import label_indices
    from helpers.log.stats import StatsAccumulator, row_sums

    model = subject.model
    batches = [df.iloc[i : i + batch_size] for i in range(0, len(df), batch_size)]
    inputs = [subject.batch_inputs(rows) for rows in batches]
    masks = [subject.position_masks(inp)["last"] for inp in inputs]
    ys = [torch.from_numpy(label_indices(rows["label"], subject.labels)) for rows in batches]
    L, N = gate_shape(model)
    acc = StatsAccumulator(L, N, subject.labels)

    @torch.no_grad()
    def plain() -> None:
        for inp in inputs:
            subject.label_logits(inp, model(**inp.inputs).logits).argmax(-1)

    def trace_only() -> None:
        for inp in inputs:
            logits, _ = trace_gates(model, inp.inputs, reduce=lambda _i, g: None, logits="last")
            subject.label_logits(inp, cast(torch.Tensor, logits)).argmax(-1)

    def log() -> None:
        for inp, mask, y in zip(inputs, masks, ys, strict=True):
            def reduce(_i: int, g: torch.Tensor, m: torch.Tensor = mask) -> torch.Tensor:
                return row_sums(g, m)

            logits, sums = trace_gates(model, inp.inputs, reduce=reduce, logits="last")
            pred = subject.label_logits(inp, cast(torch.Tensor, logits)).argmax(-1).cpu()
            acc.update_rows(sums, mask.sum(1), y, pred == y)

    variants = {"plain": plain, "trace_only": trace_only, "log": log}
    for fn in variants.values():  # warm-up (nnsight instruments the model on first use)
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(reps):
        for k in names[r % len(names):] + names[: r % len(names)]:
            times[k].append(_timed(variants[k]))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "items": len(df), "batch_size": batch_size, "batches": len(batches), "reps": reps, "positions": "last",
        "seq_len": int(inputs[0].masks["all"].shape[1]),
        "plain_s_median": med["plain"], "log_s_median": med["log"],
        "ratio": med["log"] / med["plain"],
        "ratio_of_minima": min(times["log"]) / min(times["plain"]),
        "ratio_trace_only": med["trace_only"] / med["plain"],
        "ratio_per_rep": [lg / pl for lg, pl in zip(times["log"], times["plain"], strict=True)],
        "seconds": times, "goal": GOALS["logging_overhead_ratio"],
    }


# --------------------------------------------------------------------------------------------------------------------
# 2. Memory while logging N vs 10 x N items
# --------------------------------------------------------------------------------------------------------------------


def _tensor_peak_bytes(prof) -> int:
    """Peak of live tensor bytes allocated inside a ``torch.profiler`` window (alloc/free events in time order)."""
    events = [(e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage]
    events.sort()
    cur = peak = 0
    for _, b in events:
        cur += b
        peak = max(peak, cur)
    return int(peak)


class _RssSampler:
    """Max resident set size seen by a background thread (informative only: allocator caching blurs it)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        try:
            import psutil

            self._proc: psutil.Process | None = psutil.Process()
        except ImportError:  # pragma: no cover - psutil ships with jupyter
            self._proc = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        return int(self._proc.memory_info().rss) if self._proc is not None else 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> _RssSampler:
        self.start = self._rss()
        self.peak = self.start
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def memory_profile(subject: Organism, n_items: int, *, batch_size: int, factor: int = 10) -> dict[str, Any]:
    """Run :func:`log_activations` on ``n_items`` and ``factor * n_items`` items; report peaks for each."""
    from torch.profiler import ProfilerActivity, profile

    from helpers.log.activation_log import log_activations

    runs = {}
    log_activations(subject, synthetic_items(batch_size), positions="last", only_correct=False,
                    batch_size=batch_size, progress=False)  # warm-up outside the measurement
    for n in (n_items, factor * n_items):
        df = synthetic_items(n)
        # run 1: Python-level peak and RSS, no profiler (its event buffers grow with the run and would show up)
        tracemalloc.start()
        tracemalloc.reset_peak()
        with _RssSampler() as rss:
            t0 = time.perf_counter()
            res = log_activations(subject, df, positions="last", only_correct=False, batch_size=batch_size,
                                  progress=False)
            seconds = time.perf_counter() - t0
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # run 2: live torch tensor bytes from the profiler's allocation/free events
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            log_activations(subject, df, positions="last", only_correct=False, batch_size=batch_size,
                            progress=False)
        st = res.stats
        state = sum(t.numel() * t.element_size() for t in (st.tokens, st.items, st.active, st.total, st.total_sq))
        runs[str(n)] = {
            "items": n, "seconds_under_tracemalloc": seconds,
            "tensor_peak_bytes": _tensor_peak_bytes(prof),
            "python_peak_bytes": int(py_peak),
            "stats_state_bytes": int(state),
            "items_table_bytes": int(res.items.memory_usage(deep=True).sum()),
            "rss_growth_bytes": int(rss.peak - rss.start),
        }
    small, large = runs[str(n_items)], runs[str(factor * n_items)]
    slack = 1 << 20
    return {
        "batch_size": batch_size, "factor": factor, "runs": runs,
        "tensor_peak_ratio": large["tensor_peak_bytes"] / max(small["tensor_peak_bytes"], 1),
        "python_peak_ratio": large["python_peak_bytes"] / max(small["python_peak_bytes"], 1),
        "flat": bool(large["tensor_peak_bytes"] <= 1.1 * small["tensor_peak_bytes"] + slack
                     and large["stats_state_bytes"] == small["stats_state_bytes"]),
        "method": "tensor peak: torch.profiler memory events (live tensor bytes, alloc/free in time order); "
                  "python peak: tracemalloc (does not see torch tensor storage); stats state: bytes of the "
                  "accumulated ActivationStats; rss growth: psutil sampling every 10 ms in the tracemalloc run "
                  "(informative only: the allocator keeps freed pages)",
    }


# --------------------------------------------------------------------------------------------------------------------
# 3. Batched vs one-at-a-time conditions
# --------------------------------------------------------------------------------------------------------------------


def sweep_conditions(L: int, N: int, labels, *, selector_sizes=(15, 30, 60),
                     alphas=(-1.0, -0.5, 1.0, 2.0, 4.0), seed: int = 0):
    """emotions x selectors x alphas steering conditions (+ the baseline) on random neuron sets of selector-like
    sizes; which neurons are edited does not change the cost of a forward pass."""
    from helpers.intervene.conditions import identity, steer

    g = torch.Generator().manual_seed(seed)
    conds = [identity()]
    for s, m in enumerate(selector_sizes):
        for lbl in labels:
            flat = torch.randperm(L * N, generator=g)[:m]
            pairs = torch.stack((flat // N, flat % N), 1)
            for a in alphas:
                conds.append(steer(pairs, L, N, a, name=f"sel{s}:{lbl}:alpha={a:g}"))
    return conds


def batching_speedup(subject: Organism, df: pd.DataFrame, *, settings: list[tuple[int, int]],
                     reps: int) -> dict[str, Any]:
    """Time :func:`run_conditions` (per ``(batch_size, max_rows)`` setting) against the sequential runner."""
    from helpers.core.models import gate_shape
    from helpers.intervene.runner import run_conditions, run_conditions_sequential

    L, N = gate_shape(subject.model)
    conds = sweep_conditions(L, N, subject.labels)
    out: dict[str, Any] = {"items": len(df), "conditions": len(conds),
                           "sweep": "4 emotions x 3 selectors x 5 alphas steering + baseline", "settings": []}
    for batch_size, max_rows in settings:
        t_seq: list[float] = []
        t_bat: list[float] = []
        seq: np.ndarray | None = None
        bat: np.ndarray | None = None
        for r in range(reps):
            def run_seq(bs=batch_size):
                return run_conditions_sequential(subject, df, conds, batch_size=bs, progress=False)

            def run_bat(bs=batch_size, mr=max_rows):
                return run_conditions(subject, df, conds, batch_size=bs, max_rows=mr, progress=False)

            order = ((t_seq, run_seq), (t_bat, run_bat)) if r % 2 == 0 else ((t_bat, run_bat), (t_seq, run_seq))
            for sink, fn in order:
                t0 = time.perf_counter()
                res = fn()
                sink.append(time.perf_counter() - t0)
                if fn is run_seq:
                    seq = res
                else:
                    bat = res
        assert seq is not None and bat is not None, "reps must be >= 1"
        np.testing.assert_allclose(bat, seq, rtol=1e-4, atol=1e-4,
                                   err_msg="batched and sequential runs disagree: the batched runner is wrong")
        rows = min(max_rows // batch_size, len(conds) - 1) * batch_size if max_rows >= batch_size else batch_size
        out["settings"].append({
            "batch_size": batch_size, "max_rows": max_rows, "rows_per_forward": rows,
            "sequential_s": statistics.median(t_seq), "batched_s": statistics.median(t_bat),
            "speedup": statistics.median(t_seq) / statistics.median(t_bat),
            "max_abs_diff": float(np.abs(bat - seq).max()),
            "argmax_agreement": float((bat.argmax(-1) == seq.argmax(-1)).mean()),
            "sequential_runs_s": t_seq, "batched_runs_s": t_bat,
        })
    out["goal"] = GOALS["batching_speedup"]
    return out


# --------------------------------------------------------------------------------------------------------------------
# 4. The full sweep: audio cached + conditions batched, against one condition at a time recomputing everything
# --------------------------------------------------------------------------------------------------------------------


def with_cache(subject: Organism, enabled: bool) -> Organism:
    """The same model and prompts with a fresh audio cache (``enabled=False``: the tower runs on every read)."""
    return dataclasses.replace(subject, cache=AudioCache(enabled=enabled))


def sweep_speedup(subject: Organism, df: pd.DataFrame, *, batch_size: int, max_rows: int, reps: int
                  ) -> dict[str, Any]:
    """A full steering sweep (4 emotions x 3 selector-sized sets x 5 alphas + the baseline) two ways:

    * reference: one condition at a time, every condition running the whole model from the waveform (features,
      audio tower, projector, decoder): :func:`run_conditions_sequential` with ``reuse_inputs=False`` on a subject
      that caches nothing;
    * cached + batched: the tower's output computed once per item (the cache starts empty, so that cost is
      inside the timing) and conditions tiled into shared forward passes (:func:`run_conditions`).
    """
    from helpers.core.models import gate_shape
    from helpers.intervene.runner import run_conditions, run_conditions_sequential

    L, N = gate_shape(subject.model)
    conds = sweep_conditions(L, N, subject.labels)
    t_ref, t_new = [], []
    ref = new = None
    for _ in range(reps):
        plain = with_cache(subject, False)
        t0 = time.perf_counter()
        ref = run_conditions_sequential(plain, df, conds, batch_size=batch_size, reuse_inputs=False, progress=False)
        t_ref.append(time.perf_counter() - t0)
        cached = with_cache(subject, True)
        t0 = time.perf_counter()
        new = run_conditions(cached, df, conds, batch_size=batch_size, max_rows=max_rows, progress=False)
        t_new.append(time.perf_counter() - t0)
    assert ref is not None and new is not None
    # What caching can save at most (Amdahl): the share of the reference spent building inputs from waveforms
    plain = with_cache(subject, False)
    t0 = time.perf_counter()
    for start in range(0, len(df), batch_size):
        plain.batch_inputs(df.iloc[start : start + batch_size])
    share = min(1.0, (time.perf_counter() - t0) * len(conds) / statistics.median(t_ref))
    return {
        "items": len(df), "conditions": len(conds), "batch_size": batch_size, "max_rows": max_rows,
        "uncached_sequential_s": statistics.median(t_ref), "cached_batched_s": statistics.median(t_new),
        "speedup": statistics.median(t_ref) / statistics.median(t_new),
        "max_abs_logit_diff": float(np.abs(new - ref).max()),
        "identical": bool(np.array_equal(new, ref)),
        "argmax_agreement": float((new.argmax(-1) == ref.argmax(-1)).mean()),
        "input_share": share, "caching_bound": 1.0 / max(1e-9, 1.0 - share),
        "runs_s": {"uncached_sequential": t_ref, "cached_batched": t_new},
    }


# --------------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import nnsight
    import transformers

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        affinity = None
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0], "cpu_count": os.cpu_count(), "cpu_affinity": affinity,
        "load_average_at_start": list(load) if load else None,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "nnsight": getattr(nnsight, "__version__", "?"),
        "numpy": np.__version__, "pandas": pd.__version__,
    }


def _fmt_bytes(b: float) -> str:
    return f"{b / 2**20:.1f} MiB"


def print_table(results: dict[str, Any]) -> None:
    print(f"\nbench/benchmarks.py — {results['machine']['date']}, torch threads {results['machine']['torch_threads']}, "
          f"load {results['machine']['load_average_at_start']}")
    print("\nLogging overhead (log pass / plain forward, median of interleaved reps; goal <= 1.15x)")
    for name, r in results["logging_overhead"].items():
        if "note" in r:
            print(f"  {name:<26} {r['note']}")
        else:
            print(f"  {name:<24} {r['ratio']:.3f}x  (plain {r['plain_s_median']:.3f}s, log {r['log_s_median']:.3f}s; "
                  f"{r['items']} items, batch {r['batch_size']}; trace only {r['ratio_trace_only']:.3f}x"
                  ")")
    m = results["memory"]
    print(f"\nMemory while logging N vs {m['factor']}xN items ({m['model']}, batch {m['batch_size']}): "
          f"{'flat' if m['flat'] else 'NOT flat'}")
    for n, r in m["runs"].items():
        print(f"  N={n:>5}: tensor peak {_fmt_bytes(r['tensor_peak_bytes'])}, python peak "
              f"{_fmt_bytes(r['python_peak_bytes'])}, stats state {_fmt_bytes(r['stats_state_bytes'])}, "
              f"items table {_fmt_bytes(r['items_table_bytes'])}, rss growth {_fmt_bytes(r['rss_growth_bytes'])}")
    b = results["batching"]
    print(f"\nBatched vs one-at-a-time conditions ({b['model']}: {b['conditions']} conditions x {b['items']} items; "
          "goal >= 3x)")
    for s in b["settings"]:
        print(f"  batch {s['batch_size']:>3}, max_rows {s['max_rows']:>4} ({s['rows_per_forward']:>4} rows/forward): "
              f"sequential {s['sequential_s']:.2f}s, batched {s['batched_s']:.2f}s -> {s['speedup']:.2f}x "
              f"(max |diff| {s['max_abs_diff']:.1e})")
    sw = results.get("sweep", {})
    print(f"\nFull sweep, audio cached + batched vs uncached one condition at a time (goal >= {sw.get('goal')}x)")
    for name, r in sw.get("models", {}).items():
        print(f"  {name:<24} {r['speedup']:.2f}x (uncached {r['uncached_sequential_s']:.1f}s, cached "
              f"{r['cached_batched_s']:.1f}s; inputs {r['input_share']:.0%} of the reference, bound "
              f"{r['caching_bound']:.2f}x; max |dlogit| {r['max_abs_logit_diff']:.1e})")
    sh = results.get("sharded", {})
    if "identical" in sh:
        n = sh["processes"]
        print(f"\nLogging on {n} gloo processes vs 1: identical {sh['identical']} "
              f"({sh['seconds_1']:.1f}s vs {sh[f'seconds_{n}']:.1f}s)")
    print(f"\ntotal {results['total_seconds']:.0f}s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/benchmarks.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench/results.json", help="where to write the JSON results")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions (a smoke run)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the cores are shared)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    quick = args.quick
    reps = args.reps or (2 if quick else 7)
    reps_sweep = 1 if quick else 2
    t_start = time.perf_counter()
    results: dict[str, Any] = {"machine": machine_info(), "args": vars(args), "goals": GOALS}

    # ---- models
    org, org_df, org_note = organism_subject(32 if quick else 64)
    shaped = random_subject(OrganismConfig())
    wide = random_subject(OrganismConfig(**WIDE))
    results["models"] = {
        "organism": {"note": org_note, **(model_info(org) if org is not None else {})},
        "organism_shaped_random": {"note": "organism config and prompt layout, random weights, synthetic features",
                                   **model_info(shaped)},
        "wide_random": {"note": "decoder hidden 512, 8 layers, intermediate 1536; organism prompt layout, "
                                "random weights, synthetic features", **model_info(wide)},
    }

    # ---- 1. logging overhead
    print("logging overhead ...", flush=True)
    lo: dict[str, Any] = {}
    if org is not None and org_df is not None:  # organism_subject gives both or neither
        lo["organism"] = logging_overhead(org, org_df, batch_size=16, reps=reps)
    else:
        lo["organism"] = {"note": org_note}
    lo["organism_shaped_random"] = logging_overhead(shaped, synthetic_items(32 if quick else 64), batch_size=16,
                                                    reps=reps)
    lo["wide_random"] = logging_overhead(wide, synthetic_items(16 if quick else 32), batch_size=16, reps=reps)
    results["logging_overhead"] = lo

    # ---- 2. memory
    print("memory ...", flush=True)
    mem = memory_profile(wide, 8 if quick else 16, batch_size=8)
    mem["model"] = "wide_random"
    results["memory"] = mem

    # ---- 3. batching
    print("batching ...", flush=True)
    n_items = 8 if quick else 16
    subj, items, name = (org, org_df.groupby("label").head(n_items // 4).reset_index(drop=True), "organism") \
        if org is not None and org_df is not None else (shaped, synthetic_items(n_items), "organism_shaped_random")
    settings = [(16, 32), (16, 64), (4, 32), (1, 32)] if not quick else [(8, 32), (1, 32)]
    bat = batching_speedup(subj, items, settings=settings, reps=1)
    bat["model"] = name
    results["batching"] = bat

    # ---- 4. the full sweep, cached + batched vs one condition at a time without caching
    print("sweep (audio cached + batched vs uncached one at a time) ...", flush=True)
    sweep: dict[str, Any] = {"sweep": "4 emotions x 3 selectors x 5 alphas steering + baseline",
                             "goal": GOALS["sweep_speedup"], "models": {}}
    if org is not None and org_df is not None:
        sw_items = org_df.groupby("label").head(n_items // 4).reset_index(drop=True)
        sweep["models"]["organism"] = sweep_speedup(org, sw_items, batch_size=16, max_rows=32, reps=reps_sweep)
        wide_audio = Organism(model=wide.model, tokenizer=wide.tokenizer, feature_extractor=wide.feature_extractor,
                              labels=wide.labels, card=wide.card)
        sweep["models"]["wide_random"] = sweep_speedup(wide_audio, sw_items, batch_size=16, max_rows=32, reps=1)
        # the headline is the book's own subject; the wide decoder's figure sits next to it, with its bound
        sweep["speedup"] = sweep["models"]["organism"]["speedup"]
        sweep["identical"] = all(m["identical"] for m in sweep["models"].values())
        sweep["max_abs_logit_diff"] = max(m["max_abs_logit_diff"] for m in sweep["models"].values())
    else:
        sweep["note"] = org_note
    results["sweep"] = sweep

    # ---- 5. data-parallel logging
    print("sharded logging (2 gloo processes vs 1) ...", flush=True)
    results["sharded"] = sharded_logging(2)

    results["total_seconds"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from helpers.core.io import atomic_write_text

    atomic_write_text(out, json.dumps(results, indent=2, default=str) + "\n")
    print_table(results)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
