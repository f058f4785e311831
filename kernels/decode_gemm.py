"""Decode-shaped GEMM: ``y = act(x @ W^T + b)`` for few rows (M <= 64), split over K.

With M this small the GEMM is a read of ``W`` ([N, K], ~2 bytes a weight) and the tiles made for prefill
leave most of the GPU idle: ``cdiv(M, 16) * cdiv(N, BLOCK_N)`` programs is a few dozen for a 576-wide
projection. Here each program owns a ``BLOCK_N`` column band *and* one of ``SPLIT_K`` slices of K, so
``cdiv(N, BLOCK_N) * SPLIT_K`` programs stream disjoint parts of ``W`` at once (split-K, as in
"Stream-K" / cuBLAS' split-K GEMV kernels):

    partial[s, m, n] = sum_{k in slice s} x[m, k] W[n, k]             (fp32, one program per (n band, s))
    y[m, n]          = act(sum_s partial[s, m, n] + b[n])             (a second, tiny kernel)

The partials are summed in a fixed order, so results do not depend on timing (no atomics). Rows are
padded to 16 inside the kernel for ``tl.dot``; on a memory-bound shape the wasted MMA work is free.
Candidates: the split-K tiles below and cuBLAS (``torch.nn.functional.linear``); the tuner times them per
shape on the GPU at warm-up and keeps the fastest (logged), never a guess.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._backend import interpreting
from .gemm import _ACT_CODE, _activate, _check_linear_args, activation_ref, as_rows, linear_ref
from .tuning import Tuner, m_bucket

DECODE_MAX_M = 64  # at most this many rows take the decode path


def _config(block_n: int, block_k: int, split_k: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": split_k}, num_warps=warps,
                         num_stages=stages)


# (BLOCK_N, BLOCK_K, SPLIT_K, warps, stages); BLOCK_M is the rows padded to a power of two >= 16.
# SPLIT_K is an upper bound: the launcher never gives a slice less than BLOCK_K of K. Only tiles that
# compile without register spills for BLOCK_M 16, 32 and 64 on sm_80 and sm_90 (test_aot_compile.py).
DECODE_CONFIGS = {
    16: [_config(n, k, s, w, st) for n, k, s, w, st in (
        (64, 64, 1, 4, 3), (64, 64, 4, 4, 3), (32, 64, 8, 4, 3), (128, 64, 4, 8, 3), (64, 128, 8, 8, 2),
        (32, 32, 16, 2, 3))],
    32: [_config(n, k, s, w, st) for n, k, s, w, st in (
        (64, 64, 1, 4, 3), (64, 64, 4, 4, 3), (32, 64, 8, 4, 3), (64, 128, 8, 8, 2))],
}
CUBLAS = triton.Config({"CUBLAS": 1})  # the tuner's other candidate: torch's F.linear


def decode_configs(dtype: torch.dtype) -> list[triton.Config]:
    return DECODE_CONFIGS[32 if dtype == torch.float32 else 16]


def _block_m(m: int) -> int:
    return max(16, triton.next_power_of_2(m))


@triton.jit(do_not_specialize=["M"])  # varies per step: one compilation for all values
def _splitk_kernel(
    X, W, P, M, N, K, K_PER_SPLIT,
    stride_xm, stride_wn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok, n_ok = offs_m < M, offs_n < N
    k_lo = split * K_PER_SPLIT
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        cols = k0 + offs_k
        k_ok = cols < k_hi
        x = tl.load(X + offs_m[:, None].to(tl.int64) * stride_xm + cols[None, :], mask=m_ok[:, None] & k_ok[None, :],
                    other=0.0)
        w = tl.load(W + offs_n[None, :].to(tl.int64) * stride_wn + cols[:, None], mask=k_ok[:, None] & n_ok[None, :],
                    other=0.0)
        acc = tl.dot(x, w, acc)
    p_ptrs = P + (split * M + offs_m[:, None]).to(tl.int64) * N + offs_n[None, :]
    tl.store(p_ptrs, acc, mask=m_ok[:, None] & n_ok[None, :])


@triton.jit(do_not_specialize=["M"])  # varies per step: one compilation for all values
def _splitk_reduce_kernel(
    P, Bias, Y, M, N, SPLITS, stride_ym,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    row = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_s = tl.arange(0, SPLITS_PAD)
    n_ok = offs_n < N
    parts = tl.load(P + (offs_s[:, None] * M + row).to(tl.int64) * N + offs_n[None, :],
                    mask=(offs_s < SPLITS)[:, None] & n_ok[None, :], other=0.0)
    acc = tl.sum(parts, axis=0)
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    acc = _activate(acc, ACT)
    tl.store(Y + row.to(tl.int64) * stride_ym + offs_n, acc.to(Y.dtype.element_ty), mask=n_ok)


def _splits(config: triton.Config, K: int) -> tuple[int, int]:
    """(splits actually used, K per split: a multiple of BLOCK_K)."""
    block_k = config.kwargs["BLOCK_K"]
    per = triton.cdiv(triton.cdiv(K, config.kwargs["SPLIT_K"]), block_k) * block_k
    return triton.cdiv(K, per), per


def _run(config: triton.Config, x2, weight, bias, y, activation) -> None:
    """One launch with ``config`` (a split-K tile or ``CUBLAS``), writing ``y``."""
    M, K = x2.shape
    N = weight.shape[0]
    if config.kwargs.get("CUBLAS"):
        y.copy_(activation_ref(F.linear(x2, weight, bias), activation))
        return
    splits, per = _splits(config, K)
    partial = torch.empty(splits, M, N, dtype=torch.float32, device=x2.device)
    block_n = config.kwargs["BLOCK_N"]
    _splitk_kernel[(triton.cdiv(N, block_n), splits)](
        x2, weight, partial, M, N, K, per, x2.stride(0), weight.stride(0),
        BLOCK_M=_block_m(M), BLOCK_N=block_n, BLOCK_K=config.kwargs["BLOCK_K"],
        num_warps=config.num_warps, num_stages=config.num_stages)
    _splitk_reduce_kernel[(M, triton.cdiv(N, 128))](
        partial, bias if bias is not None else partial, y, M, N, splits, y.stride(0),
        HAS_BIAS=bias is not None, ACT=_ACT_CODE[activation], BLOCK_N=128,
        SPLITS_PAD=max(2, triton.next_power_of_2(splits)), num_warps=4)


DECODE_TUNER = Tuner("linear_decode", None, lambda dtype: decode_configs(dtype) + [CUBLAS],
                     run=lambda config, args, kwargs: _run(config, *args, **kwargs))


def linear_decode_triton(x, weight, bias=None, activation=None, *, config=None):
    """``act(x @ W^T + b)`` for at most :data:`DECODE_MAX_M` rows; the tuned choice of split-K tiles and
    cuBLAS, or ``config`` (tests; the interpreter runs the first split-K tile by default)."""
    _check_linear_args(x, weight, bias, activation)
    x2 = as_rows(x)
    M, K = x2.shape
    N = weight.shape[0]
    if M > DECODE_MAX_M:
        raise ValueError(f"x: the decode GEMM takes at most {DECODE_MAX_M} rows, got {M}")
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M and N:
        args, kwargs = (x2, weight, bias, y), {"activation": activation}
        if config is None and not interpreting():
            key = (str(x.dtype).removeprefix("torch."), m_bucket(M), N, K, bias is not None, activation)
            DECODE_TUNER.launch(key, None, args, kwargs, (x.dtype,), device=x.device)
        else:
            _run(config or decode_configs(x.dtype)[0], *args, **kwargs)
    return y.view(*x.shape[:-1], N)


def linear_decode_ref(x, weight, bias=None, activation=None):
    """Torch path (the same as :func:`kernels.gemm.linear_ref`)."""
    return linear_ref(x, weight, bias, activation)
