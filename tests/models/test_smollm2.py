"""SmolLM2-135M-Instruct from its GGUF (real weights) against transformers on the same file."""
from __future__ import annotations

import pytest
import torch

from .helpers import first_divergence_ok, full_logits, greedy_generate, step_metadata, PagedCache

pytestmark = pytest.mark.slow

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "List three prime numbers."}],
    [{"role": "user", "content": "Write a haiku about the sea."}, {"role": "assistant", "content": "Waves"},
     {"role": "user", "content": "Another, about mountains, please: é 日本 🙂"}],
]


@pytest.fixture(scope="module")
def prompt_ids(smollm):
    return [smollm.tokenizer.encode(smollm.tokenizer.apply_chat_template(m)) for m in PROMPTS]


def test_chat_template_and_tokens_match_transformers(smollm, smollm_hf, prompt_ids):
    _, hf_tok = smollm_hf
    for messages, ids in zip(PROMPTS, prompt_ids):
        text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert smollm.tokenizer.apply_chat_template(messages) == text
        assert ids == hf_tok(text).input_ids
    sample = "Byte-level: naïve café, 12345, \t tabs, emoji 🙂 and <|im_end|> special"
    assert smollm.tokenizer.encode(sample) == hf_tok(sample).input_ids
    assert smollm.tokenizer.decode(hf_tok(sample).input_ids, skip_special_tokens=False) == sample


def test_logits_match_transformers_at_every_position(smollm, smollm_hf, prompt_ids):
    hf, _ = smollm_hf
    for ids in prompt_ids:
        ours = full_logits(smollm.model, ids)
        with torch.no_grad():
            theirs = hf(torch.tensor([ids])).logits[0].float()
        assert (ours - theirs).abs().max().item() <= 2e-3


def test_greedy_generation_matches_transformers(smollm, smollm_hf, prompt_ids):
    hf, _ = smollm_hf
    ours = greedy_generate(smollm.model, prompt_ids, 64, eos_ids=smollm.eos_token_ids)
    for ids, mine in zip(prompt_ids, ours):
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False, output_logits=True,
                              return_dict_in_generate=True, pad_token_id=2)
        theirs = out.sequences[0, len(ids):].tolist()
        if mine != theirs:  # only a near tie may flip a token (vLLM's rule)
            our_logits = full_logits(smollm.model, ids + mine)[len(ids) - 1:]
            assert first_divergence_ok(mine, theirs, our_logits, torch.cat(out.logits))


def test_kv_cache_decode_equals_full_recompute(smollm, prompt_ids):
    ids = prompt_ids[1]
    generated = greedy_generate(smollm.model, [ids], 12)[0]
    full = full_logits(smollm.model, ids + generated)
    # the cached path's next-token choices are the argmax of the full recomputation
    assert full[len(ids) - 1:-1].argmax(-1).tolist() == generated[:]


def test_packed_mixed_batch_equals_each_alone(smollm, prompt_ids):
    """One step holding a chunked prefill with a cached prefix, a fresh prefill and decodes."""
    model = smollm.model
    a, b, c = prompt_ids
    cache = PagedCache(model.cfg, 3, 128)
    with torch.no_grad():
        # step 1: all of c and the first half of a; step 2: rest of a (prefix cached), all of b, decode c
        half = len(a) // 2
        meta = step_metadata(cache, [(0, 0, half), (2, 0, len(c))], [])
        h = model(torch.tensor(a[:half] + c), torch.cat([torch.arange(half), torch.arange(len(c))]), meta, cache.layers)
        c_next = int(model.logits(h[-1:]).argmax())
        meta = step_metadata(cache, [(0, half, len(a)), (1, 0, len(b))], [(2, len(c))])
        tokens = torch.tensor(a[half:] + b + [c_next])
        positions = torch.cat([torch.arange(half, len(a)), torch.arange(len(b)), torch.tensor([len(c)])])
        mixed = model.logits(model(tokens, positions, meta, cache.layers))
    torch.testing.assert_close(mixed[: len(a) - half], full_logits(model, a)[half:], atol=2e-4, rtol=0)
    torch.testing.assert_close(mixed[len(a) - half: -1], full_logits(model, b), atol=2e-4, rtol=0)
    torch.testing.assert_close(mixed[-1], full_logits(model, c + [c_next])[-1], atol=2e-4, rtol=0)
