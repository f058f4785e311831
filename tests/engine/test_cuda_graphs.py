"""Decode graphs' bucketing and padding, and the warm-up plan, proven on CPU (capture itself needs CUDA:
``cuda_graphs="padded"`` runs the same static, padded buffers without capturing)."""
from __future__ import annotations

import pytest
import torch

from models import load_model
from service.engine import EngineConfig, LLMEngine, SamplingParams
from service.engine.cuda_graphs import DecodeGraphs, bucket_for, graph_batch_sizes
from service.engine.warmup import WarmupPlan, prefill_steps


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


@pytest.fixture(scope="module")
def shrunk_random_llama(shrunk_smollm2_path):
    # a synthetic model, not the SmolLM2 package: the GPU check runs this file on an image without it
    return load_model(shrunk_smollm2_path, dtype="float32")


def random_prompts(count: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 1024, (n,), generator=g).tolist() for n in (3, 40, 17, 90, 5, 64, 33, 8, 21, 2, 50)[:count]]


@pytest.mark.slow
def test_padded_decode_buffers_give_the_eager_outputs(shrunk_random_llama):
    prompts = random_prompts(11)
    greedy = [SamplingParams(max_tokens=8 + 2 * i, temperature=0, ignore_eos=True) for i in range(11)]  # staggered
    eager = LLMEngine(shrunk_random_llama, EngineConfig(cuda_graphs="off", max_model_len=256)).generate(prompts, greedy)
    # a short context keeps the padded block tables (its width) small: the CPU gathers every column
    engine = LLMEngine(shrunk_random_llama, EngineConfig(cuda_graphs="padded", max_num_seqs=16, max_model_len=256))
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
def test_warmup_leaves_no_state_behind(shrunk_random_llama):
    prompts = random_prompts(4, seed=1)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    cold = LLMEngine(shrunk_random_llama, EngineConfig(cuda_graphs="off")).generate(prompts, params)
    warmed = LLMEngine(shrunk_random_llama, EngineConfig(warmup="on", cuda_graphs="padded", max_num_batched_tokens=256,
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
    # against the same padded buffers run eagerly: the same row counts reach every GEMM (eager with 7 rows
    # instead of the bucket's 8 may take another cuBLAS kernel, one ulp away)
    eager = LLMEngine(loaded, EngineConfig(cuda_graphs="padded", **config)).generate(prompts, params)
    graphed = LLMEngine(loaded, EngineConfig(cuda_graphs="auto", **config))
    assert graphed.runner.graphs.graphs  # captured at start-up
    assert [[o.token_ids for o in s] for s in graphed.generate(prompts, params)] == \
        [[o.token_ids for o in s] for s in eager]


class PendingCopies:
    """A CopyFence that remembers whether a copy out of the host buffer is still unwaited for."""

    def __init__(self):
        self.pending = False

    def record(self):
        self.pending = True

    def wait(self):
        self.pending = False


def test_the_host_buffer_is_never_refilled_while_its_last_copy_may_be_in_flight(shrunk_random_llama, monkeypatch):
    """The pinned buffer's copy is queued with non_blocking=True; refilling it before that copy ran would send the
    next step's rows (K/V written to wrong slots). Warm-up decodes and steps of paused beams read nothing back,
    so the graph path must wait for its own copy: every refill finds no copy pending."""
    fills = []
    real_fill = DecodeGraphs._fill_host

    def checked_fill(self, *args):
        fills.append(self.fence.pending)
        return real_fill(self, *args)

    monkeypatch.setattr("service.engine.cuda_graphs.CopyFence", lambda device: PendingCopies())
    monkeypatch.setattr(DecodeGraphs, "_fill_host", checked_fill)
    engine = LLMEngine(shrunk_random_llama, EngineConfig(cuda_graphs="padded", warmup="on", max_num_seqs=4,
                                                         max_model_len=128))
    engine.generate([[5, 6, 7], [8, 9]], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    engine.generate([[5, 6, 7]], SamplingParams(max_tokens=6, use_beam_search=True, beam_width=3, temperature=0))
    assert len(fills) > 10 and not any(fills)
