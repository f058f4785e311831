"""GPT-2 decoder: pre-LN, learned positions, GELU (tanh) FFN, Conv1D checkpoints ([in, out] weights)."""
from __future__ import annotations

import torch
from torch import nn

import kernels

from .config import DecoderConfig
from .layers import Embedding, KVCache, Linear, Norm, lm_logits, self_attention
from .metadata import AttentionMetadata
from .weights import CheckpointRules

RULES = CheckpointRules(
    renames=((r"^(?!transformer\.)(h\.|wte|wpe|ln_f)", r"transformer.\1"),),  # bare GPT2Model checkpoints
    transposed=(r"(c_attn|c_proj|c_fc)\.weight$",),
    ignored=(r"\.attn\.(masked_)?bias$", r"^lm_head\.weight$"),  # causal-mask buffers; lm_head is tied to wte
)


class GPT2Block(nn.Module):
    def __init__(self, cfg: DecoderConfig, dtype: torch.dtype):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.ln_1 = Norm(h, cfg.norm_eps, rms=False, bias=True, dtype=dtype)
        self.attn = nn.Module()
        self.attn.c_attn = Linear(h, 3 * h, True, dtype)
        self.attn.c_proj = Linear(h, h, True, dtype)
        self.ln_2 = Norm(h, cfg.norm_eps, rms=False, bias=True, dtype=dtype)
        self.mlp = nn.Module()
        self.mlp.c_fc = Linear(h, cfg.intermediate_size, True, dtype)
        self.mlp.c_proj = Linear(cfg.intermediate_size, h, True, dtype)

    def forward(self, h, residual, meta: AttentionMetadata, cache: KVCache | None):
        c = self.cfg
        x, residual = (self.ln_1(h), h) if residual is None else self.ln_1(h, residual)
        q, k, v = self.attn.c_attn(x).view(-1, 3, c.num_heads, c.head_dim).unbind(1)
        a = self_attention(q, k, v, meta, cache, causal=True, scale=None).reshape(-1, c.hidden_size)
        x, residual = self.ln_2(self.attn.c_proj(a), residual)
        m = self.mlp
        return kernels.ffn(x, m.c_fc.weight, m.c_fc.bias, m.c_proj.weight, m.c_proj.bias, c.activation), residual


class GPT2LMHeadModel(nn.Module):
    rules = RULES

    def __init__(self, cfg: DecoderConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.Module()
        self.transformer.wte = Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.transformer.wpe = Embedding(cfg.max_position, cfg.hidden_size, dtype)
        self.transformer.h = nn.ModuleList(GPT2Block(cfg, dtype) for _ in range(cfg.num_layers))
        self.transformer.ln_f = Norm(cfg.hidden_size, cfg.norm_eps, rms=False, bias=True, dtype=dtype)

    def shard_sizes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def forward(self, input_ids, positions, meta: AttentionMetadata, kv_caches: list[KVCache] | None = None):
        t = self.transformer
        h, residual = t.wte(input_ids) + t.wpe(positions), None
        for i, block in enumerate(t.h):
            h, residual = block(h, residual, meta, kv_caches[i] if kv_caches is not None else None)
        return t.ln_f(h, residual)[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return lm_logits(hidden, self.transformer.wte.weight)
