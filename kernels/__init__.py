"""kernelserve's kernel library: fused Triton kernels with torch fallbacks.

Every public function dispatches on :func:`kernels._backend.use_triton`:
Triton on CUDA tensors (or anywhere under ``TRITON_INTERPRET=1`` with
``KERNELSERVE_KERNELS=triton``), the vectorised torch path otherwise. Both
paths validate their arguments the same way and raise ``ValueError`` on bad
input, except inside :func:`trusted_calls`, where a caller that checked its
inputs once (the engine, per step) skips the per-call checks. Shapes and
semantics are the contract in DESIGN.md.
"""
from __future__ import annotations

import torch

from . import compile_keys
from . import cpu as _cpu
from ._backend import BACKENDS, backend_for, interpreting, selected_backend, use_triton
from ._validate import checking, trusted_calls
from .decode_gemm import DECODE_MAX_M, linear_decode_triton
from .flash_attention import attention_ref, attention_triton
from .gemm import (ACTIVATIONS, activation_ref, ffn_ref, ffn_triton, gated_ffn_ref, gated_ffn_triton, linear_ref,
                   linear_triton)
from .moe import fused_moe_ref, fused_moe_triton, moe_route
from .norms import layer_norm_ref, layer_norm_triton, rms_norm_ref, rms_norm_triton
from .paged import paged_attention_ref, paged_attention_triton, store_kv_ref, store_kv_triton
from .quant_gemm import (QuantizedWeight, pack_codes, prepare_cpu, quant_linear_cpu, quant_linear_ref,
                         quant_linear_triton, quantize_rtn, uses_cpu_kernel)
from .rope import rotary_cos_sin_cache, rotary_ref, rotary_triton
from .cpu.ops import act_and_mul_cpu, act_and_mul_ref, paged_attention_cpu, rms_norm_cpu, rotary_cpu
from .cpu.ops import decode_layer as cpu_decode_layer
from .cpu.ops import decode_layer_pack as cpu_decode_layer_pack

if interpreting():
    from ._interpreter_fix import patch_interpreter_bf16_dot

    patch_interpreter_bf16_dot()

__all__ = [
    "ACTIVATIONS", "BACKENDS", "QuantizedWeight", "act_and_mul", "attention", "cpu_decode_layer", "logits",
    "cpu_decode_layer_pack", "cpu_kernels_available", "checking", "backend_for", "ffn", "fused_moe", "gated_ffn",
    "interpreting", "moe_route",
    "layer_norm", "linear", "pack_codes", "paged_attention", "prepare_cpu", "quant_linear_ref", "quantize_rtn",
    "rms_norm", "rotary", "rotary_cos_sin_cache", "runs_triton", "selected_backend", "store_kv", "trusted_calls",
    "uses_cpu_kernel",
]


def attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int, *,
              causal: bool, scale: float | None = None, position_bias=None,
              window: tuple[int, int] | None = None, softcap: float | None = None) -> torch.Tensor:
    """Fused SDPA over a packed variable-length batch.

    q ``[total_q, Hq, D]``, k/v ``[total_k, Hkv, D]`` with ``Hq % Hkv == 0``;
    ``cu_seqlens_*`` int32 ``[B+1]``. Causal masks are bottom-right aligned.
    Returns ``[total_q, Hq, D]`` in q's dtype. ``scale`` defaults to ``D**-0.5``.
    ``position_bias`` (float32 ``[Hq, 2R+1]``, optional) adds
    ``position_bias[h, clamp(key_pos - query_pos, -R, R) + R]`` to each score
    (T5's relative attention bias). ``window = (left, right)`` (optional) is a
    sliding window: the query at position ``p`` sees keys ``p - left`` to ``p + right``
    only (Mistral/Gemma's causal window of W tokens is ``(W - 1, 0)``; ModernBERT's
    local layers ``(64, 64)``). ``softcap`` (optional) replaces each scaled score
    ``s`` by ``softcap * tanh(s / softcap)`` before the mask (Gemma 2's logit soft-capping).
    """
    fn = _pick(attention_triton, attention_ref, q)
    return fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal, scale=scale,
              position_bias=position_bias, window=window, softcap=softcap)


def paged_attention(q, k_cache, v_cache, block_tables, seq_lens, *, scale: float | None = None,
                    position_bias=None, window: tuple[int, int] | None = None,
                    softcap: float | None = None) -> torch.Tensor:
    """Decode attention, one query per sequence, over the paged KV cache.

    q ``[B, Hq, D]``; caches ``[num_blocks, block_size, Hkv, D]``; block_tables
    int32 ``[B, max_blocks]``; seq_lens int32 ``[B]``. Returns ``[B, Hq, D]``.
    ``position_bias``, ``window`` and ``softcap`` as in :func:`attention` (the query
    sits at ``seq_len - 1``, so only a window's ``left`` matters; the kernel skips the
    cache blocks behind it).
    """
    fn = _pick(paged_attention_triton, paged_attention_ref, q, paged_attention_cpu)
    return fn(q, k_cache, v_cache, block_tables, seq_lens, scale=scale, position_bias=position_bias, window=window,
              softcap=softcap)


def store_kv(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Write k, v ``[T, Hkv, D]`` into the cache at flat slots (``block * block_size + offset``; -1 skips)."""
    fn = _pick(store_kv_triton, store_kv_ref, k)
    fn(k, v, k_cache, v_cache, slot_mapping)


def layer_norm(x, weight, bias, eps: float, residual=None):
    """LayerNorm over the last dim; with ``residual`` returns ``(layer_norm(x + residual), x + residual)``."""
    fn = _pick(layer_norm_triton, layer_norm_ref, x)
    return fn(x, weight, bias, eps, residual)


def rms_norm(x, weight, eps: float, residual=None):
    """RMSNorm over the last dim; with ``residual`` returns ``(rms_norm(x + residual), x + residual)``."""
    fn = _pick(rms_norm_triton, rms_norm_ref, x, rms_norm_cpu)
    return fn(x, weight, eps, residual)


def linear(x, weight, bias=None, activation: str | None = None) -> torch.Tensor:
    """``act(x @ weight.T + bias)`` as one GEMM with a fused epilogue; weight ``[out, in]``, a tensor or a
    :class:`QuantizedWeight` (dequantised inside the GEMM)."""
    if isinstance(weight, QuantizedWeight):
        fn = _pick(quant_linear_triton, quant_linear_cpu, x)
    else:  # a few rows (decode) are a read of the weight: split over K (kernels/decode_gemm.py)
        fn = _pick(linear_decode_triton if _rows(x) <= DECODE_MAX_M else linear_triton, linear_ref, x)
    return fn(x, weight, bias, activation)


def logits(hidden: torch.Tensor, weight, bias=None) -> torch.Tensor:
    """float32 ``hidden @ weight.T (+ bias)``, the output projection. A quantized weight on the C++ CPU kernels
    writes float32 directly, so logits are never rounded to 16 bits (bf16 spaces them 0.125 apart near 25:
    a near tie would be decided by rounding); elsewhere the GEMM's result is converted."""
    if isinstance(weight, QuantizedWeight) and not use_triton(hidden) and compile_keys.active() is None:
        return quant_linear_cpu(hidden, weight, bias, float_out=True)
    return linear(hidden, weight, bias).float()


def cpu_kernels_available() -> bool:
    """Whether kernelserve's C++ CPU kernels are built and switched on (kernels/cpu); False while compile keys
    are recorded (kernels/compile_keys.py: the step then stands in for a GPU's)."""
    return compile_keys.active() is None and _cpu.available()


def runs_triton(device: torch.device | str) -> bool:
    """Whether kernel calls on ``device`` launch Triton kernels (or, while compile keys are recorded, would)."""
    return backend_for(device) == "triton" or compile_keys.active() is not None


def _pick(triton_fn, torch_fn, main: torch.Tensor, cpu_fn=None):
    """``triton_fn`` where ``main`` runs Triton; on CPU tensors ``cpu_fn`` (kernels/cpu) when given and the C++
    kernels are built; else ``torch_fn``, shadowed by ``triton_fn`` while compile keys are recorded
    (kernels/compile_keys.py: the launcher runs for its keys, the torch path for the result)."""
    if use_triton(main):
        return triton_fn
    if compile_keys.active() is None:
        return cpu_fn if cpu_fn is not None and main.device.type == "cpu" and _cpu.available() else torch_fn

    def shadowed(*args, **kwargs):
        compile_keys.shadow(triton_fn, *args, **kwargs)
        return torch_fn(*args, **kwargs)
    return shadowed


def _rows(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0


def fused_moe(x, w13, w2, topk_weights, topk_ids, activation: str = "silu") -> torch.Tensor:
    """Mixture-of-Experts FFN: ``sum_k w[t,k] * W2[e] (act(W1[e] x) * W3[e] x)`` with ``e = topk_ids[t,k]``;
    x ``[T, H]``, ``w13 [E, 2I, H]`` (gate rows then up rows per expert), ``w2 [E, H, I]``, routing ``[T, K]``
    (float32 weights from :func:`moe_route`). Returns ``[T, H]`` in x's dtype."""
    fn = _pick(fused_moe_triton, fused_moe_ref, x)
    return fn(x, w13, w2, topk_weights, topk_ids, activation)


def gated_ffn(x, w_gate_up, w_down, activation: str = "silu") -> torch.Tensor:
    """``(act(x @ Wg.T) * (x @ Wu.T)) @ w_down.T`` with ``w_gate_up = cat([Wg, Wu])`` (either may be quantized)."""
    quantized = isinstance(w_gate_up, QuantizedWeight) or isinstance(w_down, QuantizedWeight)
    decode = _rows(x) <= DECODE_MAX_M
    # decode on a GPU: two split-K GEMMs around the product; on the CPU with the C++ kernels, the product is
    # act_and_mul for every row count, as in the fused decoder layer (a row's result does not depend on its step)
    if quantized or (decode and use_triton(x)) or _cpp_elementwise(x):
        return _two_gemm_ffn(linear, x, w_gate_up, w_down, activation)
    if decode:  # the torch path here; what a GPU would launch is shadowed while compile keys are recorded
        compile_keys.shadow(_two_gemm_ffn, linear_decode_triton, x, w_gate_up, w_down, activation)
        return gated_ffn_ref(x, w_gate_up, w_down, activation)
    fn = _pick(gated_ffn_triton, gated_ffn_ref, x)
    return fn(x, w_gate_up, w_down, activation)


def _two_gemm_ffn(gemm, x, w_gate_up, w_down, activation: str) -> torch.Tensor:
    return gemm(act_and_mul(gemm(x, w_gate_up), activation), w_down)


def _cpp_elementwise(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and not use_triton(x) and cpu_kernels_available()


def act_and_mul(gate_up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """``act(gate) * up`` with ``gate_up = cat([gate, up], -1)`` ``[..., 2I]`` -> ``[..., I]``."""
    if _cpp_elementwise(gate_up):
        return act_and_mul_cpu(gate_up, activation)
    return act_and_mul_ref(gate_up, activation)


def ffn(x, w_in, b_in, w_out, b_out, activation: str | None) -> torch.Tensor:
    """``act(x @ w_in.T + b_in) @ w_out.T + b_out``; biases may be None; weights may be quantized."""
    if isinstance(w_in, QuantizedWeight) or isinstance(w_out, QuantizedWeight):
        return linear(linear(x, w_in, b_in, activation), w_out, b_out)
    fn = _pick(ffn_triton, ffn_ref, x)
    return fn(x, w_in, b_in, w_out, b_out, activation)


def rotary(q, k, positions, cos_sin_cache, neox_style: bool = True):
    """Rotary embeddings applied in place to q ``[T, Hq, D]`` and k ``[T, Hkv, D]``; returns (q, k)."""
    fn = _pick(rotary_triton, rotary_ref, q, rotary_cpu)
    return fn(q, k, positions, cos_sin_cache, neox_style)
