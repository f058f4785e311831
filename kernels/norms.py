"""LayerNorm and RMSNorm over the last dimension, with an optional fused residual add.

One program normalises one row in a single pass: the row is loaded once into
registers, statistics are taken in fp32, and the result is written once.
With ``residual`` the kernel first forms ``h = x + residual`` (rounded to the
input dtype, exactly as the unfused ``x + residual`` would be), writes ``h``
back as the new residual stream and normalises it — two reads and two writes
instead of the five of the unfused sequence.

    LayerNorm: y = (h - mean(h)) / sqrt(var(h) + eps) * w + b
    RMSNorm:   y = h / sqrt(mean(h^2) + eps) * w        (T5, Llama)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._validate import FLOAT_DTYPES, checking, check_same_dtype, check_shape, check_tensor, expect

MAX_ROW = 16384  # widest row kept whole in registers


@triton.jit
def _norm_kernel(
    X, R, W, B, Y, H, stride_x, stride_r, stride_y, stride_h, N, eps,
    BLOCK_N: tl.constexpr, RMS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    # grid: (rows,)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    ok = cols < N
    h = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        # add in fp32 and round once, as torch's ``x + residual`` does for 16-bit dtypes
        h = h + tl.load(R + row * stride_r + cols, mask=ok, other=0.0).to(tl.float32)
        h = h.to(H.dtype.element_ty)
        tl.store(H + row * stride_h + cols, h, mask=ok)
        h = h.to(tl.float32)
    if RMS:
        centred = h
    else:
        mean = tl.sum(h, 0) / N
        centred = tl.where(ok, h - mean, 0.0)
    var = tl.sum(centred * centred, 0) / N
    y = centred * tl.math.rsqrt(var + eps)
    y = y * tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(B + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=ok)


def norm_num_warps(block_n: int) -> int:
    """Warps per row: enough threads that each holds at most ~8 elements (no spills at 16k)."""
    return max(1, min(16, block_n // 256))


def _check_norm_args(x, weight, bias, residual):
    if not checking():  # the caller vouched for the arguments (_validate.trusted_calls)
        return
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    expect(x.dim() >= 1, "x: expected at least one dimension")
    n = x.shape[-1]
    expect(1 <= n <= MAX_ROW, lambda: f"x: last dimension must be in [1, {MAX_ROW}], got {n}")
    check_tensor("weight", weight, ndim=1, dtypes=FLOAT_DTYPES, device=x.device)
    check_shape("weight", weight, (n,))
    if bias is not None:
        check_tensor("bias", bias, ndim=1, dtypes=FLOAT_DTYPES, device=x.device)
        check_shape("bias", bias, (n,))
    if residual is not None:
        check_tensor("residual", residual, dtypes=FLOAT_DTYPES, device=x.device)
        check_same_dtype(("x", "residual"), (x, residual))
        expect(residual.shape == x.shape, lambda: f"residual: expected shape {list(x.shape)}, got {list(residual.shape)}")


def _rows(t: torch.Tensor) -> torch.Tensor:
    """View as [rows, N]; copies only if the leading dims cannot be flattened."""
    return t.reshape(-1, t.shape[-1])


def _norm_triton(x, weight, bias, eps, residual, rms):
    _check_norm_args(x, weight, bias, residual)
    x2 = _rows(x)
    y = torch.empty_like(x2)
    h = torch.empty_like(x2) if residual is not None else y
    r2 = _rows(residual) if residual is not None else x2
    if x2.shape[0]:
        block_n = triton.next_power_of_2(x2.shape[1])
        _norm_kernel[(x2.shape[0],)](
            x2, r2, weight, bias if bias is not None else weight, y, h,
            x2.stride(0), r2.stride(0), y.stride(0), h.stride(0), x2.shape[1], eps,
            BLOCK_N=block_n, RMS=rms, HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None,
            num_warps=norm_num_warps(block_n),
        )
    y = y.view(x.shape)
    return (y, h.view(x.shape)) if residual is not None else y


def layer_norm_triton(x, weight, bias, eps, residual=None):
    """LayerNorm kernel launch; see :func:`kernels.layer_norm`."""
    return _norm_triton(x, weight, bias, eps, residual, rms=False)


def rms_norm_triton(x, weight, eps, residual=None):
    """RMSNorm kernel launch; see :func:`kernels.rms_norm`."""
    return _norm_triton(x, weight, None, eps, residual, rms=True)


def layer_norm_ref(x, weight, bias, eps, residual=None):
    """Torch path: fp32 ``F.layer_norm`` on ``x + residual``, cast back to x's dtype."""
    _check_norm_args(x, weight, bias, residual)
    h = x + residual if residual is not None else x
    y = F.layer_norm(h.float(), (h.shape[-1],), weight.float(), None if bias is None else bias.float(), eps)
    y = y.to(x.dtype)
    return (y, h) if residual is not None else y


def rms_norm_ref(x, weight, eps, residual=None):
    """Torch path: ``h * rsqrt(mean(h^2) + eps) * w`` with fp32 statistics.

    torch's fused ``F.rms_norm`` accumulates in fp32 for 16-bit inputs; one op
    instead of six on the CPU serving path.
    """
    _check_norm_args(x, weight, None, residual)
    h = x + residual if residual is not None else x
    if weight.dtype == h.dtype:
        y = F.rms_norm(h, (h.shape[-1],), weight, eps)
    else:
        y = F.rms_norm(h.float(), (h.shape[-1],), weight.float(), eps).to(x.dtype)
    return (y, h) if residual is not None else y
