"""Gemma 2 and Gemma 3 (text) decoders.

What sets them apart from the Llama family:
- RMSNorm scales by ``1 + w`` (the checkpoint stores ``w``; 1 is added once at load) and every layer has four
  norms: before and after attention, before and after the MLP (the "after" norms apply to the branch output
  before it joins the residual stream);
- embeddings multiplied by ``sqrt(hidden_size)``; GeGLU MLP (tanh GELU);
- scores scaled by ``query_pre_attn_scalar ** -0.5``; Gemma 2 soft-caps attention scores (50) and the final logits
  (30): ``cap * tanh(x / cap)``; Gemma 3 normalises each head's q and k instead;
- local layers see a sliding window of the last ``sliding_window`` tokens (Gemma 2: every other layer; Gemma 3: five
  of every six), through the attention kernels' window, prefill and decode; Gemma 3's local layers use their own
  rotary base (10k) and its global ones the long-context one (1M, with linear scaling on the larger models).
"""
from __future__ import annotations

import torch
from torch import nn

import kernels

from .config import DecoderConfig, RopeScaling
from .layers import Embedding, KVCache, Linear, Norm, lm_logits, self_attention
from .llama import RULES, TIED_RULES, LlamaMLP, stacked_sizes
from .metadata import AttentionMetadata


class GemmaAttention(nn.Module):
    def __init__(self, cfg: DecoderConfig, window: int, dtype: torch.dtype):
        super().__init__()
        self.cfg = cfg
        self.qkv_proj = Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, cfg.qkv_bias, dtype)
        self.o_proj = Linear(cfg.q_size, cfg.hidden_size, False, dtype)
        if cfg.qk_norm:
            self.q_norm = Norm(cfg.head_dim, cfg.norm_eps, rms=True, bias=False, dtype=dtype)
            self.k_norm = Norm(cfg.head_dim, cfg.norm_eps, rms=True, bias=False, dtype=dtype)
        # HF's window of W tokens: query p sees keys p - W + 1 .. p
        self.window = (window - 1, 0) if window else None

    def forward(self, x, positions, cos_sin, meta: AttentionMetadata, cache: KVCache | None):
        c = self.cfg
        q, k, v = self.qkv_proj(x).split([c.q_size, c.kv_size, c.kv_size], dim=-1)
        if c.qk_norm:
            q = self.q_norm(q.reshape(-1, c.head_dim))
            k = self.k_norm(k.reshape(-1, c.head_dim))
        q = q.reshape(-1, c.num_heads, c.head_dim)
        k = k.reshape(-1, c.num_kv_heads, c.head_dim)
        v = v.reshape(-1, c.num_kv_heads, c.head_dim)
        kernels.rotary(q, k, positions, cos_sin, neox_style=True)
        o = self_attention(q, k, v, meta, cache, causal=True, scale=c.query_scale, window=self.window,
                           softcap=c.attn_softcap)
        return self.o_proj(o.reshape(-1, c.q_size))


class GemmaDecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, index: int, dtype: torch.dtype):
        super().__init__()
        norm = lambda: Norm(cfg.hidden_size, cfg.norm_eps, rms=True, bias=False, dtype=dtype)  # noqa: E731
        self.input_layernorm, self.post_attention_layernorm = norm(), norm()
        self.pre_feedforward_layernorm, self.post_feedforward_layernorm = norm(), norm()
        window = cfg.layer_windows[index] if cfg.layer_windows else 0
        self.self_attn = GemmaAttention(cfg, window, dtype)
        self.mlp = LlamaMLP(cfg, dtype)  # GeGLU: the same gate/up and down, with the tanh GELU
        self.local = bool(window)

    def forward(self, pending, residual, positions, cos_sin, meta, cache):
        """``pending``: the previous layer's normalised MLP output, not yet added to ``residual``."""
        if pending is None:
            x = self.input_layernorm(residual)
        else:
            x, residual = self.input_layernorm(pending, residual)
        a = self.post_attention_layernorm(self.self_attn(x, positions, cos_sin, meta, cache))
        x, residual = self.pre_feedforward_layernorm(a, residual)
        return self.post_feedforward_layernorm(self.mlp(x)), residual


class GemmaModel(nn.Module):
    def __init__(self, cfg: DecoderConfig, dtype: torch.dtype):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.layers = nn.ModuleList(GemmaDecoderLayer(cfg, i, dtype) for i in range(cfg.num_layers))
        self.norm = Norm(cfg.hidden_size, cfg.norm_eps, rms=True, bias=False, dtype=dtype)


class GemmaForCausalLM(nn.Module):
    def __init__(self, cfg: DecoderConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        self.rules = TIED_RULES if cfg.tie_word_embeddings else RULES
        self.model = GemmaModel(cfg, dtype)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, False, dtype)
        # sqrt(hidden) rounded to the activations' dtype, as transformers multiplies
        self.embed_scale = float(torch.tensor(cfg.hidden_size ** 0.5, dtype=dtype))
        self.register_buffer("cos_sin", cfg.cos_sin_cache(), persistent=False)
        local = RopeScaling().inv_freq(cfg.head_dim, cfg.local_rope_theta or cfg.rope_theta)
        self.register_buffer("cos_sin_local", kernels.rotary_cos_sin_cache(cfg.head_dim, cfg.max_position,
                                                                           inv_freq=local), persistent=False)

    def shard_sizes(self) -> dict[str, tuple[int, ...]]:
        return stacked_sizes(self.cfg)

    def after_load(self) -> None:
        """Gemma's RMSNorm multiplies by ``1 + w``: fold the 1 into the loaded weights once."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, Norm):
                    module.weight += 1

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[KVCache] | None = None) -> torch.Tensor:
        """Packed tokens [T] -> final hidden states [T, H]."""
        pending, residual = None, self.model.embed_tokens(input_ids) * self.embed_scale
        for i, layer in enumerate(self.model.layers):
            cache = kv_caches[i] if kv_caches is not None else None
            table = self.cos_sin_local if layer.local else self.cos_sin
            pending, residual = layer(pending, residual, positions, table, meta, cache)
        return self.model.norm(pending, residual)[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H] -> float32 logits [N, V], soft-capped by the final cap (Gemma 2)."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = lm_logits(hidden, weight)
        cap = self.cfg.final_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)
