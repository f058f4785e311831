"""Beam search, step by step, as transformers' ``generate(num_beams=W, do_sample=False)`` does it.

Each step every live beam contributes ``log_softmax(logits) + its score``; the
best ``K = 2W`` continuations over all beams are ranked. The best W that do not
end (EOS, a stop token, or the length limit) become the next beams; those
among the top W that do end become finished hypotheses scored
``sum_logprobs / generated_len ** length_penalty``, keeping the best W.
The search stops when no running beam can still beat the worst finished one
(transformers' heuristic; ``early_stopping=True`` stops once W are finished,
``"never"`` assumes the longest possible length when the penalty favours length).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .sampling_params import SamplingParams
from .sequence import Sequence

NEG = -1.0e9


@dataclass
class Hypothesis:
    score: float
    token_ids: list[int]  # generated tokens, the final EOS included
    ended: bool  # by EOS / stop token (else by length)


@dataclass
class Candidate:
    parent: Sequence
    token: int
    logprob: float  # accumulated
    ends: bool


@dataclass
class BeamState:
    params: SamplingParams
    stop_ids: set[int]
    scores: dict[int, float] = field(default_factory=dict)  # seq_id -> accumulated log-prob of a live beam
    rows: dict[int, torch.Tensor] = field(default_factory=dict)  # seq_id -> log-probs waiting for the group
    finished: list[Hypothesis] = field(default_factory=list)
    generated: int = 0
    # tokens forced after the decoder's start (a target language): transformers counts them as generated in the
    # length normalisation, so they are added to every length here
    forced: int = 0
    improvable: bool = True
    done: bool = False

    @property
    def width(self) -> int:
        return self.params.beam_width

    def ready(self, live: list[Sequence]) -> bool:
        return all(s.seq_id in self.rows for s in live)

    def candidates(self, live: list[Sequence]) -> list[Candidate]:
        """The best 2W continuations over every live beam, best first."""
        logp = torch.stack([self.rows[s.seq_id] for s in live])  # [beams, V]
        acc = logp + torch.tensor([self.scores[s.seq_id] for s in live])[:, None]
        k = min(max(2, 1 + len(self.stop_ids)) * self.width, acc.numel())
        values, flat = acc.flatten().topk(k)
        vocab = acc.shape[1]
        last_step = self.generated + 1 >= self.params.max_tokens
        return [Candidate(live[i // vocab], i % vocab, v, last_step or (i % vocab) in self.stop_ids)
                for v, i in zip(values.tolist(), flat.tolist())]

    def advance(self, live: list[Sequence]) -> list[Candidate]:
        """One step of the search; returns the continuations that become the next beams."""
        cands = self.candidates(live)
        self.rows.clear()
        length = self.generated + 1
        full_and_early = self.params.early_stopping is True and len(self.finished) >= self.width
        if self.improvable and not full_and_early:
            for c in cands[: self.width]:
                if c.ends:
                    tokens = [*c.parent.output_token_ids, c.token]
                    score = c.logprob / ((length + self.forced) ** self.params.length_penalty)
                    self.finished.append(Hypothesis(score, tokens, c.token in self.stop_ids))
            self.finished = sorted(self.finished, key=lambda h: -h.score)[: self.width]
        running = [c for c in cands if not c.ends][: self.width]
        self.generated = length
        self._update_heuristic(running)
        all_end = all(c.ends for c in cands)
        closed = self.params.early_stopping is True and len(self.finished) >= self.width
        self.done = all_end or not self.improvable or closed or not running
        return running

    def _update_heuristic(self, running: list[Candidate]) -> None:
        if len(self.finished) < self.width or not running:
            return  # an open slot can always still be filled
        p = self.params
        length = (p.max_tokens if p.early_stopping == "never" and p.length_penalty > 0 else self.generated) + self.forced
        best_possible = running[0].logprob / (length ** p.length_penalty)
        self.improvable = self.improvable and best_possible > self.finished[-1].score

    def best(self, n: int) -> list[Hypothesis]:
        return self.finished[:n]
