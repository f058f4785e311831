"""LayerNorm / RMSNorm (with and without the fused residual add) vs float64."""
from __future__ import annotations

import pytest
import torch

from kernels._backend import interpreting
from kernels.cpu.ops import rms_norm_cpu
from kernels.norms import (
    layer_norm_ref,
    layer_norm_triton,
    rms_norm_ref,
    rms_norm_triton,
)

from .conftest import DTYPES, assert_close, rand

CPP_KERNELS = True  # impl "cpp": the C++ RMSNorm (kernels/cpu/ops.cpp); LayerNorm has no C++ twin (torch on CPU)
LAYER = {"triton": layer_norm_triton, "torch": layer_norm_ref, "cpp": layer_norm_ref}
RMS = {"triton": rms_norm_triton, "torch": rms_norm_ref, "cpp": rms_norm_cpu}
SHAPES = [(3, 1), (9, 7, 41), (5, 4097), (2, 16384)]


def normalise_f64(h, weight, bias, eps, rms):
    h = h.double().cpu()
    if rms:
        y = h / torch.sqrt((h * h).mean(-1, keepdim=True) + eps)
    else:
        mean = h.mean(-1, keepdim=True)
        y = (h - mean) / torch.sqrt(((h - mean) ** 2).mean(-1, keepdim=True) + eps)
    y = y * weight.double().cpu()
    return y + bias.double().cpu() if bias is not None else y


def assert_same_rounding(actual, expected):
    """The fused residual must equal the unfused ``x + residual`` bit for bit.

    Except under Triton's interpreter, whose fp32 -> bf16 cast truncates
    instead of rounding to nearest even: there, within one bf16 ulp (2^-7 relative).
    """
    if actual.dtype == torch.bfloat16 and interpreting():
        torch.testing.assert_close(actual, expected, atol=0, rtol=2**-7)
    else:
        assert torch.equal(actual, expected), "new residual differs from the unfused x + residual"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("rms", [True, False], ids=["rms", "layer"])
@pytest.mark.parametrize("with_residual", [True, False], ids=["residual", "plain"])
def test_norm_matches_float64(impl, device, dtype, shape, rms, with_residual):
    g = torch.Generator().manual_seed(sum(shape))
    x = rand(*shape, dtype=dtype, device=device, generator=g, scale=3.0)
    residual = rand(*shape, dtype=dtype, device=device, generator=g) if with_residual else None
    weight = rand(shape[-1], dtype=dtype, device=device, generator=g)
    bias = None if rms else rand(shape[-1], dtype=dtype, device=device, generator=g)
    eps = 1e-6 if rms else 1e-5
    if rms:
        result = RMS[impl](x, weight, eps, residual)
    else:
        result = LAYER[impl](x, weight, bias, eps, residual)
    if with_residual:
        y, h = result
        assert_same_rounding(h, x + residual)
    else:
        y, h = result, x
    assert y.shape == x.shape
    assert_close(y, normalise_f64(h, weight, bias, eps, rms), dtype, tf32=False)


def test_layer_norm_without_bias(impl, device):
    x = rand(4, 33, dtype=torch.float32, device=device)
    w = rand(33, dtype=torch.float32, device=device)
    assert_close(LAYER[impl](x, w, None, 1e-5), normalise_f64(x, w, None, 1e-5, False), torch.float32, tf32=False)


def test_norm_rejects_bad_input(impl, device):
    x = torch.randn(4, 8, device=device)
    w = torch.ones(8, device=device)
    with pytest.raises(ValueError, match=r"weight: expected shape \[8\]"):
        RMS[impl](x, w[:7], 1e-6)
    with pytest.raises(ValueError, match="residual: expected shape"):
        RMS[impl](x, w, 1e-6, residual=x[:2])
    with pytest.raises(ValueError, match="x, residual: expected one dtype"):
        LAYER[impl](x, w, None, 1e-5, residual=x.half())
    with pytest.raises(ValueError, match="last dimension must be in"):
        LAYER[impl](torch.randn(2, 16385, device=device), torch.ones(16385, device=device), None, 1e-5)
    with pytest.raises(ValueError, match="x: expected dtype"):
        RMS[impl](x.long(), w, 1e-6)
