"""What encoder-decoders share: cross-attention over K/V computed once per sequence."""
from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels

from .metadata import cu_seqlens


@dataclass(frozen=True)
class CrossAttention:
    """Encoder K/V of the sequences in a step, packed in the step's sequence order.

    ``kv[layer] = (k, v)``, each ``[sum encoder lengths, H, D]``; ``cu_seqlens_q``
    counts each sequence's decoder tokens in this step, ``cu_seqlens_k`` its
    encoder tokens.
    """
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int

    @staticmethod
    def pack(per_seq_kv: list[list[tuple[torch.Tensor, torch.Tensor]]], q_lens: list[int]) -> "CrossAttention":
        """From each sequence's per-layer (k, v) and its decoder tokens in this step."""
        layers = len(per_seq_kv[0])
        kv = [(torch.cat([s[i][0] for s in per_seq_kv]), torch.cat([s[i][1] for s in per_seq_kv])) for i in range(layers)]
        k_lens = [s[0][0].shape[0] for s in per_seq_kv]
        device = kv[0][0].device
        return CrossAttention(kv, cu_seqlens(q_lens, device), cu_seqlens(k_lens, device), max(q_lens), max(k_lens))

    def attend(self, layer: int, q: torch.Tensor, scale: float | None) -> torch.Tensor:
        k, v = self.kv[layer]
        return kernels.attention(q, k, v, self.cu_seqlens_q, self.cu_seqlens_k, self.max_seqlen_q, self.max_seqlen_k,
                                 causal=False, scale=scale)
