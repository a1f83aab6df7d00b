"""Data-parallel runs: 2 gloo processes give exactly (bit for bit) the statistics and sweep logits of 1 process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from helpers.core import distributed
from helpers.data import corpus
from helpers.log import activation_log
from helpers.log.stats import SUM_NAMES, ActivationStats, StatsAccumulator

ORGANISM_DIR = Path(__file__).resolve().parents[2] / "models" / "organism"


def test_batch_shards_deal_the_one_process_batches_round_robin():
    parts = [distributed.batch_shard(10, 3, r, 2) for r in range(2)]
    assert [p.tolist() for p in parts[0]] == [[0, 1, 2], [6, 7, 8]]
    assert [p.tolist() for p in parts[1]] == [[3, 4, 5], [9]]
    assert distributed.n_rounds(10, 3, 2) == 2 and distributed.n_rounds(0, 3, 2) == 0
    # more processes than batches: some ranks get none, none is lost
    assert [len(distributed.batch_shard(2, 3, r, 2)) for r in range(2)] == [1, 0]
    with pytest.raises(ValueError, match="rank"):
        distributed.batch_shard(10, 3, 2, 2)
    with pytest.raises(ValueError, match="batch_size"):
        distributed.batch_shard(10, 0, 0, 2)


def test_contribution_then_add_is_update_rows():
    g = torch.Generator().manual_seed(0)
    rows = [torch.rand(3, 5, 4, generator=g) for _ in range(2)]
    a, b = StatsAccumulator(2, 4, ["x", "y"]), StatsAccumulator(2, 4, ["x", "y"])
    for _ in range(3):
        a.update_rows(rows, torch.tensor([2, 1, 0, 3, 1]), torch.tensor([0, 1, 1, 0, 0]),
                      torch.tensor([True, True, True, False, True]))
        b.add(b.contribution(rows, torch.tensor([2, 1, 0, 3, 1]), torch.tensor([0, 1, 1, 0, 0]),
                             torch.tensor([True, True, True, False, True])))
    for name in SUM_NAMES:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert float(a.items.sum()) == 3 * 3  # the row with no token and the dropped row do not count


def test_without_a_process_group_it_is_plain_logging(organism, small_corpora):
    df = corpus.load(small_corpora["A"], split="identify")
    a = distributed.log_activations_sharded(organism, df, batch_size=7, progress=False)
    b = activation_log.log_activations(organism, df, batch_size=7, progress=False)
    for name in ("tokens", "items", "active", "total", "total_sq"):
        assert torch.equal(getattr(a.stats, name), getattr(b.stats, name))


def test_two_gloo_processes_equal_one(organism, small_corpora, tmp_path):
    cfg = {"model": "organism", "model_path": str(ORGANISM_DIR), "datasets": {"A": str(small_corpora["A"])},
           "dataset": "A", "labels": list(organism.labels), "batch_size": 7, "positions": "last"}
    (tmp_path / "run.yml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "helpers.core.distributed", "--config", str(tmp_path / "run.yml"), "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout
    two = ActivationStats.load(tmp_path / "out" / "stats_A.safetensors")
    df = corpus.load(small_corpora["A"], split="identify")
    one = activation_log.log_activations(organism, df, batch_size=7, progress=False)
    for name in SUM_NAMES:  # counts and float64 sums alike: bit for bit
        assert torch.equal(getattr(two, name), getattr(one.stats, name)), name
    items = pd.read_csv(tmp_path / "out" / "items_A.csv")
    assert items["clip_id"].tolist() == one.items["clip_id"].tolist()
    assert items["counted"].tolist() == one.items["counted"].tolist()


SWEEP_SCRIPT = """
import sys, numpy as np, torch, torch.distributed as dist
from helpers.data import corpus
from helpers.core import distributed
from helpers.intervene.conditions import deactivate, identity, steer
from helpers.subjects.organism import load_organism
dist.init_process_group("gloo")
org = load_organism(sys.argv[1])
df = corpus.load(sys.argv[2], split="identify")
L, N = 6, 512
pairs = torch.tensor([[0, 3], [0, 7], [2, 11], [5, 100]])
conds = [identity(), deactivate(pairs, L, N), steer(pairs, L, N, 4.0)]
out = distributed.run_conditions_sharded(org, df, conds, batch_size=5)
if dist.get_rank() == 0:
    np.save(sys.argv[3], out)
dist.destroy_process_group()
"""


def test_a_sweep_on_two_gloo_processes_equals_one(organism, small_corpora, tmp_path):
    from helpers.intervene.conditions import deactivate, identity, steer
    from helpers.intervene.runner import run_conditions

    (tmp_path / "sweep.py").write_text(SWEEP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "sweep.py"), str(ORGANISM_DIR), str(small_corpora["A"]), str(tmp_path / "two.npy")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = np.load(tmp_path / "two.npy")
    df = corpus.load(small_corpora["A"], split="identify")
    pairs = torch.tensor([[0, 3], [0, 7], [2, 11], [5, 100]])
    conds = [identity(), deactivate(pairs, 6, 512), steer(pairs, 6, 512, 4.0)]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run_conditions(organism, df, conds, batch_size=5, progress=False)
    finally:
        torch.set_num_threads(n)
    assert two.shape == one.shape == (3, len(df), len(organism.labels))
    assert np.array_equal(two, one)
    assert not np.array_equal(one[0], one[2])  # the edits change the logits: the comparison can fail


def test_per_item_conditions_are_refused_by_the_sharded_sweep(organism, small_corpora):
    from helpers.intervene.per_item import label_free

    df = corpus.load(small_corpora["A"], split="identify").head(4)
    sets = {lbl: torch.tensor([[0, i]]) for i, lbl in enumerate(organism.labels)}
    cond = label_free("two_pass", sets, organism.labels, 6, 512, 2.0, first_pass=np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="one process"):
        distributed.run_conditions_sharded(organism, df, [cond])
