"""Nothing compiles after ``ready``, by construction: on the CPU, every Triton launch a GPU would make is
recorded with the key Triton would compile it under (kernels/compile_keys.py), through warm-up and then
through a serving workload (concurrency 1..max_num_seqs, prompts of many lengths, contexts up to
max_model_len, prefix-cache hits, preemption, n > 1, beams). Every key serving produces must have been
produced by warm-up."""
from __future__ import annotations

import dataclasses
import random

import pytest

from kernels.compile_keys import CompileKeys, recording
from models import load_model
from service.engine import EngineConfig, LLMEngine, SamplingParams
from service.engine import warmup as warmup_module

pytestmark = pytest.mark.slow

CONFIG = EngineConfig(max_num_seqs=8, max_num_batched_tokens=128, max_model_len=256, warmup="on",
                      cuda_graphs="padded", kv_cache_memory=44 * 2 * 2 * 16 * 3 * 64 * 2)  # 44 blocks: preempts


@pytest.fixture(scope="module")
def shrunk_smollm2(shrunk_smollm2_path):
    return load_model(shrunk_smollm2_path, dtype="bfloat16")  # as a GPU serves it


def workload(engine: LLMEngine) -> None:
    rng = random.Random(0)

    def prompt(n):
        return [rng.randrange(3, 1024) for _ in range(n)]

    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    for concurrency in (1, 2, 3, 5, 8):  # decode batches of every size, prompts of many lengths
        lengths = [rng.choice([1, 2, 3, 7, 15, 16, 17, 31, 33, 64, 100, 127, 129]) for _ in range(concurrency)]
        engine.generate([prompt(n) for n in lengths], [dataclasses.replace(greedy, max_tokens=4 + 3 * i)
                                                       for i in range(concurrency)])
    long = prompt(200)
    engine.generate([long, long[:150] + prompt(20)], SamplingParams(max_tokens=55, temperature=0, ignore_eos=True))
    engine.generate([long], greedy)  # a prefix-cache hit
    # more context than the cache holds for all at once: preemption and recompute
    engine.generate([prompt(rng.randrange(60, 180)) for _ in range(8)],
                    SamplingParams(max_tokens=60, temperature=0.8, seed=3, ignore_eos=True))
    engine.generate([prompt(9)], SamplingParams(n=3, max_tokens=20, temperature=1.0, seed=1, ignore_eos=True))
    engine.generate([prompt(11)], SamplingParams(max_tokens=16, use_beam_search=True, beam_width=4, temperature=0))
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def record(loaded, monkeypatch, config: EngineConfig = CONFIG) -> CompileKeys:
    monkeypatch.setenv("KERNELSERVE_TUNING", "off")  # each GEMM's first candidate: a GPU's warm-up picks one too
    keys = CompileKeys(phase="warm-up")
    with recording(keys):
        engine = LLMEngine(loaded, config)
        keys.phase = "serving"
        workload(engine)
    assert engine.counters.prompt_tokens > 0 and keys.launches > 0
    return keys


def test_every_key_serving_needs_was_compiled_in_warm_up(shrunk_smollm2, monkeypatch):
    keys = record(shrunk_smollm2, monkeypatch)
    missed = keys.keys("serving")
    assert not missed, "compiled after ready:\n" + "\n".join(map(str, sorted(missed)))
    warm = keys.per_kernel("warm-up")
    print(f"\nwarm-up compiles {sum(warm.values())} kernels for this model: {warm}")
    assert {"_paged_attention_kernel", "_attention_kernel", "_store_kv_kernel", "_rotary_kernel"} <= set(warm)


def test_the_coverage_check_fails_when_warm_up_misses_a_bucket(shrunk_smollm2, monkeypatch):
    real = warmup_module.WarmupPlan.for_engine

    def without_the_largest_prefill(config):  # the one bucket past the split-K GEMMs' 64 rows
        plan = real(config)
        return dataclasses.replace(plan, prefill_tokens=plan.prefill_tokens[:-1])

    monkeypatch.setattr(warmup_module.WarmupPlan, "for_engine", staticmethod(without_the_largest_prefill))
    missed = record(shrunk_smollm2, monkeypatch).keys("serving")
    assert {name for name, *_ in missed} == {"_linear_kernel", "_gated_kernel"}
