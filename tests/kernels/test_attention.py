"""Varlen FlashAttention vs a float64 softmax(QK^T)V written per sequence."""
from __future__ import annotations

import math

import pytest
import torch

from kernels.flash_attention import attention_ref, attention_triton

from .conftest import DTYPES, assert_close, attention_dot_rms, cu_seqlens, rand

IMPLS = {"triton": attention_triton, "torch": attention_ref}


def attention_f64(q, k, v, lens_q, lens_k, causal, scale, bias=None, window=None, softcap=None):
    """softmax(scale * q k^T + bias + mask) v per sequence, in float64; keyless rows are 0. ``window`` (left,
    right): query i at position p = i + lk - lq sees keys p - left .. p + right only."""
    q, k, v = q.double().cpu(), k.double().cpu(), v.double().cpu()
    group = q.shape[1] // k.shape[1]
    out = torch.zeros_like(q)
    qs = ks = 0
    for lq, lk in zip(lens_q, lens_k):
        qb = q[qs:qs + lq]
        kb = k[ks:ks + lk].repeat_interleave(group, dim=1)
        vb = v[ks:ks + lk].repeat_interleave(group, dim=1)
        s = torch.einsum("qhd,khd->hqk", qb, kb) * scale
        if softcap is not None:
            s = softcap * torch.tanh(s / softcap)
        if bias is not None:  # query i is at position i + lk - lq; bias by key - query distance
            radius = (bias.shape[1] - 1) // 2
            for i in range(lq):
                for j in range(lk):
                    rel = max(-radius, min(radius, j - (i + lk - lq)))
                    s[:, i, j] += bias[:, rel + radius].double()
        if causal:  # query i sees key j iff j <= i + lk - lq (bottom-right)
            i = torch.arange(lq)[:, None]
            j = torch.arange(lk)[None, :]
            s = s.masked_fill(j > i + lk - lq, float("-inf"))
        if window is not None:
            i = torch.arange(lq)[:, None] + lk - lq
            j = torch.arange(lk)[None, :]
            s = s.masked_fill((j < i - window[0]) | (j > i + window[1]), float("-inf"))
        p = torch.softmax(s, -1).nan_to_num(0.0)
        out[qs:qs + lq] = torch.einsum("hqk,khd->qhd", p, vb)
        qs, ks = qs + lq, ks + lk
    return out


CASES = {
    # name: (query lengths, key lengths)
    "self": ([1, 17, 129], [1, 17, 129]),
    "empty-seq": ([5, 0, 17], [5, 0, 17]),
    "prefix-hit": ([3, 17, 1], [40, 17, 130]),  # chunked prefill / cached prefix: Lk > Lq
    "more-q-than-k": ([9], [4]),  # causal rows 0..4 see no key
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 80])
@pytest.mark.parametrize("heads", [(8, 2), (4, 1), (2, 2)], ids=["gqa8:2", "mqa", "mha"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("case", list(CASES))
def test_attention_matches_float64(impl, device, dtype, head_dim, heads, causal, case):
    torch.manual_seed(hash((head_dim, heads, causal, case)) % 2**31)
    lens_q, lens_k = CASES[case]
    hq, hkv = heads
    q = rand(sum(lens_q), hq, head_dim, dtype=dtype, device=device)
    k = rand(sum(lens_k), hkv, head_dim, dtype=dtype, device=device)
    v = rand(sum(lens_k), hkv, head_dim, dtype=dtype, device=device)
    scale = 1 / math.sqrt(head_dim)
    out = IMPLS[impl](q, k, v, cu_seqlens(lens_q, device), cu_seqlens(lens_k, device),
                      max(lens_q), max(lens_k), causal=causal)
    assert out.shape == q.shape
    assert_close(out, attention_f64(q, k, v, lens_q, lens_k, causal, scale), dtype,
                 dot_rms=attention_dot_rms(scale, head_dim))


@pytest.mark.parametrize("head_dim", [32, 96, 128, 256])
def test_attention_head_dims(impl, device, head_dim):
    torch.manual_seed(head_dim)
    lens = [3, 20]
    q = rand(23, 4, head_dim, dtype=torch.float32, device=device)
    k = rand(23, 2, head_dim, dtype=torch.float32, device=device)
    v = rand(23, 2, head_dim, dtype=torch.float32, device=device)
    cu = cu_seqlens(lens, device)
    out = IMPLS[impl](q, k, v, cu, cu, 20, 20, causal=True, scale=0.3)
    assert_close(out, attention_f64(q, k, v, lens, lens, True, 0.3), torch.float32,
                 dot_rms=attention_dot_rms(0.3, head_dim))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("case", ["self", "prefix-hit"])
def test_attention_relative_position_bias(impl, device, dtype, causal, case):
    torch.manual_seed(7)
    lens_q, lens_k = CASES[case]
    q = rand(sum(lens_q), 4, 64, dtype=dtype, device=device)
    k = rand(sum(lens_k), 4, 64, dtype=dtype, device=device)
    v = rand(sum(lens_k), 4, 64, dtype=dtype, device=device)
    bias = torch.randn(4, 2 * 8 + 1, device=device)  # radius 8: distances beyond saturate
    out = IMPLS[impl](q, k, v, cu_seqlens(lens_q, device), cu_seqlens(lens_k, device), max(lens_q), max(lens_k),
                      causal=causal, scale=1.0 / 8, position_bias=bias)
    assert_close(out, attention_f64(q, k, v, lens_q, lens_k, causal, 1.0 / 8, bias.cpu()), dtype,
                 dot_rms=attention_dot_rms(1.0 / 8, 64))


def test_attention_rejects_bad_input(impl, device):
    q = torch.randn(10, 4, 64, device=device)
    k = torch.randn(10, 2, 64, device=device)
    cu = cu_seqlens([4, 6], device)
    fn = IMPLS[impl]
    with pytest.raises(ValueError, match="cu_seqlens_q: last entry must equal the packed length 10"):
        fn(q, k, k, cu_seqlens([4, 5], device), cu, 6, 6, causal=True)
    with pytest.raises(ValueError, match="max_seqlen"):
        fn(q, k, k, cu, cu, 5, 6, causal=True)
    with pytest.raises(ValueError, match="cu_seqlens_k: expected dtype"):
        fn(q, k, k, cu, cu.long(), 6, 6, causal=True)
    with pytest.raises(ValueError, match=r"query heads \(3\) must be a multiple"):
        fn(q[:, :3], k, k, cu, cu, 6, 6, causal=True)
    with pytest.raises(ValueError, match="q, k, v: expected one dtype"):
        fn(q.half(), k, k, cu, cu, 6, 6, causal=True)
    with pytest.raises(ValueError, match="last dimension must be contiguous"):
        fn(q.transpose(0, 2).contiguous().transpose(0, 2), k, k, cu, cu, 6, 6, causal=True)
    with pytest.raises(ValueError, match="head dim 32 differs"):
        fn(q, k[..., :32], k[..., :32], cu, cu, 6, 6, causal=True)
    with pytest.raises(ValueError, match="expected 3 dimensions"):
        fn(q[0], k, k, cu, cu, 6, 6, causal=True)
    with pytest.raises(ValueError, match="position_bias: expected"):
        fn(q, k, k, cu, cu, 6, 6, causal=True, position_bias=torch.zeros(4, 8, device=device))


@pytest.mark.triton
def test_unchecked_cu_seqlens_are_clamped_in_the_kernel(impl, device, monkeypatch):
    """On CUDA the launcher does not read cu_seqlens back (a sync per layer); the kernel clamps them into
    the packed tensors, so an entry past the end shortens that sequence instead of reading out of bounds."""
    if impl != "triton":
        pytest.skip("the torch path always validates (it needs the values on the host)")
    monkeypatch.setenv("KERNELSERVE_CHECK_INDICES", "never")
    torch.manual_seed(9)
    q = rand(10, 4, 64, dtype=torch.float32, device=device)
    k = rand(10, 2, 64, dtype=torch.float32, device=device)
    v = rand(10, 2, 64, dtype=torch.float32, device=device)
    bad = torch.tensor([0, 5, 10**6], dtype=torch.int32, device=device)  # the last entry is past the tensor
    out = attention_triton(q, k, v, bad, bad, 5, 5, causal=True)
    expected = attention_f64(q, k, v, [5, 5], [5, 5], True, 64 ** -0.5)  # clamped: the second ends at 10
    assert_close(out, expected, torch.float32, dot_rms=attention_dot_rms(64 ** -0.5, 64))


WINDOW_CASES = {
    # name: (query lengths, key lengths, (left, right)); the tiles are 32-128 wide: windows inside one tile,
    # across several, wider than the sequence, and a one-sided one
    "narrow": ([1, 17, 300], [1, 17, 300], (4, 4)),
    "tile-crossing": ([257, 70], [257, 70], (64, 64)),
    "causal-sliding": ([200, 9], [200, 9], (31, 0)),
    "prefix-hit": ([3, 40], [150, 140], (50, 0)),
    "wider-than-seq": ([20], [20], (1000, 1000)),
    "right-only": ([130], [130], (0, 7)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("case", list(WINDOW_CASES))
def test_attention_sliding_window(impl, device, dtype, causal, case):
    """The window only masks: every key it reaches is folded in, every other skipped (rows with no key -> 0)."""
    torch.manual_seed(hash((causal, case)) % 2**31)
    lens_q, lens_k, window = WINDOW_CASES[case]
    q = rand(sum(lens_q), 4, 64, dtype=dtype, device=device)
    k = rand(sum(lens_k), 2, 64, dtype=dtype, device=device)
    v = rand(sum(lens_k), 2, 64, dtype=dtype, device=device)
    out = IMPLS[impl](q, k, v, cu_seqlens(lens_q, device), cu_seqlens(lens_k, device), max(lens_q), max(lens_k),
                      causal=causal, scale=1.0 / 8, window=window)
    assert_close(out, attention_f64(q, k, v, lens_q, lens_k, causal, 1.0 / 8, window=window), dtype,
                 dot_rms=attention_dot_rms(1.0 / 8, 64))


def test_attention_window_is_checked(impl, device):
    q = rand(6, 4, 64, dtype=torch.float32, device=device)
    cu = cu_seqlens([6], device)
    for bad in ((-1, 3), (2,), (1.5, 2)):
        with pytest.raises(ValueError, match="window"):
            IMPLS[impl](q, q, q, cu, cu, 6, 6, causal=False, window=bad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [None, (31, 0)], ids=["nowindow", "window31"])
@pytest.mark.parametrize("case", ["self", "prefix-hit"])
def test_attention_softcap(impl, device, dtype, window, case):
    """Gemma 2's soft-capping (cap * tanh(s / cap) before the mask), causal, with and without a window."""
    torch.manual_seed(9)
    lens_q, lens_k = CASES[case]
    q = rand(sum(lens_q), 4, 64, dtype=dtype, device=device) * 3  # scores well past the cap
    k = rand(sum(lens_k), 2, 64, dtype=dtype, device=device)
    v = rand(sum(lens_k), 2, 64, dtype=dtype, device=device)
    out = IMPLS[impl](q, k, v, cu_seqlens(lens_q, device), cu_seqlens(lens_k, device), max(lens_q), max(lens_k),
                      causal=True, scale=1.0 / 8, window=window, softcap=1.5)
    assert_close(out, attention_f64(q, k, v, lens_q, lens_k, True, 1.0 / 8, window=window, softcap=1.5), dtype,
                 dot_rms=attention_dot_rms(3.0 / 8, 64))
