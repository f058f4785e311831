"""Batched sampling: logit bias, penalties, banned tokens, grammars, temperature, top-k, top-p, min-p,
seeds and logprobs.

The work runs on the logits' device and reads back once. Every per-row number (temperature, top-k/p,
min-p, penalties, bias, bans, the row's random draw) reaches the device in one copy
(:class:`SamplingBatch`); the chosen tokens, with their logprobs when asked, come back in one read
(:func:`_read_back`). Which rows take which path is decided on the host from their parameters, never
from values on the device.

Drawing: a row takes one uniform number ``u`` and the token at which the cumulative probability first
exceeds ``u`` (inverse CDF) — over its candidates sorted by probability for rows with top-k or top-p,
over the vocabulary in id order otherwise. A seeded row's ``u`` is a hash of (seed, sequence index,
output position) (:func:`seeded_uniform`), so its tokens depend on nothing else in the batch, survive
preemption and are the same on every device; other rows take ``u`` from the engine's random source.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch

from .grammar import mask_logits
from .sampling_params import SamplingParams
from .sequence import Sequence
from .staging import Staging


@dataclass
class SampleResult:
    token_ids: list[int]
    # per row: (logprob of the chosen token, [(token, logprob)] top alternatives) or None
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]


_MASK64 = 2**64 - 1


def _mix64(z: int) -> int:
    """splitmix64's finaliser (Steele, Lea & Flood, 2014): a bijection of 64-bit words that scatters bits."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def seeded_uniform(seed: int, index: int, position: int) -> float:
    """The uniform number in [0, 1) that sequence ``index`` of a request seeded ``seed`` draws its output
    token ``position`` with (32 random bits; the draw resolves ~2^-23 anyway, see :func:`inverse_cdf`)."""
    stream = _mix64((seed + index) & _MASK64)
    return (_mix64((stream + (position + 1) * 0x9E3779B97F4A7C15) & _MASK64) >> 32) * 2.0**-32


def row_uniform(seq: Sequence, rng: random.Random) -> float:
    """This step's uniform number for ``seq``: from its seed when it has one, else from ``rng``."""
    seed = seq.params.seed
    if seed is None:
        return rng.getrandbits(32) * 2.0**-32
    return seeded_uniform(seed, seq.index, len(seq.output_token_ids))


@dataclass
class Filters:
    """Temperature, top-k, top-p and min-p of some rows: device columns ``[R, 1]`` and which are in use."""
    temperature: torch.Tensor  # float32, 1 for greedy rows
    top_k: torch.Tensor  # int64, the vocabulary size where there is no limit
    top_p: torch.Tensor  # float32
    min_p: torch.Tensor  # float32
    uses_top_k: bool
    uses_top_p: bool
    uses_min_p: bool

    @staticmethod
    def columns(params: list[SamplingParams], vocab: int) -> list[list[float]]:
        return [[p.temperature if p.temperature > 0 else 1.0 for p in params],
                [p.top_k if 0 < p.top_k < vocab else vocab for p in params],
                [p.top_p for p in params], [p.min_p for p in params]]

    @classmethod
    def of(cls, params: list[SamplingParams], vocab: int, values: list[torch.Tensor]) -> "Filters":
        """From :meth:`columns`' values on the device."""
        temperature, top_k, top_p, min_p = (v[:, None] for v in values)
        return cls(temperature.float(), top_k.long(), top_p.float(), min_p.float(),
                   any(0 < p.top_k < vocab for p in params), any(p.top_p < 1.0 for p in params),
                   any(p.min_p > 0 for p in params))

    @classmethod
    def for_params(cls, params: list[SamplingParams], vocab: int, device="cpu") -> "Filters":
        """Built directly (tests, one-off use); the sampler builds them inside :class:`SamplingBatch`."""
        return cls.of(params, vocab, [torch.tensor(c, dtype=torch.float64, device=device)
                                      for c in cls.columns(params, vocab)])

    def take(self, rows: torch.Tensor | None) -> "Filters":
        if rows is None:
            return self
        t = [c.index_select(0, rows) for c in (self.temperature, self.top_k, self.top_p, self.min_p)]
        return Filters(*t, self.uses_top_k, self.uses_top_p, self.uses_min_p)


@dataclass
class SamplingBatch:
    """Everything the sampler needs for one batch of rows, on the logits' device after one copy.

    Row subsets are device index tensors (``None`` when the subset is every row: no copy of the logits)."""
    seqs: list[Sequence]
    sampled: list[int]  # rows that draw (not greedy)
    short: list[int]  # among ``sampled``, positions of rows with top-k or top-p (drawn from sorted candidates)
    full: list[int]  # among ``sampled``, the others (whole vocabulary)
    sampled_rows: torch.Tensor | None
    short_rows: torch.Tensor | None
    full_rows: torch.Tensor | None
    filters: Filters | None  # of the sampled rows
    uniform: torch.Tensor | None  # float64 [S], of the sampled rows
    # sparse cells as flat indices into the [R, V] logits (row * V + token), applied on a flat view
    bias: tuple[torch.Tensor, torch.Tensor] | None  # cells, values
    seen: torch.Tensor | None  # cells of tokens in prompt or output (repetition penalty)
    generated: torch.Tensor | None  # cells of output tokens, one entry per occurrence
    penalties: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # repetition, presence, frequency [R, 1]
    banned: torch.Tensor | None  # cells
    grammar_rows: torch.Tensor | None  # bool [R, 1]: rows with a grammar (only when bans apply too)

    @classmethod
    def build(cls, seqs: list[Sequence], vocab: int, device, rng: random.Random, stop_ids=(),
              staging: Staging | None = None) -> "SamplingBatch":
        params = [s.params for s in seqs]
        sampled = [i for i, p in enumerate(params) if not p.greedy]
        short = [k for k, i in enumerate(sampled) if 0 < params[i].top_k < vocab or params[i].top_p < 1.0]
        full = sorted(set(range(len(sampled))) - set(short))
        parts: dict[str, list] = {}  # name -> list of numbers, all sent in one copy

        def subset(name: str, rows: list[int], of: int) -> None:
            if len(rows) < of:
                parts[name] = rows

        subset("sampled_rows", sampled, len(seqs))
        subset("short_rows", short, len(sampled))
        subset("full_rows", full, len(sampled))
        if sampled:
            sampled_params = [params[i] for i in sampled]
            for name, column in zip(("temperature", "top_k", "top_p", "min_p"),
                                    Filters.columns(sampled_params, vocab)):
                parts[name] = column
            parts["uniform"] = [row_uniform(seqs[i], rng) for i in sampled]
        if any(p.logit_bias for p in params):
            parts["bias_cells"] = [r * vocab + t for r, p in enumerate(params) for t, _ in p.logit_bias]
            parts["bias_values"] = [b for p in params for _, b in p.logit_bias]
        if any(p.repetition_penalty != 1.0 for p in params):
            parts["seen_cells"] = [r * vocab + t for r, s in enumerate(seqs) if s.params.repetition_penalty != 1.0
                                   for t in set(s.token_ids)]
        if any(p.presence_penalty or p.frequency_penalty for p in params):
            parts["generated_cells"] = [r * vocab + t for r, s in enumerate(seqs)
                                        if s.params.presence_penalty or s.params.frequency_penalty
                                        for t in s.output_token_ids]
        if "seen_cells" in parts or "generated_cells" in parts:
            parts["repetition"] = [p.repetition_penalty for p in params]
            parts["presence"] = [p.presence_penalty for p in params]
            parts["frequency"] = [p.frequency_penalty for p in params]
        bans = [r * vocab + t for r, s in enumerate(seqs) for t in banned_tokens(s, stop_ids) if t < vocab]
        if bans:
            parts["ban_cells"] = bans
            if any(s.grammar is not None for s in seqs):
                parts["grammar_rows"] = [float(s.grammar is not None) for s in seqs]
        sent = dict(zip(parts, (staging or Staging(device, torch.float64)).send(*parts.values())))
        return cls._from_sent(seqs, sampled, short, full, sent, vocab)

    @classmethod
    def _from_sent(cls, seqs, sampled, short, full, sent: dict[str, torch.Tensor],
                   vocab: int) -> "SamplingBatch":
        def rows(name):
            return sent[name].long() if name in sent else None

        bias = None
        if "bias_cells" in sent:
            bias = (rows("bias_cells"), sent["bias_values"].float())
        penalties = None
        if "repetition" in sent:
            penalties = tuple(sent[n].float()[:, None] for n in ("repetition", "presence", "frequency"))
        filters = None
        if sampled:
            filters = Filters.of([seqs[i].params for i in sampled], vocab,
                                 [sent[n] for n in ("temperature", "top_k", "top_p", "min_p")])
        return cls(seqs, sampled, short, full, rows("sampled_rows"), rows("short_rows"), rows("full_rows"),
                   filters, sent.get("uniform"), bias, rows("seen_cells"), rows("generated_cells"), penalties,
                   rows("ban_cells"),
                   sent["grammar_rows"].bool()[:, None] if "grammar_rows" in sent else None)


def _take(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """``t``'s rows ``rows`` (``None``: all of them, without a copy)."""
    return t if rows is None else t.index_select(0, rows)


def _counts(logits: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """How many times each (row, token) cell occurs in ``cells``, as a float tensor shaped like ``logits``."""
    counts = torch.zeros_like(logits)
    counts.view(-1).index_add_(0, cells, torch.ones_like(cells, dtype=logits.dtype))
    return counts


def apply_penalties_and_bias(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    if batch.bias is not None:
        cells, values = batch.bias
        logits = logits.clone()
        logits.view(-1).index_add_(0, cells, values)
    if batch.penalties is None:
        return logits
    repetition, presence, frequency = batch.penalties
    if batch.seen is not None:
        # HF / vLLM: tokens seen in prompt or output get logit / r if positive, logit * r if negative
        seen = _counts(logits, batch.seen) > 0
        logits = torch.where(seen, torch.where(logits > 0, logits / repetition, logits * repetition), logits)
    if batch.generated is not None:
        # OpenAI: logit -= presence * [count > 0] + frequency * count, over generated tokens
        counts = _counts(logits, batch.generated)
        logits = logits - presence * (counts > 0) - frequency * counts
    return logits


def banned_tokens(seq: Sequence, stop_ids) -> set[int]:
    """Tokens ``seq`` may not take next: its stop tokens before ``min_tokens`` (vLLM's min_tokens), and the
    last token of each bad word whose other tokens end its output (vLLM's bad_words)."""
    p, out = seq.params, seq.output_token_ids
    banned = set()
    if not (p.min_tokens or p.bad_words_token_ids):
        return banned
    if len(out) < p.min_tokens:
        banned |= set(p.stop_token_ids) | (set() if p.ignore_eos else set(stop_ids))
    for word in p.bad_words_token_ids:
        prefix = word[:-1]
        if len(out) >= len(prefix) and tuple(out[len(out) - len(prefix):]) == prefix:
            banned.add(word[-1])
    return banned


def constrain(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Bans, then each row's grammar. Where the two leave a row nothing (a finished JSON object that may only
    end, under min_tokens), the grammar wins: structured output must stay valid."""
    states = [s.grammar for s in batch.seqs]
    if batch.banned is None:
        return mask_logits(logits, states)
    banned = logits.clone()
    banned.view(-1).index_fill_(0, batch.banned, float("-inf"))
    constrained = mask_logits(banned, states)
    if batch.grammar_rows is None:
        return constrained
    dead = torch.isneginf(constrained).all(-1, keepdim=True) & batch.grammar_rows
    return torch.where(dead, mask_logits(logits, states), constrained)


def _filter(logits: torch.Tensor, f: Filters) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p masks over the whole vocabulary (all rows at once).

    The reference semantics; :func:`_candidates` computes the same distribution from a sorted list."""
    logits = logits / f.temperature
    if f.uses_top_k:
        kth = logits.sort(dim=-1, descending=True).values.gather(1, (f.top_k - 1).clamp(max=logits.shape[1] - 1))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if f.uses_top_p:
        probs_sorted, order = logits.softmax(-1).sort(dim=-1, descending=True)
        before = probs_sorted.cumsum(-1) - probs_sorted  # mass strictly above each token
        drop_sorted = before > f.top_p
        logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted), float("-inf"))
    if f.uses_min_p:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < probs.max(-1, keepdim=True).values * f.min_p, float("-inf"))
    return logits


FIRST_CANDIDATES = 64  # top-p rarely needs more tokens than this to cover its mass; 16x more, then all


def _candidates(logits: torch.Tensor, f: Filters, grow: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The distribution of :func:`_filter` for rows with top-k or top-p, as their highest logits in order.

    Returns (logits [R, C] sorted highest first, equal ones in token-id order, dropped candidates at -inf;
    their token ids [R, C]). With ``grow`` the list starts short and grows until its last logit is below
    every candidate that counts (then every token after it has more than ``top_p`` above it, or is past the
    top k, and is dropped, exactly as in a full sort): on a CPU a full sort of a 49k vocabulary costs ~3.6 ms
    a row and ``topk`` of 64 ~0.1 ms. Without it the whole vocabulary is sorted once, which asks nothing of
    the host (the GPU path: no read-back). Either way a row's candidates, their order and their
    probabilities do not depend on the other rows (batch invariance).
    """
    vocab = logits.shape[1]
    logits = logits / f.temperature
    has_top_k = f.top_k < vocab
    # every row's top-k survivors are always in the list (their softmax normalises top-p); top-p rows
    # without top-k normalise over the whole vocabulary and need the list to cover their mass
    want = vocab
    if grow:
        top_k_rows = f.top_k[has_top_k]
        want = max(int(top_k_rows.max()) + 1 if top_k_rows.numel() else 1,  # one past the k-th: ties with it?
                   FIRST_CANDIDATES if bool(((~has_top_k) & (f.top_p < 1.0)).any()) else 1)
    # log-softmax, not logsumexp: a CPU reduces one row's logsumexp over several threads but many rows one
    # thread each, so a row's value would depend on how many rows the step samples; (log-)softmax always
    # reduces a row in one thread (batch invariance, tests/engine/test_batch_invariance.py)
    logp = logits.log_softmax(-1)
    while True:
        listed, idx = _highest(logits, want)
        rank = torch.arange(listed.shape[1], device=logits.device)[None, :]
        vals = listed.masked_fill(rank >= f.top_k, float("-inf"))
        probs = torch.where(has_top_k, vals.log_softmax(-1), logp.gather(1, idx)).exp()
        before = probs.cumsum(-1) - probs
        vals = vals.masked_fill(before > f.top_p, float("-inf"))
        if listed.shape[1] == vocab or _covers(listed, vals, has_top_k & (rank < f.top_k)):
            break
        want = want * 16 if want < 1024 else vocab  # a flat distribution: soon the whole (sorted) vocabulary
    if f.uses_min_p:  # p >= min_p * p_max, in logits: normalisation cancels out
        floor = torch.where(f.min_p > 0, vals[:, :1] + f.min_p.clamp_min(1e-30).log(), float("-inf"))
        vals = vals.masked_fill(vals < floor, float("-inf"))
    return vals, idx


def _highest(logits: torch.Tensor, want: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``want`` highest logits and their token ids, highest first, equal logits in token-id order:
    the order of a row's candidates must not depend on how many the batch asks for (``topk`` orders ties
    differently for another ``want``, and bf16 logits tie often)."""
    if want >= logits.shape[1]:
        return logits.sort(dim=-1, descending=True, stable=True)
    vals, idx = logits.topk(want, dim=-1)
    idx, by_id = idx.sort(dim=-1)
    vals, order = vals.gather(1, by_id).sort(dim=-1, descending=True, stable=True)
    return vals, idx.gather(1, order)


def _covers(listed: torch.Tensor, kept: torch.Tensor, normalising: torch.Tensor) -> bool:
    """Whether every row's list is long enough: its last logit strictly below each one that counts (the kept
    candidates, and for top-k rows the k survivors whose softmax normalises the row). Then no token left out
    could count, and none tied with one that counts was left out (``topk`` picks among ties at its cut as
    it likes)."""
    counts = normalising | torch.isfinite(kept)
    lowest = listed.masked_fill(~counts, float("inf")).min(-1).values
    return bool((listed[:, -1] < lowest).all())


def inverse_cdf(logits: torch.Tensor, uniform: torch.Tensor, temperature: torch.Tensor | None = None) -> torch.Tensor:
    """Per row of ``logits [R, C]`` / ``temperature [R, 1]`` (-inf: excluded), the first column whose cumulative
    probability exceeds ``uniform [R]`` (float64 in [0, 1)).

    The cumulative sums are float32 (a CPU sums in float64 and rounds each; a GPU's scan stays within a few
    float32 ulps). The target is scaled by 1 - 2^-23, which keeps it at least one ulp below the row's total,
    so an excluded column (no mass: its sum equals the previous one) is never chosen; the cost is that the
    draw resolves probabilities to ~2^-23."""
    weights = logits - logits.max(-1, keepdim=True).values
    if temperature is not None:
        weights.div_(temperature)
    cdf = weights.exp_().cumsum_(-1)
    target = (uniform * ((1 - 2**-23) * cdf[:, -1].double())).float()[:, None]
    return torch.searchsorted(cdf, target, right=True)[:, 0].clamp_(max=logits.shape[1] - 1)


def grows_candidates(device: torch.device) -> bool:
    """Whether top-p candidates grow from a short list (reads a flag back per growth step: free on a CPU)."""
    return device.type == "cpu"


def _draw(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """One token per sampled row: over a sorted candidate list for rows with top-k or top-p, over the
    whole vocabulary in id order otherwise."""
    drawn = torch.empty(len(batch.sampled), dtype=torch.long, device=logits.device)
    if batch.short:
        rows = batch.short_rows
        vals, idx = _candidates(_take(logits, rows), batch.filters.take(rows), grows_candidates(logits.device))
        picked = idx.gather(1, inverse_cdf(vals, _take(batch.uniform, rows))[:, None])[:, 0]
        drawn = picked if rows is None else drawn.index_copy_(0, rows, picked)
    if batch.full:
        rows = batch.full_rows
        filters, full = batch.filters.take(rows), _take(logits, rows)
        if filters.uses_min_p:  # no top-k or top-p among these rows: no sort in _filter
            full = _filter(full, replace(filters, uses_top_k=False, uses_top_p=False))
            picked = inverse_cdf(full, _take(batch.uniform, rows))
        else:  # temperature only (the OpenAI default): divided inside the draw
            picked = inverse_cdf(full, _take(batch.uniform, rows), filters.temperature)
        drawn = picked if rows is None else drawn.index_copy_(0, rows, picked)
    return drawn


def _logprob_tensors(raw: torch.Tensor, chosen: torch.Tensor, seqs: list[Sequence]) -> list[torch.Tensor]:
    """(logprob of each chosen token [R], top-n logprobs [R, n], their ids [R, n]) when any row asks."""
    top_n = max((s.params.logprobs or 0 for s in seqs if s.params.logprobs is not None), default=None)
    if top_n is None:
        return []
    logp = raw.log_softmax(-1)
    top = logp.topk(top_n, dim=-1)
    return [logp.gather(1, chosen[:, None])[:, 0], top.values, top.indices]


def _read_back(tensors: list[torch.Tensor]) -> list[list]:
    """The step's one device-to-host read: every tensor copied, then a single wait for all of them."""
    if tensors and tensors[0].is_cuda:
        host = [t.to("cpu", non_blocking=True) for t in tensors]
        torch.cuda.current_stream(tensors[0].device).synchronize()
        tensors = host
    return [t.tolist() for t in tensors]


def sample(logits: torch.Tensor, seqs: list[Sequence], rng: random.Random, stop_ids=(),
           staging: Staging | None = None) -> SampleResult:
    """Choose one token per row of ``logits [N, V]`` (float32) for ``seqs``; ``stop_ids`` are the model's
    end-of-sequence tokens (banned before a row's ``min_tokens``); ``rng`` gives unseeded rows their random
    numbers; ``staging`` (optional) is reused for the one host-to-device copy. Logprobs are of the raw
    logits, as vLLM's."""
    batch = SamplingBatch.build(seqs, logits.shape[1], logits.device, rng, stop_ids, staging)
    logits_in = logits
    logits = constrain(apply_penalties_and_bias(logits, batch), batch)
    if not batch.sampled:
        chosen = logits.argmax(-1)
    elif batch.sampled_rows is None:  # every row draws
        chosen = _draw(logits, batch)
    else:
        chosen = logits.argmax(-1).index_copy_(0, batch.sampled_rows, _draw(logits.index_select(0, batch.sampled_rows),
                                                                           batch))
    token_ids, *lp = _read_back([chosen, *_logprob_tensors(logits_in, chosen, seqs)])
    logprobs: list = [None] * len(seqs)
    if lp:
        picked, top_values, top_ids = lp
        for row, seq in enumerate(seqs):
            n = seq.params.logprobs
            if n is not None:
                logprobs[row] = (picked[row], list(zip(top_ids[row][:n], top_values[row][:n])))
    return SampleResult(token_ids, logprobs)
