"""Decode graphs' bucketing and padding, and the warm-up plan, proven on CPU (capture itself needs CUDA:
``cuda_graphs="padded"`` runs the same static, padded buffers without capturing)."""
from __future__ import annotations

import pytest
import torch

from service.engine import EngineConfig, LLMEngine, SamplingParams
from service.engine.cuda_graphs import DecodeGraphs, bucket_for, graph_batch_sizes
from service.engine.warmup import WarmupPlan, prefill_steps

from .conftest import chat_ids

QUESTIONS = ["What is the capital of France?", "Name three colors.", "Count from 1 to 5.", "Tell me a joke.",
             "What is 2+2?", "Write one word.", "Describe the sea.", "Who wrote Hamlet?", "Say hello in Spanish.",
             "List two fruits.", "What is Python?"]


def test_batch_buckets():
    assert graph_batch_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert graph_batch_sizes(5) == [1, 2, 4, 5]
    assert graph_batch_sizes(8) == [1, 2, 4, 8]
    assert graph_batch_sizes(12) == [1, 2, 4, 8, 16]
    sizes = graph_batch_sizes(256)
    assert all(bucket_for(n, sizes) >= n and bucket_for(n, sizes) - n < 8 for n in range(1, 257))
    assert bucket_for(257, sizes) is None


def test_warmup_plan_covers_every_bucket():
    plan = WarmupPlan.for_engine(EngineConfig(max_num_batched_tokens=2048, max_num_seqs=64))
    assert plan.prefill_tokens == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
    assert plan.decode_batches == tuple(graph_batch_sizes(64))
    odd = WarmupPlan.for_engine(EngineConfig(max_num_batched_tokens=100, max_num_seqs=12))
    assert odd.prefill_tokens[-1] == 100 and odd.decode_batches[-1] == 12
    assert prefill_steps(2048, 513) == [512] * 4 and prefill_steps(100, 8192) == [100]
    assert sum(prefill_steps(1000, 300)) == 1000


@pytest.mark.slow
def test_padded_decode_buffers_give_the_eager_outputs(smollm):
    prompts = [chat_ids(smollm, q) for q in QUESTIONS]
    greedy = SamplingParams(max_tokens=20, temperature=0)
    eager = LLMEngine(smollm, EngineConfig(cuda_graphs="off", max_model_len=256)).generate(prompts, greedy)
    # a short context keeps the padded block tables (its width) small: the CPU gathers every column
    engine = LLMEngine(smollm, EngineConfig(cuda_graphs="padded", max_num_seqs=16, max_model_len=256))
    runs = []
    real_run = DecodeGraphs.run

    def counted(self, tokens, *args):
        runs.append(len(tokens))
        return real_run(self, tokens, *args)

    DecodeGraphs.run = counted
    try:
        padded = engine.generate(prompts, greedy)
    finally:
        DecodeGraphs.run = real_run
    assert [[o.token_ids for o in seqs] for seqs in padded] == [[o.token_ids for o in seqs] for seqs in eager]
    assert runs and len(set(runs)) > 1  # batches of several sizes went through the padded buffers
    assert any(bucket_for(n, engine.runner.graphs.sizes) != n for n in runs)  # some were padded
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


@pytest.mark.slow
def test_warmup_leaves_no_state_behind(smollm):
    prompts = [chat_ids(smollm, q) for q in QUESTIONS[:4]]
    params = SamplingParams(max_tokens=12, temperature=0)
    cold = LLMEngine(smollm, EngineConfig(cuda_graphs="off")).generate(prompts, params)
    warmed = LLMEngine(smollm, EngineConfig(warmup="on", cuda_graphs="padded", max_num_batched_tokens=256,
                                            max_model_len=256, max_num_seqs=8))
    assert warmed.warmup_timings["graphs"] == 0.0 and not warmed.runner.graphs.graphs  # no capture on CPU
    assert warmed.block_manager.num_free_blocks == warmed.block_manager.num_blocks
    assert [[o.token_ids for o in s] for s in warmed.generate(prompts, params)] == \
        [[o.token_ids for o in s] for s in cold]


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="graph capture needs CUDA (make gpu-check runs this)")
def test_captured_graphs_give_the_eager_outputs(tmp_path):
    from benchmarks.synthetic import save_random
    from models import load_model

    save_random("smollm2-135m", str(tmp_path), seed=3)
    loaded = load_model(str(tmp_path), dtype="bfloat16", device="cuda")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 49152, (n,), generator=g).tolist() for n in (3, 40, 17, 90, 5, 64, 33)]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    config = dict(max_model_len=256, kv_cache_memory=1 << 30, max_num_seqs=16)
    eager = LLMEngine(loaded, EngineConfig(cuda_graphs="off", **config)).generate(prompts, params)
    graphed = LLMEngine(loaded, EngineConfig(cuda_graphs="auto", **config))
    assert graphed.runner.graphs.graphs  # captured at start-up
    assert [[o.token_ids for o in s] for s in graphed.generate(prompts, params)] == \
        [[o.token_ids for o in s] for s in eager]
