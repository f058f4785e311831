"""Launchers of the fused C++ CPU ops (kernels/cpu/ops.cpp), each the CPU twin of a Triton kernel.

Each validates its arguments as its Triton and torch siblings do, runs the C++ op where the op covers the
case (float32 or bfloat16, rows with unit feature stride), and otherwise returns the plain-torch reference's
result (the ``*_ref`` function beside the Triton kernel), so a caller never needs to know which ran.
"""
from __future__ import annotations

import torch

from ..flash_attention import check_position_bias, check_softcap, check_window
from ..gemm import activation_ref
from ..norms import _check_norm_args, rms_norm_ref
from ..paged import _check_paged_args, paged_attention_ref
from ..rope import _check_rotary_args, rotary_ref

_DTYPES = (torch.float32, torch.bfloat16)
ACT_AND_MUL = ("silu", "gelu_tanh")


def _rows(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` as ``[rows, features]`` without a copy, or None when that needs one."""
    if t.dim() == 0 or t.stride(-1) != 1:
        return None
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.stride(-1) == 1 and rows.data_ptr() == t.data_ptr() else None


def rms_norm_cpu(x, weight, eps: float, residual=None):
    """:func:`kernels.rms_norm` in one pass a row (the residual added on the way)."""
    _check_norm_args(x, weight, None, residual)
    x2 = _rows(x)
    r2 = _rows(residual) if residual is not None else None
    if x2 is None or x.dtype not in _DTYPES or weight.dtype != x.dtype or (residual is not None and r2 is None):
        return rms_norm_ref(x, weight, eps, residual)
    y, h = torch.ops.kernelserve.rms_norm(x2, weight.contiguous(), float(eps), r2)
    y = y.view(x.shape)
    return (y, h.view(x.shape)) if residual is not None else y


def rotary_cpu(q, k, positions, cos_sin_cache, neox_style: bool = True):
    """:func:`kernels.rotary` in place, each head's rotated features in one pass."""
    _check_rotary_args(q, k, positions, cos_sin_cache)
    if (q.dtype not in _DTYPES or q.stride(-1) != 1 or k.stride(-1) != 1 or cos_sin_cache.dtype != torch.float32
            or not cos_sin_cache.is_contiguous()):
        return rotary_ref(q, k, positions, cos_sin_cache, neox_style)
    if q.shape[0]:
        torch.ops.kernelserve.rotary(q, k, positions, cos_sin_cache, neox_style)
    return q, k


def act_and_mul_ref(gate_up: torch.Tensor, activation: str) -> torch.Tensor:
    """Torch path: ``act(gate) * up`` with ``gate_up = cat([gate, up], -1)``."""
    gate, up = gate_up.chunk(2, dim=-1)
    return activation_ref(gate, activation) * up


def act_and_mul_cpu(gate_up: torch.Tensor, activation: str) -> torch.Tensor:
    """``act(gate) * up`` in one pass (SiLU and tanh-GELU, the gated MLPs' activations)."""
    rows = _rows(gate_up)
    if activation not in ACT_AND_MUL or gate_up.dtype not in _DTYPES or rows is None or gate_up.shape[-1] % 2:
        return act_and_mul_ref(gate_up, activation)
    return torch.ops.kernelserve.act_and_mul(rows, activation).view(*gate_up.shape[:-1], gate_up.shape[-1] // 2)


def paged_attention_cpu(q, k_cache, v_cache, block_tables, seq_lens, *, scale=None, position_bias=None,
                        window=None, softcap=None):
    """:func:`kernels.paged_attention` with each (sequence, KV head) scored, normalised and summed in one pass."""
    _check_paged_args(q, k_cache, v_cache, block_tables, seq_lens)
    check_position_bias(position_bias, q)
    left = -1 if window is None else check_window(window)[0]
    cap = 0.0 if softcap is None else check_softcap(softcap)
    if (position_bias is not None or q.dtype not in _DTYPES or q.stride(-1) != 1 or not k_cache.is_contiguous()
            or not v_cache.is_contiguous()):
        return paged_attention_ref(q, k_cache, v_cache, block_tables, seq_lens, scale=scale,
                                   position_bias=position_bias, window=window, softcap=softcap)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    tables = block_tables.to(torch.int32)
    tables = tables if tables.stride(-1) == 1 else tables.contiguous()
    return torch.ops.kernelserve.paged_decode_attention(q, k_cache, v_cache, tables,
                                                         seq_lens.to(torch.int32).contiguous(), float(scale),
                                                         int(left), float(cap))


def decode_layer(h, residual, pack, positions, cos_sin, cache, slot_mapping, block_tables, seq_lens):
    """One Llama-family decoder layer for a decode-only step, in one C++ call (kernels/cpu/decoder_layer.cpp):
    the same ops, in the same order, as the layer's Python forward, so the outputs are bit-identical.

    ``pack`` is :func:`decode_layer_pack`'s; ``h``/``residual`` ``[B, H]``; returns ``(mlp_out, residual)``."""
    weights, layout, eps, scale, activation = pack
    return torch.ops.kernelserve.decode_layer(h, residual, weights, layout, eps, scale, activation, positions,
                                              cos_sin, cache[0], cache[1], slot_mapping, block_tables, seq_lens)


def _projection(weight, dtype) -> tuple[list, int, int] | None:
    """(tensors, bits, group) of a projection the fused layer can run (bits 0: dense), or None."""
    from ..quant_gemm import QuantizedWeight, uses_cpu_kernel

    if isinstance(weight, QuantizedWeight):
        if not uses_cpu_kernel(weight, dtype):
            return None
        return [weight.qweight, weight.scales, weight.offsets], weight.bits, weight.group_size
    if weight.dtype != dtype or weight.dim() != 2:
        return None
    return [weight], 0, 0


def decode_layer_pack(*, dtype, norms, qk_norms, qkv_bias, projections, heads, window_left, rope, neox, eps,
                      scale, activation):
    """The fused layer's arguments for one layer, or None where it cannot run the layer (a projection
    format or dtype the C++ ops do not take, an activation other than SiLU / tanh-GELU).

    ``norms``: the input and post-attention RMSNorm weights; ``qk_norms``: Qwen3's per-head q/k norm weights
    or None; ``projections``: the qkv, o, gate_up and down weights (tensors or QuantizedWeights);
    ``heads``: (query heads, KV heads, head dim)."""
    if dtype not in _DTYPES or activation not in ACT_AND_MUL:
        return None
    norm_weights = [*norms, *(qk_norms or ())]
    if any(w.dtype != dtype or not w.is_contiguous() for w in norm_weights):
        return None
    if qkv_bias is not None and qkv_bias.dtype != dtype:
        return None
    weights, layout = list(norm_weights) + ([qkv_bias] if qkv_bias is not None else []), []
    for weight in projections:
        parts = _projection(weight, dtype)
        if parts is None:
            return None
        weights += parts[0]
        layout += parts[1:]
    flags = [*heads, window_left, int(rope), int(neox), int(qk_norms is not None), int(qkv_bias is not None)]
    return weights, flags + layout, float(eps), float(scale), activation
