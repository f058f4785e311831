"""Llama-family decoder (Llama, Mistral, Qwen2, Qwen3, SmolLM2/3, Phi-3/Phi-4-mini): RMSNorm, SwiGLU, RoPE, GQA.
Qwen3 adds an RMSNorm over each head's query and key (``q_norm``/``k_norm``) before rotary; SmolLM3 leaves rotary
out of every fourth layer; Phi-3 rotates part of each head (``partial_rotary_factor``) with LongRoPE; Mistral
and Phi-3 attend within a sliding window.

Parameter names follow the Hugging Face checkpoints, except that q/k/v and
gate/up are stacked into ``qkv_proj`` and ``gate_up_proj`` (one GEMM each).
"""
from __future__ import annotations

import torch
from torch import nn

import kernels

from .config import DecoderConfig
from .layers import Embedding, KVCache, Linear, Norm, lm_logits, self_attention
from .metadata import AttentionMetadata
from .weights import CheckpointRules

RULES = CheckpointRules(
    stacked=(("q_proj.weight", "qkv_proj.weight", 0), ("k_proj.weight", "qkv_proj.weight", 1),
             ("v_proj.weight", "qkv_proj.weight", 2), ("q_proj.bias", "qkv_proj.bias", 0),
             ("k_proj.bias", "qkv_proj.bias", 1), ("v_proj.bias", "qkv_proj.bias", 2),
             ("gate_proj.weight", "gate_up_proj.weight", 0), ("up_proj.weight", "gate_up_proj.weight", 1)),
    # a checkpoint saved from the bare model (Qwen3-Embedding's) has no "model." prefix
    renames=((r"^(embed_tokens|layers|norm)\.", r"model.\1."),),
    ignored=(r"rotary_emb\.inv_freq$",),
)
# tied embeddings: the head is the embedding matrix; a copy of it in the file (or an embedder's unused head) is skipped
TIED_RULES = CheckpointRules(RULES.stacked, RULES.renames, RULES.transposed, (*RULES.ignored, r"^lm_head\.weight$"))
# Phi-3 / Phi-4-mini checkpoints store qkv_proj and gate_up_proj already stacked (and "qkv_proj.weight" ends in
# "v_proj.weight": the stacking rules must not see them)
PHI3_RULES = CheckpointRules(renames=RULES.renames, ignored=RULES.ignored)
PHI3_TIED_RULES = CheckpointRules(renames=RULES.renames, ignored=TIED_RULES.ignored)


def checkpoint_rules(cfg: DecoderConfig) -> CheckpointRules:
    if cfg.arch == "phi3":
        return PHI3_TIED_RULES if cfg.tie_word_embeddings else PHI3_RULES
    return TIED_RULES if cfg.tie_word_embeddings else RULES


def stacked_sizes(c: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Row counts of the parts stacked at load: q/k/v into qkv_proj, gate/up into gate_up_proj."""
    sizes = {}
    if c.arch == "phi3":  # stored stacked: each is one tensor
        return sizes
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        sizes[p + "self_attn.qkv_proj.weight"] = (c.q_size, c.kv_size, c.kv_size)
        if c.qkv_bias:
            sizes[p + "self_attn.qkv_proj.bias"] = (c.q_size, c.kv_size, c.kv_size)
        sizes[p + "mlp.gate_up_proj.weight"] = (c.intermediate_size, c.intermediate_size)
    return sizes


class LlamaAttention(nn.Module):
    def __init__(self, cfg: DecoderConfig, dtype: torch.dtype, index: int = 0):
        super().__init__()
        self.cfg = cfg
        window = cfg.layer_windows[index] if cfg.layer_windows else 0
        self.window = (window - 1, 0) if window else None  # the last `window` tokens, as transformers' mask
        self.rope = not cfg.rope_layers or cfg.rope_layers[index]  # SmolLM3: some layers have no positions
        self.qkv_proj = Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, cfg.qkv_bias, dtype)
        self.o_proj = Linear(cfg.q_size, cfg.hidden_size, False, dtype)
        if cfg.qk_norm:
            self.q_norm = Norm(cfg.head_dim, cfg.norm_eps, rms=True, bias=False, dtype=dtype)
            self.k_norm = Norm(cfg.head_dim, cfg.norm_eps, rms=True, bias=False, dtype=dtype)

    def forward(self, x, positions, cos_sin, meta: AttentionMetadata, cache: KVCache | None):
        c = self.cfg
        qkv = self.qkv_proj(x)  # [T, (Hq + 2 Hkv) D]
        q, k, v = qkv.split([c.q_size, c.kv_size, c.kv_size], dim=-1)
        if c.qk_norm:  # per head: rows of [T * H, D] (one copy out of the strided qkv view; rotary is in place)
            q = self.q_norm(q.reshape(-1, c.head_dim))
            k = self.k_norm(k.reshape(-1, c.head_dim))
        q = q.reshape(-1, c.num_heads, c.head_dim)
        k = k.reshape(-1, c.num_kv_heads, c.head_dim)
        v = v.view(-1, c.num_kv_heads, c.head_dim)
        if self.rope:
            kernels.rotary(q, k, positions, cos_sin, neox_style=True)
        o = self_attention(q, k, v, meta, cache, causal=True, scale=None, window=self.window)
        return self.o_proj(o.view(-1, c.q_size))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: DecoderConfig, dtype: torch.dtype):
        super().__init__()
        self.activation = cfg.activation
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, False, dtype)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, False, dtype)

    def forward(self, x):
        return kernels.gated_ffn(x, self.gate_up_proj.weight, self.down_proj.weight, self.activation)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, dtype: torch.dtype, index: int = 0):
        super().__init__()
        self.input_layernorm = Norm(cfg.hidden_size, cfg.norm_eps, rms=True, bias=False, dtype=dtype)
        self.self_attn = LlamaAttention(cfg, dtype, index)
        self.post_attention_layernorm = Norm(cfg.hidden_size, cfg.norm_eps, rms=True, bias=False, dtype=dtype)
        self.mlp = LlamaMLP(cfg, dtype)

    def forward(self, h, residual, positions, cos_sin, meta, cache):
        # pre-norm block; the residual add is fused into each norm
        if residual is None:
            x, residual = self.input_layernorm(h), h
        else:
            x, residual = self.input_layernorm(h, residual)
        h = self.self_attn(x, positions, cos_sin, meta, cache)
        x, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(x), residual

    def cpu_decode_pack(self, dtype: torch.dtype):
        """This layer's arguments for the fused C++ decode layer (kernels/cpu), or None where it cannot
        run it (a Mixture-of-Experts MLP, a format the C++ ops do not take)."""
        attn, mlp = self.self_attn, self.mlp
        if not isinstance(mlp, LlamaMLP) or attn.o_proj.bias is not None:
            return None
        c = attn.cfg
        return kernels.cpu_decode_layer_pack(
            dtype=dtype, norms=(self.input_layernorm.weight, self.post_attention_layernorm.weight),
            qk_norms=(attn.q_norm.weight, attn.k_norm.weight) if c.qk_norm else None, qkv_bias=attn.qkv_proj.bias,
            projections=(attn.qkv_proj.weight, attn.o_proj.weight, mlp.gate_up_proj.weight, mlp.down_proj.weight),
            heads=(c.num_heads, c.num_kv_heads, c.head_dim), window_left=attn.window[0] if attn.window else -1,
            rope=attn.rope, neox=True, eps=c.norm_eps, scale=c.head_dim ** -0.5, activation=mlp.activation)


class LlamaModel(nn.Module):
    def __init__(self, cfg: DecoderConfig, dtype: torch.dtype):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, dtype, i) for i in range(cfg.num_layers))
        self.norm = Norm(cfg.hidden_size, cfg.norm_eps, rms=True, bias=False, dtype=dtype)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: DecoderConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        self.rules = checkpoint_rules(cfg)
        self.model = LlamaModel(cfg, dtype)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, False, dtype)
        self.register_buffer("cos_sin", cfg.cos_sin_cache(), persistent=False)
        self._decode_packs = None  # (dtype, per-layer packs) for the fused CPU decode layer

    def shard_sizes(self) -> dict[str, tuple[int, ...]]:
        return stacked_sizes(self.cfg)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[KVCache] | None = None) -> torch.Tensor:
        """Packed tokens [T] -> final hidden states [T, H]."""
        h, residual = self.model.embed_tokens(input_ids), None
        fused = self._fused_decode_packs(h, meta, kv_caches)
        for i, layer in enumerate(self.model.layers):
            cache = kv_caches[i] if kv_caches is not None else None
            if fused[i] is not None:  # the same ops as layer(...) below, in one C++ call
                h, residual = kernels.cpu_decode_layer(h, residual, fused[i], positions, self.cos_sin, cache,
                                                       meta.slot_mapping, meta.decode_block_tables,
                                                       meta.decode_seq_lens)
            else:
                h, residual = layer(h, residual, positions, self.cos_sin, meta, cache)
        return self.model.norm(h, residual)[0]

    def _fused_decode_packs(self, h: torch.Tensor, meta: AttentionMetadata, kv_caches) -> list:
        """Per layer, the fused C++ decode layer's arguments where a decode-only CPU step can use it, else None.
        Only for trusted calls (the engine's serving steps): a step whose kernel arguments are being checked
        (warm-up, direct calls) runs the Python layers, whose launchers check them."""
        none = [None] * len(self.model.layers)
        if (kv_caches is None or meta.num_prefill_tokens or meta.slot_mapping is None or h.device.type != "cpu"
                or self.cos_sin.dtype != torch.float32 or kernels.checking() or not kernels.cpu_kernels_available()):
            return none
        if self._decode_packs is None or self._decode_packs[0] != h.dtype:  # built once: weights do not change
            self._decode_packs = (h.dtype, [layer.cpu_decode_pack(h.dtype) for layer in self.model.layers])
        return self._decode_packs[1]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, H] -> float32 logits [N, V]."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return lm_logits(hidden, weight)
