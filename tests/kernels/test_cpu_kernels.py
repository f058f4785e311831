"""kernelserve's C++ CPU kernels (kernels/cpu): what the shared parity tests do not cover.

The parity tests of the quantized GEMM, RMSNorm, rotary and paged decode attention run these kernels as
impl ``cpp`` against float64 (test_quant_gemm.py, test_norms.py, test_rotary.py, test_paged_attention.py).
Here: odd shapes that reach every tail of the C++ loops (M = 1, 3, 17; N not a multiple of the 4-row tile;
K not a multiple of 64; features not a multiple of 16), the gated activation, the portable path (group 16),
batch invariance bit for bit (a row alone, inside a batch, on one thread or two), dispatch and the
fallback when no compiler is found.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import kernels
from kernels import cpu
from kernels.cpu.ops import act_and_mul_cpu, act_and_mul_ref, paged_attention_cpu, rms_norm_cpu
from kernels.quant_gemm import quant_linear_cpu

from .conftest import DTYPES, TOLERANCES, assert_close, cpu_kernels_off, rand
from .test_paged_attention import paged_f64, random_tables
from .test_quant_gemm import expected_f64, random_quantized

# (tests/kernels/test_cpu_build.py fails, rather than skips, where a compiler is present and the build breaks)
pytestmark = pytest.mark.skipif(not cpu.available(), reason="kernelserve's C++ CPU kernels are not built here")

ROWS = [1, 3, 17]


def gemm(x, qw):
    return torch.ops.kernelserve.quant_linear(x, qw.qweight, qw.scales, qw.offsets, qw.bits, qw.group_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("bits, group, k, n", [(4, 32, 96, 37), (4, 32, 576, 37), (4, 32, 256, 4), (4, 64, 192, 70),
                                                (4, 128, 384, 5), (4, 256, 512, 6),
                                                (8, 32, 96, 37), (8, 64, 64, 1), (8, 16, 48, 9), (4, 16, 80, 6)],
                         ids=lambda v: str(v))
def test_quant_gemm_odd_shapes_match_float64(dtype, m, bits, group, k, n):
    """Tails of the 4-row weight tile and the 4-row activation block; K = 96 the 32-column path, K a multiple
    of 64 the 128-column one (with a 64-column tail where K = 576, SmolLM2's); group 16 the portable loops."""
    g = torch.Generator().manual_seed(m * 1000 + k + n + bits)
    qw = random_quantized(n, k, bits, group, "cpu", g)
    x = rand(m, k, dtype=dtype, device="cpu", generator=g)
    assert_close(gemm(x, qw), expected_f64(x, qw, None, None), dtype, tf32=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bits", [4, 8])
def test_quant_gemm_rows_do_not_depend_on_the_batch_or_threads(dtype, bits):
    g = torch.Generator().manual_seed(bits)
    qw = random_quantized(200, 576, bits, 32, "cpu", g)
    x = rand(33, 576, dtype=dtype, device="cpu", generator=g)
    together = gemm(x, qw)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = gemm(x, qw)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(together, one_thread)
    for i in (0, 5, 32):
        assert torch.equal(gemm(x[i:i + 1], qw), together[i:i + 1])
    assert torch.equal(gemm(x[3:10], qw), together[3:10])


def test_quant_gemm_reads_the_one_copy_of_the_weight():
    """No repacked second copy is built for the C++ kernel (torch's int4 layout is the fallback's)."""
    g = torch.Generator().manual_seed(1)
    qw = random_quantized(64, 128, 4, 32, "cpu", g)
    kernels.prepare_cpu(qw, torch.bfloat16)
    quant_linear_cpu(torch.randn(2, 128).bfloat16(), qw)
    assert qw._cpu == {}
    with cpu_kernels_off():
        kernels.prepare_cpu(qw, torch.bfloat16)
    assert torch.bfloat16 in qw._cpu


def act_f64(gate_up, activation):
    gate, up = gate_up.double().chunk(2, dim=-1)
    if activation == "silu":
        act = gate * torch.sigmoid(gate)
    else:
        act = 0.5 * gate * (1 + torch.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate ** 3)))
    return act * up


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("rows, width", [(1, 1), (3, 17), (17, 1536)])
def test_act_and_mul_matches_float64(dtype, activation, rows, width):
    g = torch.Generator().manual_seed(rows + width)
    gate_up = rand(rows, 2 * width, dtype=dtype, device="cpu", generator=g, scale=4.0)  # deep into both tails
    got = act_and_mul_cpu(gate_up, activation)
    assert got.shape == (rows, width) and got.dtype == dtype
    assert_close(got, act_f64(gate_up, activation), dtype, tf32=False)


def test_act_and_mul_extremes_and_fallback():
    """e^x saturates without NaN (|x| up to 1e4); activations without a C++ twin run the reference."""
    gate = torch.tensor([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4])
    gate_up = torch.cat([gate, torch.ones_like(gate)])[None]
    torch.testing.assert_close(act_and_mul_cpu(gate_up, "silu").double(), act_f64(gate_up, "silu"), rtol=1e-6,
                               atol=1e-30)
    x = torch.randn(3, 8)
    assert torch.equal(act_and_mul_cpu(x, "relu"), act_and_mul_ref(x, "relu"))


def test_exp_is_accurate_over_the_softmax_range():
    """The polynomial e^x behind SiLU and the softmax: relative error a few float32 ulps on [-87, 88]."""
    x = torch.linspace(-87, 88, 100_003)
    gate_up = torch.cat([-x[:, None], torch.ones(x.shape[0], 1)], dim=1)  # silu(-x) = -x / (1 + e^x)
    got = act_and_mul_cpu(gate_up, "silu").double()[:, 0]
    expected = act_f64(gate_up, "silu")[:, 0]
    rel = ((got - expected).abs() / expected.abs().clamp_min(1e-300))
    assert float(rel.max()) < 4 * 2.0 ** -23


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_rows_do_not_depend_on_the_batch(dtype):
    g = torch.Generator().manual_seed(2)
    x = rand(19, 577, dtype=dtype, device="cpu", generator=g)
    r = rand(19, 577, dtype=dtype, device="cpu", generator=g)
    w = rand(577, dtype=dtype, device="cpu", generator=g)
    y, h = rms_norm_cpu(x, w, 1e-6, r)
    for i in (0, 7, 18):
        yi, hi = rms_norm_cpu(x[i:i + 1], w, 1e-6, r[i:i + 1])
        assert torch.equal(yi, y[i:i + 1]) and torch.equal(hi, h[i:i + 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_decode_rows_do_not_depend_on_the_batch(dtype):
    g = torch.Generator().manual_seed(4)
    seq_lens, block_size = [5, 300, 1, 64, 0, 129], 16
    num_blocks = sum(math.ceil(n / block_size) for n in seq_lens) + 2
    k_cache = rand(num_blocks, block_size, 3, 64, dtype=dtype, device="cpu", generator=g)
    v_cache = rand(num_blocks, block_size, 3, 64, dtype=dtype, device="cpu", generator=g)
    tables = random_tables(seq_lens, block_size, num_blocks, g)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    q = rand(len(seq_lens), 9, 64, dtype=dtype, device="cpu", generator=g)
    together = paged_attention_cpu(q, k_cache, v_cache, tables, lens)
    for b in range(len(seq_lens)):
        alone = paged_attention_cpu(q[b:b + 1], k_cache, v_cache, tables[b:b + 1], lens[b:b + 1])
        assert torch.equal(alone, together[b:b + 1])
    assert_close(together, paged_f64(q, k_cache, v_cache, tables, lens, 0.125), dtype, tf32=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_decode_odd_head_dim(dtype):
    """A head dim that is not a multiple of 16 (the vector tails of the dot and the value sum)."""
    g = torch.Generator().manual_seed(8)
    seq_lens, block_size = [3, 40], 16
    num_blocks = 8
    k_cache = rand(num_blocks, block_size, 1, 40, dtype=dtype, device="cpu", generator=g)
    v_cache = rand(num_blocks, block_size, 1, 40, dtype=dtype, device="cpu", generator=g)
    tables = random_tables(seq_lens, block_size, num_blocks, g)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    q = rand(2, 2, 40, dtype=dtype, device="cpu", generator=g)
    assert_close(paged_attention_cpu(q, k_cache, v_cache, tables, lens),
                 paged_f64(q, k_cache, v_cache, tables, lens, 40 ** -0.5), dtype, tf32=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_decode_more_than_eight_heads_a_kv_head(dtype):
    """A KV head shared by 10 query heads: the value sums run in two register passes (8 heads, then 2); one
    sequence alone is split a query head an item, so it also checks that split against the batch's."""
    g = torch.Generator().manual_seed(9)
    seq_lens, block_size, num_blocks = [5, 37, 20], 16, 10
    k_cache = rand(num_blocks, block_size, 2, 64, dtype=dtype, device="cpu", generator=g)
    v_cache = rand(num_blocks, block_size, 2, 64, dtype=dtype, device="cpu", generator=g)
    tables = random_tables(seq_lens, block_size, num_blocks, g)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    q = rand(3, 20, 64, dtype=dtype, device="cpu", generator=g)
    together = paged_attention_cpu(q, k_cache, v_cache, tables, lens)
    assert_close(together, paged_f64(q, k_cache, v_cache, tables, lens, 64 ** -0.5), dtype, tf32=False)
    alone = paged_attention_cpu(q[1:2], k_cache, v_cache, tables[1:2], lens[1:2])
    assert torch.equal(alone, together[1:2])


def test_cpu_tensors_dispatch_to_the_cpp_kernels_unless_switched_off():
    x = torch.randn(2, 8)
    assert kernels._pick(None, "torch path", x, rms_norm_cpu) is rms_norm_cpu
    with cpu_kernels_off():
        assert kernels._pick(None, "torch path", x, rms_norm_cpu) == "torch path"
        assert not kernels.uses_cpu_kernel(random_quantized(8, 32, 4, 32, "cpu", torch.Generator()), x.dtype)


def run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def test_a_built_library_is_reused_and_a_missing_compiler_falls_back(tmp_path):
    """The build lands in the cache and the next process loads it as it is; without a compiler the
    torch paths serve, with one warning."""
    build = os.path.join(cpu.cache_dir(), cpu._build_name())
    libraries = [f for f in os.listdir(build) if f.endswith(".so")]
    assert libraries
    before = {f: os.stat(os.path.join(build, f)).st_mtime_ns for f in libraries}
    done = run_python("import kernels.cpu as c; assert c.available() and c.vectorised() == "
                      f"{cpu.vectorised()}", {})
    assert done.returncode == 0, done.stderr
    assert before == {f: os.stat(os.path.join(build, f)).st_mtime_ns for f in libraries}  # not rebuilt
    code = ("import logging, torch, kernels; logging.basicConfig(level=logging.WARNING); "
            "import kernels.cpu as c; assert not c.available(); "
            "x = torch.randn(2, 8); print(kernels.rms_norm(x, torch.ones(8), 1e-6).shape)")
    done = run_python(code, {"KERNELSERVE_CACHE": str(tmp_path), "CXX": "/nonexistent/c++"})
    assert done.returncode == 0, done.stderr
    assert "torch.Size([2, 8])" in done.stdout
    assert done.stderr.count("CPU kernels unavailable") == 1


@pytest.mark.parametrize("bits, group, k", [(4, 32, 576), (4, 32, 96), (4, 128, 512), (8, 32, 576)])
def test_quant_gemm_activations_with_outliers(bits, group, k):
    """Real hidden states have a few features hundreds of times the rest and a common offset: the dot's
    partial sums must stay small (codes centred near zero), or float32 accumulation loses the signal. The
    error is measured against the float64 result relative to each output row's largest |value|."""
    g = torch.Generator().manual_seed(k + bits)
    qw = random_quantized(64, k, bits, group, "cpu", g)
    x = torch.randn(5, k, generator=g) + 2.0
    x[:, 7] = 400.0
    x[:, k // 2] = -250.0
    x = x.bfloat16()
    got = gemm(x, qw).double()
    expected = expected_f64(x, qw, None, None)
    rel = (got - expected).abs().amax(-1) / expected.abs().amax(-1)
    assert float(rel.max()) < 2 * 2.0 ** -8  # the bf16 output's own rounding, twice
