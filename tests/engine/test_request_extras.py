"""vLLM's request extras in the engine: min_tokens, bad_words, prompt_logprobs, priority scheduling."""
from __future__ import annotations

import asyncio

import pytest

from service.engine import (
    AsyncEngine,
    EngineConfig,
    LLMEngine,
    RequestError,
    SamplingParams,
)

from .conftest import chat_ids

pytestmark = pytest.mark.slow


def test_min_tokens_holds_back_eos(engine, smollm):
    eos = next(iter(smollm.eos_token_ids))
    prompt = chat_ids(smollm, "Say nothing.")
    eager = SamplingParams(max_tokens=20, temperature=0, logit_bias=((eos, 100.0),))
    assert engine.generate([prompt], eager)[0][0].token_ids == [eos]  # EOS first, without min_tokens
    held = engine.generate([prompt], SamplingParams(max_tokens=20, temperature=0, logit_bias=((eos, 100.0),),
                                                    min_tokens=5))[0][0]
    assert len(held.token_ids) == 6 and held.token_ids[-1] == eos and eos not in held.token_ids[:5]
    assert held.finish_reason == "stop"


def test_bad_words_are_never_generated(engine, smollm):
    prompt = smollm.tokenizer.encode("The capital of France is")
    free = engine.generate([prompt], SamplingParams(max_tokens=8, temperature=0))[0][0]
    assert "Paris" in free.text
    tok = smollm.tokenizer
    words = tuple(tuple(tok.encode(w, add_special_tokens=False)) for w in ("Paris", " Paris"))
    banned = engine.generate([prompt], SamplingParams(max_tokens=8, temperature=0, bad_words_token_ids=words))[0][0]
    assert "Paris" not in banned.text
    out = banned.token_ids
    for word in words:
        assert not any(tuple(out[i:i + len(word)]) == word for i in range(len(out)))


def test_prompt_logprobs_match_one_step_generation(engine, smollm):
    """Prompt position t's logprobs are the next-token distribution after tokens 0..t: the same numbers
    as the logprobs of generating one token from that prefix (same kernels, another batch shape)."""
    prompt = smollm.tokenizer.encode("The quick brown fox jumps over the lazy dog")
    engine.generate([prompt], SamplingParams(max_tokens=1, temperature=0))  # its blocks are now cached...
    done = engine.generate([prompt], SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=3))
    assert done[0][0].token_ids  # ...and prompt_logprobs still computed every position (no prefix reuse)
    engine.add_request("plp", prompt, SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=3))
    final = None
    while engine.has_unfinished():
        for out in engine.step():
            final = out if out.finished else final
    entries = final.prompt_logprobs
    assert len(entries) == len(prompt) - 1
    for t in (0, 3, len(prompt) - 2):
        ref = engine.generate([prompt[:t + 1]], SamplingParams(max_tokens=1, temperature=0, logprobs=20))[0][0]
        top = dict(ref.logprobs[0].top)
        logprob, rank, alts = entries[t]
        assert [tok for tok, _ in alts] == [tok for tok, _ in ref.logprobs[0].top[:3]]
        for tok, lp in alts:
            assert lp == pytest.approx(top[tok], abs=1e-4)  # float32 logits, reductions in another order
        target = prompt[t + 1]
        if target in top:
            assert logprob == pytest.approx(top[target], abs=1e-4)
            assert rank == [tok for tok, _ in ref.logprobs[0].top].index(target) + 1
        assert logprob <= alts[0][1] + 1e-6 and rank >= 1


def test_priority_policy_runs_lower_values_first(smollm):
    engine = LLMEngine(smollm, EngineConfig(max_num_seqs=1, scheduling_policy="priority"))
    prompt = chat_ids(smollm, "Count to three.")
    for name, priority in [("late", 5), ("first", -1), ("second", 2)]:
        engine.add_request(name, prompt, SamplingParams(max_tokens=3, temperature=0, ignore_eos=True,
                                                        priority=priority))
    order = []
    while engine.has_unfinished():
        order += [o.request_id for o in engine.step() if o.finished]
    assert order == ["first", "second", "late"]


def test_priority_under_fcfs_is_refused(engine, smollm):
    with pytest.raises(RequestError) as err:
        engine.add_request("p", chat_ids(smollm, "hi"), SamplingParams(priority=3))
    assert err.value.param == "priority"


def test_priority_preempts_the_least_urgent(smollm):
    cfg = smollm.config
    per_block = 2 * cfg.num_layers * 16 * cfg.num_kv_heads * cfg.head_dim * 4
    engine = LLMEngine(smollm, EngineConfig(kv_cache_memory=6 * per_block, scheduling_policy="priority"))
    prompt = smollm.tokenizer.encode("a b c d e f g h i j k l m n o p q r s t u v w x y z")  # 2 blocks each
    for name, priority in [("urgent", 0), ("relaxed", 9)]:
        engine.add_request(name, prompt, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True,
                                                        priority=priority))
    preempted = []
    while engine.has_unfinished():
        engine.step()
        preempted += [s.request_id for s in engine.scheduler.waiting if s.num_preemptions]
    assert engine.scheduler.num_preemptions > 0 and set(preempted) == {"relaxed"}


def test_a_request_id_in_flight_cannot_be_reused(smollm):
    async def scenario():
        async_engine = AsyncEngine(LLMEngine(smollm, EngineConfig()))
        async_engine.start()
        try:
            params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
            first = await async_engine.generate("mine", chat_ids(smollm, "hi"), params)
            with pytest.raises(RequestError, match="already in use"):
                await async_engine.generate("mine", chat_ids(smollm, "hello"), params)
            tokens = []
            async for out in first:
                tokens += out.outputs[0].token_ids if out.outputs else []
            assert len(tokens) == 30  # the first stream is whole and its own
        finally:
            async_engine.shutdown()
    asyncio.run(scenario())


def test_sampler_ban_falls_back_to_the_grammar(smollm):
    """min_tokens bans EOS, but a finished grammar allows only EOS: the grammar wins (output stays valid)."""
    from service.engine.grammar import GrammarSpec

    engine = LLMEngine(smollm, EngineConfig())
    out = engine.generate([chat_ids(smollm, "yes or no?")], SamplingParams(
        max_tokens=10, min_tokens=8, temperature=0, grammar=GrammarSpec.choice(["yes", "no"])))[0][0]
    assert out.text in ("yes", "no") and out.finish_reason == "stop"
    assert len(out.token_ids) < 8


def test_prompt_logprobs_come_once_in_the_first_output_after_the_prompt(engine, smollm):
    """A stream can send an echoed prompt's logprobs before the first generated token (completions' echo)."""
    prompt = smollm.tokenizer.encode("Roses are red, violets are")
    engine.add_request("early", prompt, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True,
                                                       prompt_logprobs=1))
    outputs = []
    while engine.has_unfinished():
        outputs += [o for o in engine.step() if o.request_id == "early"]
    assert len(outputs) >= 2 and outputs[0].outputs[0].token_ids  # streamed token by token
    assert len(outputs[0].prompt_logprobs) == len(prompt) - 1
    assert all(o.prompt_logprobs is None for o in outputs[1:])
