"""Host work per step: the eager path's inputs go to the device in one copy and are checked once on the host;
the kernels' per-call argument checks are skipped in engine steps and run during the warm-up."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import kernels
from kernels import _validate
from service.engine import EngineConfig, LLMEngine, SamplingParams
from service.engine.scheduler import ScheduledChunk, SchedulerOutput
from service.engine.sequence import Sequence
from service.engine.staging import Staging

from .conftest import chat_ids


class MadeFromHostData(TorchDispatchMode):
    """Counts tensors made from Python data (each one a host-to-device copy on a GPU)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def checked_names(monkeypatch):
    """The names of the tensor arguments kernel launchers check, as they check them."""
    import kernels.decode_gemm
    import kernels.flash_attention
    import kernels.gemm
    import kernels.norms
    import kernels.paged
    import kernels.quant_gemm
    import kernels.rope

    names = []
    real_check = _validate.check_tensor

    def spy(name, *args, **kwargs):
        names.append(name)
        return real_check(name, *args, **kwargs)

    for module in (_validate, kernels.flash_attention, kernels.gemm, kernels.norms, kernels.paged,
                   kernels.quant_gemm, kernels.rope, kernels.decode_gemm):
        if hasattr(module, "check_tensor"):
            monkeypatch.setattr(module, "check_tensor", spy)
    return names


def test_staging_sends_every_list_in_one_tensor():
    staging = Staging("cpu", torch.int32)
    with MadeFromHostData() as made:
        a, b, c = staging.send([1, 2, 3], [], [7])
    assert made.count == 1 and a.tolist() == [1, 2, 3] and b.numel() == 0 and c.tolist() == [7]
    assert a.dtype == torch.int32 and a.untyped_storage().data_ptr() == c.untyped_storage().data_ptr()
    assert staging.send() == []


def _mixed_step(engine, smollm):
    """A step with a prefill chunk (after a cached prefix) and decodes, run once so blocks are allocated."""
    params = SamplingParams(max_tokens=8, temperature=0)
    for i, q in enumerate(["Name three colors.", "What is 2+2?"]):
        engine.add_request(f"d{i}", chat_ids(smollm, q), params)
    engine.step()  # both prefilled: the next step decodes them
    engine.add_request("p", chat_ids(smollm, "Describe the sea in many words, please."), params)
    return engine.scheduler.schedule()


@pytest.mark.slow
def test_an_eager_step_makes_one_tensor_from_host_data_and_skips_kernel_checks(smollm, checked_names):
    engine = LLMEngine(smollm, EngineConfig(cuda_graphs="off"))
    out = _mixed_step(engine, smollm)
    assert out.prefills[0].start > 0 and out.decodes  # the chat template's system prompt came from the cache
    checked_names.clear()
    with MadeFromHostData() as made:
        logits, seqs = engine.runner.run(out)
    assert made.count == 1  # tokens, positions, slots, cu_seqlens, tables, lengths and logit rows together
    assert checked_names == []  # no kernel checked its arguments: the runner vouched for them
    with kernels.trusted_calls(False):  # the same step with checks asked for: the spy sees them
        engine.runner._run(out)
    assert {"q", "k_cache", "block_tables", "positions"} <= set(checked_names)
    assert logits.shape == (len(out.decodes) + 1, smollm.config.vocab_size) and len(seqs) == len(out.decodes) + 1


@pytest.mark.slow
def test_warmup_checks_the_kernel_arguments_of_every_shape_it_runs(smollm, checked_names):
    engine = LLMEngine(smollm, EngineConfig(warmup="on", cuda_graphs="off", max_num_batched_tokens=64,
                                            max_model_len=128, max_num_seqs=4))
    assert {"q", "k_cache", "block_tables", "positions", "x"} <= set(checked_names)
    assert not engine.runner.check_kernel_args  # and off again for serving


def test_trusted_calls_skip_the_checks_but_not_the_kernels_masking(monkeypatch):
    q = torch.randn(3, 2, 16)
    k = torch.randn(3, 1, 16)
    cache = kernels.rotary_cos_sin_cache(16, 8, 10000.0)
    positions = torch.tensor([0, 5, 100])  # 100 is past the 8-position cache
    with pytest.raises(ValueError, match="positions"):
        kernels.rotary(q.clone(), k.clone(), positions, cache)
    with kernels.trusted_calls():
        q2, _ = kernels.rotary(q.clone(), k.clone(), positions, cache)
        assert torch.equal(q2[2], q[2])  # the out-of-range token is left unrotated, never read past the cache
        with pytest.raises(ValueError), kernels.trusted_calls(False):  # an inner scope may ask for checks
            kernels.rotary(q.clone(), k.clone(), positions, cache)
    monkeypatch.setenv(_validate.CHECK_ARGS_ENV, "always")
    with pytest.raises(ValueError, match="positions"), kernels.trusted_calls():
        kernels.rotary(q.clone(), k.clone(), positions, cache)


@pytest.mark.slow
def test_a_step_with_an_index_outside_the_cache_is_refused_on_the_host(smollm):
    engine = LLMEngine(smollm, EngineConfig(cuda_graphs="off"))
    seq = Sequence("bad", 0, [1, 2, 3], SamplingParams(max_tokens=2))
    seq.block_table = [engine.block_manager.num_blocks]  # one past the last block
    with pytest.raises(RuntimeError, match="KV slot"):
        engine.runner.run(SchedulerOutput(prefills=[ScheduledChunk(seq, 0, 3)]))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.float32])
def test_staged_parts_start_16_bytes_aligned_whatever_their_lengths(dtype):
    """Triton compiles a kernel per alignment of its pointer arguments: a view at an odd 4-byte offset in one
    step and an aligned one in the next would compile twice (tests/engine/test_compile_coverage.py)."""
    lists = [[1, 2, 3], [], [4], list(range(17)), [5, 6]]
    parts = Staging("cpu", dtype).send(*lists)
    assert [p.tolist() for p in parts] == [[float(v) for v in l] if dtype == torch.float32 else l for l in lists]
    assert all(p.data_ptr() % 16 == 0 for p in parts)
