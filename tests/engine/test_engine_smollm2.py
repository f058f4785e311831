"""The engine on SmolLM2-135M-Instruct (real weights): batching, seeds, preemption, abort, prefix cache, stops."""
from __future__ import annotations

import pytest

from service.engine import EngineConfig, LLMEngine, SamplingParams

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Name three colors.", "Count from 1 to 5.", "Tell me a joke.",
             "What is 2+2?", "Write one word.", "Describe the sea.", "Who wrote Hamlet?", "Say hello in Spanish.",
             "List two fruits.", "What is Python?", "Give me a number.", "Why is the sky blue?",
             "Name a planet.", "What day comes after Monday?", "Spell cat."]


@pytest.fixture(scope="module")
def prompts(smollm):
    tok = smollm.tokenizer
    return [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])) for q in QUESTIONS]


def run(loaded, prompts, params, **config):
    engine = LLMEngine(loaded, EngineConfig(**config))
    outs = engine.generate(prompts, params)
    return [[(o.token_ids, o.text, o.finish_reason) for o in seqs] for seqs in outs], engine


GREEDY = SamplingParams(max_tokens=24, temperature=0)


def test_greedy_batched_equals_one_at_a_time(smollm, prompts):
    together, engine = run(smollm, prompts, GREEDY)
    alone = [run(smollm, [p], GREEDY)[0][0] for p in prompts]
    assert together == alone
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_seeded_sampling_does_not_depend_on_the_batch(smollm, prompts):
    params = [SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, top_k=50, seed=1000 + i)
              for i in range(len(prompts))]
    together, _ = run(smollm, prompts, params)
    alone = [run(smollm, [prompts[i]], params[i])[0][0] for i in (0, 5, 11)]
    assert [together[i] for i in (0, 5, 11)] == alone
    unseeded_a, _ = run(smollm, prompts[:2], SamplingParams(max_tokens=16, temperature=1.0, seed=7))
    unseeded_b, _ = run(smollm, prompts[:2], SamplingParams(max_tokens=16, temperature=1.0, seed=7))
    assert unseeded_a == unseeded_b


def test_small_kv_cache_preempts_and_still_matches(smollm, prompts):
    reference, _ = run(smollm, prompts, GREEDY)
    cfg = smollm.config
    per_block = 2 * cfg.num_layers * 16 * cfg.num_kv_heads * cfg.head_dim * 4
    tight, engine = run(smollm, prompts, GREEDY, kv_cache_memory=12 * per_block)  # 12 blocks for 16 sequences
    assert engine.scheduler.num_preemptions > 0
    assert tight == reference
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_abort_mid_generation_returns_every_block(smollm, prompts):
    engine = LLMEngine(smollm, EngineConfig())
    for i, p in enumerate(prompts[:4]):
        engine.add_request(f"r{i}", p, SamplingParams(max_tokens=64, temperature=0, ignore_eos=True))
    for _ in range(5):
        engine.step()
    assert engine.block_manager.num_free_blocks < engine.block_manager.num_blocks
    finals = [engine.abort(f"r{i}") for i in range(4)]
    assert all(f.finished and f.outputs[0].finish_reason == "abort" for f in finals)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert not engine.has_unfinished()


def test_repeated_system_prompt_hits_the_prefix_cache(smollm):
    tok = smollm.tokenizer
    system = {"role": "system", "content": "You are a meticulous assistant who answers in one short sentence. " * 3}
    chats = [tok.encode(tok.apply_chat_template([system, {"role": "user", "content": q}])) for q in QUESTIONS[:4]]
    engine = LLMEngine(smollm, EngineConfig())
    first = engine.generate(chats[:1], GREEDY)
    rest = engine.generate(chats[1:], GREEDY)
    common = next(i for i, col in enumerate(zip(*chats)) if len(set(col)) > 1)
    assert common >= 32, "the shared system prompt spans at least two blocks"
    assert engine.block_manager.stats.hits == 3 * (common // 16 * 16)
    cold, _ = run(smollm, chats, GREEDY, enable_prefix_caching=False)
    warm = [(o.token_ids, o.text, o.finish_reason) for seqs in first + rest for o in seqs]
    assert warm == [seqs[0] for seqs in cold]


def test_stop_strings_spanning_tokens_are_cut_exactly(smollm, prompts):
    tok = smollm.tokenizer
    plain, _ = run(smollm, prompts[:1], SamplingParams(max_tokens=24, temperature=0))
    ids, text, _ = plain[0][0]
    # a stop string that starts inside one token and ends inside a later one
    pieces = [tok.decode(ids[: i + 1]) for i in range(len(ids))]
    start = len(pieces[1]) - 2
    stop = text[start:start + 6]
    assert len(stop) == 6
    out, _ = run(smollm, prompts[:1], SamplingParams(max_tokens=24, temperature=0, stop=[stop]))
    _, cut, reason = out[0][0]
    assert reason == "stop" and cut == text[:start]
    kept, _ = run(smollm, prompts[:1], SamplingParams(max_tokens=24, temperature=0, stop=[stop],
                                                      include_stop_str_in_output=True))
    assert kept[0][0][1] == text[:start] + stop


def test_n_sequences_share_the_prompt(smollm, prompts):
    engine = LLMEngine(smollm, EngineConfig())
    out = engine.generate(prompts[:1], SamplingParams(n=3, max_tokens=12, temperature=1.0, seed=3))[0]
    assert [o.index for o in out] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in out}) > 1, "different seeds per sequence"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
