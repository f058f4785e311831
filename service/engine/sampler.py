"""Batched sampling: logit bias, penalties, temperature, top-k, top-p, min-p, seeds and logprobs.

Everything is vectorised over the batch except drawing the random numbers:
each seeded sequence draws from its own ``torch.Generator``, so its samples
do not depend on what else shares the batch. Sampling uses the exponential
race (``argmax(p / E)`` with ``E ~ Exp(1)`` is a draw from ``p``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling_params import SamplingParams
from .sequence import Sequence


@dataclass
class SampleResult:
    token_ids: list[int]
    # per row: (logprob of the chosen token, [(token, logprob)] top alternatives) or None
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]


def _column(values, device, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(values, device=device, dtype=dtype)[:, None]


def _token_counts(seqs: list[Sequence], vocab: int, device, outputs_only: bool) -> torch.Tensor:
    counts = torch.zeros(len(seqs), vocab, device=device)
    for row, seq in enumerate(seqs):
        ids = seq.output_token_ids if outputs_only else seq.token_ids
        if ids:
            counts[row].index_add_(0, torch.tensor(ids, device=device), torch.ones(len(ids), device=device))
    return counts


def apply_penalties_and_bias(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    params = [s.params for s in seqs]
    if any(p.logit_bias for p in params):
        rows = [r for r, p in enumerate(params) for _ in p.logit_bias]
        cols = [t for p in params for t, _ in p.logit_bias]
        vals = [b for p in params for _, b in p.logit_bias]
        logits = logits.index_put((torch.tensor(rows), torch.tensor(cols)), torch.tensor(vals, device=logits.device),
                                  accumulate=True)
    if any(p.repetition_penalty != 1.0 for p in params):
        # HF / vLLM: tokens seen in prompt or output get logit / r if positive, logit * r if negative
        seen = _token_counts(seqs, logits.shape[1], logits.device, outputs_only=False) > 0
        r = _column([p.repetition_penalty for p in params], logits.device)
        logits = torch.where(seen, torch.where(logits > 0, logits / r, logits * r), logits)
    if any(p.presence_penalty or p.frequency_penalty for p in params):
        # OpenAI: logit -= presence * [count > 0] + frequency * count, over generated tokens
        counts = _token_counts(seqs, logits.shape[1], logits.device, outputs_only=True)
        logits = logits - _column([p.presence_penalty for p in params], logits.device) * (counts > 0)
        logits = logits - _column([p.frequency_penalty for p in params], logits.device) * counts
    return logits


def _filter(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p masks (all rows at once)."""
    temps = _column([p.temperature if p.temperature > 0 else 1.0 for p in params], logits.device)
    logits = logits / temps
    if any(p.top_k > 0 for p in params):
        k = torch.tensor([p.top_k if p.top_k > 0 else logits.shape[1] for p in params], device=logits.device)
        kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1).clamp(max=logits.shape[1] - 1)[:, None])
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if any(p.top_p < 1.0 for p in params):
        probs_sorted, order = logits.softmax(-1).sort(dim=-1, descending=True)
        before = probs_sorted.cumsum(-1) - probs_sorted  # mass strictly above each token
        drop_sorted = before > _column([p.top_p for p in params], logits.device)
        logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted), float("-inf"))
    if any(p.min_p > 0 for p in params):
        probs = logits.softmax(-1)
        floor = probs.max(-1, keepdim=True).values * _column([p.min_p for p in params], logits.device)
        logits = logits.masked_fill(probs < floor, float("-inf"))
    return logits


def _exponential_noise(probs: torch.Tensor, seqs: list[Sequence], generators: dict[int, torch.Generator]) -> torch.Tensor:
    noise = torch.empty_like(probs)
    for row, seq in enumerate(seqs):
        noise[row].exponential_(generator=generators.get(seq.seq_id))
    return noise


def _logprobs(raw: torch.Tensor, chosen: torch.Tensor, seqs: list[Sequence]):
    want = [s.params.logprobs for s in seqs]
    if all(w is None for w in want):
        return [None] * len(seqs)
    logp = raw.log_softmax(-1)
    top_n = max(w or 0 for w in want)
    top = logp.topk(top_n, dim=-1) if top_n else None
    picked = logp.gather(1, chosen[:, None])[:, 0].tolist()
    out = []
    for row, w in enumerate(want):
        if w is None:
            out.append(None)
            continue
        alts = [] if not w else list(zip(top.indices[row, :w].tolist(), top.values[row, :w].tolist()))
        out.append((picked[row], alts))
    return out


def sample(logits: torch.Tensor, seqs: list[Sequence], generators: dict[int, torch.Generator]) -> SampleResult:
    """Choose one token per row of ``logits [N, V]`` (float32) for ``seqs``."""
    params = [s.params for s in seqs]
    raw = logits
    logits = apply_penalties_and_bias(logits, seqs)
    greedy = torch.tensor([p.greedy for p in params], device=logits.device)
    chosen = logits.argmax(-1)
    if not bool(greedy.all()):
        probs = _filter(logits, params).softmax(-1)
        drawn = (probs / _exponential_noise(probs, seqs, generators)).argmax(-1)
        chosen = torch.where(greedy, chosen, drawn)
    return SampleResult(chosen.tolist(), _logprobs(raw, chosen, seqs))
