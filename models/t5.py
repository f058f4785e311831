"""T5 encoder-decoder: RMSNorm (T5LayerNorm), relative position bias, ReLU or gated-GELU FFN, no score scaling.

The bucketed relative position bias saturates beyond ``relative_max_distance``,
so it is exactly a table over distances ``[-R, R]`` that the attention kernels
index themselves (``position_bias``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

import kernels

from .config import EncoderDecoderConfig
from .encoder_decoder import CrossAttention
from .layers import Embedding, KVCache, Linear, Norm, lm_logits, self_attention
from .metadata import AttentionMetadata
from .weights import CheckpointRules


def relative_bucket(rel: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bucket of each relative position (key - query), as in the Mesh TensorFlow original."""
    bucket = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        bucket += (rel > 0).long() * num_buckets
        rel = rel.abs()
    else:
        rel = -rel.clamp(max=0)
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return bucket + torch.where(rel < max_exact, rel, large)


class T5Attention(nn.Module):
    def __init__(self, cfg: EncoderDecoderConfig, dtype, relative_bias: bool):
        super().__init__()
        self.cfg = cfg
        inner = cfg.inner_size
        self.q, self.k, self.v = (Linear(cfg.hidden_size, inner, False, dtype) for _ in range(3))
        self.o = Linear(inner, cfg.hidden_size, False, dtype)
        if relative_bias:
            self.relative_attention_bias = Embedding(cfg.relative_buckets, cfg.num_heads, dtype)

    def bias_table(self, bidirectional: bool) -> torch.Tensor:
        """[H, 2R+1] float32: the bias for every key - query distance in [-R, R]."""
        c = self.cfg
        rel = torch.arange(-c.relative_max_distance, c.relative_max_distance + 1, device=self.q.weight.device)
        buckets = relative_bucket(rel, bidirectional, c.relative_buckets, c.relative_max_distance)
        return self.relative_attention_bias.weight[buckets].float().t().contiguous()

    def heads(self, x, proj):
        return proj(x).view(-1, self.cfg.num_heads, self.cfg.head_dim)


class T5Block(nn.Module):
    def __init__(self, cfg: EncoderDecoderConfig, dtype, decoder: bool, relative_bias: bool):
        super().__init__()
        self.cfg = cfg
        norm = lambda: Norm(cfg.hidden_size, cfg.norm_eps, rms=True, bias=False, dtype=dtype)  # noqa: E731
        parts = [nn.Module() for _ in range(3 if decoder else 2)]
        parts[0].SelfAttention, parts[0].layer_norm = T5Attention(cfg, dtype, relative_bias), norm()
        if decoder:
            parts[1].EncDecAttention, parts[1].layer_norm = T5Attention(cfg, dtype, False), norm()
        ff = parts[-1]
        ff.DenseReluDense, ff.layer_norm = nn.Module(), norm()
        if cfg.gated_ffn:
            ff.DenseReluDense.wi = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, False, dtype)  # wi_0; wi_1
        else:
            ff.DenseReluDense.wi = Linear(cfg.hidden_size, cfg.intermediate_size, False, dtype)
        ff.DenseReluDense.wo = Linear(cfg.intermediate_size, cfg.hidden_size, False, dtype)
        self.layer = nn.ModuleList(parts)

    def _ffn(self, x):
        d = self.layer[-1].DenseReluDense
        if self.cfg.gated_ffn:
            return kernels.gated_ffn(x, d.wi.weight, d.wo.weight, self.cfg.activation)
        return kernels.ffn(x, d.wi.weight, None, d.wo.weight, None, self.cfg.activation)

    def forward(self, h, residual, meta, cache, bias, causal, cross=None, index=0):
        attn = self.layer[0].SelfAttention
        x, residual = (self.layer[0].layer_norm(h), h) if residual is None else self.layer[0].layer_norm(h, residual)
        q, k, v = attn.heads(x, attn.q), attn.heads(x, attn.k), attn.heads(x, attn.v)
        # T5 does not scale scores: the 1/sqrt(d) is folded into its initialisation
        a = self_attention(q, k, v, meta, cache, causal=causal, scale=1.0, position_bias=bias)
        h = attn.o(a.reshape(-1, self.cfg.inner_size))
        if cross is not None:
            ca = self.layer[1].EncDecAttention
            x, residual = self.layer[1].layer_norm(h, residual)
            a = cross.attend(index, ca.heads(x, ca.q), scale=1.0)
            h = ca.o(a.reshape(-1, self.cfg.inner_size))
        x, residual = self.layer[-1].layer_norm(h, residual)
        return self._ffn(x), residual


class T5Stack(nn.Module):
    def __init__(self, cfg: EncoderDecoderConfig, dtype, decoder: bool):
        super().__init__()
        self.decoder = decoder
        count = cfg.num_layers if decoder else cfg.num_encoder_layers
        self.block = nn.ModuleList(T5Block(cfg, dtype, decoder, i == 0) for i in range(count))
        self.final_layer_norm = Norm(cfg.hidden_size, cfg.norm_eps, rms=True, bias=False, dtype=dtype)


class T5ForConditionalGeneration(nn.Module):
    def __init__(self, cfg: EncoderDecoderConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        self.shared = Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.encoder = T5Stack(cfg, dtype, decoder=False)
        self.decoder = T5Stack(cfg, dtype, decoder=True)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, False, dtype)

    @property
    def rules(self) -> CheckpointRules:
        ties = [(r"^(encoder|decoder)\.embed_tokens\.weight$", "shared.weight")]
        if self.cfg.tie_word_embeddings:
            ties.append((r"^lm_head\.weight$", "shared.weight"))
        stacked = (("DenseReluDense.wi_0.weight", "DenseReluDense.wi.weight", 0),
                   ("DenseReluDense.wi_1.weight", "DenseReluDense.wi.weight", 1))
        return CheckpointRules(stacked=stacked, renames=tuple(ties))

    def shard_sizes(self) -> dict[str, tuple[int, ...]]:
        if not self.cfg.gated_ffn:
            return {}
        i = self.cfg.intermediate_size
        return {name: (i, i) for name, _ in self.named_parameters() if name.endswith("DenseReluDense.wi.weight")}

    def encode(self, input_ids: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Packed encoder tokens [T] -> encoder output [T, d]."""
        stack = self.encoder
        bias = stack.block[0].layer[0].SelfAttention.bias_table(bidirectional=True)
        h, residual = self.shared(input_ids), None
        for block in stack.block:
            h, residual = block(h, residual, meta, None, bias, causal=False)
        return stack.final_layer_norm(h, residual)[0]

    def cross_kv(self, encoded: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per decoder layer, the cross-attention K/V of one sequence's encoder output (computed once)."""
        out = []
        for block in self.decoder.block:
            ca = block.layer[1].EncDecAttention
            out.append((ca.heads(encoded, ca.k), ca.heads(encoded, ca.v)))
        return out

    def forward(self, input_ids, positions, meta: AttentionMetadata, kv_caches: list[KVCache] | None,
                cross: CrossAttention) -> torch.Tensor:
        """Decoder step over packed tokens -> hidden [T, d]."""
        stack = self.decoder
        bias = stack.block[0].layer[0].SelfAttention.bias_table(bidirectional=False)
        h, residual = self.shared(input_ids), None
        for i, block in enumerate(stack.block):
            cache = kv_caches[i] if kv_caches is not None else None
            h, residual = block(h, residual, meta, cache, bias, causal=True, cross=cross, index=i)
        return stack.final_layer_norm(h, residual)[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.cfg.scale_decoder_outputs:  # original T5 rescales by d_model^-1/2 (v1.1 does not)
            hidden = hidden * self.cfg.hidden_size ** -0.5
        weight = self.shared.weight if self.lm_head is None else self.lm_head.weight
        return lm_logits(hidden, weight)
