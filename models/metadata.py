"""Attention metadata: how one packed forward pass maps onto sequences and the KV cache.

A step packs every scheduled sequence's new tokens into one flat batch:
prefill chunks first, then decode tokens (exactly one per decoding sequence).

    tokens:  [ p0 p0 p0 | p1 p1 | d0 | d1 | d2 ]
              prefill (cu_seqlens_q)   decode (one each)

Prefill queries attend over their keys with ``kernels.attention``; decode
queries attend over the paged cache with ``kernels.paged_attention``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionMetadata:
    num_prefill_tokens: int
    # prefill part ([P+1] each): this step's query tokens and all keys they see
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    # cache slots of every prefill key, in cu_seqlens_k order; None when each
    # prefill's keys are exactly its own new tokens (no cached prefix)
    prefill_kv_slots: torch.Tensor | None = None
    # decode part: one query per sequence
    decode_block_tables: torch.Tensor | None = None  # int32 [D, max_blocks]
    decode_seq_lens: torch.Tensor | None = None  # int32 [D], including the new token
    # where this step's K/V are written ([T] flat slots, -1 skips); None: no cache
    slot_mapping: torch.Tensor | None = None

    @property
    def num_decode_tokens(self) -> int:
        return 0 if self.decode_seq_lens is None else int(self.decode_seq_lens.shape[0])

    @staticmethod
    def for_sequences(lengths: list[int], device: torch.device | str = "cpu") -> "AttentionMetadata":
        """Full-sequence attention with no cache (encoders, reference recomputation)."""
        cu = torch.tensor([0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()],
                          dtype=torch.int32, device=device)
        longest = max(lengths, default=0)
        return AttentionMetadata(sum(lengths), cu, cu, longest, longest)


def cu_seqlens(lengths: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    total = 0
    out = [0]
    for n in lengths:
        total += n
        out.append(total)
    return torch.tensor(out, dtype=torch.int32, device=device)
