"""Beam search against transformers' generate(num_beams=4, do_sample=False), and block accounting."""
from __future__ import annotations

import pytest
import torch

from service.engine import EngineConfig, LLMEngine, SamplingParams

from ..models.test_encoder_decoder import PROMPTS as ENCDEC_PROMPTS
from ..models.test_encoder_decoder import random_seq2seq

BEAMS = SamplingParams(use_beam_search=True, beam_width=4, n=2, max_tokens=12, temperature=0,
                       skip_special_tokens=False)


def hf_beams(hf, ids, max_new, n, **extra):
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=max_new, num_beams=4, num_return_sequences=n,
                          do_sample=False, **{"length_penalty": 1.0, "early_stopping": False, "no_repeat_ngram_size": 0, **extra})
    return out


@pytest.mark.slow
def test_smollm2_beam_search_matches_transformers(smollm):
    from transformers import AutoModelForCausalLM
    import os

    path = smollm.source
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                              dtype=torch.float32).eval()
    tok = smollm.tokenizer
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}]))
               for q in ("What is the capital of France?", "Name a colour.")]
    engine = LLMEngine(smollm, EngineConfig())
    outs = engine.generate(prompts, BEAMS)
    for ids, out in zip(prompts, outs):
        ref = hf_beams(hf, ids, 12, 2, pad_token_id=2)
        expected = [row[len(ids):].tolist() for row in ref]
        got = [o.token_ids + [2] * (len(expected[0]) - len(o.token_ids)) for o in out]  # HF pads short beams
        assert got == expected
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


@pytest.fixture(scope="module", params=["t5-gated-gelu", "bart"])
def peaked_pair(request, tmp_path_factory, smollm):
    """Random T5 / BART with larger random weights: peaked, varied distributions. (A freshly
    initialised model is near-degenerate: many beams tie to 1e-5 and rounding picks among them.)"""
    def widen(hf):
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0, 2.0 / p.shape[1] ** 0.5)
            else:
                p.add_(torch.randn_like(p) * 0.5)

    return random_seq2seq(request.param, tmp_path_factory.mktemp(request.param + "-peaked"), smollm.tokenizer, 3,
                          widen)


def test_encoder_decoder_beam_search_matches_transformers(peaked_pair):
    ours, hf = peaked_pair
    engine = LLMEngine(ours, EngineConfig(max_num_batched_tokens=64))
    outs = engine.generate(ENCDEC_PROMPTS, BEAMS)
    pad = hf.config.pad_token_id
    for ids, out in zip(ENCDEC_PROMPTS, outs):
        ref = hf_beams(hf, ids, 12, 2)
        expected = [row[1:].tolist() for row in ref]
        got = [o.token_ids + [pad] * (len(expected[0]) - len(o.token_ids)) for o in out]
        assert got == expected
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert not engine.runner.cross_kv


def test_forked_beams_copy_on_write_keeps_blocks_consistent():
    from service.engine.block_manager import BlockManager
    from service.engine.sequence import Sequence

    bm = BlockManager(8, 16)
    parent = Sequence("r", 0, list(range(20)), SamplingParams())
    bm.allocate(parent)
    parent.num_computed_tokens = 20
    child = Sequence("r", 1, list(range(20)), SamplingParams())
    bm.fork(parent, child)
    assert [bm.blocks[b].ref_count for b in parent.block_table] == [2, 2]
    parent.output_token_ids.append(1)
    child.output_token_ids.append(2)
    bm.append_slot(parent)  # position 20 is in the shared, partly filled block 1: copy it
    assert bm.take_copies() == [(child.block_table[1], parent.block_table[1])]
    assert parent.block_table[0] == child.block_table[0] and parent.block_table[1] != child.block_table[1]
    bm.append_slot(child)  # now the child's block 1 is its own: no copy
    assert bm.take_copies() == []
    bm.free_sequence(parent)
    bm.free_sequence(child)
    assert bm.num_free_blocks == 8


def test_forced_target_language_beam_search_matches_transformers(tmp_path):
    """NLLB's target language forced after the decoder start: the same beams and order as generate with
    forced_bos_token_id, whose length normalisation counts the forced token."""
    from dataclasses import replace

    from models import load_model
    from models.translation import language_codes

    from ..encoder_models import CORPUS, save_nllb

    folder, hf = save_nllb(tmp_path, seed=4)
    ours = load_model(folder)
    target = language_codes(ours.tokenizer)["fra_Latn"]
    prompts = [ours.tokenizer.encode(t) for t in CORPUS[:6]]
    engine = LLMEngine(ours, EngineConfig(max_num_batched_tokens=64))
    for early in (False, True, "never"):
        params = replace(BEAMS, forced_token_ids=(target,), early_stopping=early, length_penalty=0.5)
        for ids, out in zip(prompts, engine.generate(prompts, params)):
            ref = hf_beams(hf, ids, 13, 2, forced_bos_token_id=target, pad_token_id=1, early_stopping=early,
                           length_penalty=0.5)
            expected = [row[2:].tolist() for row in ref]
            assert ref[:, 1].tolist() == [target, target]
            got = [o.token_ids + [1] * (len(expected[0]) - len(o.token_ids)) for o in out]
            assert got == expected, early
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_forced_tokens_count_in_beam_lengths():
    """A hypothesis ending at the first step after one forced token is scored logprob / 2 ** length_penalty (its
    generated length counts the forced token, as transformers' does), not logprob / 1."""
    from types import SimpleNamespace

    from service.engine.beam import BeamState

    params = SamplingParams(use_beam_search=True, beam_width=2, max_tokens=8, length_penalty=2.0)
    logprobs = torch.log_softmax(torch.tensor([3.0, 2.0, 1.0, -5.0]), -1)  # token 0 (the stop token) best
    for forced, length in ((0, 1), (1, 2)):
        state = BeamState(params, stop_ids={0}, scores={7: 0.0}, forced=forced)
        state.rows[7] = logprobs
        state.advance([SimpleNamespace(seq_id=7, output_token_ids=[])])
        assert state.finished[0].token_ids == [0]
        assert state.finished[0].score == pytest.approx(float(logprobs[0]) / length ** 2.0)


def test_model_bad_words_apply_to_sampling_and_beams(tmp_path):
    """generation_config.json's bad_words_ids (Marian keeps its <pad> start token out) hold for every request: the
    token greedy and beam search pick first without the ban never appears with it."""
    from dataclasses import replace

    from models import load_model

    from ..encoder_models import save_marian

    folder, _ = save_marian(tmp_path)
    loaded = load_model(folder)
    assert loaded.bad_words == ((loaded.config.pad_token_id,),)
    prompt = [loaded.tokenizer.encode(">>fra<< Hello, how are you?")]
    for params in (SamplingParams(max_tokens=8, temperature=0), replace(BEAMS, n=1, max_tokens=8)):
        free = LLMEngine(replace(loaded, bad_words=()), EngineConfig()).generate(prompt, params)[0][0].token_ids
        banned = replace(loaded, bad_words=((free[0],),))
        out = LLMEngine(banned, EngineConfig()).generate(prompt, params)[0][0].token_ids
        assert free[0] not in out and out[0] != free[0]
