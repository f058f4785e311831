"""Weight-only quantized GEMM (w4a16 / w8a16) vs a float64 GEMM over the dequantised weight.

The contract: ``linear(x, qw)`` computes what ``F.linear(x, qw.dequantize(x.dtype))`` computes — the
weight a dequantised model would hold in x's dtype — so the reference is that weight in float64 and
the tolerance table is the ordinary GEMM's (conftest.TOLERANCES): the quantisation itself adds no error.
"""
from __future__ import annotations

import pytest
import torch

import kernels
from kernels.quant_gemm import (
    QUANT_CONFIGS,
    QuantizedWeight,
    cpu_supported,
    pack_codes,
    quant_configs,
    quant_linear_cpu,
    quant_linear_ref,
    quant_linear_triton,
    quantize_rtn,
)

from .conftest import (
    DTYPES,
    TOLERANCES,
    assert_close,
    cpu_kernels_off,
    rand,
    skip_every_config_on_gpu_check,
)
from .test_gemm import act_f64

CPP_KERNELS = True  # impl "cpp": kernelserve's C++ GEMM (kernels/cpu/quant_gemm.cpp); "torch": torch's int4 kernel


def quant_linear_torch(*args, **kwargs):
    """The CPU path with the C++ kernels off: torch's packed int4 kernel (or the reference where it cannot)."""
    with cpu_kernels_off():
        return quant_linear_cpu(*args, **kwargs)


QUANT = {"triton": quant_linear_triton, "torch": quant_linear_torch, "cpp": quant_linear_cpu}


def random_quantized(n, k, bits, group, device, g) -> QuantizedWeight:
    """Codes over the full range; scales ~ 1/sqrt(k) / 2^bits so outputs stay O(1); GGUF-like offsets."""
    codes = torch.randint(0, 2 ** bits, (n, k), generator=g, dtype=torch.int32).to(torch.uint8)
    scales = (torch.rand(n, k // group, generator=g) + 0.5) * (k ** -0.5) * 4 / 2 ** bits
    offsets = -(2 ** (bits - 1)) * scales + torch.randn(n, k // group, generator=g) * 0.01
    return pack_codes(codes, scales, offsets, bits, group).to(device)


def expected_f64(x, qw, bias, activation):
    w = qw.dequantize(x.dtype).double().cpu()  # the weight a dequantised model holds in x's dtype
    y = x.double().cpu() @ w.T
    return act_f64(y + bias.double().cpu() if bias is not None else y, activation)


SHAPES = [(1, 64, 48), (7, 128, 32), (33, 256, 80), (2, 3, 96, 16)]  # (*lead, K, N)
FORMATS = [(4, 32), (4, 64), (4, 128), (8, 32), (8, 16)]  # (bits, group size)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits, group, shape", [(b, g, s) for b, g in FORMATS for s in SHAPES if s[-2] % g == 0],
                         ids=lambda v: str(v))
def test_quant_linear_matches_float64(impl, device, dtype, bits, group, shape):
    *lead, k, n = shape
    g = torch.Generator().manual_seed(sum(shape) + bits + group)
    qw = random_quantized(n, k, bits, group, device, g)
    x = rand(*lead, k, dtype=dtype, device=device, generator=g)
    if impl == "torch" and dtype == torch.float32 and len(lead) == 1 and lead[0] > 8:
        x = x[:3]  # torch's float32 int4 kernel is a slow scalar loop: fewer rows keep the test short
    y = QUANT[impl](x, qw)
    assert y.shape == (*x.shape[:-1], n)
    assert_close(y, expected_f64(x, qw, None, None), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["silu", "gelu", None])
def test_quant_linear_bias_and_activation(impl, device, dtype, activation):
    g = torch.Generator().manual_seed(7)
    qw = random_quantized(48, 64, 4, 32, device, g)
    x = rand(5, 64, dtype=dtype, device=device, generator=g)
    b = rand(48, dtype=dtype, device=device, generator=g)
    assert_close(QUANT[impl](x, qw, b, activation), expected_f64(x, qw, b, activation), dtype)


def every_config():
    return [pytest.param(dtype, bits, group, c, id=f"{str(dtype)[6:]}-w{bits}g{group}-" +
                         "x".join(map(str, list(c.kwargs.values())[:3])))
            for dtype in (torch.bfloat16, torch.float32) for bits, group in ((4, 32), (4, 128), (8, 16))
            for c in quant_configs(dtype, bits, group)]


@pytest.mark.triton
@pytest.mark.parametrize("dtype, bits, group, config", every_config())
def test_quant_every_tile_config(impl, device, dtype, bits, group, config):
    """Each autotuner candidate computes the same thing (edges in M, N and K included)."""
    skip_every_config_on_gpu_check(device)
    if impl != "triton":
        pytest.skip("tile configs are a Triton concept")
    g = torch.Generator().manual_seed(11)
    qw = random_quantized(70, 256, bits, group, device, g)
    x = rand(19, 256, dtype=dtype, device=device, generator=g)
    b = rand(70, dtype=dtype, device=device, generator=g)
    assert_close(quant_linear_triton(x, qw, b, "silu", config=config), expected_f64(x, qw, b, "silu"), dtype)


def test_every_group_size_has_configs():
    for dtype in (torch.bfloat16, torch.float32):
        for bits, group in ((4, 32), (4, 64), (4, 128), (4, 256), (8, 16), (8, 32), (8, 128)):
            assert quant_configs(dtype, bits, group), (dtype, bits, group)
    assert all(c.kwargs["BLOCK_K"] >= 16 for table in QUANT_CONFIGS.values() for c in table)
    kept = quant_configs(torch.bfloat16, 4, 32)
    assert kept and all(c.kwargs["BLOCK_K"] == 32 and c in QUANT_CONFIGS[16] for c in kept)


def test_public_dispatch_and_gated_ffn():
    """kernels.linear / gated_ffn take a QuantizedWeight where a tensor would go (the torch path here)."""
    g = torch.Generator().manual_seed(3)
    wgu = torch.randn(2 * 64, 96, generator=g) * 0.1
    wd = torch.randn(96, 64, generator=g) * 0.1
    qgu, qd = quantize_rtn(wgu, 4, 32), quantize_rtn(wd, 8, 32)
    x = torch.randn(5, 96, generator=g).bfloat16()
    got = kernels.gated_ffn(x, qgu, qd, "silu")
    expected = kernels.gated_ffn(x, qgu.dequantize(x.dtype), qd.dequantize(x.dtype), "silu")
    atol, rtol = TOLERANCES[torch.bfloat16]  # one bf16 rounding apart: 16-bit scales and zeros on the CPU path
    torch.testing.assert_close(got.float(), expected.float(), atol=atol, rtol=rtol)
    h = torch.randn(5, 64, generator=g).bfloat16()
    assert torch.equal(kernels.linear(h, qd), quant_linear_cpu(h, qd))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64])
def test_rtn_quantisation_error_is_within_half_a_step(bits, group):
    g = torch.Generator().manual_seed(bits * group)
    w = torch.randn(32, 192, generator=g)
    qw = quantize_rtn(w, bits, group)
    step = qw.scales.repeat_interleave(group, 1)
    err = (qw.dequantize() - w).abs()
    assert (err <= step / 2 + 1e-6).all()
    assert qw.nbytes < w.numel() * (bits / 8 + 8 / group + 0.01)


def test_8bit_cpu_path_is_two_nibble_matmuls_and_exact_in_float32():
    g = torch.Generator().manual_seed(5)
    qw = random_quantized(32, 64, 8, 32, "cpu", g)
    x = torch.randn(2, 64, generator=g)
    assert cpu_supported(qw)
    torch.testing.assert_close(quant_linear_torch(x, qw).double(), expected_f64(x, qw, None, None),
                               atol=2e-5, rtol=2e-5)


def test_unsupported_cpu_shape_falls_back_to_the_reference():
    g = torch.Generator().manual_seed(6)
    qw = random_quantized(20, 64, 4, 32, "cpu", g)  # N = 20 is not a multiple of torch's 16
    x = torch.randn(3, 64, generator=g)
    assert not cpu_supported(qw)
    torch.testing.assert_close(quant_linear_torch(x, qw), quant_linear_ref(x, qw))


def test_quant_rejects_bad_input(impl, device):
    g = torch.Generator().manual_seed(9)
    qw = random_quantized(32, 64, 4, 32, device, g)
    x = torch.randn(3, 64, device=device)
    with pytest.raises(ValueError, match=r"x: expected \[\.\.\., 64\]"):
        QUANT[impl](torch.randn(3, 65, device=device), qw)
    with pytest.raises(ValueError, match="weight: expected a QuantizedWeight"):
        QUANT[impl](x, torch.randn(32, 64, device=device))
    with pytest.raises(ValueError, match=r"bias: expected shape \[32\]"):
        QUANT[impl](x, qw, torch.zeros(31, device=device))
    bad = QuantizedWeight(qw.qweight, qw.scales[:, :1], qw.offsets, 4, 32)
    with pytest.raises(ValueError, match="weight.scales: expected shape"):
        QUANT[impl](x, bad)
    with pytest.raises(ValueError, match="4-bit codes must be below 16"):
        pack_codes(torch.full((16, 32), 16, dtype=torch.uint8), torch.ones(16, 1), torch.zeros(16, 1), 4, 32)
    with pytest.raises(ValueError, match="group_size"):
        pack_codes(torch.zeros(16, 48, dtype=torch.uint8), torch.ones(16, 2), torch.zeros(16, 2), 4, 24)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [4, 8])
def test_float16_scales_where_exact(impl, device, dtype, bits):
    """Scales and offsets exact in float16 (GGUF's Q4_0/Q4_1/Q8_0) are stored in it and give the same values;
    others stay float32."""
    g = torch.Generator().manual_seed(bits)
    k, n = 192, 40
    codes = torch.randint(0, 2 ** bits, (n, k), generator=g, dtype=torch.int32).to(torch.uint8)
    scales = ((torch.rand(n, k // 32, generator=g) + 0.5) * k ** -0.5 * 4 / 2 ** bits).half().float()
    offsets = (-(2 ** (bits - 1)) * scales + torch.randn(n, k // 32, generator=g) * 0.01).half().float()
    qw = pack_codes(codes, scales, offsets, bits, 32).to(device)
    assert qw.scales.dtype == qw.offsets.dtype == torch.float16
    assert torch.equal(qw.dequantize().cpu(), pack_codes(codes, scales, offsets, bits, 32).dequantize())
    assert pack_codes(codes, scales * (1 + 2 ** -20), offsets, bits, 32).scales.dtype == torch.float32
    x = rand(5, k, dtype=dtype, device=device, generator=g)
    assert_close(QUANT[impl](x, qw), expected_f64(x, qw, None, None), dtype)
