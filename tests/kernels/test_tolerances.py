"""The TF32 tolerance model against TF32 emulated on the CPU: it holds, grows with the reduction length,
and is not so loose that it could not fail."""
from __future__ import annotations

import math

import pytest
import torch

from .conftest import TF32_UNIT, attention_dot_rms, tf32_tolerance


def to_tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to TF32 (10 explicit mantissa bits), to nearest, ties to even."""
    bits = x.float().contiguous().view(torch.int32)
    lsb = (bits >> 13) & 1
    rounded = (bits + 0x0FFF + lsb) & ~0x1FFF
    return rounded.view(torch.float32)


def test_to_tf32_keeps_eleven_significant_bits():
    x = torch.randn(10_000)
    rel = ((to_tf32(x) - x) / x).abs()
    assert rel.max() <= TF32_UNIT * (1 + 1e-6) and rel.max() > TF32_UNIT / 2


@pytest.mark.parametrize("k", [16, 64, 256, 1024, 4096])
def test_gemm_error_within_the_model_for_every_reduction_length(k):
    g = torch.Generator().manual_seed(k)
    x, w = torch.randn(256, k, generator=g), torch.randn(64, k, generator=g)
    exact = x.double() @ w.double().T
    tf32 = (to_tf32(x).double() @ to_tf32(w).double().T).float()
    err = (tf32.double() - exact).abs().max().item()
    atol, _ = tf32_tolerance(math.sqrt(k))  # rms(x) = rms(w) = 1
    assert err <= atol
    assert err >= atol / 10  # a constant tolerance fitted at small K would fail here at large K


def test_the_bound_grows_with_the_reduction_and_the_scale():
    assert tf32_tolerance(math.sqrt(4096))[0] > 5 * tf32_tolerance(math.sqrt(64))[0]
    assert attention_dot_rms(1.0, 64) > attention_dot_rms(1 / 8, 64)
