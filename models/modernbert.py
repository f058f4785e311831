"""ModernBERT encoder (ModernBERT-base/large, gte-modernbert, modernbert-embed): pre-LN layers without biases,
rotary positions, GeGLU MLP, and alternating attention: every ``global_attn_every_n_layers``-th layer global,
the others local, each token seeing ``local_attention / 2`` tokens either side through the attention kernel's
sliding window (key blocks outside it are never read), not a dense mask."""
from __future__ import annotations

import torch
from torch import nn

import kernels

from .config import EncoderConfig, RopeScaling
from .layers import Embedding, Linear, Norm, self_attention
from .metadata import AttentionMetadata
from .weights import CheckpointRules

RULES = CheckpointRules(
    renames=((r"^model\.", ""),),  # ModernBertForMaskedLM / embedders saved with their head
    ignored=(r"^head\.", r"^decoder\.", r"position_ids$"),
)


class ModernBertLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig, index: int, dtype: torch.dtype):
        super().__init__()
        self.cfg, self.first = cfg, index == 0
        h = cfg.hidden_size
        norm = lambda: Norm(h, cfg.norm_eps, rms=False, bias=cfg.norm_bias, dtype=dtype)  # noqa: E731
        if not self.first:  # the embeddings' norm serves the first layer
            self.attn_norm = norm()
        self.attn = nn.Module()
        self.attn.Wqkv = Linear(h, 3 * h, False, dtype)
        self.attn.Wo = Linear(h, h, False, dtype)
        self.mlp_norm = norm()
        self.mlp = nn.Module()
        self.mlp.Wi = Linear(h, 2 * cfg.intermediate_size, False, dtype)  # [input (activated); gate]
        self.mlp.Wo = Linear(cfg.intermediate_size, h, False, dtype)
        local = cfg.layer_types[index] == "sliding"
        self.window = (cfg.local_window, cfg.local_window) if local else None
        self.rope = "local" if local else "global"

    def forward(self, pending, residual, positions, cos_sin, meta: AttentionMetadata):
        """Pre-LN with the residual add fused into each norm: returns (this layer's MLP output, residual)."""
        c = self.cfg
        if self.first:
            x = residual
        else:
            x, residual = self.attn_norm(pending, residual)
        q, k, v = self.attn.Wqkv(x).view(-1, 3, c.num_heads, c.head_dim).unbind(1)
        q, k = q.contiguous(), k.contiguous()
        kernels.rotary(q, k, positions, cos_sin, neox_style=True)
        a = self_attention(q, k, v, meta, None, causal=False, scale=None, window=self.window)
        x, residual = self.mlp_norm(self.attn.Wo(a.reshape(-1, c.hidden_size)), residual)
        return kernels.gated_ffn(x, self.mlp.Wi.weight, self.mlp.Wo.weight, c.activation), residual


class ModernBertModel(nn.Module):
    rules = RULES

    def __init__(self, cfg: EncoderConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.embeddings = nn.Module()
        self.embeddings.tok_embeddings = Embedding(cfg.vocab_size, h, dtype)
        self.embeddings.norm = Norm(h, cfg.norm_eps, rms=False, bias=cfg.norm_bias, dtype=dtype)
        self.layers = nn.ModuleList(ModernBertLayer(cfg, i, dtype) for i in range(cfg.num_layers))
        self.final_norm = Norm(h, cfg.norm_eps, rms=False, bias=cfg.norm_bias, dtype=dtype)
        for name, theta in (("global", cfg.rope_theta), ("local", cfg.local_rope_theta)):
            inv_freq = RopeScaling().inv_freq(cfg.head_dim, theta)
            table = kernels.rotary_cos_sin_cache(cfg.head_dim, cfg.max_position, inv_freq=inv_freq)
            self.register_buffer(f"cos_sin_{name}", table, persistent=False)

    def shard_sizes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Packed tokens [T] (positions restart at 0 per sequence) -> hidden states [T, H]."""
        pending, residual = None, self.embeddings.norm(self.embeddings.tok_embeddings(input_ids))
        for layer in self.layers:
            table = self.cos_sin_global if layer.rope == "global" else self.cos_sin_local
            pending, residual = layer(pending, residual, positions, table, meta)
        return self.final_norm(pending, residual)[0]
