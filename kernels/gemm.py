"""GEMM with bias and activation fused into the epilogue, and the FFNs built on it.

``linear``: ``y = act(x @ W^T + b)`` with ``W`` in ``F.linear`` layout ``[N, K]``.
Output tiles are visited in grouped order (``GROUP_M`` row-tiles share one
column band) so a band of ``W`` stays in L2 while several row tiles use it —
the ordering of Triton's matmul tutorial.

``gated_ffn``: SwiGLU / GeGLU (Shazeer, 2020). One kernel computes the gate and
up projections for the same output tile — two accumulators over one pass of
``x`` — and writes only ``act(gate) * up``; the down projection is a plain
``linear``.

Activations (fp32, in the epilogue):
    relu(x)      = max(x, 0)
    gelu(x)      = 0.5 x (1 + erf(x / sqrt 2))
    gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    silu(x)      = x * sigmoid(x)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._backend import interpreting
from ._validate import FLOAT_DTYPES, checking, check_same_dtype, check_shape, check_tensor, expect
from .tuning import Tuner, m_bucket

ACTIVATIONS = (None, "relu", "gelu", "gelu_tanh", "silu")
_ACT_CODE = {None: 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}


@triton.jit
def _activate(x, ACT: tl.constexpr):
    if ACT == 1:
        x = tl.maximum(x, 0.0)
    elif ACT == 2:
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif ACT == 3:
        inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        # tanh(u) = 2 sigmoid(2u) - 1; exp overflow to inf still yields -1
        x = 0.5 * x * (1.0 + (2.0 / (1.0 + tl.exp(-2.0 * inner)) - 1.0))
    elif ACT == 4:
        x = x / (1.0 + tl.exp(-x))
    return x


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Map the 1-D program id to a (row tile, column tile) in grouped order."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    group = pid // per_group
    first_m = group * GROUP_M
    size_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    return pid_m, pid_n


def _configs(shapes):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for m, n, k, w, s in shapes]


# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages), from large prefill tiles down to
# small-M decode tiles. Each list holds only tiles that compile for sm_80 and
# sm_90 without register spills and within shared memory (test_aot_compile.py);
# fp32 operands (TF32 dots) take twice the bytes, so they get their own lists.
LINEAR_CONFIGS = {
    16: _configs([(128, 128, 64, 8, 4), (128, 128, 32, 8, 4), (128, 64, 64, 8, 3), (64, 128, 64, 8, 3),
                  (64, 64, 64, 4, 4), (32, 64, 64, 4, 4), (32, 64, 128, 4, 3), (16, 64, 128, 4, 4)]),
    32: _configs([(128, 128, 32, 8, 3), (128, 64, 64, 8, 3), (64, 128, 64, 8, 3), (64, 64, 32, 4, 4),
                  (32, 64, 64, 4, 4), (16, 64, 64, 4, 4)]),
}
# two accumulators per tile: smaller tiles
GATED_CONFIGS = {
    16: _configs([(128, 64, 64, 8, 3), (64, 128, 64, 8, 3), (64, 64, 64, 4, 4), (32, 64, 64, 4, 4),
                  (16, 64, 64, 4, 4)]),
    32: _configs([(128, 64, 64, 8, 3), (64, 64, 64, 4, 3), (32, 64, 64, 4, 4), (16, 64, 64, 4, 4)]),
}


def configs_for(table: dict, dtype: torch.dtype) -> list:
    """The tile candidates for one operand dtype."""
    return table[torch.finfo(dtype).bits if torch.finfo(dtype).bits == 32 else 16]


@triton.jit(do_not_specialize=["M"])  # varies per step: one compilation for all values
def _linear_kernel(
    X, W, Bias, Y, M, N, K, M_BUCKET,
    stride_xm, stride_wn, stride_ym,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = X + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    w_ptrs = W + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]  # W^T tile [BLOCK_K, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        x = tl.load(x_ptrs, mask=(offs_m < M)[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & (offs_n < N)[None, :], other=0.0)
        acc = tl.dot(x, w, acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    acc = _activate(acc, ACT)
    y_ptrs = Y + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


@triton.jit(do_not_specialize=["M"])  # varies per step: one compilation for all values
def _gated_kernel(
    X, W, Y, M, N, K, M_BUCKET,
    stride_xm, stride_wn, stride_ym,
    ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # W = cat([W_gate, W_up]) is [2N, K]: gate rows n, up rows N + n
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = X + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    g_ptrs = W + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
    u_ptrs = g_ptrs + N * stride_wn
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        w_mask = k_ok[:, None] & (offs_n < N)[None, :]
        x = tl.load(x_ptrs, mask=(offs_m < M)[:, None] & k_ok[None, :], other=0.0)
        g = tl.load(g_ptrs, mask=w_mask, other=0.0)
        u = tl.load(u_ptrs, mask=w_mask, other=0.0)
        acc_g = tl.dot(x, g, acc_g)
        acc_u = tl.dot(x, u, acc_u)
        x_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    # round the gate to the input dtype first, as the unfused act(x @ Wg^T) would be
    gate = _activate(acc_g.to(Y.dtype.element_ty).to(tl.float32), ACT)
    up = acc_u.to(Y.dtype.element_ty).to(tl.float32)
    y_ptrs = Y + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, (gate * up).to(Y.dtype.element_ty), mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


# tile choice per (dtype, token-count bucket, N, K, flags): timed once, persisted (kernels/tuning.py)
LINEAR_TUNER = Tuner("linear", _linear_kernel, lambda dtype: configs_for(LINEAR_CONFIGS, dtype))
GATED_TUNER = Tuner("gated", _gated_kernel, lambda dtype: configs_for(GATED_CONFIGS, dtype))


def tile_grid(M: int, N: int):
    """The launch grid of a tile config: one program per output tile."""
    return lambda c: (triton.cdiv(M, c.kwargs["BLOCK_M"]) * triton.cdiv(N, c.kwargs["BLOCK_N"]),)


def _launch(tuner: Tuner, table, config, M, N, K, args, kwargs):
    """Launch with the tuner's choice for this shape, or with one fixed config.

    The interpreter would time every config, so it runs ``config`` (default:
    the smallest tiles for the dtype) instead; tests pass a config to cover each one.
    """
    dtype = args[0].dtype
    if config is None and not interpreting():
        key = (str(dtype).removeprefix("torch."), m_bucket(M), N, K, *sorted(kwargs.items()))
        tuner.launch(key, tile_grid(M, N), args, kwargs, (dtype,), device=args[0].device)
        return
    config = config or configs_for(table, dtype)[-1]
    tuner.kernel[tile_grid(M, N)(config)](*args, **kwargs, **config.kwargs, num_warps=config.num_warps,
                                          num_stages=config.num_stages)


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``[rows, K]`` with unit stride along K, as the GEMM kernels index it (a copy only when the
    last dimension is strided)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _check_linear_args(x, weight, bias, activation):
    if not checking():  # the caller vouched for the arguments (_validate.trusted_calls)
        return
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    expect(x.dim() >= 1, "x: expected at least one dimension")
    check_tensor("weight", weight, ndim=2, dtypes=FLOAT_DTYPES, device=x.device)
    check_same_dtype(("x", "weight"), (x, weight))
    expect(weight.shape[1] == x.shape[-1], lambda: f"weight: expected [out, {x.shape[-1]}] (F.linear layout), got {list(weight.shape)}")
    if bias is not None:
        check_tensor("bias", bias, ndim=1, dtypes=FLOAT_DTYPES, device=x.device)
        check_shape("bias", bias, (weight.shape[0],))
    expect(activation in ACTIVATIONS, lambda: f"activation: expected one of {ACTIVATIONS}, got {activation!r}")


def linear_triton(x, weight, bias=None, activation=None, *, config=None):
    """Fused GEMM + bias + activation; see :func:`kernels.linear`."""
    _check_linear_args(x, weight, bias, activation)
    x2 = as_rows(x)
    M, K = x2.shape
    N = weight.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M and N:
        args = (x2, weight, bias if bias is not None else weight, y, M, N, K, m_bucket(M),
                x2.stride(0), weight.stride(0), y.stride(0))
        kwargs = dict(HAS_BIAS=bias is not None, ACT=_ACT_CODE[activation])
        _launch(LINEAR_TUNER, LINEAR_CONFIGS, config, M, N, K, args, kwargs)
    return y.view(*x.shape[:-1], N)


def _check_gated_args(x, w_gate_up, w_down, activation):
    if not checking():  # the caller vouched for the arguments (_validate.trusted_calls)
        return
    _check_linear_args(x, w_gate_up, None, activation)
    expect(activation in ("silu", "gelu", "gelu_tanh", "relu"), lambda: f"activation: expected silu, gelu, gelu_tanh or relu, got {activation!r}")
    expect(w_gate_up.shape[0] % 2 == 0, lambda: f"w_gate_up: expected [2*I, H] (gate rows first), got {list(w_gate_up.shape)}")
    check_tensor("w_down", w_down, ndim=2, dtypes=FLOAT_DTYPES, device=x.device)
    check_same_dtype(("x", "w_down"), (x, w_down))
    check_shape("w_down", w_down, (x.shape[-1], w_gate_up.shape[0] // 2))


def gated_product_triton(x, w_gate_up, activation="silu", *, config=None):
    """``act(x @ Wg^T) * (x @ Wu^T)`` in one kernel: ``[..., I]``."""
    x2 = as_rows(x)
    M, K = x2.shape
    N = w_gate_up.shape[0] // 2
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M and N:
        args = (x2, w_gate_up, y, M, N, K, m_bucket(M), x2.stride(0), w_gate_up.stride(0), y.stride(0))
        kwargs = dict(ACT=_ACT_CODE[activation])
        _launch(GATED_TUNER, GATED_CONFIGS, config, M, N, K, args, kwargs)
    return y.view(*x.shape[:-1], N)


def gated_ffn_triton(x, w_gate_up, w_down, activation="silu"):
    """SwiGLU / GeGLU FFN; see :func:`kernels.gated_ffn`."""
    _check_gated_args(x, w_gate_up, w_down, activation)
    return linear_triton(gated_product_triton(x, w_gate_up, activation), w_down)


def ffn_triton(x, w_in, b_in, w_out, b_out, activation):
    """Classic FFN on two fused-epilogue GEMMs; see :func:`kernels.ffn`."""
    return linear_triton(linear_triton(x, w_in, b_in, activation), w_out, b_out)


def activation_ref(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return x
    if activation == "relu":
        return F.relu(x)
    if activation == "gelu":
        return F.gelu(x)
    if activation == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if activation == "silu":
        return F.silu(x)
    raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")


def linear_ref(x, weight, bias=None, activation=None):
    """Torch path: ``F.linear`` then the activation."""
    _check_linear_args(x, weight, bias, activation)
    return activation_ref(F.linear(x, weight, bias), activation)


def gated_ffn_ref(x, w_gate_up, w_down, activation="silu"):
    """Torch path: one GEMM for gate and up, the product, the down GEMM."""
    _check_gated_args(x, w_gate_up, w_down, activation)
    gate, up = F.linear(x, w_gate_up).chunk(2, dim=-1)
    return F.linear(activation_ref(gate, activation) * up, w_down)


def ffn_ref(x, w_in, b_in, w_out, b_out, activation):
    """Torch path: two ``F.linear`` calls around the activation."""
    return linear_ref(linear_ref(x, w_in, b_in, activation), w_out, b_out)
