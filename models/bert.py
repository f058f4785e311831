"""BERT-style encoder for sentence embeddings (all-MiniLM-L6-v2, bge, multilingual-e5 / bge-m3 on XLM-RoBERTa):
post-LN, GELU FFN. RoBERTa and XLM-R differ only in their position ids (offset by padding_idx + 1)."""
from __future__ import annotations

import torch
from torch import nn

import kernels

from .config import EncoderConfig
from .layers import Embedding, Linear, Norm, self_attention
from .metadata import AttentionMetadata
from .weights import CheckpointRules

RULES = CheckpointRules(
    stacked=(("attention.self.query.weight", "attention.qkv.weight", 0),
             ("attention.self.key.weight", "attention.qkv.weight", 1),
             ("attention.self.value.weight", "attention.qkv.weight", 2),
             ("attention.self.query.bias", "attention.qkv.bias", 0),
             ("attention.self.key.bias", "attention.qkv.bias", 1),
             ("attention.self.value.bias", "attention.qkv.bias", 2)),
    # checkpoints saved from BertForX / RobertaForX / BertModel carry a "bert." / "roberta." prefix or not
    renames=((r"^(bert|roberta)\.", ""),),
    ignored=(r"position_ids$", r"token_type_ids$", r"^(bert\.|roberta\.)?pooler\.", r"^cls\.", r"^lm_head\."),
)


class BertLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig, dtype: torch.dtype):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.attention = nn.Module()
        self.attention.qkv = Linear(h, 3 * h, True, dtype)
        self.attention.output = nn.Module()
        self.attention.output.dense = Linear(h, h, True, dtype)
        self.attention.output.LayerNorm = Norm(h, cfg.norm_eps, rms=False, bias=True, dtype=dtype)
        self.intermediate = nn.Module()
        self.intermediate.dense = Linear(h, cfg.intermediate_size, True, dtype)
        self.output = nn.Module()
        self.output.dense = Linear(cfg.intermediate_size, h, True, dtype)
        self.output.LayerNorm = Norm(h, cfg.norm_eps, rms=False, bias=True, dtype=dtype)

    def forward(self, h: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        c = self.cfg
        q, k, v = self.attention.qkv(h).view(-1, 3, c.num_heads, c.head_dim).unbind(1)
        a = self_attention(q, k, v, meta, None, causal=False, scale=None).reshape(-1, c.hidden_size)
        h = self.attention.output.LayerNorm(self.attention.output.dense(a), h)[0]  # post-LN: norm(a + h)
        f = kernels.ffn(h, self.intermediate.dense.weight, self.intermediate.dense.bias,
                        self.output.dense.weight, self.output.dense.bias, c.activation)
        return self.output.LayerNorm(f, h)[0]


class BertModel(nn.Module):
    rules = RULES

    def __init__(self, cfg: EncoderConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = Embedding(cfg.vocab_size, h, dtype)
        self.embeddings.position_embeddings = Embedding(cfg.max_position, h, dtype)
        self.embeddings.token_type_embeddings = Embedding(cfg.type_vocab_size, h, dtype)
        self.embeddings.LayerNorm = Norm(h, cfg.norm_eps, rms=False, bias=True, dtype=dtype)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(BertLayer(cfg, dtype) for _ in range(cfg.num_layers))

    def shard_sizes(self) -> dict[str, tuple[int, ...]]:
        h = self.cfg.hidden_size
        return {f"encoder.layer.{i}.attention.qkv.{p}": (h, h, h)
                for i in range(self.cfg.num_layers) for p in ("weight", "bias")}

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                token_types: torch.Tensor | None = None) -> torch.Tensor:
        """Packed tokens [T] (positions restart at 0 per sequence) -> hidden states [T, H].

        ``token_types`` [T]: segment ids of text pairs (BERT's 0 for the first text, 1 for the second);
        None: one segment, type 0 for every token."""
        e = self.embeddings
        types = e.token_type_embeddings.weight[0] if token_types is None else e.token_type_embeddings(token_types)
        positions = positions + self.cfg.position_offset if self.cfg.position_offset else positions
        h = e.word_embeddings(input_ids) + e.position_embeddings(positions) + types
        h = e.LayerNorm(h)
        for layer in self.encoder.layer:
            h = layer(h, meta)
        return h
