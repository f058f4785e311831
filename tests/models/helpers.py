"""Test helpers: a paged KV cache and a greedy loop that drive a model the way the engine does."""
from __future__ import annotations

import math

import torch

from models.metadata import AttentionMetadata, cu_seqlens


class PagedCache:
    """Per-layer K/V caches with a fixed, contiguous run of blocks per sequence."""

    def __init__(self, cfg, num_seqs: int, max_len: int, block_size: int = 16, dtype=torch.float32):
        self.block_size = block_size
        self.per_seq = math.ceil(max_len / block_size)
        shape = (num_seqs * self.per_seq, block_size, cfg.num_kv_heads, cfg.head_dim)
        self.layers = [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)) for _ in range(cfg.num_layers)]
        # interleave sequences' blocks so no table is the identity
        order = torch.randperm(num_seqs * self.per_seq, generator=torch.Generator().manual_seed(0))
        self.tables = order.view(num_seqs, self.per_seq).to(torch.int32)

    def slots(self, seq: int, positions: range) -> list[int]:
        return [int(self.tables[seq, p // self.block_size]) * self.block_size + p % self.block_size for p in positions]


def step_metadata(cache: PagedCache, prefills: list[tuple[int, int, int]], decodes: list[tuple[int, int]]):
    """Metadata for one packed step.

    prefills: (seq, start, end) token ranges computed this step (keys are [0, end));
    decodes: (seq, position) single tokens. Prefill tokens come first.
    """
    slot_mapping, kv_slots = [], []
    for seq, start, end in prefills:
        slot_mapping += cache.slots(seq, range(start, end))
        kv_slots += cache.slots(seq, range(0, end))
    for seq, pos in decodes:
        slot_mapping += cache.slots(seq, range(pos, pos + 1))
    has_prefix = any(start > 0 for _, start, _ in prefills)
    q_lens = [end - start for _, start, end in prefills]
    k_lens = [end for _, _, end in prefills]
    return AttentionMetadata(
        num_prefill_tokens=sum(q_lens), cu_seqlens_q=cu_seqlens(q_lens), cu_seqlens_k=cu_seqlens(k_lens),
        max_seqlen_q=max(q_lens, default=0), max_seqlen_k=max(k_lens, default=0),
        prefill_kv_slots=torch.tensor(kv_slots) if has_prefix else None,
        decode_block_tables=cache.tables[[s for s, _ in decodes]] if decodes else None,
        decode_seq_lens=torch.tensor([p + 1 for _, p in decodes], dtype=torch.int32) if decodes else None,
        slot_mapping=torch.tensor(slot_mapping),
    )


@torch.no_grad()
def greedy_generate(model, prompts: list[list[int]], max_new_tokens: int, eos_ids=(), block_size=16):
    """Batched greedy decoding through the paged cache: one packed prefill, then packed decode steps."""
    cfg = model.cfg
    cache = PagedCache(cfg, len(prompts), max(map(len, prompts)) + max_new_tokens, block_size,
                       dtype=next(model.parameters()).dtype)
    meta = step_metadata(cache, [(i, 0, len(p)) for i, p in enumerate(prompts)], [])
    ids = torch.tensor([t for p in prompts for t in p])
    positions = torch.cat([torch.arange(len(p)) for p in prompts])
    hidden = model(ids, positions, meta, cache.layers)
    last = torch.tensor([len(p) for p in prompts]).cumsum(0) - 1
    next_tokens = model.logits(hidden[last]).argmax(-1).tolist()
    outputs = [[t] for t in next_tokens]
    live = [i for i, t in enumerate(next_tokens) if t not in eos_ids]
    for _ in range(max_new_tokens - 1):
        if not live:
            break
        pos = [len(prompts[i]) + len(outputs[i]) - 1 for i in live]
        meta = step_metadata(cache, [], list(zip(live, pos)))
        hidden = model(torch.tensor([outputs[i][-1] for i in live]), torch.tensor(pos), meta, cache.layers)
        for i, t in zip(live, model.logits(hidden).argmax(-1).tolist()):
            outputs[i].append(t)
        live = [i for i in live if outputs[i][-1] not in eos_ids]
    return outputs


@torch.no_grad()
def full_logits(model, prompt: list[int]) -> torch.Tensor:
    """Logits at every position of one sequence, recomputed from scratch without a cache."""
    hidden = model(torch.tensor(prompt), torch.arange(len(prompt)), AttentionMetadata.for_sequences([len(prompt)]))
    return model.logits(hidden)


def first_divergence_ok(ours: list[int], theirs: list[int], our_logits, their_logits) -> bool:
    """vLLM's rule for near ties: at the first differing token, each side's pick is in the other's top-5."""
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            return b in our_logits[i].topk(5).indices.tolist() and a in their_logits[i].topk(5).indices.tolist()
    return len(ours) == len(theirs)


@torch.no_grad()
def encode_packed(model, prompts: list[list[int]]):
    """Run the encoder over a packed batch; returns each sequence's per-layer cross K/V and the outputs."""
    from models.metadata import AttentionMetadata as Meta

    lengths = [len(p) for p in prompts]
    encoded = model.encode(torch.tensor([t for p in prompts for t in p]), Meta.for_sequences(lengths))
    starts = torch.tensor([0, *lengths]).cumsum(0).tolist()
    outputs = [encoded[starts[i]:starts[i + 1]] for i in range(len(prompts))]
    return [model.cross_kv(o) for o in outputs], outputs


@torch.no_grad()
def encdec_greedy(model, prompts: list[list[int]], max_new_tokens: int, eos_id: int):
    """Greedy decoding for an encoder-decoder: encoder once, decoder through the paged cache."""
    from models.encoder_decoder import CrossAttention

    cfg = model.cfg
    cross_kv, _ = encode_packed(model, prompts)
    cache = PagedCache(cfg, len(prompts), max_new_tokens + 1, dtype=next(model.parameters()).dtype)
    outputs = [[cfg.decoder_start_token_id] for _ in prompts]
    live = list(range(len(prompts)))
    for step in range(max_new_tokens):
        if not live:
            break
        if step == 0:  # the start token goes through the prefill path
            meta = step_metadata(cache, [(i, 0, 1) for i in live], [])
        else:
            meta = step_metadata(cache, [], [(i, len(outputs[i]) - 1) for i in live])
        cross = CrossAttention.pack([cross_kv[i] for i in live], [1] * len(live))
        positions = torch.tensor([len(outputs[i]) - 1 for i in live])
        hidden = model(torch.tensor([outputs[i][-1] for i in live]), positions, meta, cache.layers, cross)
        for i, t in zip(live, model.logits(hidden).argmax(-1).tolist()):
            outputs[i].append(t)
        live = [i for i in live if outputs[i][-1] != eos_id]
    return [o[1:] for o in outputs]
