"""Rotary embeddings (NeoX and GPT-J layouts, partial rotary) vs a float64 pairwise rotation."""
from __future__ import annotations

import pytest
import torch

from kernels.cpu.ops import rotary_cpu
from kernels.rope import rotary_cos_sin_cache, rotary_ref, rotary_triton

from .conftest import DTYPES, assert_close, rand

CPP_KERNELS = True  # impl "cpp": the C++ rotary (kernels/cpu/ops.cpp)
ROTARY = {"triton": rotary_triton, "torch": rotary_ref, "cpp": rotary_cpu}


def rotary_f64(x, positions, cache, neox):
    """Rotate each feature pair (i, j) by the angle whose cos/sin the cache holds."""
    x = x.double().cpu().clone()
    cache = cache.double().cpu()
    half = cache.shape[1] // 2
    for t, pos in enumerate(positions.tolist()):
        for i in range(half):
            a, b = (i, i + half) if neox else (2 * i, 2 * i + 1)
            cos, sin = cache[pos, i], cache[pos, half + i]
            x1, x2 = x[t, :, a].clone(), x[t, :, b].clone()
            x[t, :, a] = x1 * cos - x2 * sin
            x[t, :, b] = x2 * cos + x1 * sin
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("dims", [(64, 64), (80, 80), (64, 32)], ids=["d64", "d80", "partial"])
@pytest.mark.parametrize("heads", [(8, 2), (3, 1)], ids=["gqa", "odd"])
def test_rotary_matches_float64(impl, device, dtype, neox, dims, heads):
    head_dim, rot_dim = dims
    g = torch.Generator().manual_seed(head_dim + rot_dim)
    cache = rotary_cos_sin_cache(rot_dim, 300, base=10000.0).to(device)
    positions = torch.tensor([0, 1, 17, 129, 299], device=device)
    q = rand(5, heads[0], head_dim, dtype=dtype, device=device, generator=g)
    k = rand(5, heads[1], head_dim, dtype=dtype, device=device, generator=g)
    expected_q, expected_k = rotary_f64(q, positions, cache, neox), rotary_f64(k, positions, cache, neox)
    q_out, k_out = ROTARY[impl](q, k, positions, cache, neox)
    assert q_out.data_ptr() == q.data_ptr() and k_out.data_ptr() == k.data_ptr(), "rotary works in place"
    assert_close(q, expected_q, dtype, tf32=False)
    assert_close(k, expected_k, dtype, tf32=False)


def test_cos_sin_cache_layout():
    cache = rotary_cos_sin_cache(8, 10, base=100.0).double()
    inv_freq = 100.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    angles = 7 * inv_freq
    torch.testing.assert_close(cache[7], torch.cat([angles.cos(), angles.sin()]), atol=1e-6, rtol=0)


def test_rotary_rejects_bad_input(impl, device, monkeypatch):
    monkeypatch.setenv("KERNELSERVE_CHECK_INDICES", "always")  # checked on the host for device tensors too
    q = torch.randn(3, 4, 64, device=device)
    k = torch.randn(3, 2, 64, device=device)
    cache = rotary_cos_sin_cache(64, 16).to(device)
    with pytest.raises(ValueError, match="positions: must lie in"):
        ROTARY[impl](q, k, torch.tensor([0, 1, 16], device=device), cache)
    with pytest.raises(ValueError, match="rot_dim"):
        ROTARY[impl](q, k, torch.tensor([0, 1, 2], device=device), cache[:, :63])
    with pytest.raises(ValueError, match=r"k: expected shape \[3, \*, 64\]"):
        ROTARY[impl](q, k[:2], torch.tensor([0, 1, 2], device=device), cache)


def test_rotary_leaves_out_of_range_positions_unrotated(impl, device, monkeypatch):
    """An unchecked position outside the cos/sin table (device tensors by default) is never read:
    that token stays as it was; the others rotate as usual."""
    monkeypatch.setenv("KERNELSERVE_CHECK_INDICES", "never")
    g = torch.Generator().manual_seed(8)
    q = rand(4, 4, 64, dtype=torch.float32, device=device, generator=g)
    k = rand(4, 2, 64, dtype=torch.float32, device=device, generator=g)
    cache = rotary_cos_sin_cache(64, 16).to(device)
    positions = torch.tensor([0, 15, 16, -3], device=device)
    q0, k0 = q.clone(), k.clone()
    ROTARY[impl](q, k, positions, cache)
    assert torch.equal(q[2:], q0[2:]) and torch.equal(k[2:], k0[2:])
    assert_close(q[:2], rotary_f64(q0[:2], positions[:2].cpu(), cache, True), torch.float32)
