"""Data-parallel logging: items sharded over processes, the per-class sums all-reduced.

Why this is exact: the Log stage's statistics are sums (counts, sums, sums of squares, in float64), so a run
on N processes that each log a contiguous shard and then add their sums gives the one-process statistics up to
the order of float64 additions. Works with any ``torch.distributed`` backend (gloo on CPUs, NCCL on GPUs) and
any launcher that sets the usual environment (``torchrun --nproc_per_node N``, ``torchrun --nnodes``,
``accelerate launch``); combine it with ``device_map`` when one model spans several GPUs of a node.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from . import activation_log
from .stats import ActivationStats
from .subject import Subject

_SUMS = ("tokens", "items", "active", "total", "total_sq")


def process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(df: pd.DataFrame, rank: int, world: int) -> pd.DataFrame:
    """The ``rank``-th of ``world`` contiguous, near-equal slices of ``df`` (concatenated in rank order they are
    ``df`` again, so gathered item tables keep the input order)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank {rank}, world {world}")
    bounds = np.linspace(0, len(df), world + 1).round().astype(int)
    return df.iloc[bounds[rank] : bounds[rank + 1]]


def all_reduce_stats(stats: ActivationStats) -> ActivationStats:
    """Sum every process's statistics (in place on copies); a no-op without a process group."""
    if process_group()[1] == 1:
        return stats
    parts = {name: getattr(stats, name).clone() for name in _SUMS}
    for t in parts.values():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return ActivationStats(labels=list(stats.labels), meta=dict(stats.meta), **parts)


def gather_frames(frame: pd.DataFrame) -> pd.DataFrame:
    """Every process's table, concatenated in rank order (every process gets the whole table)."""
    world = process_group()[1]
    if world == 1:
        return frame
    out: list[pd.DataFrame | None] = [None] * world
    dist.all_gather_object(out, frame)
    return pd.concat([f for f in out if f is not None], ignore_index=True)


@torch.no_grad()
def log_activations_sharded(org: Subject, df: pd.DataFrame, *, positions: str = "last", only_correct: bool = True,
                            batch_size: int = 64, progress: bool = True) -> activation_log.LogResult:
    """:func:`helpers.activation_log.log_activations` over this process's shard of ``df``, with the sums
    all-reduced and the item table gathered, so every process returns the statistics of all of ``df``. With
    no process group it is ``log_activations`` itself. Call it on every process with the same ``df``."""
    rank, world = process_group()
    part = shard(df, rank, world)
    res = activation_log.log_activations(org, part, positions=positions, only_correct=only_correct,
                                         batch_size=batch_size, progress=progress and rank == 0, check=False)
    stats = all_reduce_stats(res.stats)
    activation_log.check_counted(stats, df, org.labels, only_correct)
    return activation_log.LogResult(stats=stats, items=gather_frames(res.items))


def main(argv: list[str] | None = None) -> None:
    """``torchrun --nproc_per_node N -m helpers.distributed --config C --out DIR``: the Log stage (chapter 01's
    parameters, validated like ``make run`` validates them) on N processes (gloo on CPUs, NCCL when ``device`` is
    cuda). Rank 0 writes ``stats_<dataset>.safetensors`` and ``items_<dataset>.csv`` to ``DIR``."""
    import argparse
    from pathlib import Path

    from . import config as cfg
    from .io import atomic_save, load_config
    from .pipeline import NOTEBOOKS
    from .subjects import load_items, load_subject

    ap = argparse.ArgumentParser(prog="python -m helpers.distributed", description=main.__doc__)
    ap.add_argument("--config", required=True, help="a run config (configs/organism.yml)")
    ap.add_argument("--out", required=True, help="folder for the statistics")
    args = ap.parse_args(argv)
    params = cfg.resolve("01_logging", load_config(args.config), notebooks=NOTEBOOKS, source=args.config).effective
    if not dist.is_initialized() and "WORLD_SIZE" in os.environ:
        dist.init_process_group("nccl" if str(params.get("device", "cpu")).startswith("cuda") else "gloo")
    name = str(params.get("dataset") or next(iter(params["datasets"])))
    subject = load_subject(params)
    items = load_items(params, name, split=params["split"])
    if params.get("limit_per_class"):  # as chapter 01 does
        items = items.groupby("label", group_keys=False).head(int(params["limit_per_class"]))
    res = log_activations_sharded(subject, items, positions=params["positions"], only_correct=params["only_correct"],
                                  batch_size=int(params["batch_size"]))
    rank, world = process_group()
    if rank == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        res.stats.save(out / f"stats_{name}.safetensors")
        atomic_save(out / f"items_{name}.csv", lambda p: res.items.to_csv(p, index=False))
        print(f"{world} process(es): {len(items)} items, {int(res.items['counted'].sum())} counted -> {out}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
