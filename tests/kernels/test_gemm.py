"""Fused-epilogue GEMM, gated FFN and classic FFN vs float64."""
from __future__ import annotations

import math

import pytest
import torch

from kernels import ACTIVATIONS
from kernels.gemm import (
    GATED_CONFIGS,
    LINEAR_CONFIGS,
    ffn_ref,
    ffn_triton,
    gated_ffn_ref,
    gated_ffn_triton,
    gated_product_triton,
    linear_ref,
    linear_triton,
)

from .conftest import DTYPES, assert_close, rand, skip_every_config_on_gpu_check

LINEAR = {"triton": linear_triton, "torch": linear_ref}
GATED = {"triton": gated_ffn_triton, "torch": gated_ffn_ref}
FFN = {"triton": ffn_triton, "torch": ffn_ref}


def act_f64(x, activation):
    if activation is None:
        return x
    if activation == "relu":
        return x.clamp_min(0)
    if activation == "gelu":
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    if activation == "gelu_tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return x * torch.sigmoid(x)  # silu


def linear_f64(x, w, b, activation):
    y = x.double().cpu() @ w.double().cpu().T
    return act_f64(y + b.double().cpu() if b is not None else y, activation)


def weights(out_features, in_features, dtype, device, g):
    # 1/sqrt(in) keeps outputs O(1), so one tolerance fits every K
    return rand(out_features, in_features, dtype=dtype, device=device, generator=g, scale=in_features ** -0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1, 16, 16), (7, 33, 50), (3, 5, 130, 70)], ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_linear_matches_float64(impl, device, dtype, activation, shape, with_bias):
    g = torch.Generator().manual_seed(sum(shape))
    *lead, k, n = shape
    x = rand(*lead, k, dtype=dtype, device=device, generator=g)
    w = weights(n, k, dtype, device, g)
    b = rand(n, dtype=dtype, device=device, generator=g) if with_bias else None
    y = LINEAR[impl](x, w, b, activation)
    assert y.shape == (*lead, n)
    assert_close(y, linear_f64(x, w, b, activation), dtype)


def every_config(table):
    return [pytest.param(dtype, c, id=f"{bits}bit-" + "x".join(map(str, c.kwargs.values())))
            for bits, dtype in ((16, torch.float16), (32, torch.float32)) for c in table[bits]]


@pytest.mark.triton
@pytest.mark.parametrize("dtype, config", every_config(LINEAR_CONFIGS))
def test_linear_every_tile_config(impl, device, dtype, config):
    """Each autotuner candidate computes the same thing (edges in M, N and K included)."""
    skip_every_config_on_gpu_check(device)
    if impl != "triton":
        pytest.skip("tile configs are a Triton concept")
    g = torch.Generator().manual_seed(1)
    x = rand(37, 150, dtype=dtype, device=device, generator=g)
    w = weights(70, 150, dtype, device, g)
    b = rand(70, dtype=dtype, device=device, generator=g)
    assert_close(linear_triton(x, w, b, "gelu", config=config), linear_f64(x, w, b, "gelu"), dtype)


@pytest.mark.triton
@pytest.mark.parametrize("dtype, config", every_config(GATED_CONFIGS))
def test_gated_every_tile_config(impl, device, dtype, config):
    skip_every_config_on_gpu_check(device)
    if impl != "triton":
        pytest.skip("tile configs are a Triton concept")
    g = torch.Generator().manual_seed(2)
    x = rand(19, 70, dtype=dtype, device=device, generator=g)
    wgu = weights(2 * 45, 70, dtype, device, g)
    gate, up = linear_f64(x, wgu[:45], None, "silu"), linear_f64(x, wgu[45:], None, None)
    assert_close(gated_product_triton(x, wgu, "silu", config=config), gate * up, dtype)


def gated_f64(x, wgu, wd, activation):
    inter = wgu.shape[0] // 2
    gate = linear_f64(x, wgu[:inter], None, activation)
    up = linear_f64(x, wgu[inter:], None, None)
    return (gate * up) @ wd.double().cpu().T


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh", "relu"])
@pytest.mark.parametrize("shape", [(1, 16, 16), (9, 64, 172), (2, 3, 80, 40)], ids=str)
def test_gated_ffn_matches_float64(impl, device, dtype, activation, shape):
    g = torch.Generator().manual_seed(sum(shape))
    *lead, hidden, inter = shape
    x = rand(*lead, hidden, dtype=dtype, device=device, generator=g)
    wgu = weights(2 * inter, hidden, dtype, device, g)
    wd = weights(hidden, inter, dtype, device, g)
    y = GATED[impl](x, wgu, wd, activation)
    assert y.shape == x.shape
    assert_close(y, gated_f64(x, wgu, wd, activation), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["gelu", "relu", "gelu_tanh"])
def test_ffn_matches_float64(impl, device, dtype, activation):
    g = torch.Generator().manual_seed(3)
    x = rand(11, 48, dtype=dtype, device=device, generator=g)
    w_in, w_out = weights(96, 48, dtype, device, g), weights(48, 96, dtype, device, g)
    b_in, b_out = rand(96, dtype=dtype, device=device, generator=g), rand(48, dtype=dtype, device=device, generator=g)
    expected = linear_f64(linear_f64(x, w_in, b_in, activation), w_out, b_out, None)
    assert_close(FFN[impl](x, w_in, b_in, w_out, b_out, activation), expected, dtype)


def test_gemm_rejects_bad_input(impl, device):
    x = torch.randn(4, 8, device=device)
    w = torch.randn(6, 8, device=device)
    with pytest.raises(ValueError, match=r"weight: expected \[out, 8\]"):
        LINEAR[impl](x, w.T.contiguous(), None)
    with pytest.raises(ValueError, match=r"bias: expected shape \[6\]"):
        LINEAR[impl](x, w, torch.zeros(5, device=device))
    with pytest.raises(ValueError, match="activation: expected one of"):
        LINEAR[impl](x, w, None, "tanh")
    with pytest.raises(ValueError, match="x, weight: expected one dtype"):
        LINEAR[impl](x.half(), w, None)
    with pytest.raises(ValueError, match="last dimension must be contiguous"):
        LINEAR[impl](x, torch.randn(8, 6, device=device).T, None)
    with pytest.raises(ValueError, match=r"w_down: expected shape \[8, 3\]"):
        GATED[impl](x, w, torch.randn(8, 4, device=device))
