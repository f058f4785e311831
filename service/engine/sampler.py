"""Batched sampling: logit bias, penalties, banned tokens, grammars, temperature, top-k, top-p, min-p,
seeds and logprobs.

Everything is vectorised over the batch except drawing the random numbers:
each seeded sequence draws from its own ``torch.Generator``, so its samples
do not depend on what else shares the batch. Sampling uses the exponential
race (``argmax(p / E)`` with ``E ~ Exp(1)`` is a draw from ``p``); rows with
top-k or top-p race over their few candidate tokens, not the whole vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .grammar import mask_logits
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


def _banned(seq: Sequence, stop_ids) -> set[int]:
    """Tokens ``seq`` may not take next: its stop tokens before ``min_tokens`` (vLLM's min_tokens), and the
    last token of each bad word whose other tokens end its output (vLLM's bad_words)."""
    p, out = seq.params, seq.output_token_ids
    banned = set()
    if len(out) < p.min_tokens:
        banned |= set(p.stop_token_ids) | (set() if p.ignore_eos else set(stop_ids))
    for word in p.bad_words_token_ids:
        prefix = word[:-1]
        if len(out) >= len(prefix) and tuple(out[len(out) - len(prefix):]) == prefix:
            banned.add(word[-1])
    return banned


def apply_bans(logits: torch.Tensor, seqs: list[Sequence], stop_ids=()) -> torch.Tensor:
    """``logits`` with each row's banned tokens at -inf (a copy when any are; see :func:`_banned`)."""
    if not any(s.params.min_tokens or s.params.bad_words_token_ids for s in seqs):
        return logits
    cells = [(row, t) for row, seq in enumerate(seqs) for t in _banned(seq, stop_ids) if t < logits.shape[1]]
    if not cells:
        return logits
    rows, cols = zip(*cells)
    return logits.index_put((torch.tensor(rows), torch.tensor(cols)),
                            torch.tensor(float("-inf"), device=logits.device))


def constrain(logits: torch.Tensor, seqs: list[Sequence], stop_ids=()) -> torch.Tensor:
    """Bans, then each row's grammar. Where the two leave a row nothing (a finished JSON object that may only
    end, under min_tokens), the grammar wins: structured output must stay valid."""
    banned = apply_bans(logits, seqs, stop_ids)
    states = [s.grammar for s in seqs]
    constrained = mask_logits(banned, states)
    if constrained is banned or banned is logits:
        return constrained
    dead = [i for i in range(len(seqs)) if states[i] is not None and bool(torch.isneginf(constrained[i]).all())]
    if dead:
        constrained[dead] = mask_logits(logits[dead], [states[i] for i in dead])
    return constrained


def _filter(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p masks over the whole vocabulary (all rows at once).

    The reference semantics; :func:`_candidates` computes the same distribution from a short list.
    """
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


FIRST_CANDIDATES = 64  # top-p rarely needs more tokens than this to cover its mass; 16x more, then all


def _candidates(logits: torch.Tensor, params: list[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor]:
    """The same distribution as :func:`_filter` for rows with top-k or top-p, from their highest logits only.

    A full sort of a 49k vocabulary costs ~3.6 ms a row on the CPU; ``topk`` of 64 ~0.1 ms. Top-p needs
    the candidates to hold more than ``top_p`` of the mass (then every token after them has more than
    ``top_p`` above it and is dropped, exactly as in the full sort); the list grows until they do.
    Returns (logits [R, C] with dropped candidates at -inf, their token ids [R, C]).
    """
    vocab = logits.shape[1]
    temps = _column([p.temperature if p.temperature > 0 else 1.0 for p in params], logits.device)
    logits = logits / temps
    ks = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=logits.device)[:, None]
    top_p = _column([p.top_p for p in params], logits.device)
    # every row's top-k survivors are always in the list (their softmax normalises top-p); top-p rows
    # without top-k normalise over the whole vocabulary and need the list to cover their mass
    want = max([k for k in ks[:, 0].tolist() if k < vocab] + [FIRST_CANDIDATES if any(
        p.top_p < 1.0 and not 0 < p.top_k < vocab for p in params) else 1])
    lse = logits.logsumexp(-1, keepdim=True)
    has_top_k = ks < vocab
    while True:
        vals, idx = logits.topk(min(want, vocab), dim=-1)  # sorted, highest first
        rank = torch.arange(vals.shape[1], device=logits.device)[None, :]
        vals = vals.masked_fill(rank >= ks, float("-inf"))
        probs = (vals - torch.where(has_top_k, vals.logsumexp(-1, keepdim=True), lse)).exp()
        covered = has_top_k | (top_p >= 1.0) | (probs.sum(-1, keepdim=True) > top_p)
        if bool(covered.all()) or vals.shape[1] == vocab:
            break
        want = want * 16 if want < 1024 else vocab  # a flat distribution: soon the whole (sorted) vocabulary
    before = probs.cumsum(-1) - probs
    vals = vals.masked_fill(before > top_p, float("-inf"))
    if any(p.min_p > 0 for p in params):  # p >= min_p * p_max, in logits: normalisation cancels out
        min_p = _column([p.min_p for p in params], logits.device)
        floor = torch.where(min_p > 0, vals[:, :1] + min_p.clamp_min(1e-30).log(), float("-inf"))
        vals = vals.masked_fill(vals < floor, float("-inf"))
    return vals, idx


def _exponential_noise(probs: torch.Tensor, seqs: list[Sequence], generators: dict[int, torch.Generator],
                       widths: list[int] | None = None) -> torch.Tensor:
    """Exp(1) noise per row. A seeded row draws from its own generator, and only for its first
    ``widths[row]`` entries (its candidates, whose number depends on nothing else in the batch), so
    its samples do not depend on what shares the batch."""
    noise = torch.ones_like(probs)
    seeded = [row for row, seq in enumerate(seqs) if seq.seq_id in generators]
    if len(seeded) < len(seqs):
        noise.exponential_()
    for row in seeded:
        width = probs.shape[1] if widths is None else widths[row]
        noise[row, :width].exponential_(generator=generators[seqs[row].seq_id])
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


def _take_rows(t: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``t[rows]``, without the copy a list index makes when ``rows`` is every row in order (a [256, 49k]
    float copy costs ~17 ms on the CPU)."""
    return t if rows == list(range(t.shape[0])) else t[rows]


def _draw(logits: torch.Tensor, seqs: list[Sequence], generators: dict[int, torch.Generator]) -> torch.Tensor:
    """One token per row by the exponential race: over a short candidate list for rows with top-k or
    top-p, over the whole vocabulary otherwise."""
    params = [s.params for s in seqs]
    vocab = logits.shape[1]
    short = [i for i, p in enumerate(params) if 0 < p.top_k < vocab or p.top_p < 1.0]
    full = sorted(set(range(len(seqs))) - set(short))
    drawn = torch.empty(len(seqs), dtype=torch.long, device=logits.device)
    if short:
        vals, idx = _candidates(_take_rows(logits, short), [params[i] for i in short])
        probs = vals.softmax(-1)
        kept = (vals > float("-inf")).sum(-1).tolist()  # candidates kept: a prefix of each sorted row
        pick = (probs / _exponential_noise(probs, [seqs[i] for i in short], generators, kept)).argmax(-1)
        drawn[short] = idx.gather(1, pick[:, None])[:, 0]
    if full:
        probs = _filter(_take_rows(logits, full), [params[i] for i in full]).softmax(-1)
        drawn[full] = (probs / _exponential_noise(probs, [seqs[i] for i in full], generators)).argmax(-1)
    return drawn


def sample(logits: torch.Tensor, seqs: list[Sequence], generators: dict[int, torch.Generator],
           stop_ids=()) -> SampleResult:
    """Choose one token per row of ``logits [N, V]`` (float32) for ``seqs``; ``stop_ids`` are the model's
    end-of-sequence tokens (banned before a row's ``min_tokens``). Logprobs are of the raw logits, as vLLM's."""
    params = [s.params for s in seqs]
    raw = logits
    logits = constrain(apply_penalties_and_bias(logits, seqs), seqs, stop_ids)
    greedy = [p.greedy for p in params]
    chosen = logits.argmax(-1)
    if not all(greedy):
        rows = [i for i, g in enumerate(greedy) if not g]
        chosen[rows] = _draw(_take_rows(logits, rows), [seqs[i] for i in rows], generators)
    return SampleResult(chosen.tolist(), _logprobs(raw, chosen, seqs))
