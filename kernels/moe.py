"""Mixture-of-Experts FFN: top-k softmax routing and two grouped GEMMs over tokens sorted by expert.

Shapes: x ``[T, H]``; ``w13 [E, 2I, H]`` (each expert's gate rows, then its up rows: ``F.linear`` layout);
``w2 [E, H, I]``; routing ``topk_ids``/``topk_weights`` ``[T, K]``.

    out[t] = sum_k  w[t, k] * W2[e] (act(W1[e] x[t]) * W3[e] x[t]),   e = topk_ids[t, k]

The (token, k) slots are grouped by expert and each expert's group is padded to a multiple of ``BLOCK_M``
(``moe_align``, on the device: no host round trip), so every row tile of the sorted list belongs to one expert
(vLLM's fused_moe layout). The first kernel computes gate and up for a tile in one pass over x (two
accumulators) and writes ``act(gate) * up``; the second multiplies by ``W2[e]`` and the routing weight in its
epilogue; the k slots of a token are then summed. Tiles: small row tiles when there are few tokens per expert
(decode), larger ones for prefill.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._backend import interpreting
from ._validate import FLOAT_DTYPES, checking, check_shape, check_tensor, expect
from .gemm import _ACT_CODE, ACTIVATIONS, _activate, activation_ref, configs_for
from .tuning import Tuner, m_bucket


@dataclass(frozen=True)
class MoeConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def moe_config(num_slots: int, num_experts: int, dtype: torch.dtype) -> MoeConfig:
    """The untuned choice (the interpreter, KERNELSERVE_TUNING=off): decode-shaped tiles when there are a few
    (token, k) slots per expert, prefill-shaped ones otherwise; fp32 (TF32) halves K."""
    wide = dtype == torch.float32
    if num_slots <= 4 * num_experts:
        return MoeConfig(16, 64, 32 if wide else 64, 4, 3)
    return MoeConfig(64, 64, 32 if wide else 64, 4, 3)


def _config(m, n, k, warps, stages) -> triton.Config:
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=warps, num_stages=stages)


# the tuner's candidates per operand width, decode-shaped (few rows an expert) to prefill-shaped; every one
# compiles for sm_90 and sm_80 without spills (tests/kernels/test_aot_compile.py)
MOE_CONFIGS = {
    16: [_config(16, 64, 64, 4, 3), _config(16, 128, 64, 4, 3), _config(32, 64, 64, 4, 3),
         _config(64, 64, 64, 4, 3), _config(64, 128, 64, 8, 3), _config(128, 64, 64, 8, 3)],
    32: [_config(16, 64, 32, 4, 3), _config(32, 64, 32, 4, 3), _config(64, 64, 32, 4, 3)],
}


def _moe_config_of(config: triton.Config) -> MoeConfig:
    kw = config.kwargs
    return MoeConfig(kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], config.num_warps, config.num_stages)


def all_moe_configs() -> list[MoeConfig]:
    """Every config the launcher can run: the untuned choices and the tuner's candidates."""
    untuned = {moe_config(n, 8, dt) for n in (8, 4096) for dt in FLOAT_DTYPES}
    tuned = {_moe_config_of(c) for table in MOE_CONFIGS.values() for c in table}
    return sorted(untuned | tuned, key=lambda c: (c.block_m, c.block_n, c.block_k, c.num_warps))


def moe_route(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the experts in float32, the top ``top_k`` (ties broken by torch.topk, as transformers' are),
    optionally renormalised to sum to 1 (Mixtral, Qwen3-MoE's norm_topk_prob). Returns (weights float32
    ``[T, K]``, expert ids int32 ``[T, K]``)."""
    probs = router_logits.float().softmax(-1)
    weights, ids = probs.topk(top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, ids.to(torch.int32)


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Slots (``t * K + k``) sorted by expert, each expert's run padded to ``block_m`` with the sentinel ``T * K``,
    and the expert of each ``block_m`` tile. Sizes are upper bounds known on the host (``T*K + E*(block_m-1)``),
    so nothing is read back. Returns (sorted slots int32 ``[P]``, tile experts int32 ``[P / block_m]``, P)."""
    flat = topk_ids.flatten().long()
    slots = flat.numel()
    capacity = triton.cdiv(slots + num_experts * (block_m - 1), block_m) * block_m
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    ends = padded.cumsum(0)
    order = torch.sort(flat, stable=True).indices  # slots grouped by expert, in slot order within one
    first_of_expert = counts.cumsum(0) - counts
    rank = torch.arange(slots, device=flat.device) - first_of_expert[flat[order]]
    sorted_slots = torch.full((capacity,), slots, dtype=torch.int32, device=flat.device)
    sorted_slots[(ends - padded)[flat[order]] + rank] = order.to(torch.int32)
    tile_starts = torch.arange(0, capacity, block_m, device=flat.device)
    tile_experts = torch.searchsorted(ends, tile_starts, right=True).clamp_(max=num_experts - 1).to(torch.int32)
    return sorted_slots, tile_experts, capacity


@triton.jit(do_not_specialize=["num_slots"])
def _moe_gemm_kernel(
    A, W, C, sorted_slots, tile_experts, routing_weights, num_slots, N, Kdim,
    stride_am, stride_we, stride_wn, stride_cm,
    TOP_K: tl.constexpr, GATED: tl.constexpr, ACT: tl.constexpr, SLOT_ROWS: tl.constexpr,
    MUL_WEIGHT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One output tile of rows sorted_slots[tile] (one expert) by columns [n0, n0 + BLOCK_N).

    GATED: W[e] holds 2N rows (gate, then up); C gets act(x W_g^T) * (x W_u^T). A's row of a slot is the slot
    itself (SLOT_ROWS: the intermediate) or its token (slot // TOP_K: the hidden states). MUL_WEIGHT: the
    routing weight of the slot scales the row. Padding slots (== num_slots) load zeros and store nothing.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(tile_experts + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(sorted_slots + offs_m)
    row_ok = slot < num_slots
    a_row = slot if SLOT_ROWS else slot // TOP_K
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = A + a_row[:, None].to(tl.int64) * stride_am + offs_k[None, :]
    w_ptrs = W + expert * stride_we + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, Kdim, BLOCK_K):
        k_ok = (k0 + offs_k) < Kdim
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
        if GATED:
            u = tl.load(w_ptrs + N * stride_wn, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc_u = tl.dot(a, u, acc_u)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if GATED:  # rounded to the activations' dtype first, as the unfused GEMMs would be
        gate = _activate(acc.to(C.dtype.element_ty).to(tl.float32), ACT)
        acc = gate * acc_u.to(C.dtype.element_ty).to(tl.float32)
    if MUL_WEIGHT:
        acc = acc.to(C.dtype.element_ty).to(tl.float32)
        acc = acc * tl.load(routing_weights + slot, mask=row_ok, other=0.0)[:, None]
    c_ptrs = C + slot[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


def _check_moe_args(x, w13, w2, topk_weights, topk_ids, activation) -> None:
    if not checking():
        return
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor("w13", w13, ndim=3, dtypes=(x.dtype,), device=x.device)
    check_tensor("w2", w2, ndim=3, dtypes=(x.dtype,), device=x.device)
    experts, two_i, hidden = w13.shape
    expect(two_i % 2 == 0 and hidden == x.shape[1],
           lambda: f"w13: expected [E, 2I, {x.shape[1]}], got {list(w13.shape)}")
    check_shape("w2", w2, (experts, hidden, two_i // 2))
    check_tensor("topk_ids", topk_ids, ndim=2, dtypes=(torch.int32, torch.int64), device=x.device)
    check_tensor("topk_weights", topk_weights, ndim=2, dtypes=(torch.float32,), device=x.device)
    check_shape("topk_ids", topk_ids, (x.shape[0], None))
    check_shape("topk_weights", topk_weights, tuple(topk_ids.shape))
    expect(activation in ACTIVATIONS and activation is not None,
           lambda: f"activation: expected one of {ACTIVATIONS[1:]}, got {activation!r}")
    if topk_ids.numel() and topk_ids.device.type == "cpu":
        expect(0 <= int(topk_ids.min()) and int(topk_ids.max()) < experts,
               lambda: f"topk_ids: expert ids must be in [0, {experts})")
    for name, t in (("x", x), ("w13", w13), ("w2", w2)):
        expect(t.stride(-1) == 1, lambda: f"{name}: the last dimension must be contiguous")


def fused_moe_triton(x, w13, w2, topk_weights, topk_ids, activation="silu", config: MoeConfig | None = None):
    """Launch the two grouped GEMMs. Arguments as :func:`kernels.fused_moe`. Tiles: ``config``, else the tuner's
    choice for this shape and token bucket (timed once, persisted: kernels/tuning.py), else, in the interpreter,
    :func:`moe_config`'s."""
    _check_moe_args(x, w13, w2, topk_weights, topk_ids, activation)
    tokens, top_k = topk_ids.shape
    experts, two_i, hidden = w13.shape
    out = torch.empty_like(x)
    if tokens == 0:
        return out
    args = (x, w13, w2, topk_weights, topk_ids, activation, out)
    if config is not None or interpreting():
        _launch_moe(config or moe_config(tokens * top_k, experts, x.dtype), *args)
    else:
        key = (str(x.dtype).removeprefix("torch."), m_bucket(tokens * top_k), experts, hidden, two_i // 2, top_k,
               activation)
        MOE_TUNER.launch(key, None, args, {}, (x.dtype,), device=x.device)
    return out


def _launch_moe(cfg: MoeConfig, x, w13, w2, topk_weights, topk_ids, activation, out) -> None:
    tokens, top_k = topk_ids.shape
    experts, two_i, hidden = w13.shape
    inter = two_i // 2
    slots = tokens * top_k
    sorted_slots, tile_experts, capacity = moe_align(topk_ids, experts, cfg.block_m)
    tiles = capacity // cfg.block_m
    act = torch.empty(slots, inter, dtype=x.dtype, device=x.device)
    weights = topk_weights.contiguous().view(-1)
    common = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
                  num_stages=cfg.num_stages, TOP_K=top_k)
    _moe_gemm_kernel[(tiles, triton.cdiv(inter, cfg.block_n))](
        x, w13, act, sorted_slots, tile_experts, weights, slots, inter, hidden,
        x.stride(0), w13.stride(0), w13.stride(1), act.stride(0),
        GATED=True, ACT=_ACT_CODE[activation], SLOT_ROWS=False, MUL_WEIGHT=False, **common)
    down = torch.empty(slots, hidden, dtype=x.dtype, device=x.device)
    _moe_gemm_kernel[(tiles, triton.cdiv(hidden, cfg.block_n))](
        act, w2, down, sorted_slots, tile_experts, weights, slots, hidden, inter,
        act.stride(0), w2.stride(0), w2.stride(1), down.stride(0),
        GATED=False, ACT=0, SLOT_ROWS=True, MUL_WEIGHT=True, **common)
    out.copy_(down.view(tokens, top_k, hidden).sum(1, dtype=torch.float32))


MOE_TUNER = Tuner("fused_moe", None, lambda dtype: configs_for(MOE_CONFIGS, dtype),
                  run=lambda config, args, kwargs: _launch_moe(_moe_config_of(config), *args))


def fused_moe_ref(x, w13, w2, topk_weights, topk_ids, activation="silu"):
    """Torch path (the CPU serving path): slots grouped by expert with one sort, then torch's grouped GEMM
    (``torch._grouped_mm``: every used expert's rows against its weights in one call, no read-back, no loop over
    tokens or experts) for gate/up and for down; the activation, product and routing weights once for all rows;
    the k slots of each token summed in float32. Without ``_grouped_mm`` (older torch): one GEMM pair per used
    expert."""
    _check_moe_args(x, w13, w2, topk_weights, topk_ids, activation)
    tokens, top_k = topk_ids.shape
    experts, two_i, hidden = w13.shape
    flat = topk_ids.flatten().long()
    order = torch.sort(flat, stable=True).indices
    counts = torch.bincount(flat, minlength=experts)
    rows = x.index_select(0, order // top_k)
    gate, up = _grouped(rows, w13, counts).chunk(2, dim=-1)
    down = _grouped(activation_ref(gate, activation) * up, w2, counts)
    down *= topk_weights.view(-1)[order, None].to(x.dtype)
    summed = torch.empty(order.numel(), hidden, dtype=torch.float32, device=x.device)
    summed[order] = down.float()
    return summed.view(tokens, top_k, hidden).sum(1).to(x.dtype)


def _grouped(rows: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """rows ``[S, K]`` grouped by expert (``counts`` each) times each expert's ``weights[e]`` ``[N, K]``^T."""
    if hasattr(torch, "_grouped_mm"):
        return torch._grouped_mm(rows, weights.transpose(1, 2), offs=counts.cumsum(0).to(torch.int32))
    out = torch.empty(rows.shape[0], weights.shape[1], dtype=rows.dtype, device=rows.device)
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n:
            torch.mm(rows[start:start + n], weights[e].t(), out=out[start:start + n])
        start += n
    return out
