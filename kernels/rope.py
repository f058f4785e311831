"""Rotary position embeddings (RoFormer, Su et al. 2021), applied in place.

``cos_sin_cache[max_position, rot_dim]`` holds ``cos(p * theta_i)`` in its
first ``rot_dim/2`` columns and ``sin`` in the rest (vLLM's layout). For each
pair ``(x1, x2)`` of rotated features:

    x1' = x1 * cos - x2 * sin
    x2' = x2 * cos + x1 * sin

NeoX style pairs feature ``i`` with ``i + rot_dim/2`` (rotate halves, Llama);
GPT-J style pairs ``2i`` with ``2i + 1`` (interleaved). Features past
``rot_dim`` are left as they are (partial rotary).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._validate import FLOAT_DTYPES, checking, check_indices, check_same_dtype, check_shape, check_tensor, expect


@triton.jit
def _rotate_heads(X, tok, stride_t, stride_h, cos, sin, offs_r,
                  NUM_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, HALF: tl.constexpr,
                  IS_NEOX: tl.constexpr):
    offs_h = tl.arange(0, HEADS_PAD)
    mask = (offs_h < NUM_HEADS)[:, None] & (offs_r < HALF)[None, :]
    if IS_NEOX:
        first = offs_r
        second = offs_r + HALF
    else:
        first = 2 * offs_r
        second = 2 * offs_r + 1
    base = X + tok * stride_t + offs_h[:, None] * stride_h
    x1 = tl.load(base + first[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + second[None, :], mask=mask, other=0.0).to(tl.float32)
    y1 = x1 * cos[None, :] - x2 * sin[None, :]
    y2 = x2 * cos[None, :] + x1 * sin[None, :]
    tl.store(base + first[None, :], y1.to(X.dtype.element_ty), mask=mask)
    tl.store(base + second[None, :], y2.to(X.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    Q, K, positions, cos_sin_cache, stride_qt, stride_qh, stride_kt, stride_kh, stride_cache, max_position,
    HQ: tl.constexpr, HQ_PAD: tl.constexpr, HKV: tl.constexpr, HKV_PAD: tl.constexpr,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, IS_NEOX: tl.constexpr,
):
    # grid: (tokens,); every head of one token shares its cos/sin row
    tok = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions + tok).to(tl.int64)
    if pos < 0 or pos >= max_position:  # no cos/sin row to read: leave the token unrotated
        return
    offs_r = tl.arange(0, HALF_PAD)
    r_ok = offs_r < HALF
    cos = tl.load(cos_sin_cache + pos * stride_cache + offs_r, mask=r_ok, other=0.0).to(tl.float32)
    sin = tl.load(cos_sin_cache + pos * stride_cache + HALF + offs_r, mask=r_ok, other=0.0).to(tl.float32)
    _rotate_heads(Q, tok, stride_qt, stride_qh, cos, sin, offs_r, HQ, HQ_PAD, HALF, IS_NEOX)
    _rotate_heads(K, tok, stride_kt, stride_kh, cos, sin, offs_r, HKV, HKV_PAD, HALF, IS_NEOX)


def _check_rotary_args(q, k, positions, cos_sin_cache):
    if not checking():  # the caller vouched for the arguments (_validate.trusted_calls)
        return
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("k", k, ndim=3, dtypes=FLOAT_DTYPES, device=q.device)
    check_same_dtype(("q", "k"), (q, k))
    check_shape("k", k, (q.shape[0], None, q.shape[2]))
    check_tensor("positions", positions, ndim=1, dtypes=(torch.int32, torch.int64), device=q.device)
    check_shape("positions", positions, (q.shape[0],))
    check_tensor("cos_sin_cache", cos_sin_cache, ndim=2, dtypes=FLOAT_DTYPES, device=q.device)
    rot_dim = cos_sin_cache.shape[1]
    expect(rot_dim % 2 == 0 and 2 <= rot_dim <= q.shape[2],
           lambda: f"cos_sin_cache: rot_dim (dim 1) must be even and at most head dim {q.shape[2]}, got {rot_dim}")
    if check_indices(positions):  # the kernel leaves a token with an out-of-range position unrotated
        expect(0 <= int(positions.min()) and int(positions.max()) < cos_sin_cache.shape[0],
               lambda: f"positions: must lie in [0, {cos_sin_cache.shape[0]}) (cos_sin_cache rows)")


def rotary_triton(q, k, positions, cos_sin_cache, neox_style=True):
    """Rotate q and k in place (kernel launch); see :func:`kernels.rotary`."""
    _check_rotary_args(q, k, positions, cos_sin_cache)
    if q.shape[0] == 0:
        return q, k
    half = cos_sin_cache.shape[1] // 2
    _rotary_kernel[(q.shape[0],)](
        q, k, positions, cos_sin_cache, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        cos_sin_cache.stride(0), cos_sin_cache.shape[0],
        HQ=q.shape[1], HQ_PAD=triton.next_power_of_2(q.shape[1]),
        HKV=k.shape[1], HKV_PAD=triton.next_power_of_2(k.shape[1]),
        HALF=half, HALF_PAD=triton.next_power_of_2(half), IS_NEOX=neox_style, num_warps=4,
    )
    return q, k


def _rotate_ref(x, cos, sin, neox_style):
    """Rotate x's feature pairs in place: the halves (NeoX) or even/odd interleaved (GPT-J)."""
    half = cos.shape[-1]
    rot = x[..., : 2 * half]
    x1, x2 = (rot[..., :half], rot[..., half:]) if neox_style else (rot[..., 0::2], rot[..., 1::2])
    a, b = x1.float(), x2.float()
    y1 = a * cos - b * sin
    y2 = b * cos + a * sin
    x1.copy_(y1)  # copy_ rounds to x's dtype and writes through the (strided) views
    x2.copy_(y2)


def rotary_ref(q, k, positions, cos_sin_cache, neox_style=True):
    """Torch path: vectorised over tokens and heads, in place."""
    _check_rotary_args(q, k, positions, cos_sin_cache)
    rows = positions.long()
    outside = (rows < 0) | (rows >= cos_sin_cache.shape[0])  # left unrotated, as the kernel leaves them
    cos, sin = cos_sin_cache.index_select(0, rows.clamp(0, cos_sin_cache.shape[0] - 1)).float().chunk(2, dim=-1)
    cos = torch.where(outside[:, None], 1.0, cos)[:, None, :]  # [T, 1, rot/2]: the identity rotation there
    sin = torch.where(outside[:, None], 0.0, sin)[:, None, :]
    _rotate_ref(q, cos, sin, neox_style)
    _rotate_ref(k, cos, sin, neox_style)
    return q, k


def rotary_cos_sin_cache(rot_dim: int, max_position: int, base: float = 10000.0,
                         inv_freq: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
    """Build the ``[max_position, rot_dim]`` cos/sin table for ``theta_i = base^(-2i/rot_dim)``.

    ``inv_freq`` overrides the frequencies (for linear / llama3 scaling). Angles
    are formed in fp32 the way Hugging Face's rotary embedding forms them, so
    the tables agree bit for bit.
    """
    if inv_freq is None:
        inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.int64).float() / rot_dim))
    angles = torch.arange(max_position, dtype=torch.float32)[:, None] * inv_freq.float()[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).to(dtype)
