"""The decode-shaped (split-K) GEMM against float64, for every tile config, odd shapes and each row count."""
from __future__ import annotations

import pytest
import torch

from kernels.decode_gemm import (CUBLAS, DECODE_CONFIGS, DECODE_MAX_M, _splits, decode_configs, linear_decode_ref,
                                 linear_decode_triton)

from .conftest import DTYPES, assert_close, rand, skip_every_config_on_gpu_check

IMPLS = {"triton": linear_decode_triton, "torch": linear_decode_ref}


def f64(x, w, b, activation):
    y = x.double() @ w.double().T + (b.double() if b is not None else 0)
    return {None: y, "silu": torch.nn.functional.silu(y), "gelu": torch.nn.functional.gelu(y)}[activation]


def weights(n, k, dtype, device, g):
    return rand(n, k, dtype=dtype, device=device, generator=g, scale=k ** -0.5)  # outputs O(1) for every K


@pytest.mark.triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 3, 16, 33, 64])
@pytest.mark.parametrize("n, k", [(576, 576), (70, 1000), (130, 48)], ids=["square", "odd-k", "short-k"])
@pytest.mark.parametrize("activation, with_bias", [(None, False), ("silu", True), ("gelu", False)])
def test_decode_gemm_matches_float64(impl, device, dtype, m, n, k, activation, with_bias):
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    x = rand(m, k, dtype=dtype, device=device, generator=g)
    w = weights(n, k, dtype, device, g)
    b = rand(n, dtype=dtype, device=device, generator=g) if with_bias else None
    y = IMPLS[impl](x, w, b, activation)
    assert y.shape == (m, n)
    assert_close(y, f64(x, w, b, activation), dtype)


def every_config():
    return [pytest.param(dtype, c, id=f"{bits}bit-" + "x".join(map(str, c.kwargs.values())) + f"-w{c.num_warps}")
            for bits, dtype in ((16, torch.bfloat16), (32, torch.float32)) for c in DECODE_CONFIGS[bits]]


@pytest.mark.triton
@pytest.mark.parametrize("dtype, config", every_config())
def test_every_split_k_config(impl, device, dtype, config):
    """Each tuner candidate computes the same thing (K slices, N edges, rows padded to 16 / 32 / 64). The bf16
    ones run in the GPU check too: with tuning off it runs one split-K tile only, and more than one split
    (the second kernel's fixed-order sum) must meet a float64 reference on the device at least once."""
    if dtype != torch.bfloat16:
        skip_every_config_on_gpu_check(device)
    if impl != "triton":
        pytest.skip("tile configs are a Triton concept")
    g = torch.Generator().manual_seed(3)
    for m in (1, 20, 64):
        x = rand(m, 1000, dtype=dtype, device=device, generator=g)
        w = weights(150, 1000, dtype, device, g)
        b = rand(150, dtype=dtype, device=device, generator=g)
        assert_close(linear_decode_triton(x, w, b, "silu", config=config), f64(x, w, b, "silu"), dtype)


@pytest.mark.triton
def test_cublas_candidate_and_lead_dims(impl, device):
    if impl != "triton":
        pytest.skip("the candidate list is the Triton launcher's")
    g = torch.Generator().manual_seed(4)
    x = rand(2, 3, 96, dtype=torch.float32, device=device, generator=g)
    w = weights(40, 96, torch.float32, device, g)
    y = linear_decode_triton(x, w, None, "gelu", config=CUBLAS)
    assert y.shape == (2, 3, 40)
    assert_close(y, f64(x.reshape(6, 96), w, None, "gelu").view(2, 3, 40), torch.float32)


def test_split_arithmetic_covers_k_exactly():
    for config in decode_configs(torch.bfloat16) + decode_configs(torch.float32):
        for k in (1, 48, 63, 64, 576, 1000, 1536, 8192):
            splits, per = _splits(config, k)
            assert per % config.kwargs["BLOCK_K"] == 0 and 1 <= splits <= config.kwargs["SPLIT_K"]
            assert (splits - 1) * per < k <= splits * per  # every slice non-empty, together exactly K


def test_rejects_too_many_rows_and_bad_input():
    w = torch.randn(8, 16)
    with pytest.raises(ValueError, match="at most"):
        linear_decode_triton(torch.randn(DECODE_MAX_M + 1, 16), w)
    with pytest.raises(ValueError):
        linear_decode_triton(torch.randn(2, 15), w)


@pytest.mark.triton
def test_public_linear_and_gated_ffn_take_the_decode_path(impl, device, monkeypatch):
    import kernels
    from kernels import decode_gemm

    if impl != "triton":
        pytest.skip("dispatch to the Triton decode GEMM")
    monkeypatch.setenv("KERNELSERVE_KERNELS", "triton")
    calls = []
    real = decode_gemm.linear_decode_triton
    monkeypatch.setattr(kernels, "linear_decode_triton", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    g = torch.Generator().manual_seed(5)
    x = rand(3, 64, dtype=torch.float32, device=device, generator=g)
    wgu, wd = weights(2 * 96, 64, torch.float32, device, g), weights(64, 96, torch.float32, device, g)
    gate, up = f64(x, wgu[:96], None, "silu"), f64(x, wgu[96:], None, None)
    expected = (gate * up) @ wd.double().T
    assert_close(kernels.gated_ffn(x, wgu, wd, "silu"), expected, torch.float32)
    assert len(calls) == 2  # gate/up and down, both split over K
    kernels.linear(rand(DECODE_MAX_M + 1, 64, dtype=torch.float32, device=device, generator=g), wd.T.contiguous())
    assert len(calls) == 2  # more rows: the prefill tiles
