"""Fused scaled-dot-product attention over a packed, variable-length batch.

FlashAttention-2 forward (Dao, 2023, arXiv:2307.08691): each program keeps one
tile of queries resident and streams the keys and values of its sequence,
keeping a running row maximum ``m``, row sum ``l`` and output accumulator in
fp32 (the "online softmax"). Scores are pre-multiplied by ``scale * log2(e)``
so the exponentials are ``exp2``.

Causal masks are bottom-right aligned: with ``Lq`` queries and ``Lk`` keys,
query ``i`` sits at position ``p = i + Lk - Lq`` and sees key ``j`` iff ``j <= p``.
A sliding window ``(left, right)`` (FlashAttention's ``window_size``) also
requires ``p - left <= j <= p + right``: key blocks wholly outside it are
skipped, so a layer's cost grows with the window, not the sequence. A query
that sees no key (possible when ``Lq > Lk``) gets a zero output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._softmax import online_softmax_step
from ._validate import FLOAT_DTYPES, check_cu_seqlens, checking, check_same_dtype, check_tensor, expect

LOG2E = 1.4426950408889634
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


@triton.jit
def softcap_scores(s, cap):
    """``cap * tanh(s / cap)`` (Gemma 2's attention soft-capping), on scores already in base 2 with ``cap`` in the
    same units; tanh from one exp2 of -2|x| (no overflow for any x)."""
    x = s / cap
    t = tl.math.exp2(-2.8853900817779268 * tl.abs(x))  # e^(-2|x|)
    th = (1.0 - t) / (1.0 + t)
    return cap * tl.where(x < 0, -th, th)


@triton.jit
def _attention_tile(
    acc, m_i, l_i, q, K, V, k_start, kv_head, len_k, offs_m, offs_d, start, end,
    stride_kt, stride_kh, stride_vt, stride_vh, qk_scale, diag_shift, bias_row, bias_radius,
    window_left, window_right, softcap,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_BIAS: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
):
    """Fold key blocks [start, end) into the running (acc, m_i, l_i).

    MASKED blocks check key bounds, the causal diagonal and the window; the
    others are fully visible to every query of the tile and skip that work.
    """
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = offs_d < HEAD_DIM
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        k_ptrs = K + (k_start + cols)[None, :] * stride_kt + kv_head * stride_kh + offs_d[:, None]
        v_ptrs = V + (k_start + cols)[:, None] * stride_vt + kv_head * stride_vh + offs_d[None, :]
        if MASKED:
            k = tl.load(k_ptrs, mask=d_ok[:, None] & (cols < len_k)[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=(cols < len_k)[:, None] & d_ok[None, :], other=0.0)
        else:
            k = tl.load(k_ptrs, mask=d_ok[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
        s = tl.dot(q, k) * qk_scale
        if SOFTCAP:
            s = softcap_scores(s, softcap)
        if HAS_BIAS:
            # relative position bias, constant beyond +-bias_radius (T5's buckets saturate)
            rel = cols[None, :] - (offs_m[:, None] + diag_shift)
            rel = tl.minimum(tl.maximum(rel, -bias_radius), bias_radius) + bias_radius
            s += tl.load(bias_row + rel) * 1.4426950408889634
        if MASKED:
            visible = (cols < len_k)[None, :]
            if CAUSAL and not WINDOW:
                visible = visible & (cols[None, :] <= offs_m[:, None] + diag_shift)
            if WINDOW:  # (causal: the launcher made right 0, so this is the diagonal too)
                pos = offs_m[:, None] + diag_shift
                visible = visible & (cols[None, :] >= pos - window_left) & (cols[None, :] <= pos + window_right)
            s = tl.where(visible, s, float("-inf"))
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, s, v)
    return acc, m_i, l_i


@triton.jit(do_not_specialize=["total_q", "total_k"])  # varies per step: one compilation for all values
def _attention_kernel(
    Q, K, V, O, cu_seqlens_q, cu_seqlens_k, total_q, total_k, Bias,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_bias,
    qk_scale, bias_radius, window_left, window_right, softcap,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr,
    WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
):
    # grid: (query tiles of the longest sequence, query heads, sequences)
    pid_m = tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    # bounds clamped into the packed tensors: entries the launcher did not read back (CUDA) cannot
    # send a load or store past them
    q_start = tl.minimum(tl.maximum(tl.load(cu_seqlens_q + seq), 0), total_q)
    len_q = tl.minimum(tl.maximum(tl.load(cu_seqlens_q + seq + 1), q_start), total_q) - q_start
    if pid_m * BLOCK_M >= len_q:
        return
    k_start = tl.minimum(tl.maximum(tl.load(cu_seqlens_k + seq), 0), total_k)
    len_k = tl.minimum(tl.maximum(tl.load(cu_seqlens_k + seq + 1), k_start), total_k) - k_start
    kv_head = head // GROUP

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < len_q
    d_ok = offs_d < HEAD_DIM
    q_ptrs = Q + (q_start + offs_m)[:, None] * stride_qt + head * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Bottom-right causal alignment: query i sees keys j <= i + diag_shift.
    diag_shift = len_k - len_q
    if CAUSAL:
        # keys every query of this tile sees, then the diagonal band
        first_visible = pid_m * BLOCK_M + diag_shift + 1
        full_end = tl.minimum(tl.maximum(first_visible, 0), len_k) // BLOCK_N * BLOCK_N
        end = tl.minimum(tl.maximum((pid_m + 1) * BLOCK_M + diag_shift, 0), len_k)
    else:
        full_end = len_k // BLOCK_N * BLOCK_N
        end = len_k
    start = 0
    if WINDOW:
        # only the key blocks the tile's window reaches, all masked: [first row - left, last row + right]
        start = tl.minimum(tl.maximum(pid_m * BLOCK_M + diag_shift - window_left, 0), len_k) // BLOCK_N * BLOCK_N
        last_seen = (pid_m + 1) * BLOCK_M - 1 + diag_shift + window_right
        end = tl.minimum(tl.maximum(tl.minimum(end, last_seen + 1), 0), len_k)
        full_end = start
    bias_row = Bias + head * stride_bias
    acc, m_i, l_i = _attention_tile(
        acc, m_i, l_i, q, K, V, k_start, kv_head, len_k, offs_m, offs_d, start, full_end,
        stride_kt, stride_kh, stride_vt, stride_vh, qk_scale, diag_shift, bias_row, bias_radius,
        window_left, window_right, softcap, HEAD_DIM, BLOCK_N, False, CAUSAL, HAS_BIAS, WINDOW, SOFTCAP,
    )
    acc, m_i, l_i = _attention_tile(
        acc, m_i, l_i, q, K, V, k_start, kv_head, len_k, offs_m, offs_d, full_end, end,
        stride_kt, stride_kh, stride_vt, stride_vh, qk_scale, diag_shift, bias_row, bias_radius,
        window_left, window_right, softcap, HEAD_DIM, BLOCK_N, True, CAUSAL, HAS_BIAS, WINDOW, SOFTCAP,
    )
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # rows that saw no key output 0
    out = acc / l_safe[:, None]
    o_ptrs = O + (q_start + offs_m)[:, None] * stride_ot + head * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@dataclass(frozen=True)
class AttentionConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def attention_config(head_dim: int, dtype: torch.dtype, has_bias: bool = False) -> AttentionConfig:
    """Tile sizes for one head size and dtype (Q tile, K/V tile, warps, pipeline stages).

    Chosen so Q plus ``num_stages`` K/V tiles fit the shared memory of an A100
    (sm_80) as well as an H100 without register spills; fp32 inputs (TF32 dots)
    take twice the bytes, so half the tile. tests/kernels/test_aot_compile.py
    proves every entry.
    """
    block_d = triton.next_power_of_2(head_dim)
    wide = dtype == torch.float32
    if has_bias and not wide and block_d == 128:
        return AttentionConfig(64, 64, 8, 3)  # the bias gather needs registers: a shorter Q tile
    if block_d <= 64:
        return AttentionConfig(64, 32, 4, 2) if wide else AttentionConfig(128, 64, 8, 3)
    if block_d <= 128:
        return AttentionConfig(64, 32, 4, 2) if wide else AttentionConfig(128, 64, 8, 3)
    return AttentionConfig(32, 32, 4, 2) if wide else AttentionConfig(64, 32, 8, 2)


def all_attention_configs() -> dict[tuple[int, torch.dtype], AttentionConfig]:
    """Every (padded head dim, dtype, has bias) -> config the launcher can pick."""
    return {
        (d, dt, bias): attention_config(d, dt, bias)
        for d in (16, 32, 64, 128, 256)
        for dt in FLOAT_DTYPES
        for bias in (False, True)
    }


def check_position_bias(position_bias, q) -> int:
    """Validate a relative-position bias table [Hq, 2R+1]; returns R (0 without a table)."""
    if position_bias is None:
        return 0
    if not checking():
        return (position_bias.shape[1] - 1) // 2
    check_tensor("position_bias", position_bias, ndim=2, dtypes=(torch.float32,), device=q.device)
    width = position_bias.shape[1]
    expect(position_bias.shape[0] == q.shape[1] and width % 2 == 1,
           lambda: f"position_bias: expected [{q.shape[1]}, 2R+1] (one row per query head, odd width), got {list(position_bias.shape)}")
    return (width - 1) // 2


def relative_bias_ref(position_bias, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """bias[h, clamp(col - row, -R, R) + R] for every (row, col) pair: [..., H, rows, cols]."""
    radius = (position_bias.shape[1] - 1) // 2
    rel = (cols[..., None, :] - rows[..., :, None]).clamp(-radius, radius) + radius
    return position_bias[:, rel].movedim(0, -3)


def _check_attention_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    """Validate; returns the number of sequences."""
    if not checking():
        return cu_seqlens_q.numel() - 1
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=3, dtypes=FLOAT_DTYPES)
    check_same_dtype(("q", "k", "v"), (q, k, v))
    expect(q.device == k.device == v.device, lambda: f"q, k, v: expected one device, got {q.device}, {k.device}, {v.device}")
    expect(k.shape == v.shape, lambda: f"k, v: expected equal shapes, got {list(k.shape)} and {list(v.shape)}")
    head_dim = q.shape[2]
    expect(k.shape[2] == head_dim, lambda: f"k: head dim {k.shape[2]} differs from q's {head_dim}")
    expect(MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM, lambda: f"q: head dim must be in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}], got {head_dim}")
    expect(k.shape[1] > 0 and q.shape[1] % k.shape[1] == 0,
           lambda: f"q, k: query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    batch_q = check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q, q.device)
    batch_k = check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k, q.device)
    expect(batch_q == batch_k, lambda: f"cu_seqlens_q, cu_seqlens_k: expected the same number of sequences, got {batch_q} and {batch_k}")
    return batch_q


def check_window(window) -> tuple[int, int]:
    """(left, right) of a sliding window, each >= 0; (-1, -1) without one."""
    if window is None:
        return -1, -1
    if checking():
        expect(len(window) == 2 and all(isinstance(w, int) and w >= 0 for w in window),
               lambda: f"window: expected (left, right), two ints >= 0, got {window!r}")
    return int(window[0]), int(window[1])


def check_softcap(softcap) -> float:
    """A positive soft-capping bound (0.0: none)."""
    if softcap is None:
        return 0.0
    if checking():
        expect(isinstance(softcap, (int, float)) and softcap > 0, lambda: f"softcap: expected a positive number, got {softcap!r}")
    return float(softcap)


def attention_triton(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal, scale=None,
                     position_bias=None, window=None, softcap=None):
    """Launch the Triton kernel. Arguments as :func:`kernels.attention`."""
    batch = _check_attention_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    radius = check_position_bias(position_bias, q)
    left, right = check_window(window)
    cap = check_softcap(softcap)
    if causal and window is not None:
        right = 0  # the causal diagonal is the window's right edge: one comparison fewer per score
    head_dim = q.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.empty_like(q)
    if q.shape[0] == 0 or batch == 0:
        return out
    cfg = attention_config(head_dim, q.dtype, position_bias is not None)
    grid = (triton.cdiv(max(max_seqlen_q, 1), cfg.block_m), q.shape[1], batch)
    bias = position_bias if position_bias is not None else q
    _attention_kernel[grid](
        q, k, v, out, cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], bias,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        bias.stride(0), scale * LOG2E, radius, left, right, cap * LOG2E,
        GROUP=q.shape[1] // k.shape[1], HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, CAUSAL=causal, HAS_BIAS=position_bias is not None,
        WINDOW=window is not None, SOFTCAP=softcap is not None, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal, scale=None,
                  position_bias=None, window=None, softcap=None):
    """Torch path (the CPU serving path): one SDPA call per group of sequences with the same query and key
    lengths, on exactly their tokens; GQA through SDPA's ``enable_gqa``.

    Batch invariant: a sequence's output never depends on the others in the batch. SDPA computes each
    (sequence, head) with the same reductions whatever the batch dimension, but padding every sequence to the
    longest (one masked call) would change the length of its reductions, and so their rounding.
    """
    _check_attention_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    check_position_bias(position_bias, q)
    window = None if window is None else check_window(window)
    softcap = None if softcap is None else check_softcap(softcap)
    out = torch.zeros_like(q)
    if q.shape[0] == 0 or cu_seqlens_q.numel() < 2:
        return out
    lengths_q, lengths_k = cu_seqlens_q.diff(), cu_seqlens_k.diff()
    shapes = set(zip(lengths_q.tolist(), lengths_k.tolist()))  # the groups, read once (a CPU path)
    for len_q, len_k in sorted(shapes):
        if len_q == 0 or len_k == 0:  # no queries, or no keys: the output stays 0
            continue
        members = ((lengths_q == len_q) & (lengths_k == len_k)).nonzero()[:, 0]  # no tensor from host data
        idx_q = _token_index(cu_seqlens_q[members], len_q)  # [G, Lq]
        idx_k = _token_index(cu_seqlens_k[members], len_k)
        group = _softcapped_group if softcap is not None else _sdpa_group
        extra = (softcap,) if softcap is not None else ()
        out[idx_q] = group(q[idx_q], k[idx_k], v[idx_k], causal, scale, position_bias, window, *extra)
    return out


def _token_index(starts: torch.Tensor, length: int) -> torch.Tensor:
    return starts.long()[:, None] + torch.arange(length, device=starts.device)


def _visible(rows, cols, causal: bool, window) -> torch.Tensor | None:
    """[Lq, Lk] keys each query sees (None: all of them)."""
    visible = cols[None, :] <= rows[:, None] if causal else None
    if window is not None:
        left, right = window
        band = (cols[None, :] >= rows[:, None] - left) & (cols[None, :] <= rows[:, None] + right)
        visible = band if visible is None else visible & band
    return visible


def _sdpa_group(q, k, v, causal: bool, scale, position_bias, window=None) -> torch.Tensor:
    """q ``[G, Lq, Hq, D]``, k/v ``[G, Lk, Hkv, D]`` -> ``[G, Lq, Hq, D]``; causal bottom-right aligned.

    (A window is a boolean mask here: this is the CPU path, whose SDPA has no banded kernel; the Triton kernel
    skips the key blocks outside it.)"""
    len_q, len_k = q.shape[1], k.shape[1]
    rows = torch.arange(len_q, device=q.device) + (len_k - len_q)  # query i sits at position i + Lk - Lq
    cols = torch.arange(len_k, device=q.device)
    visible = _visible(rows, cols, causal, window)  # [Lq, Lk]
    seen = None if visible is None else visible.any(-1, keepdim=True)  # [Lq, 1]
    mask = None
    if position_bias is not None:
        bias = relative_bias_ref(position_bias, rows, cols).to(q.dtype)  # [H, Lq, Lk]
        mask = bias if visible is None else torch.where(visible | ~seen, bias, float("-inf"))
    elif visible is not None and (len_q != len_k or window is not None):
        mask = visible | ~seen  # a row that sees no key would be NaN in SDPA: let it see all, then zero it
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                       is_causal=causal and mask is None, scale=scale,
                                       enable_gqa=q.shape[2] != k.shape[2]).transpose(1, 2)
    return o if seen is None or bool(seen.all()) else torch.where(seen[None, :, :, None], o, 0.0)


def _softcapped_group(q, k, v, causal: bool, scale, position_bias, window, softcap: float) -> torch.Tensor:
    """As :func:`_sdpa_group` with ``softcap * tanh(scores / softcap)`` before the mask (Gemma 2), which SDPA
    cannot do: the scores, soft-capping and softmax in float32, then probabilities @ v."""
    len_q, len_k, hq, hkv = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    rows = torch.arange(len_q, device=q.device) + (len_k - len_q)
    cols = torch.arange(len_k, device=q.device)
    kf = k.float().repeat_interleave(hq // hkv, dim=2)
    vf = v.float().repeat_interleave(hq // hkv, dim=2)
    scores = torch.einsum("gqhd,gkhd->ghqk", q.float(), kf) * (q.shape[-1] ** -0.5 if scale is None else scale)
    scores = softcap * torch.tanh(scores / softcap)
    if position_bias is not None:
        scores = scores + relative_bias_ref(position_bias, rows, cols).float()
    visible = _visible(rows, cols, causal, window)
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    probs = scores.softmax(-1).nan_to_num(0.0)  # a row that sees no key: 0
    return torch.einsum("ghqk,gkhd->gqhd", probs, vf).to(q.dtype)
