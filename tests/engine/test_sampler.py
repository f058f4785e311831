"""The sampler: its candidate path equals the full-vocabulary reference, distribution for distribution; draws
follow the distribution; seeds are batch-independent; the GPU path reads nothing back but the result."""
from __future__ import annotations

import random

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from service.engine import sampler as sampler_module
from service.engine.sampler import Filters, _candidates, _filter, inverse_cdf, sample, seeded_uniform
from service.engine.sampling_params import SamplingParams
from service.engine.staging import Staging
from service.engine.sequence import Sequence

VOCAB = 5000


def full_distribution(logits, params):
    return _filter(logits, Filters.for_params(params, logits.shape[1])).softmax(-1)


def candidate_distribution(logits, params):
    vals, idx = _candidates(logits, Filters.for_params(params, logits.shape[1]), grow=True)
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


def seqs_for(params, prompt=(1, 2, 3)):
    return [Sequence("r", i, list(prompt), p) for i, p in enumerate(params)]


def test_sampling_follows_the_distribution():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 200, generator=g) * 2
    for p in (SamplingParams(temperature=1.0, top_p=0.8), SamplingParams(temperature=0.7),
              SamplingParams(temperature=1.0, top_k=20, min_p=0.05)):
        expected = full_distribution(logits, [p])[0]
        counts = torch.zeros(200)
        for token in sample(logits.expand(4000, -1).contiguous(), seqs_for([p] * 4000), random.Random(1)).token_ids:
            counts[token] += 1
        assert counts[expected == 0].sum() == 0  # nothing outside the kept set
        # 4,000 draws: a standard error of sqrt(p (1 - p) / 4000) <= 0.008, so 0.03 is ~4 of them
        assert (counts / 4000 - expected).abs().max() < 0.03


def test_seeded_rows_do_not_depend_on_the_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 200, generator=g) * 2
    p = SamplingParams(temperature=1.0, top_p=0.8, seed=3)
    one = seqs_for([p])
    alone = sample(logits, one, random.Random(0)).token_ids[0]
    # neighbours that widen the candidate list (top-k 150) or use the whole vocabulary; other unseeded draws
    for k, neighbours in enumerate(([SamplingParams(temperature=1.0), SamplingParams(temperature=0.5, top_k=150)],
                                    [SamplingParams(temperature=0.9, top_p=0.99, seed=4)])):
        mixed = [*seqs_for(neighbours), Sequence("r", 0, [1, 2, 3], p)]
        assert sample(logits.expand(len(mixed), -1).contiguous(), mixed, random.Random(k)).token_ids[-1] == alone


def test_seeded_draws_follow_the_output_position_and_the_sequence_index():
    """Same seed, index and position: the same number; another stream or position: another (with 32 bits,
    1,000 distinct inputs collide with probability ~1e-4). Sequence i of a request seeded s uses stream s + i,
    as n > 1 requests did with per-sequence generators."""
    assert seeded_uniform(5, 0, 7) == seeded_uniform(5, 0, 7)
    values = {seeded_uniform(seed, index, pos) for seed in (0, 100, -100) for index in range(10) for pos in range(33)}
    assert len(values) == 3 * 10 * 33 and all(0 <= u < 1 for u in values)
    assert seeded_uniform(5, 1, 0) == seeded_uniform(6, 0, 0)
    # and they are uniform: a Kolmogorov-Smirnov distance over 20,000 draws of one stream, 1.63/sqrt(n) at 1%
    draws = sorted(seeded_uniform(2**63 - 1, 3, pos) for pos in range(20000))
    ks = max(abs(u - i / len(draws)) for i, u in enumerate(draws))
    assert ks < 1.63 / len(draws) ** 0.5


@pytest.mark.parametrize("flatness", [0.5, 2.0], ids=["flat", "peaked"])
def test_sorting_everything_and_growing_a_short_list_pick_the_same_tokens(flatness):
    """The GPU path (one full sort) and the CPU path (a candidate list grown until it covers top-p) keep the
    same candidates in the same order, so the same uniform numbers pick the same tokens."""
    g = torch.Generator().manual_seed(7)
    params = [SamplingParams(**c) for c in CASES] * 20
    logits = torch.randn(len(params), VOCAB, generator=g) * flatness
    filters = Filters.for_params(params, VOCAB)
    uniform = torch.rand(len(params), generator=g, dtype=torch.float64)
    picks = []
    for grow in (True, False):
        vals, idx = _candidates(logits, filters, grow)
        picks.append(idx.gather(1, inverse_cdf(vals, uniform)[:, None])[:, 0])
    assert torch.equal(picks[0], picks[1])


def test_inverse_cdf_never_picks_an_excluded_token():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")], [float("-inf"), 3.0, float("-inf"), -50.0]])
    edges = torch.tensor([0.0, 0.5 - 2**-32, 0.5, 1 - 2**-32], dtype=torch.float64)
    for u in edges:
        picks = inverse_cdf(logits, u.expand(2)).tolist()
        assert picks[0] in (0, 2) and picks[1] in (1, 3)
    assert inverse_cdf(logits, torch.tensor([0.0, 0.0], dtype=torch.float64)).tolist() == [0, 1]
    assert inverse_cdf(logits, torch.tensor([1 - 2**-32] * 2, dtype=torch.float64)).tolist() == [2, 1]


class HostReads(TorchDispatchMode):
    """Counts tensors made from Python data (host-to-device copies on a GPU) and scalar reads back."""

    def __init__(self):
        super().__init__()
        self.made = self.read = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default):
            self.made += 1
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default):
            self.read += 1
        return func(*args, **(kwargs or {}))


def test_a_mixed_batch_samples_with_one_copy_in_and_no_reads_on_the_gpu_path(monkeypatch):
    """Greedy, temperature, top-k/top-p, min-p, seeds, penalties, bias, bans and logprobs in one batch: one
    tensor made from host data (the staged parameters) and nothing read back but the result, on the path a
    GPU takes (a full sort instead of a growing candidate list)."""
    monkeypatch.setattr(sampler_module, "grows_candidates", lambda device: False)
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.8, top_p=0.9, seed=1, logprobs=3),
              SamplingParams(temperature=1.0, min_p=0.1, presence_penalty=0.5, frequency_penalty=0.3),
              SamplingParams(temperature=0.7, top_k=40, repetition_penalty=1.2, logit_bias=((5, 2.0),)),
              SamplingParams(temperature=1.0, min_tokens=4, logprobs=0), SamplingParams(temperature=1.0, seed=9)]
    seqs = seqs_for(params, prompt=(4, 5, 6, 5))
    for s in seqs:
        s.output_token_ids.extend([7, 7, 8])
    logits = torch.randn(len(seqs), VOCAB, generator=torch.Generator().manual_seed(2))
    with HostReads() as counted:
        result = sample(logits, seqs, random.Random(0), stop_ids=(0,))
    assert (counted.made, counted.read) == (1, 0)
    assert result.token_ids[0] == int(logits[0].argmax()) and result.token_ids[4] != 0
    assert result.logprobs[0] is None and len(result.logprobs[1][1]) == 3 and result.logprobs[4][1] == []
    # the same tokens as the CPU's growing list, with the same random numbers
    monkeypatch.undo()
    assert sample(logits, seqs, random.Random(0), stop_ids=(0,)).token_ids == result.token_ids


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (make gpu-check runs it)")


def _gpu_batch():
    params = [SamplingParams(**c, seed=i) for i, c in enumerate(CASES)] * 8 + [SamplingParams(temperature=0.9)] * 8
    logits = torch.randn(len(params), VOCAB, generator=torch.Generator().manual_seed(5)) * 2
    return logits, seqs_for(params)


@cuda
def test_the_gpu_path_synchronises_only_to_read_the_result(monkeypatch):
    """torch's sync debug mode raises on any implicit synchronisation; it is lifted only for the final read."""
    real_read_back = sampler_module._read_back

    def read_back(tensors):
        torch.cuda.set_sync_debug_mode(0)
        return real_read_back(tensors)

    monkeypatch.setattr(sampler_module, "_read_back", read_back)
    logits, seqs = _gpu_batch()
    for s in seqs[:5]:  # penalties, bias and logprobs take part too
        s.params = SamplingParams(temperature=0.8, presence_penalty=0.4, repetition_penalty=1.1,
                                  logit_bias=((3, 1.0),), logprobs=2)
    staging = Staging("cuda", torch.float64)
    logits = logits.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = sample(logits, seqs, random.Random(0), (0,), staging)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(result.token_ids) == len(seqs) and result.logprobs[0] is not None


@cuda
def test_the_gpu_draws_the_cpu_tokens_with_the_same_numbers():
    """Same logits, parameters and random numbers: the GPU (full sort, float32 scan) and the CPU (growing
    candidate list, float64-accumulated sums) pick the same tokens, but for draws that land within float32
    rounding of a boundary between two tokens (rare: at most a few of the 80 rows)."""
    logits, seqs = _gpu_batch()
    cpu = sample(logits, seqs, random.Random(3)).token_ids
    gpu = sample(logits.cuda(), seqs, random.Random(3), staging=Staging("cuda", torch.float64)).token_ids
    assert sum(a == b for a, b in zip(cpu, gpu)) >= len(seqs) - 2


@cuda
def test_gpu_sampling_follows_the_distribution():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 200, generator=g) * 2
    p = SamplingParams(temperature=1.0, top_p=0.8)
    expected = full_distribution(logits, [p])[0]
    tokens = sample(logits.expand(4000, -1).contiguous().cuda(), seqs_for([p] * 4000), random.Random(1)).token_ids
    counts = torch.bincount(torch.tensor(tokens), minlength=200).float()
    assert counts[expected == 0].sum() == 0
    assert (counts / 4000 - expected).abs().max() < 0.03


def test_penalties_and_bias_match_their_definitions_row_by_row():
    """OpenAI's presence/frequency penalties over generated tokens, HF/vLLM's repetition penalty over prompt
    and output, logit_bias added: computed per row by hand and compared with the batched, flat-cell path."""
    params = [SamplingParams(presence_penalty=0.5, frequency_penalty=0.25),
              SamplingParams(repetition_penalty=1.5, logit_bias=((2, 3.0), (9, -1.0))),
              SamplingParams(), SamplingParams(presence_penalty=-0.5, repetition_penalty=0.8)]
    seqs = seqs_for(params, prompt=(1, 2, 3))
    for s, out in zip(seqs, ([4, 4, 4, 7], [3, 5], [6], [1, 1, 8])):
        s.output_token_ids.extend(out)
    logits = torch.randn(len(seqs), 12, generator=torch.Generator().manual_seed(4)) * 3
    expected = logits.clone()
    for row, (s, p) in enumerate(zip(seqs, params)):
        for token, bias in p.logit_bias:
            expected[row, token] += bias
        for token in set(s.token_ids):
            value = expected[row, token]
            if p.repetition_penalty != 1.0:
                expected[row, token] = value / p.repetition_penalty if value > 0 else value * p.repetition_penalty
        for token in set(s.output_token_ids):
            count = s.output_token_ids.count(token)
            expected[row, token] -= p.presence_penalty + p.frequency_penalty * count
    batch = sampler_module.SamplingBatch.build(seqs, 12, "cpu", random.Random(0))
    torch.testing.assert_close(sampler_module.apply_penalties_and_bias(logits, batch), expected)
