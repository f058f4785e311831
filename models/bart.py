"""BART encoder-decoder: learned positions (offset 2), post-LN, GELU FFN, scaled scores. MarianMT is the same
network with fixed sinusoidal positions from 0 and no LayerNorm on the embeddings."""
from __future__ import annotations

import torch
from torch import nn

import kernels

from .config import EncoderDecoderConfig
from .encoder_decoder import CrossAttention
from .layers import Embedding, KVCache, Linear, Norm, lm_logits, self_attention
from .metadata import AttentionMetadata
from .weights import CheckpointRules

POSITION_OFFSET = 2  # BartLearnedPositionalEmbedding reserves the first two rows


def marian_sinusoids(num_positions: int, dim: int) -> torch.Tensor:
    """[num_positions, dim]: sin(pos / 10000^(2i/dim)) in the first half, the cos in the second (Marian's
    layout: XLM's sinusoids, not interleaved), formed in float64 as transformers forms them."""
    freq = 10000.0 ** (-2 * torch.arange((dim + 1) // 2, dtype=torch.float64) / dim)
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * freq[None, :]
    return torch.cat([angles.sin(), angles.cos()[:, : dim // 2]], dim=1).float()


class BartAttention(nn.Module):
    def __init__(self, cfg: EncoderDecoderConfig, dtype):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (Linear(h, h, True, dtype) for _ in range(4))

    def heads(self, x, proj):
        return proj(x).view(-1, self.cfg.num_heads, self.cfg.head_dim)


class BartLayer(nn.Module):
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

    def forward(self, h, meta, cache, causal, cross=None, index=0):
        # post-LN: each sub-layer is h = norm(h + f(h))
        a = self.self_attn
        o = self_attention(a.heads(h, a.q_proj), a.heads(h, a.k_proj), a.heads(h, a.v_proj), meta, cache,
                           causal=causal, scale=None)
        h = self.self_attn_layer_norm(a.out_proj(o.reshape(-1, self.cfg.hidden_size)), h)[0]
        if cross is not None:
            c = self.encoder_attn
            o = cross.attend(index, c.heads(h, c.q_proj), scale=None)
            h = self.encoder_attn_layer_norm(c.out_proj(o.reshape(-1, self.cfg.hidden_size)), h)[0]
        f = kernels.ffn(h, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, self.cfg.activation)
        return self.final_layer_norm(f, h)[0]


class BartStack(nn.Module):
    def __init__(self, cfg: EncoderDecoderConfig, dtype, decoder: bool):
        super().__init__()
        if cfg.sinusoidal_positions:
            self.register_buffer("sinusoids", marian_sinusoids(cfg.max_position, cfg.hidden_size).to(dtype),
                                 persistent=False)
            self.layernorm_embedding = None
        else:
            self.embed_positions = Embedding(cfg.max_position + POSITION_OFFSET, cfg.hidden_size, dtype)
            self.layernorm_embedding = Norm(cfg.hidden_size, 1e-5, rms=False, bias=True, dtype=dtype)
        count = cfg.num_layers if decoder else cfg.num_encoder_layers
        self.layers = nn.ModuleList(BartLayer(cfg, dtype, decoder) for _ in range(count))


class BartForConditionalGeneration(nn.Module):
    def __init__(self, cfg: EncoderDecoderConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        self.model = nn.Module()
        self.model.shared = Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.model.encoder = BartStack(cfg, dtype, decoder=False)
        self.model.decoder = BartStack(cfg, dtype, decoder=True)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, False, dtype)
        self.final_logits_bias = nn.Parameter(torch.zeros(1, cfg.vocab_size, dtype=dtype), requires_grad=False)
        self.embed_scale = cfg.hidden_size ** 0.5 if cfg.scale_embedding else 1.0

    @property
    def rules(self) -> CheckpointRules:
        ties = [(r"^model\.(encoder|decoder)\.embed_tokens\.weight$", "model.shared.weight")]
        if self.cfg.tie_word_embeddings:
            ties.append((r"^lm_head\.weight$", "model.shared.weight"))
        # Marian's checkpoints store their fixed sinusoids; they are rebuilt here
        ignored = (r"embed_positions\.weight$",) if self.cfg.sinusoidal_positions else ()
        return CheckpointRules(renames=tuple(ties), ignored=ignored)

    def shard_sizes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def _embed(self, stack: BartStack, input_ids, positions):
        if self.cfg.sinusoidal_positions:
            return self.model.shared(input_ids) * self.embed_scale + stack.sinusoids[positions]
        h = self.model.shared(input_ids) * self.embed_scale + stack.embed_positions(positions + POSITION_OFFSET)
        return stack.layernorm_embedding(h)

    def encode(self, input_ids: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        positions = torch.cat([torch.arange(n, device=input_ids.device)
                               for n in (meta.cu_seqlens_q[1:] - meta.cu_seqlens_q[:-1]).tolist()])
        h = self._embed(self.model.encoder, input_ids, positions)
        for layer in self.model.encoder.layers:
            h = layer(h, meta, None, causal=False)
        return h

    def cross_kv(self, encoded: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for layer in self.model.decoder.layers:
            c = layer.encoder_attn
            out.append((c.heads(encoded, c.k_proj), c.heads(encoded, c.v_proj)))
        return out

    def forward(self, input_ids, positions, meta: AttentionMetadata, kv_caches: list[KVCache] | None,
                cross: CrossAttention) -> torch.Tensor:
        h = self._embed(self.model.decoder, input_ids, positions)
        for i, layer in enumerate(self.model.decoder.layers):
            h = layer(h, meta, kv_caches[i] if kv_caches is not None else None, causal=True, cross=cross, index=i)
        return h

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.model.shared.weight if self.lm_head is None else self.lm_head.weight
        return lm_logits(hidden, weight, self.final_logits_bias[0])
