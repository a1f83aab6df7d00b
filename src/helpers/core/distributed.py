"""Data-parallel runs: items sharded over processes by whole batches; sums and predictions combined exactly.

Why this is exact, bit for bit: the Log stage's statistics are float64 sums of one term per batch, and a sweep's
results are per-item logits. Batches are cut from the whole table (batch ``g`` = items ``g*B .. g*B+B-1``, the same
batches one process makes) and dealt round-robin (batch ``g`` to rank ``g % world``), so every batch's forward pass
and its terms are the one-process ones; each round all ranks exchange their batch's terms and every rank adds
them in batch order -- the one-process order of float64 additions. Works with any ``torch.distributed`` backend
(gloo on CPUs, NCCL on GPUs) and any launcher that sets the usual environment (``torchrun --nproc_per_node N``,
``torchrun --nnodes M --nproc_per_node N --rdzv-endpoint host:port`` across machines, ``accelerate launch``);
combine it with ``device_map`` when one model spans several GPUs: each process then owns a group of GPUs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from ..log import activation_log
from ..log.stats import SUM_NAMES, StatsAccumulator
from .models import gate_shape
from .subject import Subject


def process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batch_shard(n_items: int, batch_size: int, rank: int, world: int) -> list[np.ndarray]:
    """Item indices of the batches rank ``rank`` of ``world`` runs: batch ``g`` covers items
    ``g*batch_size ..`` (exactly the one-process batches) and goes to rank ``g % world``."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank {rank}, world {world}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = range(0, n_items, batch_size)
    return [np.arange(s, min(s + batch_size, n_items)) for g, s in enumerate(starts) if g % world == rank]


def n_rounds(n_items: int, batch_size: int, world: int) -> int:
    """Exchange rounds of a sharded run: every rank takes part in each (with an empty batch past its last)."""
    return math.ceil(math.ceil(n_items / batch_size) / world) if n_items else 0


def _all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``t``, in rank order, on the CPU (NCCL exchanges only CUDA tensors: moved there and back)."""
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
    t = t.to(dev).contiguous()
    out = [torch.empty_like(t) for _ in range(process_group()[1])]
    dist.all_gather(out, t)
    return [o.cpu() for o in out]


def _gather_objects(obj):
    out = [None] * process_group()[1]
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def log_activations_sharded(org: Subject, df: pd.DataFrame, *, positions: str = "last", only_correct: bool = True,
                            batch_size: int = 64, progress: bool = True) -> activation_log.LogResult:
    """:func:`helpers.log.activation_log.log_activations` with this process's batches, returning on every process
    the statistics of all of ``df``, bit-for-bit equal to one process with the same ``batch_size``, and the item
    table in ``df``'s order. With no process group it is ``log_activations``. Call it on every process with the
    same ``df``."""
    rank, world = process_group()
    if world == 1:
        return activation_log.log_activations(org, df, positions=positions, only_correct=only_correct,
                                              batch_size=batch_size, progress=progress)
    labels = list(org.labels)
    acc = StatsAccumulator(*gate_shape(org.model), labels)
    mine = batch_shard(len(df), batch_size, rank, world)
    part = df.iloc[np.concatenate(mine)] if mine else df.iloc[:0]
    # the shard's own batches are the global ones: each is full except possibly the table's last, which comes last
    it = activation_log.gate_batches(org, part, positions=positions, batch_size=batch_size,
                                     progress=progress and rank == 0)
    records: list[pd.DataFrame] = []
    for _ in range(n_rounds(len(df), batch_size, world)):
        gb = next(it, None)
        if gb is None:
            terms = {k: torch.zeros_like(getattr(acc, k)) for k in SUM_NAMES}
            present = torch.zeros(1, dtype=torch.float64)
        else:
            records.append(activation_log.item_records(gb, labels, only_correct))
            terms = acc.contribution(gb.sums, gb.n_tokens, gb.y, activation_log.counted(gb, only_correct))
            present = torch.ones(1, dtype=torch.float64)
        flat = torch.cat([present, *(terms[k].reshape(-1) for k in SUM_NAMES)])
        for got in _all_gather(flat):  # rank order within a round = batch order
            if got[0] == 1:
                acc.add(_unflatten(got[1:], acc))
    stats = acc.result(meta={"positions": positions, "only_correct": only_correct})
    activation_log.check_counted(stats, df, labels, only_correct)
    frames = [f for per_rank in _gather_objects(records) for f in per_rank]
    items = _in_batch_order(frames, len(df), batch_size, world)
    return activation_log.LogResult(stats=stats, items=items)


def _unflatten(flat: torch.Tensor, acc: StatsAccumulator) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k in SUM_NAMES:
        ref = getattr(acc, k)
        out[k] = flat[i : i + ref.numel()].reshape(ref.shape)
        i += ref.numel()
    return out


def _in_batch_order(frames: Sequence[pd.DataFrame], n_items: int, batch_size: int, world: int) -> pd.DataFrame:
    """Per-batch tables gathered rank by rank (rank r's j-th table is batch ``j*world + r``), in batch order."""
    per_rank = [len(batch_shard(n_items, batch_size, r, world)) for r in range(world)]
    order, i = [], 0
    for r, n in enumerate(per_rank):
        order += [(j * world + r, i + j) for j in range(n)]
        i += n
    if not frames:
        return pd.DataFrame(columns=list(activation_log.ITEM_COLUMNS))
    return pd.concat([frames[k] for _, k in sorted(order)], ignore_index=True)


def run_conditions_sharded(subject: Subject, df: pd.DataFrame, conditions, *, batch_size: int = 32,
                           **kwargs) -> np.ndarray:
    """:func:`helpers.intervene.runner.run_conditions` over this process's batches, the logits gathered into the
    full ``[n_conditions, n_items, n_labels]`` array on every process (equal to one process: same batches).
    Conditions with per-item scales are not supported here (their rows follow the table's index)."""
    from ..intervene.runner import run_conditions

    conds = list(conditions)
    if any(c.per_item is not None for c in conds):
        raise ValueError("per-item (label-free) conditions cannot be sharded by run_conditions_sharded; run them "
                         "on one process")
    rank, world = process_group()
    if world == 1:
        return run_conditions(subject, df, conds, batch_size=batch_size, **kwargs)
    mine = batch_shard(len(df), batch_size, rank, world)
    idx = np.concatenate(mine) if mine else np.zeros(0, dtype=int)
    part = run_conditions(subject, df.iloc[idx], conds, batch_size=batch_size, progress=rank == 0, **kwargs)
    out = np.zeros((len(conds), len(df), len(subject.labels)), dtype=np.float32)
    for got_idx, got in _gather_objects((idx, part)):
        out[:, got_idx] = got
    return out


def main(argv: list[str] | None = None) -> None:
    """``torchrun --nproc_per_node N -m helpers.core.distributed --config C --out DIR``: the Log stage (chapter 01's
    parameters, validated like ``make run`` validates them) on N processes (gloo on CPUs, NCCL when ``device`` is
    cuda). Rank 0 writes ``stats_<dataset>.safetensors`` and ``items_<dataset>.csv`` to ``DIR``."""
    import argparse
    from pathlib import Path

    from ..book import checkout
    from ..book.resolution import resolve
    from ..subjects.run_items import load_items
    from ..subjects.subject_loading import load_subject
    from .io import atomic_save, load_config

    ap = argparse.ArgumentParser(prog="python -m helpers.core.distributed", description=main.__doc__)
    ap.add_argument("--config", required=True, help="a run config (configs/organism.yml)")
    ap.add_argument("--out", required=True, help="folder for the statistics")
    args = ap.parse_args(argv)
    params = resolve("01_logging", load_config(args.config), notebooks=checkout.NOTEBOOKS, source=args.config).effective
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
