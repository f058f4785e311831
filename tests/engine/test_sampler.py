"""The sampler's fast candidate path equals the full-vocabulary reference, distribution for distribution."""
from __future__ import annotations

import pytest
import torch

from service.engine.sampler import _candidates, _filter, sample
from service.engine.sampling_params import SamplingParams
from service.engine.sequence import Sequence

VOCAB = 5000


def full_distribution(logits, params):
    return _filter(logits, params).softmax(-1)


def candidate_distribution(logits, params):
    vals, idx = _candidates(logits, params)
    return torch.zeros_like(logits).scatter(1, idx, vals.softmax(-1))


CASES = [
    dict(temperature=1.0, top_p=0.9),
    dict(temperature=0.7, top_p=0.5),
    dict(temperature=1.3, top_p=0.999),  # needs many more than the first 64 candidates
    dict(temperature=1.0, top_k=50),
    dict(temperature=0.8, top_k=40, top_p=0.8),
    dict(temperature=1.0, top_k=3000, top_p=0.95),
    dict(temperature=1.0, top_p=0.9, min_p=0.05),
    dict(temperature=0.9, top_k=20, min_p=0.2),
    dict(temperature=2.0, top_k=1),
]


@pytest.mark.parametrize("flatness", [0.5, 2.0, 8.0], ids=["flat", "peaked", "very-peaked"])
def test_candidates_give_the_reference_distribution(flatness):
    g = torch.Generator().manual_seed(int(flatness * 10))
    logits = torch.randn(len(CASES), VOCAB, generator=g) * flatness
    params = [SamplingParams(**c) for c in CASES]
    expected = full_distribution(logits, params)
    got = candidate_distribution(logits, params)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    for i, p in enumerate(params):  # and row by row, as a batch of one
        torch.testing.assert_close(candidate_distribution(logits[i:i + 1], [p]), expected[i:i + 1],
                                   atol=1e-6, rtol=1e-5)


def seqs_for(params):
    return [Sequence("r", i, [1, 2, 3], p) for i, p in enumerate(params)]


def test_sampling_follows_the_distribution_and_seeds_are_batch_independent():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 200, generator=g) * 2
    p = SamplingParams(temperature=1.0, top_p=0.8, seed=3)
    expected = full_distribution(logits, [p])[0]
    counts = torch.zeros(200)
    seqs = seqs_for([p] * 4000)
    generators = {s.seq_id: torch.Generator().manual_seed(s.index) for s in seqs}
    for token in sample(logits.expand(4000, -1).contiguous(), seqs, generators).token_ids:
        counts[token] += 1
    assert counts[expected == 0].sum() == 0  # nothing outside the nucleus
    assert (counts / 4000 - expected).abs().max() < 0.03  # 4,000 draws: ~3 standard errors of the largest p
    # a seeded row draws the same token whatever shares its batch
    one = seqs_for([p])
    alone = sample(logits, one, {one[0].seq_id: torch.Generator().manual_seed(9)}).token_ids[0]
    # neighbours that widen the candidate list (top-k 150) or use the whole vocabulary
    for neighbours in ([SamplingParams(temperature=1.0), SamplingParams(temperature=0.5, top_k=150)],
                       [SamplingParams(temperature=0.9, top_p=0.99, seed=4)]):
        mixed = seqs_for([*neighbours, p])
        gens = {s.seq_id: torch.Generator().manual_seed(9 if s.params is p else 1) for s in mixed if s.params.seed}
        assert sample(logits.expand(len(mixed), -1).contiguous(), mixed, gens).token_ids[-1] == alone
