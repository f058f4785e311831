"""The engine serving random T5 and BART models: batched requests against transformers' generate."""
from __future__ import annotations

import pytest
import torch

from service.engine import EngineConfig, LLMEngine, SamplingParams

from ..models.test_encoder_decoder import PROMPTS, random_seq2seq


@pytest.fixture(scope="module", params=["t5-gated-gelu", "bart"])
def pair(request, tmp_path_factory, smollm):
    return random_seq2seq(request.param, tmp_path_factory.mktemp(request.param), smollm.tokenizer, 1)


def test_engine_batch_matches_transformers_greedy(pair):
    ours, hf = pair
    engine = LLMEngine(ours, EngineConfig(max_num_batched_tokens=64))
    prompts = PROMPTS + [[5, 6, 7, 8, 1], list(range(600, 620)) + [1]]
    outs = engine.generate(prompts, SamplingParams(max_tokens=10, temperature=0, skip_special_tokens=False))
    for ids, out in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, num_beams=1)[0, 1:].tolist()
        assert out[0].token_ids == ref
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert not engine.runner.cross_kv, "cross-attention K/V are freed with their sequences"
    assert not engine.block_manager.enable_prefix_caching
