"""Building blocks shared by the architectures: attention over the paged cache, embeddings."""
from __future__ import annotations

import torch
from torch import nn

import kernels

from .metadata import AttentionMetadata

KVCache = tuple[torch.Tensor, torch.Tensor]  # (k_cache, v_cache), [num_blocks, block_size, Hkv, D] each


# On the CPU, torch's bf16 GEMM rounds a row the same way for any row count up to 32 and takes another kernel
# past that (measured on this machine's oneDNN for the 49k-wide LM head), so logits are computed in blocks of
# at most 32 rows: a row's logits do not depend on how many others the step has (batch invariance, tested in
# tests/engine/test_batch_invariance.py). A decode step of up to 32 sequences is one call, as before.
LOGIT_ROW_BLOCK = 32


def lm_logits(hidden: torch.Tensor, weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """[N, H] hidden states -> float32 logits [N, V] through the (possibly tied) output projection."""
    if hidden.device.type != "cpu" or hidden.shape[0] <= LOGIT_ROW_BLOCK:
        return kernels.logits(hidden, weight, bias)
    return torch.cat([kernels.logits(rows, weight, bias) for rows in hidden.split(LOGIT_ROW_BLOCK)])


def gather_kv(cache: KVCache, slots: torch.Tensor) -> KVCache:
    """Read K/V rows of the given flat slots out of the paged cache: [N, Hkv, D] each."""
    k_cache, v_cache = cache
    nb, bs, h, d = k_cache.shape
    return k_cache.view(nb * bs, h, d)[slots], v_cache.view(nb * bs, h, d)[slots]


def self_attention(q, k, v, meta: AttentionMetadata, cache: KVCache | None, *, causal: bool,
                   scale: float | None, position_bias: torch.Tensor | None = None,
                   window: tuple[int, int] | None = None, softcap: float | None = None) -> torch.Tensor:
    """Attention for one layer of a packed step. q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D].

    With a cache, the step's K/V are stored first; prefill tokens then attend
    over their keys (read back from the cache when a prefix was cached) and
    decode tokens attend over the cache. ``window`` (a sliding window) and ``softcap``
    (score soft-capping) as in ``kernels.attention``, for prefill and decode alike.
    """
    if cache is not None and meta.slot_mapping is not None:
        kernels.store_kv(k, v, cache[0], cache[1], meta.slot_mapping)
    p = meta.num_prefill_tokens
    if meta.num_decode_tokens == 0:
        kp, vp = (k, v) if meta.prefill_kv_slots is None else gather_kv(cache, meta.prefill_kv_slots)
        return kernels.attention(q, kp, vp, meta.cu_seqlens_q, meta.cu_seqlens_k, meta.max_seqlen_q,
                                 meta.max_seqlen_k, causal=causal, scale=scale, position_bias=position_bias,
                                 window=window, softcap=softcap)
    out = torch.empty_like(q)
    if p:
        kp, vp = (k[:p], v[:p]) if meta.prefill_kv_slots is None else gather_kv(cache, meta.prefill_kv_slots)
        out[:p] = kernels.attention(q[:p], kp, vp, meta.cu_seqlens_q, meta.cu_seqlens_k, meta.max_seqlen_q,
                                    meta.max_seqlen_k, causal=causal, scale=scale, position_bias=position_bias,
                                    window=window, softcap=softcap)
    out[p:] = kernels.paged_attention(q[p:], cache[0], cache[1], meta.decode_block_tables,
                                      meta.decode_seq_lens, scale=scale, position_bias=position_bias,
                                      window=window, softcap=softcap)
    return out


class Linear(nn.Module):
    """Weight (and optional bias) in ``F.linear`` layout, applied through ``kernels.linear``."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias, activation)


class QuantizedLinear(nn.Module):
    """A :class:`Linear` whose weight is group-wise quantized (``kernels.QuantizedWeight``): packed codes,
    float32 scales and offsets as buffers; the same ``forward`` contract, dequantised inside the GEMM."""

    def __init__(self, weight: kernels.QuantizedWeight, bias: nn.Parameter | None = None, kind: str | None = None):
        super().__init__()
        self.kind = kind or f"int{weight.bits}"  # the format it came in: "Q4_1", "int4", ...
        self.register_buffer("qweight", weight.qweight)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("offsets", weight.offsets)
        self.bits, self.group_size = weight.bits, weight.group_size
        self.bias = bias
        self._weight = weight

    @property
    def weight(self) -> kernels.QuantizedWeight:
        if self._weight.qweight is not self.qweight:  # the buffers moved (``.to(device)``)
            self._weight = kernels.QuantizedWeight(self.qweight, self.scales, self.offsets, self.bits,
                                                   self.group_size)
        return self._weight

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias, activation)

    def extra_repr(self) -> str:
        n, k = self.weight.shape
        return f"in_features={k}, out_features={n}, bits={self.bits}, group_size={self.group_size}"


def replace_linear(model: nn.Module, name: str, weight: kernels.QuantizedWeight, kind: str | None = None) -> None:
    """Swap the :class:`Linear` owning parameter ``name`` (``...proj.weight``) for a :class:`QuantizedLinear`,
    or the :class:`Embedding` owning it for a :class:`QuantizedEmbedding`."""
    path = name.rsplit(".", 1)[0]
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    if isinstance(old, Embedding):
        setattr(parent, attr, QuantizedEmbedding(weight, old.weight.dtype, kind))
    else:
        setattr(parent, attr, QuantizedLinear(weight, old.bias, kind))


def rtn_group_size(in_features: int, preferred: int = 128) -> int | None:
    """The largest group size in (preferred, 64, 32) dividing ``in_features`` (None: none does)."""
    return next((g for g in (preferred, 64, 32) if g <= preferred and in_features % g == 0), None)


def quantize_linears(model: nn.Module, bits: int) -> int:
    """Round-to-nearest int8/int4 of every :class:`Linear` in the transformer layers (embeddings and the
    LM head stay in full precision, as llama.cpp keeps them at higher precision). Returns how many."""
    names = [n for n, m in model.named_modules() if type(m) is Linear and "lm_head" not in n]
    done = 0
    for name in names:
        module = model.get_submodule(name)
        group = rtn_group_size(module.weight.shape[1])
        if group is None:
            continue
        replace_linear(model, name + ".weight", kernels.quantize_rtn(module.weight.data, bits, group))
        done += 1
    return done


class Norm(nn.Module):
    """LayerNorm or RMSNorm parameters, applied through the fused kernels (optionally with residual)."""

    def __init__(self, size: int, eps: float, rms: bool, bias: bool, dtype: torch.dtype):
        super().__init__()
        self.eps, self.rms = eps, rms
        self.weight = nn.Parameter(torch.empty(size, dtype=dtype), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(size, dtype=dtype), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if self.rms:
            return kernels.rms_norm(x, self.weight, self.eps, residual)
        return kernels.layer_norm(x, self.weight, self.bias, self.eps, residual)


class Embedding(nn.Module):
    def __init__(self, num: int, dim: int, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, dim, dtype=dtype), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids]


class QuantizedEmbedding(QuantizedLinear):
    """An :class:`Embedding` kept quantized: a token's row is dequantised when it is looked up, and a tied LM
    head runs the quantized GEMM over the same (single) copy of the codes."""

    def __init__(self, weight: kernels.QuantizedWeight, dtype: torch.dtype, kind: str | None = None):
        super().__init__(weight, None, kind)
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w, flat = self.weight, ids.reshape(-1)
        rows = kernels.QuantizedWeight(w.qweight[flat], w.scales[flat], w.offsets[flat], w.bits, w.group_size)
        return rows.dequantize(self.dtype).view(*ids.shape, -1)
