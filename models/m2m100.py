"""M2M100 / NLLB translation encoder-decoder: pre-LN layers with a final LayerNorm per stack, fairseq's
sinusoidal positions (offset by padding_idx + 1), scaled shared embeddings, ReLU FFN.

The target language is the decoder's second token (transformers forces it as the first generated token
through ``forced_bos_token_id``); see ``models/translation.py`` for the language codes.
"""
from __future__ import annotations

import math

import torch
from torch import nn

import kernels

from .bart import BartAttention
from .config import EncoderDecoderConfig
from .encoder_decoder import CrossAttention
from .layers import Embedding, KVCache, Linear, Norm, lm_logits, self_attention
from .metadata import AttentionMetadata
from .weights import CheckpointRules


def fairseq_sinusoids(num_positions: int, dim: int, padding_idx: int) -> torch.Tensor:
    """[num_positions, dim]: sin of position * 10000^(-i / (dim/2 - 1)) in the first half, cos in the second;
    the padding row zero (tensor2tensor's layout, as fairseq and transformers' M2M100 build it)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = torch.arange(num_positions, dtype=torch.float32)[:, None] * freq[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(num_positions, 1)], dim=1)
    table[padding_idx] = 0
    return table


class M2M100Layer(nn.Module):
    def __init__(self, cfg: EncoderDecoderConfig, dtype, decoder: bool):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        norm = lambda: Norm(h, 1e-5, rms=False, bias=True, dtype=dtype)  # noqa: E731
        self.self_attn, self.self_attn_layer_norm = BartAttention(cfg, dtype), norm()
        if decoder:
            self.encoder_attn, self.encoder_attn_layer_norm = BartAttention(cfg, dtype), norm()
        self.fc1 = Linear(h, cfg.intermediate_size, True, dtype)
        self.fc2 = Linear(cfg.intermediate_size, h, True, dtype)
        self.final_layer_norm = norm()

    def forward(self, pending, residual, meta, cache, causal, cross=None, index=0):
        """Pre-LN: ``residual`` is the stream, ``pending`` the previous layer's FFN output not yet added to it
        (None before the first layer). Returns this layer's (pending, residual)."""
        if pending is None:
            x = self.self_attn_layer_norm(residual)
        else:
            x, residual = self.self_attn_layer_norm(pending, residual)
        a = self.self_attn
        o = self_attention(a.heads(x, a.q_proj), a.heads(x, a.k_proj), a.heads(x, a.v_proj), meta, cache,
                           causal=causal, scale=None)
        o = a.out_proj(o.reshape(-1, self.cfg.hidden_size))
        if cross is not None:
            x, residual = self.encoder_attn_layer_norm(o, residual)
            c = self.encoder_attn
            o = c.out_proj(cross.attend(index, c.heads(x, c.q_proj), scale=None).reshape(-1, self.cfg.hidden_size))
        x, residual = self.final_layer_norm(o, residual)
        f = kernels.ffn(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, self.cfg.activation)
        return f, residual


class M2M100Stack(nn.Module):
    def __init__(self, cfg: EncoderDecoderConfig, dtype, decoder: bool):
        super().__init__()
        count = cfg.num_layers if decoder else cfg.num_encoder_layers
        self.layers = nn.ModuleList(M2M100Layer(cfg, dtype, decoder) for _ in range(count))
        self.layer_norm = Norm(cfg.hidden_size, 1e-5, rms=False, bias=True, dtype=dtype)

    def run(self, h, meta, caches, causal, cross=None) -> torch.Tensor:
        pending, residual = None, h
        for i, layer in enumerate(self.layers):
            cache = caches[i] if caches is not None else None
            pending, residual = layer(pending, residual, meta, cache, causal, cross, i)
        return self.layer_norm(pending, residual)[0] if pending is not None else self.layer_norm(residual)


class M2M100ForConditionalGeneration(nn.Module):
    def __init__(self, cfg: EncoderDecoderConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        self.model = nn.Module()
        self.model.shared = Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.model.encoder = M2M100Stack(cfg, dtype, decoder=False)
        self.model.decoder = M2M100Stack(cfg, dtype, decoder=True)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, False, dtype)
        self.embed_scale = cfg.hidden_size ** 0.5 if cfg.scale_embedding else 1.0
        # positions p are rows p + padding_idx + 1 (the rows before are the padding's and unused)
        self.position_offset = cfg.pad_token_id + 1
        table = fairseq_sinusoids(cfg.max_position + self.position_offset, cfg.hidden_size, cfg.pad_token_id)
        self.register_buffer("positions", table.to(dtype), persistent=False)

    @property
    def rules(self) -> CheckpointRules:
        ties = [(r"^model\.(encoder|decoder)\.embed_tokens\.weight$", "model.shared.weight")]
        if self.cfg.tie_word_embeddings:
            ties.append((r"^lm_head\.weight$", "model.shared.weight"))
        return CheckpointRules(renames=tuple(ties), ignored=(r"embed_positions\.weights?$",))

    def shard_sizes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def _embed(self, input_ids, positions):
        return self.model.shared(input_ids) * self.embed_scale + self.positions[positions + self.position_offset]

    def encode(self, input_ids: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        # fairseq numbers only the non-padding tokens of the source: a padding id in it takes the zero row
        # (position -1 here) and does not advance the count
        real = (input_ids != self.cfg.pad_token_id).long()
        positions = torch.cat([torch.cumsum(part, 0) * part - 1
                               for part in real.split((meta.cu_seqlens_q[1:] - meta.cu_seqlens_q[:-1]).tolist())])
        return self.model.encoder.run(self._embed(input_ids, positions), meta, None, causal=False)

    def cross_kv(self, encoded: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for layer in self.model.decoder.layers:
            c = layer.encoder_attn
            out.append((c.heads(encoded, c.k_proj), c.heads(encoded, c.v_proj)))
        return out

    def forward(self, input_ids, positions, meta: AttentionMetadata, kv_caches: list[KVCache] | None,
                cross: CrossAttention) -> torch.Tensor:
        return self.model.decoder.run(self._embed(input_ids, positions), meta, kv_caches, causal=True, cross=cross)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.model.shared.weight if self.lm_head is None else self.lm_head.weight
        return lm_logits(hidden, weight)
