"""Streaming activation statistics: exactness against a naive reference, persistence and input errors."""

from __future__ import annotations

import pytest
import torch

from helpers.log import stats as stats_mod
from helpers.log.stats import ActivationStats, StatsAccumulator

LABELS = ["angry", "happy", "neutral", "sad"]
L, N, C = 3, 7, len(LABELS)


def _random_batches(seed: int = 0, n_batches: int = 5):
    """Batches with varying B/T and dtypes, random masks and some rows whose mask is empty."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(n_batches):
        batch = int(torch.randint(2, 7, (1,), generator=gen))
        seq = int(torch.randint(3, 10, (1,), generator=gen))
        dtype = (torch.float32, torch.bfloat16, torch.float16, torch.float64)[b % 4]
        acts = [torch.nn.functional.silu(torch.randn(batch, seq, N, generator=gen)).to(dtype) for _ in range(L)]
        mask = torch.rand(batch, seq, generator=gen) < 0.6
        mask[0] = False  # every batch has a row that counts nothing
        cls = torch.randint(0, C, (batch,), generator=gen)
        batches.append((acts, mask, cls))
    return batches


def _naive(batches):
    """Position-by-position reference: the obviously correct (slow) way to compute the same sums."""
    tokens, items = torch.zeros(C, dtype=torch.float64), torch.zeros(C, dtype=torch.float64)
    active, total, total_sq = (torch.zeros(L, N, C, dtype=torch.float64) for _ in range(3))
    for acts, mask, cls in batches:
        for i in range(mask.shape[0]):
            c = int(cls[i])
            if mask[i].any():
                items[c] += 1
            for t in range(mask.shape[1]):
                if not mask[i, t]:
                    continue
                tokens[c] += 1
                for layer in range(L):
                    a = acts[layer][i, t].double()
                    active[layer, :, c] += (a > 0).double()
                    total[layer, :, c] += a
                    total_sq[layer, :, c] += a * a
    return tokens, items, active, total, total_sq


def _stream(batches, **kwargs) -> ActivationStats:
    acc = StatsAccumulator(L, N, LABELS, **kwargs)
    for acts, mask, cls in batches:
        acc.update(acts, mask, cls)
    return acc.result()


def _assert_same(a: ActivationStats, b: ActivationStats) -> None:
    assert a.labels == b.labels
    for name in ("tokens", "items", "active", "total", "total_sq"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-9, msg=name)


def _toy_stats(seed: int = 0, n_layers: int = L, n_neurons: int = N) -> ActivationStats:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(10, 50, (C,), generator=gen).double()
    active = torch.floor(torch.rand(n_layers, n_neurons, C, generator=gen) * tokens)
    total = torch.rand(n_layers, n_neurons, C, generator=gen) * tokens
    return ActivationStats(
        labels=list(LABELS), tokens=tokens, items=tokens // 3, active=active, total=total, total_sq=total * 2
    )


# ------------------------------------------------------------------------------------------------ accumulation
def test_streaming_equals_naive_reference():
    batches = _random_batches()
    got = _stream(batches)
    tokens, items, active, total, total_sq = _naive(batches)
    assert got.tokens.sum() > 0 and (got.active > 0).any()
    expected = {"tokens": tokens, "items": items, "active": active, "total": total, "total_sq": total_sq}
    for name, ref in expected.items():
        torch.testing.assert_close(getattr(got, name), ref, rtol=1e-12, atol=1e-9, msg=name)


def test_items_count_only_rows_with_counted_positions():
    acts = [torch.ones(3, 4, N) for _ in range(L)]
    acts[0][2, 1] = 0.0  # exactly zero is not "active" (bf16 SiLU underflows to 0)
    acts[0][2, 0, :3] = -0.25
    mask = torch.tensor([[True, False, False, False], [False] * 4, [True, True, False, False]])
    cls = torch.tensor([0, 0, 1])
    acc = StatsAccumulator(L, N, LABELS)
    acc.update(acts, mask, cls)
    res = acc.result()
    # Row 1 (class 0) has an empty mask: it adds neither tokens nor an item.
    assert res.items.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert res.tokens.tolist() == [1.0, 2.0, 0.0, 0.0]
    assert res.active[1:, :, 1].eq(2).all() and res.total[:, :, 0].eq(1).all()
    assert res.active[0, :, 1].tolist() == [0.0] * 3 + [1.0] * (N - 3)
    assert res.total[0, :, 1].tolist() == [-0.25] * 3 + [1.0] * (N - 3)


def test_batching_and_chunking_do_not_change_the_result():
    batches = _random_batches(seed=1, n_batches=4)
    # Same data re-batched: every row on its own (activations padded into one dtype per row, as given).
    singles = [
        ([a[i : i + 1] for a in acts], mask[i : i + 1], cls[i : i + 1])
        for acts, mask, cls in batches
        for i in range(mask.shape[0])
    ]
    _assert_same(_stream(batches), _stream(singles))
    assert max(int(mask.sum()) for _, mask, _ in batches) > 6
    for chunk in (1, 2, 3):  # positions per chunk
        _assert_same(_stream(batches), _stream(batches, max_chunk_elements=N * chunk))


def test_merge_of_shards_equals_one_pass_and_sum_works():
    batches = _random_batches(seed=2, n_batches=6)
    whole = _stream(batches)
    parts = [_stream(batches[:2]), _stream(batches[2:5]), _stream(batches[5:])]
    _assert_same(parts[0] + parts[1] + parts[2], whole)
    _assert_same(sum(parts), whole)
    other = ActivationStats(
        labels=["a", "b", "c", "d"],
        tokens=whole.tokens,
        items=whole.items,
        active=whole.active,
        total=whole.total,
        total_sq=whole.total_sq,
    )
    with pytest.raises(ValueError, match="different labels"):
        whole.merge(other)
    with pytest.raises(ValueError, match="cannot merge stats of shape"):
        whole.merge(_toy_stats(n_neurons=N + 1))


def test_derived_statistics():
    batches = _random_batches(seed=3)
    res = _stream(batches)
    c, layer = 2, 1
    # Every counted activation of class c in this layer, as [tokens, N].
    values = torch.stack(
        [
            acts[layer][i, t].double()
            for acts, m, k in batches
            for i in range(m.shape[0])
            for t in range(m.shape[1])
            if m[i, t] and int(k[i]) == c
        ]
    )
    assert values.shape[0] > 2
    torch.testing.assert_close(res.prob[layer, :, c], (values > 0).double().mean(0))
    torch.testing.assert_close(res.mean[layer, :, c], values.mean(0))
    torch.testing.assert_close(res.std[layer, :, c], values.std(0, correction=0))
    assert res.n_layers == L and res.n_neurons == N and res.n_classes == C


def test_update_rejects_bad_inputs():
    acc = StatsAccumulator(L, N, LABELS)
    acts = [torch.randn(2, 3, N) for _ in range(L)]
    mask, cls = torch.ones(2, 3, dtype=torch.bool), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="activations for 2 layers, expected 3"):
        acc.update(acts[:2], mask, cls)
    with pytest.raises(ValueError, match=r"layer 1 activations have shape \(2, 3, 5\)"):
        acc.update([acts[0], torch.randn(2, 3, 5), acts[2]], mask, cls)
    with pytest.raises(ValueError, match="class_idx values must be in"):
        acc.update(acts, mask, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="mask must be a bool"):
        acc.update(acts, mask.long(), cls)
    bad = [a.clone() for a in acts]
    bad[2][0, 0, 0] = float("nan")
    acc.update(bad, mask, cls)
    bad[1][1, 2, 3] = float("inf")
    acc.update(bad, mask, cls)
    with pytest.raises(ValueError, match=r"non-finite .* layer\(s\) \[1, 2\]"):
        acc.result()


# ------------------------------------------------------------------------------------------------ validation
def test_constructor_validates_shapes_and_labels():
    good = _toy_stats()
    kw = {name: getattr(good, name) for name in ("tokens", "items", "active", "total", "total_sq")}
    with pytest.raises(ValueError, match=r"tokens must have shape \[C\] = \(3,\)"):
        ActivationStats(labels=LABELS[:3], **kw)
    with pytest.raises(ValueError, match="total_sq has shape"):
        ActivationStats(labels=LABELS, **{**kw, "total_sq": kw["total_sq"][:, :-1]})
    with pytest.raises(ValueError, match="active must have shape"):
        ActivationStats(labels=LABELS, **{**kw, "active": kw["active"][0]})
    with pytest.raises(ValueError, match="active exceeds tokens"):
        ActivationStats(labels=LABELS, **{**kw, "active": kw["active"] + 1000})
    with pytest.raises(ValueError, match="unique"):
        ActivationStats(labels=["a", "a", "b", "c"], **kw)
    # Integer counts are accepted and stored as float64.
    ints = ActivationStats(labels=LABELS, **{**kw, "tokens": kw["tokens"].long()})
    assert ints.tokens.dtype == torch.float64


def test_check_compatible_names_both_shapes():
    st = _toy_stats()
    st.check_compatible(L, N)
    with pytest.raises(ValueError, match=r"logged on a model with 3 x 7 gates .* this model has 28 x 18944"):
        st.check_compatible(28, 18944)


# ------------------------------------------------------------------------------------------------ persistence
def test_save_load_roundtrip(tmp_path):
    st = _toy_stats()
    st.meta = {"model": "toy", "mask": "audio"}
    path = st.save(tmp_path / "sub" / "stats.safetensors")
    back = ActivationStats.load(path)
    _assert_same(st, back)
    assert back.meta == {"model": "toy", "mask": "audio"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["stats.safetensors"]  # no temp file left
    assert b"pickle" not in path.read_bytes()[:200] and path.read_bytes()[8:9] == b"{"  # safetensors header


def test_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "stats.safetensors"
    old = _toy_stats(seed=0)
    old.save(path)

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(stats_mod, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        _toy_stats(seed=1).save(path)
    _assert_same(ActivationStats.load(path), old)
    assert [p.name for p in tmp_path.iterdir()] == ["stats.safetensors"]


def test_load_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not an activation-stats file"):
        ActivationStats.load(foreign)
    with pytest.raises(FileNotFoundError, match="run the Log stage"):
        ActivationStats.load(tmp_path / "missing.safetensors")
