"""One request's fault fails that request only: injected errors in sampling, the forward pass,
admission and detokenisation; the others finish with the outputs of a clean run and no block leaks."""
from __future__ import annotations

import asyncio

import pytest

import service.engine.engine as engine_module
from service.engine import AsyncEngine, EngineConfig, LLMEngine, RequestError, RequestFailed, SamplingParams
from service.engine.faults import is_unrecoverable

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Name three colors.", "Count from 1 to 5.", "Tell me a joke."]
GREEDY = SamplingParams(max_tokens=12, temperature=0)
SEEDED = SamplingParams(max_tokens=12, temperature=0.8, seed=5)


@pytest.fixture(scope="module")
def prompts(smollm):
    tok = smollm.tokenizer
    return [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])) for q in QUESTIONS]


@pytest.fixture(scope="module")
def reference(smollm, prompts):
    """Outputs of a run with no fault: the good requests must reproduce them exactly."""
    outs = LLMEngine(smollm).generate(prompts, [GREEDY, SEEDED, GREEDY, SEEDED])
    return [(o[0].token_ids, o[0].text) for o in outs]


def run_until_done(engine: LLMEngine) -> dict[str, dict]:
    """Step to the end; per request the joined tokens/text, or its error."""
    results: dict[str, dict] = {}
    while engine.has_unfinished():
        for out in engine.step():
            r = results.setdefault(out.request_id, {"tokens": [], "text": "", "error": None})
            r["error"] = out.error
            for o in out.outputs:
                r["tokens"] += o.token_ids
                r["text"] += o.text
    return results


def add_all(engine: LLMEngine, prompts, poison_index: int | None = None) -> list[str]:
    ids = []
    for i, (p, params) in enumerate(zip(prompts, [GREEDY, SEEDED, GREEDY, SEEDED])):
        rid = "poison" if i == poison_index else f"good-{i}"
        engine.add_request(rid, p, params)
        ids.append(rid)
    return ids


def assert_good_match(results, ids, reference):
    for i, rid in enumerate(ids):
        if rid == "poison":
            continue
        assert results[rid]["error"] is None
        assert (results[rid]["tokens"], results[rid]["text"]) == reference[i]


def assert_no_leaks(engine: LLMEngine):
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    assert not engine.requests and not engine.scheduler.running and not engine.scheduler.waiting
    assert not engine.runner.cross_kv


def test_sampling_fault_fails_only_its_request(smollm, prompts, reference, monkeypatch):
    real_sample = engine_module.sample
    calls = {"n": 0}

    def sample(logits, seqs, rng, stop_ids=(), staging=None):
        calls["n"] += 1
        if calls["n"] > 3 and any(s.request_id == "poison" for s in seqs):
            raise OverflowError("Overflow when unpacking long long")  # the seed 2**64 failure, injected
        return real_sample(logits, seqs, rng, stop_ids, staging)

    monkeypatch.setattr(engine_module, "sample", sample)
    engine = LLMEngine(smollm)
    ids = add_all(engine, prompts, poison_index=2)
    results = run_until_done(engine)
    assert "poison" in results["poison"]["error"] and "sampling" in results["poison"]["error"]
    assert "OverflowError" in results["poison"]["error"]
    assert_good_match(results, ids, reference)
    assert_no_leaks(engine)
    assert engine.counters.failed == 1


def test_forward_fault_fails_the_step_and_the_engine_goes_on(smollm, prompts, reference, monkeypatch):
    engine = LLMEngine(smollm)
    real_run = engine.runner.run

    def run(out):
        if any(c.seq.request_id == "poison" for c in out.prefills):
            raise RuntimeError("injected kernel failure")
        return real_run(out)

    monkeypatch.setattr(engine.runner, "run", run)
    engine.add_request("poison", prompts[0], GREEDY)
    first = engine.step()
    assert [o.request_id for o in first] == ["poison"] and first[0].finished
    assert "forward pass" in first[0].error and "injected kernel failure" in first[0].error
    assert_no_leaks(engine)
    ids = add_all(engine, prompts)
    assert_good_match(run_until_done(engine), ids, reference)
    assert_no_leaks(engine)


def test_forward_fault_mid_decode_fails_those_in_the_step_only(smollm, prompts, reference, monkeypatch):
    """Requests in the failing step fail together; one added afterwards is served normally."""
    engine = LLMEngine(smollm)
    real_run = engine.runner.run
    state = {"steps": 0}

    def run(out):
        state["steps"] += 1
        if state["steps"] == 4:
            raise RuntimeError("injected")
        return real_run(out)

    monkeypatch.setattr(engine.runner, "run", run)
    engine.add_request("a", prompts[0], GREEDY)
    engine.add_request("b", prompts[1], SEEDED)
    results = run_until_done(engine)
    assert all("injected" in results[r]["error"] for r in ("a", "b"))
    assert_no_leaks(engine)
    engine.add_request("c", prompts[2], GREEDY)
    after = run_until_done(engine)
    assert after["c"]["error"] is None and (after["c"]["tokens"], after["c"]["text"]) == reference[2]
    assert_no_leaks(engine)


def test_detokenisation_fault_fails_only_its_request(smollm, prompts, reference, monkeypatch):
    engine = LLMEngine(smollm)
    ids = add_all(engine, prompts, poison_index=1)
    real_append = engine._append

    def append(seq, token, lp):
        if seq.request_id == "poison" and len(seq.output_token_ids) == 5:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")
        return real_append(seq, token, lp)

    monkeypatch.setattr(engine, "_append", append)
    results = run_until_done(engine)
    assert "detokenisation" in results["poison"]["error"]
    assert_good_match(results, ids, reference)
    assert_no_leaks(engine)


def test_unrecoverable_device_error_propagates(smollm, prompts, monkeypatch):
    engine = LLMEngine(smollm)
    monkeypatch.setattr(engine.runner, "run", lambda out: (_ for _ in ()).throw(
        RuntimeError("CUDA error: an illegal memory access was encountered")))
    engine.add_request("x", prompts[0], GREEDY)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        engine.step()


@pytest.mark.parametrize("err, fatal", [
    (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
    (RuntimeError("CUDA error: device-side assert triggered"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
    (OverflowError("Overflow when unpacking long long"), False),
    (ValueError("bad"), False),
    (KeyboardInterrupt(), True),
])
def test_unrecoverable_classification(err, fatal):
    assert is_unrecoverable(err) is fatal


def test_admission_bounds(smollm, prompts):
    engine = LLMEngine(smollm, EngineConfig(max_n=4, kv_cache_memory=64 * 2**20))
    with pytest.raises(RequestError, match="at most 4") as err:
        engine.add_request("n", prompts[0], SamplingParams(n=5, max_tokens=4))
    assert err.value.param == "n"
    with pytest.raises(RequestError) as err:
        engine.add_request("b", prompts[0], SamplingParams(n=1, use_beam_search=True, beam_width=9, max_tokens=4))
    assert err.value.param == "best_of"
    capacity = engine.block_manager.num_blocks * engine.config.block_size
    per_seq = capacity // 3  # three fit, four do not
    with pytest.raises(RequestError, match="KV-cache blocks") as err:
        engine.add_request("kv", prompts[0], SamplingParams(n=4, max_tokens=per_seq - len(prompts[0])))
    assert err.value.code == "context_length_exceeded"
    vocab = smollm.config.vocab_size
    with pytest.raises(RequestError, match="logit_bias") as err:  # it would land in the next row's logits
        engine.add_request("bias", prompts[0], SamplingParams(max_tokens=4, logit_bias=((vocab, 5.0),)))
    assert err.value.param == "logit_bias"
    assert_no_leaks(engine)
    engine.add_request("fits", prompts[0], SamplingParams(n=2, max_tokens=4, temperature=0))
    assert run_until_done(engine)["fits"]["error"] is None


@pytest.mark.parametrize("field, value", [("seed", 2**64), ("seed", -(2**63) - 1), ("top_k", 2**63)])
def test_sampling_params_reject_out_of_range_integers(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_extreme_seeds_sample(smollm, prompts):
    engine = LLMEngine(smollm)
    for i, seed in enumerate((2**63 - 1, -(2**63), -1)):
        engine.add_request(f"s{i}", prompts[0], SamplingParams(n=2, max_tokens=3, temperature=1.0, seed=seed))
    assert all(r["error"] is None for r in run_until_done(engine).values())
    assert_no_leaks(engine)


def test_async_engine_isolates_and_keeps_serving(smollm, prompts, reference, monkeypatch):
    """Through the async engine: the poisoned stream raises RequestFailed, the next request is served."""
    engine = LLMEngine(smollm)
    real_run = engine.runner.run
    monkeypatch.setattr(engine.runner, "run", lambda out: (_ for _ in ()).throw(ValueError("boom"))
                        if any(c.seq.request_id == "poison" for c in out.prefills) else real_run(out))
    monkeypatch.setattr(engine, "add_request", _fail_for("bad-admit", engine.add_request))
    aengine = AsyncEngine(engine)
    aengine.start()

    async def consume(rid):
        tokens = []
        async for out in await aengine.generate(rid, prompts[0], GREEDY):
            tokens += [t for o in out.outputs for t in o.token_ids]
        return tokens

    async def scenario():
        with pytest.raises(RequestFailed, match="boom"):
            await consume("poison")
        with pytest.raises(RequestFailed, match="admission"):
            await consume("bad-admit")
        return await consume("after")

    try:
        assert asyncio.run(scenario()) == reference[0][0]
        assert not aengine.dead
    finally:
        aengine.shutdown()
    assert_no_leaks(engine)


def _fail_for(request_id, real):
    def add_request(rid, prompt, params):
        if rid == request_id:
            raise OverflowError("injected admission failure")
        return real(rid, prompt, params)
    return add_request


def test_async_engine_dies_on_device_error(smollm, prompts, monkeypatch):
    engine = LLMEngine(smollm)
    monkeypatch.setattr(engine.runner, "run", lambda out: (_ for _ in ()).throw(
        RuntimeError("CUDA error: unspecified launch failure")))
    aengine = AsyncEngine(engine)
    aengine.start()

    async def scenario():
        async for _ in await aengine.generate("x", prompts[0], GREEDY):
            pass

    try:
        with pytest.raises(Exception, match="engine stopped"):
            asyncio.run(scenario())
        assert aengine.dead
    finally:
        aengine.shutdown()
