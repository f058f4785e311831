"""Decode attention over a paged KV cache, and the kernel that fills the cache.

Cache layout (vLLM's, flattened): ``k_cache[num_blocks, block_size, Hkv, D]``;
token ``t`` of sequence ``b`` lives at block ``block_tables[b, t // block_size]``,
offset ``t % block_size``.

``paged_attention`` is flash-decoding (Dao et al., 2023): the context of each
sequence is cut into partitions of ``PARTITION`` tokens, one program per
(sequence, KV head, partition) computes a partial softmax for *all* query heads
of its GQA group, so each K/V element is read once. A second pass merges the
partitions by log-sum-exp:

    M = max_s m_s,   w_s = l_s * 2^(m_s - M),   out = sum_s w_s * o_s / sum_s w_s

where ``o_s`` is partition ``s``'s normalised output, ``m_s`` its row maximum
(base-2 scaled scores) and ``l_s`` its sum of exponentials.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._softmax import online_softmax_step
from .flash_attention import check_position_bias, check_softcap, check_window, relative_bias_ref, softcap_scores
from ._validate import FLOAT_DTYPES, checking, check_indices, check_same_dtype, check_shape, check_tensor, expect

LOG2E = 1.4426950408889634
PARTITION = 512  # tokens per split; a multiple of every supported block size


def paged_num_warps(group_pad: int, block_d: int) -> int:
    """8 warps once the query tile (group x head dim) reaches 4096 elements, else 4."""
    return 8 if group_pad * block_d >= 4096 else 4


def paged_block_n(head_dim: int, dtype: torch.dtype) -> int:
    """Tokens gathered per inner step (may span several cache blocks).

    One K tile stays near 16 KiB (64 tokens of bf16 at D=128) so K and V for
    two pipeline stages fit an A100's shared memory at D=256 in fp32 too.
    """
    tile_elems = 16384 // torch.finfo(dtype).bits * 8
    return max(16, min(64, tile_elems // triton.next_power_of_2(head_dim)))

BLOCK_SIZES = (16, 32)


@triton.jit(do_not_specialize=["stride_bt", "table_width"])  # varies per step: one compilation for all values
def _paged_attention_kernel(
    Q, K_cache, V_cache, block_tables, seq_lens, O, O_part, M_part, L_part, Bias,
    stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_bt, stride_ob, stride_oh, stride_bias, qk_scale, bias_radius, num_blocks, table_width,
    window_left, softcap,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, PARTITION: tl.constexpr,
    NUM_SPLITS: tl.constexpr, HAS_BIAS: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
):
    # grid: (sequences, KV heads, partitions)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens + seq)
    start = split * PARTITION
    end = tl.minimum(start + PARTITION, seq_len)
    first = 0
    if WINDOW:  # the query (at seq_len - 1) sees keys from seq_len - 1 - left on: the tiles behind are skipped
        first = seq_len - 1 - window_left
        start = tl.maximum(start, first // BLOCK_N * BLOCK_N)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + offs_g
    g_ok = offs_g < GROUP
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + seq * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, BLOCK_D], dtype=tl.float32)
    for tok0 in range(start, end, BLOCK_N):
        toks = tok0 + offs_n
        t_ok = (toks < end) & (toks // BLOCK_SIZE < table_width)
        blocks = tl.load(block_tables + seq * stride_bt + toks // BLOCK_SIZE, mask=t_ok, other=0)
        t_ok = t_ok & (blocks >= 0) & (blocks < num_blocks)  # a bad table entry is skipped, never read
        slots_k = blocks.to(tl.int64) * stride_kb + (toks % BLOCK_SIZE) * stride_ks + kv_head * stride_kh
        slots_v = blocks.to(tl.int64) * stride_vb + (toks % BLOCK_SIZE) * stride_vs + kv_head * stride_vh
        k = tl.load(K_cache + slots_k[None, :] + offs_d[:, None], mask=d_ok[:, None] & t_ok[None, :], other=0.0)
        v = tl.load(V_cache + slots_v[:, None] + offs_d[None, :], mask=t_ok[:, None] & d_ok[None, :], other=0.0)
        s = tl.dot(q, k) * qk_scale
        if SOFTCAP:
            s = softcap_scores(s, softcap)
        if WINDOW:
            t_ok = t_ok & (toks >= first)
        if HAS_BIAS:  # relative position bias; the query sits at position seq_len - 1
            rel = tl.minimum(tl.maximum(toks - (seq_len - 1), -bias_radius), bias_radius) + bias_radius
            s += tl.load(Bias + heads[:, None] * stride_bias + rel[None, :], mask=g_ok[:, None], other=0.0) * 1.4426950408889634
        s = tl.where(t_ok[None, :], s, float("-inf"))
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, s, v)

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    mask = g_ok[:, None] & d_ok[None, :]
    if NUM_SPLITS == 1:
        tl.store(O + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(O.dtype.element_ty), mask=mask)
    else:
        # partial buffers are contiguous: O_part [B, Hq, S, D], M_part/L_part [B, Hq, S]
        row = (seq * (GROUP * tl.num_programs(1)) + heads) * NUM_SPLITS + split
        tl.store(O_part + row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=mask)
        tl.store(M_part + row, m_i, mask=g_ok)
        tl.store(L_part + row, l_i, mask=g_ok)


@triton.jit
def _paged_attention_reduce_kernel(
    O, O_part, M_part, L_part, stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    # grid: (sequences, query heads); merges the partitions by log-sum-exp
    seq = tl.program_id(0)
    head = tl.program_id(1)
    row0 = (seq * tl.num_programs(1) + head) * NUM_SPLITS
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < NUM_SPLITS
    d_ok = offs_d < HEAD_DIM
    m = tl.load(M_part + row0 + offs_s, mask=s_ok, other=float("-inf"))
    l = tl.load(L_part + row0 + offs_s, mask=s_ok, other=0.0)
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = l * tl.math.exp2(m - m_max)  # empty partitions: l = 0 -> weight 0
    o = tl.load(O_part + (row0 + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
                mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    total = tl.sum(w, 0)
    out = tl.sum(o * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(O + seq * stride_ob + head * stride_oh + offs_d, out.to(O.dtype.element_ty), mask=d_ok)


@triton.jit(do_not_specialize=["num_slots"])  # varies per step: one compilation for all values
def _store_kv_kernel(
    K, V, K_cache, V_cache, slot_mapping, num_slots,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
    NUM_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    # grid: (tokens,); one program copies all KV heads of one token
    tok = tl.program_id(0)
    slot = tl.load(slot_mapping + tok).to(tl.int64)
    if slot < 0 or slot >= num_slots:  # -1 skips a token; a slot past the cache is skipped, never written
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    offs_h = tl.arange(0, HEADS_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h < NUM_HEADS)[:, None] & (offs_d < HEAD_DIM)[None, :]
    k = tl.load(K + tok * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
    v = tl.load(V + tok * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
    k_dst = K_cache + block * stride_kcb + offset * stride_kcs + offs_h[:, None] * stride_kch + offs_d[None, :]
    v_dst = V_cache + block * stride_vcb + offset * stride_vcs + offs_h[:, None] * stride_vch + offs_d[None, :]
    tl.store(k_dst, k, mask=mask)
    tl.store(v_dst, v, mask=mask)


def _check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_tensor(name, t, ndim=4, dtypes=FLOAT_DTYPES)
    check_same_dtype(("k_cache", "v_cache"), (k_cache, v_cache))
    expect(k_cache.shape == v_cache.shape, lambda: f"k_cache, v_cache: expected equal shapes, got {list(k_cache.shape)} and {list(v_cache.shape)}")
    expect(k_cache.device == v_cache.device, "k_cache, v_cache: expected one device")
    expect(k_cache.shape[1] in BLOCK_SIZES, lambda: f"k_cache: block size (dim 1) must be one of {BLOCK_SIZES}, got {k_cache.shape[1]}")


def _check_paged_args(q, k_cache, v_cache, block_tables, seq_lens):
    if not checking():  # the caller vouched for the arguments (_validate.trusted_calls)
        return
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES)
    _check_cache(k_cache, v_cache)
    check_same_dtype(("q", "k_cache"), (q, k_cache))
    expect(q.device == k_cache.device, lambda: f"q, k_cache: expected one device, got {q.device} and {k_cache.device}")
    batch, hq, d = q.shape
    hkv = k_cache.shape[2]
    expect(k_cache.shape[3] == d, lambda: f"k_cache: head dim {k_cache.shape[3]} differs from q's {d}")
    expect(16 <= d <= 256, lambda: f"q: head dim must be in [16, 256], got {d}")
    expect(hq % hkv == 0, lambda: f"q, k_cache: query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    check_tensor("block_tables", block_tables, ndim=2, dtypes=(torch.int32,), device=q.device)
    check_tensor("seq_lens", seq_lens, ndim=1, dtypes=(torch.int32,), device=q.device)
    check_shape("block_tables", block_tables, (batch, None))
    check_shape("seq_lens", seq_lens, (batch,))
    if check_indices(seq_lens):  # the kernel masks out-of-range entries; see _validate.check_indices
        capacity = block_tables.shape[1] * k_cache.shape[1]
        longest = int(seq_lens.max())
        expect(int(seq_lens.min()) >= 0, "seq_lens: must be non-negative")
        expect(longest <= capacity, lambda: f"seq_lens: a sequence of {longest} tokens does not fit block_tables ({capacity} slots)")
        used = block_tables[:, : triton.cdiv(longest, k_cache.shape[1])]
        expect(bool(((used >= 0) & (used < k_cache.shape[0])).all()) or longest == 0,
               lambda: f"block_tables: entries must index k_cache's {k_cache.shape[0]} blocks")


def paged_attention_triton(q, k_cache, v_cache, block_tables, seq_lens, *, scale=None, position_bias=None,
                           window=None, softcap=None):
    """Launch flash-decoding over the paged cache. Arguments as :func:`kernels.paged_attention`."""
    _check_paged_args(q, k_cache, v_cache, block_tables, seq_lens)
    radius = check_position_bias(position_bias, q)
    left, _ = check_window(window)
    cap = check_softcap(softcap)
    batch, hq, d = q.shape
    hkv, block_size = k_cache.shape[2], k_cache.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty_like(q)
    if batch == 0:
        return out
    group = hq // hkv
    # upper bound of the context without reading seq_lens back to the host
    num_splits = max(1, triton.cdiv(block_tables.shape[1] * block_size, PARTITION))
    o_part = m_part = l_part = out  # unused placeholders when there is one split
    if num_splits > 1:
        o_part = torch.empty(batch, hq, num_splits, d, dtype=torch.float32, device=q.device)
        m_part = torch.empty(batch, hq, num_splits, dtype=torch.float32, device=q.device)
        l_part = torch.empty_like(m_part)
    block_d = triton.next_power_of_2(d)
    group_pad = max(16, triton.next_power_of_2(group))
    bias = position_bias if position_bias is not None else q
    _paged_attention_kernel[(batch, hkv, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, out, o_part, m_part, l_part, bias,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1), bias.stride(0), scale * LOG2E, radius,
        k_cache.shape[0], block_tables.shape[1], left, cap * LOG2E, GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=d, BLOCK_D=block_d,
        BLOCK_SIZE=block_size, BLOCK_N=paged_block_n(d, q.dtype), PARTITION=PARTITION, NUM_SPLITS=num_splits,
        HAS_BIAS=position_bias is not None, WINDOW=window is not None, SOFTCAP=softcap is not None,
        num_warps=paged_num_warps(group_pad, block_d), num_stages=2,
    )
    if num_splits > 1:
        _paged_attention_reduce_kernel[(batch, hq)](
            out, o_part, m_part, l_part, out.stride(0), out.stride(1),
            HEAD_DIM=d, BLOCK_D=block_d, NUM_SPLITS=num_splits,
            SPLITS_PAD=triton.next_power_of_2(num_splits), num_warps=4,
        )
    return out


def paged_attention_ref(q, k_cache, v_cache, block_tables, seq_lens, *, scale=None, position_bias=None,
                        window=None, softcap=None):
    """Torch path: gather each sequence's blocks, then two batched matmuls around a masked softmax.

    Decode attention is one query row per (sequence, head): SDPA's CPU kernels pay their tiling for
    nothing there (a masked SDPA took 4x as long as this at batch 16 in bf16). Queries are grouped
    per KV head, ``[B, Hkv, G, D] @ [B, Hkv, D, ctx]``, so GQA reads each key once; the softmax runs
    in float32.
    """
    _check_paged_args(q, k_cache, v_cache, block_tables, seq_lens)
    check_position_bias(position_bias, q)
    left = None if window is None else check_window(window)[0]
    softcap = None if softcap is None else check_softcap(softcap)
    batch, hq, d = q.shape
    if batch == 0:
        return torch.empty_like(q)
    nb, block_size, hkv, _ = k_cache.shape
    bad_blocks = (block_tables < 0) | (block_tables >= nb)  # skipped, as the kernel skips them
    one = batch == 1 and position_bias is None and seq_lens.device.type == "cpu" and not bool(bad_blocks.any())
    if one:
        ctx = int(seq_lens[0])  # one sequence (single-stream serving): its blocks cut to its length, no mask
        if ctx == 0:
            return torch.zeros_like(q)
        block_tables = block_tables[:, : -(-ctx // block_size)]
    # index_select copies whole blocks: several times faster on the CPU than advanced indexing
    tables = block_tables.long().clamp(0, nb - 1).flatten()
    k = k_cache.index_select(0, tables).view(batch, -1, hkv, d).transpose(1, 2)  # [B, Hkv, ctx, D]
    v = v_cache.index_select(0, tables).view(batch, -1, hkv, d).transpose(1, 2)
    positions = torch.arange(k.shape[2], device=q.device)
    # float32 scores and probabilities, as SDPA's kernels keep them: a 16-bit QK^T would round the logits
    scores = torch.matmul(q.view(batch, hkv, hq // hkv, d).float(), k.float().transpose(-1, -2))  # [B, Hkv, G, ctx]
    scores *= d ** -0.5 if scale is None else scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if left is not None:  # keys behind the window: the query sits at seq_len - 1
        behind = positions[None, :] < (seq_lens.long() - 1 - left)[:, None]  # [B, ctx]
        scores = scores.masked_fill(behind[:, None, None, :], float("-inf"))
    if position_bias is not None:
        rows = (seq_lens.long() - 1)[:, None]  # the query's position
        bias = relative_bias_ref(position_bias, rows, positions[None].expand(batch, -1))  # [B, H, 1, ctx]
        scores += bias.float().view(batch, hkv, hq // hkv, -1)
    if not one:
        visible = (positions[None, :] < seq_lens[:, None]) & ~bad_blocks.repeat_interleave(block_size, dim=1)
        scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    elif k.shape[2] > int(seq_lens[0]):  # one sequence: drop the tail of its last block
        scores = scores[..., : int(seq_lens[0])]
        v = v[:, :, : int(seq_lens[0])]
    probs = scores.softmax(-1).nan_to_num_(0.0)  # a sequence with no keys: all -inf -> 0
    return torch.matmul(probs, v.float()).view(batch, hq, d).to(q.dtype)


def _check_store_args(k, v, k_cache, v_cache, slot_mapping):
    if not checking():  # the caller vouched for the arguments (_validate.trusted_calls)
        return
    for name, t in (("k", k), ("v", v)):
        check_tensor(name, t, ndim=3, dtypes=FLOAT_DTYPES)
    _check_cache(k_cache, v_cache)
    check_same_dtype(("k", "v", "k_cache"), (k, v, k_cache))
    expect(k.shape == v.shape, lambda: f"k, v: expected equal shapes, got {list(k.shape)} and {list(v.shape)}")
    check_shape("k", k, (None, k_cache.shape[2], k_cache.shape[3]))
    check_tensor("slot_mapping", slot_mapping, ndim=1, dtypes=(torch.int32, torch.int64), device=k.device)
    check_shape("slot_mapping", slot_mapping, (k.shape[0],))
    expect(k.device == k_cache.device, lambda: f"k, k_cache: expected one device, got {k.device} and {k_cache.device}")
    if check_indices(slot_mapping):
        top = k_cache.shape[0] * k_cache.shape[1]
        expect(int(slot_mapping.max()) < top, lambda: f"slot_mapping: slots must be < {top} (num_blocks * block_size)")
        expect(int(slot_mapping.min()) >= -1, "slot_mapping: slots must be >= -1 (-1 skips a token)")


def store_kv_triton(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Write ``k, v [T, Hkv, D]`` into the cache at flat slots; slot -1 is skipped."""
    _check_store_args(k, v, k_cache, v_cache, slot_mapping)
    if k.shape[0] == 0:
        return
    hkv, d = k.shape[1], k.shape[2]
    _store_kv_kernel[(k.shape[0],)](
        k, v, k_cache, v_cache, slot_mapping, k_cache.shape[0] * k_cache.shape[1],
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        NUM_HEADS=hkv, HEADS_PAD=triton.next_power_of_2(hkv), HEAD_DIM=d,
        BLOCK_D=triton.next_power_of_2(d), BLOCK_SIZE=k_cache.shape[1], num_warps=4,
    )


def store_kv_ref(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Torch path: one indexed copy per cache."""
    _check_store_args(k, v, k_cache, v_cache, slot_mapping)
    nb, bs, hkv, d = k_cache.shape
    if slot_mapping.numel() and int(slot_mapping.min()) >= 0 and int(slot_mapping.max()) < nb * bs:
        slots = slot_mapping.long()  # the common case: no skipped tokens
        k_cache.view(nb * bs, hkv, d).index_copy_(0, slots, k)
        v_cache.view(nb * bs, hkv, d).index_copy_(0, slots, v)
        return
    keep = (slot_mapping >= 0) & (slot_mapping < nb * bs)  # -1 and slots past the cache are skipped
    slots = slot_mapping[keep].long()
    k_cache.view(nb * bs, hkv, d)[slots] = k[keep]
    v_cache.view(nb * bs, hkv, d)[slots] = v[keep]
