"""Batch invariance on the default CPU path (SmolLM2's Q4_1 blocks kept quantized, bf16 activations): a
sequence's logits are bit-identical alone and inside batches of 2..33 sequences, in decode steps and in
prefill chunks, with and without a prefix-cache hit. Compared through the logprobs the sampler returns
(a log-softmax of the logits row: equal floats iff the row's logits are equal up to a constant)."""
from __future__ import annotations

import pytest

from models import load_model
from service.engine import EngineConfig, LLMEngine, SamplingParams

from ..conftest import SMOLLM
from .conftest import chat_ids

pytestmark = pytest.mark.slow

TOPICS = ["the sea", "Paris", "a cat", "prime numbers", "rain", "bread", "the moon", "chess", "music", "trees",
          "rivers", "coffee", "winter", "robots", "bees", "mountains", "trains", "stars", "books", "gardens",
          "volcanoes", "owls", "bridges", "salt", "clocks", "tea", "deserts", "whales", "glass", "kites", "maps",
          "honey", "thunder"]


@pytest.fixture(scope="module")
def default_cpu_model(smollm_path):
    return load_model(SMOLLM, dtype="bfloat16")  # what `make serve` runs on a CPU


@pytest.fixture(scope="module")
def prompts(default_cpu_model):
    return [chat_ids(default_cpu_model, f"Write two sentences about {t}.") for t in TOPICS]


def run(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> list:
    """Per prompt: (token ids, [(token, logprob, top)] per generated token, prompt logprobs)."""
    ids = [f"r{i}" for i in range(len(prompts))]
    for rid, p in zip(ids, prompts):
        engine.add_request(rid, p, params)
    tokens = {rid: [] for rid in ids}
    logprobs = {rid: [] for rid in ids}
    prompt_lps = {}
    while engine.has_unfinished():
        for out in engine.step():
            for o in out.outputs:
                tokens[out.request_id] += o.token_ids
                logprobs[out.request_id] += [(lp.token_id, lp.logprob, lp.top) for lp in o.logprobs or []]
            if out.prompt_logprobs is not None:
                prompt_lps[out.request_id] = out.prompt_logprobs
    return [(tokens[r], logprobs[r], prompt_lps.get(r)) for r in ids]


@pytest.mark.parametrize("others", [1, 4, 15, 32])
def test_decode_and_prefill_logits_do_not_depend_on_the_batch(default_cpu_model, prompts, others):
    # a small token budget: the target's prompt is prefilled in chunks, beside the other prompts' chunks
    engine = LLMEngine(default_cpu_model, EngineConfig(max_num_batched_tokens=64, enable_prefix_caching=False))
    params = SamplingParams(max_tokens=10, temperature=0, logprobs=5, prompt_logprobs=3, ignore_eos=True)
    alone = run(engine, prompts[:1], params)[0]
    batched = run(engine, prompts[:1 + others], params)[0]
    assert batched[0] == alone[0]
    assert batched[1] == alone[1]  # every decode step's top-5 logprobs, bit for bit
    assert batched[2] == alone[2]  # every prompt position's, across chunks of different steps


def test_a_prefix_cache_hit_gives_the_same_logits(default_cpu_model, prompts):
    """The second time a prompt comes, its cached blocks are read back and only the rest is computed."""
    engine = LLMEngine(default_cpu_model, EngineConfig())
    params = SamplingParams(max_tokens=10, temperature=0, logprobs=5, ignore_eos=True)
    first = run(engine, prompts[:1], params)[0]
    assert engine.block_manager.by_hash  # its full blocks are in the prefix cache
    again = run(engine, prompts[:1] + prompts[5:9], params)[0]
    assert again[:2] == first[:2]


def test_seeded_sampling_does_not_depend_on_the_batch(default_cpu_model, prompts):
    engine = LLMEngine(default_cpu_model, EngineConfig(enable_prefix_caching=False))
    params = SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, seed=7, ignore_eos=True)
    alone = [run(engine, [p], params)[0][0] for p in prompts[:3]]
    together = [r[0] for r in run(engine, prompts[:12], params)[:3]]
    assert together == alone


# -- the pieces, bit for bit (each failed before: a padded SDPA, one GEMM call for 33+ logit rows, logsumexp) --

def test_prefill_attention_of_a_sequence_does_not_depend_on_the_others():
    import itertools

    import torch

    from kernels import attention_ref

    g = torch.Generator().manual_seed(0)
    lengths_q, lengths_k = [30, 50, 17, 100, 30, 7], [30, 50, 40, 100, 30, 19]  # some chunks after a prefix
    q = torch.randn(sum(lengths_q), 9, 64, generator=g).bfloat16()
    k, v = (torch.randn(sum(lengths_k), 3, 64, generator=g).bfloat16() for _ in range(2))
    cu_q = torch.tensor([0, *itertools.accumulate(lengths_q)], dtype=torch.int32)
    cu_k = torch.tensor([0, *itertools.accumulate(lengths_k)], dtype=torch.int32)
    packed = attention_ref(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=True)
    for i in range(len(lengths_q)):
        sq, sk = slice(cu_q[i], cu_q[i + 1]), slice(cu_k[i], cu_k[i + 1])
        one_q = torch.tensor([0, lengths_q[i]], dtype=torch.int32)
        one_k = torch.tensor([0, lengths_k[i]], dtype=torch.int32)
        alone = attention_ref(q[sq], k[sk], v[sk], one_q, one_k, lengths_q[i], lengths_k[i], causal=True)
        assert torch.equal(packed[sq], alone), i


@pytest.mark.parametrize("rows", [2, 32, 33, 64, 100])
def test_logit_rows_do_not_depend_on_how_many_there_are(rows):
    import torch

    from models.layers import lm_logits

    g = torch.Generator().manual_seed(1)
    weight = (torch.randn(49152, 576, generator=g) / 24).bfloat16()  # SmolLM2's tied head
    hidden = torch.randn(rows, 576, generator=g).bfloat16()
    together = lm_logits(hidden, weight)
    for i in (0, rows // 2, rows - 1):
        assert torch.equal(together[i], lm_logits(hidden[i:i + 1], weight)[0]), i


def test_the_sampler_draws_a_row_the_same_whatever_the_other_rows():
    import random

    import torch

    from service.engine.sampler import sample
    from service.engine.sequence import Sequence

    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(12, 49152, generator=g) * 4).bfloat16().float()  # bf16 values: many ties
    logits[3] *= 0.02  # a flat row: its candidate list grows
    variants = [SamplingParams(temperature=0.9, top_p=0.95, seed=7), SamplingParams(temperature=1.0, top_k=40, seed=7),
                SamplingParams(temperature=0.7, top_p=0.5, top_k=100, seed=7), SamplingParams(temperature=0.8, seed=7)]
    for params in variants:
        seqs = [Sequence(f"s{i}", i, [1, 2, 3], params) for i in range(12)]
        together = sample(logits, seqs, random.Random(0)).token_ids
        for i in range(12):
            alone = sample(logits[i:i + 1], [Sequence(f"s{i}", i, [1, 2, 3], params)], random.Random(0)).token_ids
            assert alone[0] == together[i], (params, i)
