"""Paged decode attention and store_kv vs float64 per-sequence references."""
from __future__ import annotations

import math

import pytest
import torch

from kernels.cpu.ops import paged_attention_cpu
from kernels.paged import (
    PARTITION,
    paged_attention_ref,
    paged_attention_triton,
    store_kv_ref,
    store_kv_triton,
)

from .conftest import DTYPES, assert_close, attention_dot_rms, rand

CPP_KERNELS = True  # impl "cpp": the C++ decode attention (kernels/cpu/ops.cpp); store_kv stays torch on CPU
PAGED = {"triton": paged_attention_triton, "torch": paged_attention_ref, "cpp": paged_attention_cpu}
STORE = {"triton": store_kv_triton, "torch": store_kv_ref, "cpp": store_kv_ref}


def paged_f64(q, k_cache, v_cache, block_tables, seq_lens, scale, bias=None, window_left=None, softcap=None):
    """Gather each sequence's tokens one by one, then softmax(q k^T) v in float64 (soft-capped scores, keys
    behind a window of ``window_left`` masked)."""
    q, k_cache, v_cache = q.double().cpu(), k_cache.double().cpu(), v_cache.double().cpu()
    block_size = k_cache.shape[1]
    group = q.shape[1] // k_cache.shape[2]
    out = torch.zeros_like(q)
    for b, n in enumerate(seq_lens.tolist()):
        if n == 0:
            continue
        slots = [(int(block_tables[b, t // block_size]), t % block_size) for t in range(n)]
        k = torch.stack([k_cache[blk, off] for blk, off in slots]).repeat_interleave(group, 1)  # [n, Hq, D]
        v = torch.stack([v_cache[blk, off] for blk, off in slots]).repeat_interleave(group, 1)
        s = torch.einsum("hd,thd->ht", q[b], k) * scale
        if softcap is not None:
            s = softcap * torch.tanh(s / softcap)
        if window_left is not None:
            s[:, : max(0, n - 1 - window_left)] = float("-inf")
        if bias is not None:
            radius = (bias.shape[1] - 1) // 2
            rel = (torch.arange(n) - (n - 1)).clamp(-radius, radius) + radius
            s = s + bias.double().cpu()[:, rel]
        p = torch.softmax(s, -1)
        out[b] = torch.einsum("ht,thd->hd", p, v)
    return out


def random_tables(seq_lens, block_size, num_blocks, generator):
    """Distinct random physical blocks for every sequence (as a block manager would hand out)."""
    need = [math.ceil(n / block_size) for n in seq_lens]
    width = max(max(need), 1)
    perm = torch.randperm(num_blocks, generator=generator)
    tables = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    used = 0
    for b, count in enumerate(need):
        tables[b, :count] = perm[used:used + count]
        used += count
    return tables


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 80])
@pytest.mark.parametrize("heads", [(8, 2), (4, 1), (2, 2)], ids=["gqa8:2", "mqa", "mha"])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("seq_lens", [[1, 17, 0, 129], [PARTITION + 37, 3]], ids=["short", "split-kv"])
def test_paged_attention_matches_float64(impl, device, dtype, head_dim, heads, block_size, seq_lens):
    g = torch.Generator().manual_seed(head_dim * block_size + len(seq_lens))
    hq, hkv = heads
    num_blocks = sum(math.ceil(n / block_size) for n in seq_lens) + 3
    k_cache = rand(num_blocks, block_size, hkv, head_dim, dtype=dtype, device=device, generator=g)
    v_cache = rand(num_blocks, block_size, hkv, head_dim, dtype=dtype, device=device, generator=g)
    tables = random_tables(seq_lens, block_size, num_blocks, g).to(device)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    q = rand(len(seq_lens), hq, head_dim, dtype=dtype, device=device, generator=g)
    out = PAGED[impl](q, k_cache, v_cache, tables, lens)
    assert_close(out, paged_f64(q, k_cache, v_cache, tables, lens, 1 / math.sqrt(head_dim)), dtype,
                 dot_rms=attention_dot_rms(1 / math.sqrt(head_dim), head_dim))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seq_lens", [[1, 17, 0, 129], [PARTITION + 37, 3]], ids=["short", "split-kv"])
def test_paged_attention_relative_position_bias(impl, device, dtype, seq_lens):
    g = torch.Generator().manual_seed(11)
    num_blocks = sum(math.ceil(n / 16) for n in seq_lens) + 2
    k_cache = rand(num_blocks, 16, 2, 64, dtype=dtype, device=device, generator=g)
    v_cache = rand(num_blocks, 16, 2, 64, dtype=dtype, device=device, generator=g)
    tables = random_tables(seq_lens, 16, num_blocks, g).to(device)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    q = rand(len(seq_lens), 4, 64, dtype=dtype, device=device, generator=g)
    bias = torch.randn(4, 2 * 20 + 1, generator=g).to(device)
    out = PAGED[impl](q, k_cache, v_cache, tables, lens, scale=1.0, position_bias=bias)
    assert_close(out, paged_f64(q, k_cache, v_cache, tables, lens, 1.0, bias), dtype,
                 dot_rms=attention_dot_rms(1.0, 64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [16, 32])
def test_store_kv_writes_exact_slots(impl, device, dtype, block_size):
    g = torch.Generator().manual_seed(block_size)
    k_cache = rand(6, block_size, 2, 80, dtype=dtype, device=device, generator=g)
    v_cache = rand(6, block_size, 2, 80, dtype=dtype, device=device, generator=g)
    k = rand(5, 2, 80, dtype=dtype, device=device, generator=g)
    v = rand(5, 2, 80, dtype=dtype, device=device, generator=g)
    slots = torch.tensor([0, -1, block_size + 3, 6 * block_size - 1, 2 * block_size], device=device)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            expected_k[slot // block_size, slot % block_size] = k[t]
            expected_v[slot // block_size, slot % block_size] = v[t]
    STORE[impl](k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)


def test_paged_rejects_bad_input(impl, device, monkeypatch):
    # index values are checked on the host for CPU tensors always, for device tensors on request (a sync)
    monkeypatch.setenv("KERNELSERVE_CHECK_INDICES", "always")
    k_cache = torch.randn(4, 16, 2, 64, device=device)
    q = torch.randn(2, 4, 64, device=device)
    tables = torch.zeros(2, 2, dtype=torch.int32, device=device)
    lens = torch.tensor([3, 5], dtype=torch.int32, device=device)
    fn = PAGED[impl]
    with pytest.raises(ValueError, match="block size"):
        fn(q, k_cache[:, :10], k_cache[:, :10], tables, lens)
    with pytest.raises(ValueError, match="block_tables: expected dtype"):
        fn(q, k_cache, k_cache, tables.long(), lens)
    with pytest.raises(ValueError, match=r"seq_lens: expected shape \[2\]"):
        fn(q, k_cache, k_cache, tables, lens[:1])
    with pytest.raises(ValueError, match="does not fit block_tables"):
        fn(q, k_cache, k_cache, tables, torch.tensor([3, 33], dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="must be a multiple"):
        fn(q[:, :3], k_cache, k_cache, tables, lens)
    with pytest.raises(ValueError, match="slot_mapping: expected shape"):
        STORE[impl](q[:, :2], q[:, :2], k_cache, k_cache.clone(), torch.zeros(3, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="slot_mapping: slots must be <"):
        STORE[impl](q[:, :2], q[:, :2], k_cache, k_cache.clone(), torch.tensor([0, 64], device=device))


@pytest.mark.parametrize("seq_len", [0, 1, 16, 17, 100])
def test_paged_single_sequence_path(impl, device, seq_len):
    """Batch 1 (single-stream decode) takes its own path on the torch backend: same answer."""
    g = torch.Generator().manual_seed(seq_len)
    k_cache = rand(10, 16, 2, 64, dtype=torch.float32, device=device, generator=g)
    v_cache = rand(10, 16, 2, 64, dtype=torch.float32, device=device, generator=g)
    tables = torch.tensor([[7, 2, 9, 0, 4, 5, 1]], dtype=torch.int32, device=device)
    lens = torch.tensor([seq_len], dtype=torch.int32, device=device)
    q = rand(1, 8, 64, dtype=torch.float32, device=device, generator=g)
    out = PAGED[impl](q, k_cache, v_cache, tables, lens)
    assert_close(out, paged_f64(q, k_cache, v_cache, tables, lens, 1 / 8), torch.float32)


def test_paged_kernels_skip_out_of_range_indices(impl, device, monkeypatch):
    """Unchecked bad indices (device tensors by default) never reach memory: a block-table entry outside
    the cache, or a sequence longer than its table, skips those tokens; a slot past the cache is not
    written. (Before the kernels masked them, the GPU run read out of bounds.)"""
    monkeypatch.setenv("KERNELSERVE_CHECK_INDICES", "never")
    g = torch.Generator().manual_seed(5)
    k_cache = rand(4, 16, 2, 64, dtype=torch.float32, device=device, generator=g)
    v_cache = rand(4, 16, 2, 64, dtype=torch.float32, device=device, generator=g)
    q = rand(2, 4, 64, dtype=torch.float32, device=device, generator=g)
    tables = torch.tensor([[1, 10**6], [2, -7]], dtype=torch.int32, device=device)  # second blocks are bad
    lens = torch.tensor([30, 40], dtype=torch.int32, device=device)  # 40 > the table's 32 slots too
    out = PAGED[impl](q, k_cache, v_cache, tables, lens)
    valid_only = paged_f64(q, k_cache, v_cache, tables[:, :1].cpu(), torch.tensor([16, 16]), 64 ** -0.5)
    assert_close(out, valid_only, torch.float32)
    k = rand(2, 2, 64, dtype=torch.float32, device=device, generator=g)
    before = k_cache.clone()
    STORE[impl](k, k, k_cache, v_cache, torch.tensor([3, 4 * 16], device=device))
    assert torch.equal(k_cache[0, 3], k[0]) and torch.equal(k_cache.view(-1, 2, 64)[4:], before.view(-1, 2, 64)[4:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window_left", [None, 0, 5, 40, PARTITION + 3], ids=lambda w: f"window{w}")
@pytest.mark.parametrize("softcap", [None, 1.5], ids=["nocap", "cap1.5"])
def test_paged_attention_window_and_softcap(impl, device, dtype, window_left, softcap):
    """Mistral/Gemma sliding windows (the query at seq_len - 1 sees keys from seq_len - 1 - left on; whole tiles and
    partitions behind it skipped) and Gemma 2's soft-capping, across split-KV partitions."""
    if window_left is None and softcap is None:
        pytest.skip("the plain case is test_paged_attention_matches_float64")
    g = torch.Generator().manual_seed(5)
    seq_lens, block_size = [1, 17, 0, 129, 2 * PARTITION + 37], 16
    num_blocks = sum(math.ceil(n / block_size) for n in seq_lens) + 3
    k_cache = rand(num_blocks, block_size, 2, 64, dtype=dtype, device=device, generator=g)
    v_cache = rand(num_blocks, block_size, 2, 64, dtype=dtype, device=device, generator=g)
    tables = random_tables(seq_lens, block_size, num_blocks, g).to(device)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    q = rand(len(seq_lens), 8, 64, dtype=dtype, device=device, generator=g) * 3  # scores past the cap
    window = None if window_left is None else (window_left, 0)
    out = PAGED[impl](q, k_cache, v_cache, tables, lens, scale=0.125, window=window, softcap=softcap)
    assert_close(out, paged_f64(q, k_cache, v_cache, tables, lens, 0.125, window_left=window_left, softcap=softcap),
                 dtype, dot_rms=attention_dot_rms(0.125 * 3, 64))
