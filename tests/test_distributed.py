"""Data-parallel logging: 2 gloo processes give the statistics of 1 process (sums of float64 partial sums)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from helpers import activation_log, corpus, distributed
from helpers.stats import ActivationStats

ORGANISM_DIR = Path(__file__).resolve().parents[1] / "models" / "organism"


def test_shards_partition_the_items_in_order():
    df = pd.DataFrame({"x": range(10)})
    parts = [distributed.shard(df, r, 3) for r in range(3)]
    assert sum(len(p) for p in parts) == 10 and max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    assert pd.concat(parts)["x"].tolist() == list(range(10))
    # more processes than items: some shards are empty, none is lost
    assert sorted(len(distributed.shard(df.head(1), r, 2)) for r in range(2)) == [0, 1]
    with pytest.raises(ValueError, match="rank"):
        distributed.shard(df, 2, 2)


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
           "-m", "helpers.distributed", "--config", str(tmp_path / "run.yml"), "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout
    two = ActivationStats.load(tmp_path / "out" / "stats_A.safetensors")
    df = corpus.load(small_corpora["A"], split="identify")
    one = activation_log.log_activations(organism, df, batch_size=7, progress=False)
    for name in ("tokens", "items", "active"):  # counts: exact
        assert torch.equal(getattr(two, name), getattr(one.stats, name)), name
    for name in ("total", "total_sq"):  # float64 sums, added in another order
        torch.testing.assert_close(getattr(two, name), getattr(one.stats, name), rtol=1e-12, atol=1e-12)
    items = pd.read_csv(tmp_path / "out" / "items_A.csv")
    assert items["clip_id"].tolist() == one.items["clip_id"].tolist()
    assert items["counted"].tolist() == one.items["counted"].tolist()
