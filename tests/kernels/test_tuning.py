"""Tile tuning without a GPU: buckets, the choice, its persistence, and counting what happens after ready."""
from __future__ import annotations

import json

import pytest
import triton

from kernels import tuning
from kernels.gemm import GATED_CONFIGS, LINEAR_CONFIGS
from kernels.tuning import Tuner, TuningCache, m_bucket, m_buckets


class FakeKernel:
    """Records the config of each launch, as ``kernel[grid](*args, **meta)`` would run it."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        def run(*args, **meta):
            self.launches.append((grid, meta["BLOCK_M"], meta["num_warps"]))
        return run


CANDIDATES = [triton.Config({"BLOCK_M": m}, num_warps=w, num_stages=2) for m, w in ((64, 4), (32, 4), (16, 2))]
SPEED = {64: 3.0, 32: 1.0, 16: 2.0}  # ms per launch: the 32-row tile wins


@pytest.fixture
def stats(monkeypatch):
    fresh = tuning.TuningStats()
    monkeypatch.setattr(tuning, "STATS", fresh)
    from triton import knobs
    monkeypatch.setattr(knobs.runtime, "jit_post_compile_hook", None)
    return fresh


def make_tuner(cache, timed):
    def timer(launch):
        kernel.launches.clear()
        launch()
        block = kernel.launches[-1][1]
        timed.append(block)
        return SPEED[block]
    kernel = FakeKernel()
    return Tuner("fake", kernel, lambda dtype: CANDIDATES, timer=timer, cache=cache), kernel


def grid(c):
    return (128 // c.kwargs["BLOCK_M"],)


def test_buckets_cover_every_step_size():
    assert [m_bucket(m) for m in (0, 1, 2, 3, 5, 64, 65, 4096, 10_000)] == [1, 1, 2, 4, 8, 64, 128, 4096, 4096]
    assert m_buckets(2048) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    assert m_buckets(100) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert all(m_bucket(m) in m_buckets(300) for m in range(1, 301))


def test_the_fastest_config_is_chosen_once_and_persisted(tmp_path, stats):
    path = str(tmp_path / "gpu.json")
    timed = []
    tuner, kernel = make_tuner(TuningCache(path), timed)
    tuner.launch(("bf16", 8, 256, 64), grid, (), {}, ("bf16",))
    assert sorted(timed) == [16, 32, 64] and kernel.launches[-1] == ((4,), 32, 4)
    tuner.launch(("bf16", 8, 256, 64), grid, (), {}, ("bf16",))  # the memo: no timing
    assert len(timed) == 3 and stats.tunings == 1
    assert json.load(open(path)) == {"fake|bf16|8|256|64": [[["BLOCK_M", 32]], 4, 2]}
    # a restart reads the file: nothing is timed again
    again, kernel2 = make_tuner(TuningCache(path), timed)
    again.cache.load()
    again.launch(("bf16", 8, 256, 64), grid, (), {}, ("bf16",))
    assert len(timed) == 3 and kernel2.launches == [((4,), 32, 4)] and stats.tunings == 1


def test_a_stale_or_broken_cache_is_tuned_again(tmp_path, stats):
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({"fake|k": [[["BLOCK_M", 128]], 8, 3]}))  # not a candidate any more
    timed = []
    tuner, _ = make_tuner(TuningCache(str(path)), timed)
    tuner.cache.load()
    tuner.launch(("k",), grid, (), {}, ("bf16",))
    assert len(timed) == 3
    path.write_text("{not json")
    broken = TuningCache(str(path))
    broken.load()
    assert broken.choices == {}


def test_tunings_and_compilations_after_ready_are_counted(tmp_path, stats):
    timed = []
    tuner, _ = make_tuner(TuningCache(None), timed)
    tuner.launch(("warm",), grid, (), {}, ("bf16",))
    tuning.mark_ready()
    assert stats.ready and stats.tunings_after_ready == 0
    tuner.launch(("warm",), grid, (), {}, ("bf16",))
    assert stats.tunings_after_ready == 0
    tuner.launch(("missed",), grid, (), {}, ("bf16",))
    assert stats.tunings == 2 and stats.tunings_after_ready == 1
    from triton import knobs
    knobs.runtime.jit_post_compile_hook(key="k", repr="_linear_kernel", fn=None, compile=None,
                                        is_manual_warmup=False, already_compiled=False)
    assert stats.compilations_after_ready == 1


def test_cache_file_names_are_per_gpu_and_triton(tmp_path):
    cache = TuningCache.for_device("NVIDIA H200 (PCIe)", folder=str(tmp_path))
    assert cache.path.endswith(f"NVIDIA-H200--PCIe--triton-{triton.__version__}.json")


def test_gemm_tuners_offer_the_dtype_tables():
    import torch

    from kernels.gemm import GATED_TUNER, LINEAR_TUNER

    assert LINEAR_TUNER.candidates(torch.bfloat16) == LINEAR_CONFIGS[16]
    assert LINEAR_TUNER.candidates(torch.float32) == LINEAR_CONFIGS[32]
    assert GATED_TUNER.candidates(torch.float16) == GATED_CONFIGS[16]


def test_tuning_off_takes_the_first_candidate_untimed(monkeypatch, stats):
    monkeypatch.setenv("KERNELSERVE_TUNING", "off")
    timed = []
    tuner, kernel = make_tuner(TuningCache(None), timed)
    tuner.launch(("k",), grid, (), {}, ("bf16",))
    assert timed == [] and kernel.launches == [((2,), 64, 4)] and stats.tunings == 0
