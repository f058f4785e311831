"""Grammar-constrained decoding in the engine (xgrammar), on SmolLM2's real weights and a random T5."""
from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from service.engine import EngineConfig, LLMEngine, RequestError, SamplingParams
from service.engine.grammar import GrammarError, Grammars, GrammarSpec, mask_logits

from ..models.test_encoder_decoder import random_seq2seq
from .conftest import chat_ids

pytestmark = pytest.mark.slow

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                           "pet": {"enum": ["cat", "dog", "none"]}},
          "required": ["name", "age", "pet"], "additionalProperties": False}


def test_json_schema_samples_validate_and_stop(engine, smollm):
    params = SamplingParams(n=6, max_tokens=80, temperature=1.0, seed=11, grammar=GrammarSpec.json_schema(PERSON))
    outs = engine.generate([chat_ids(smollm, "Invent a person as JSON.")], params)[0]
    for out in outs:
        assert out.finish_reason == "stop", out.text
        jsonschema.validate(json.loads(out.text), PERSON)
        assert out.token_ids[-1] in smollm.eos_token_ids  # the grammar ended by allowing only the stop token
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_json_object_regex_and_choice(engine, smollm):
    prompt = chat_ids(smollm, "Answer briefly: is water wet?")
    obj = engine.generate([prompt], SamplingParams(n=4, max_tokens=120, temperature=0.7, seed=3,
                                                   grammar=GrammarSpec("json_object")))[0]
    for out in obj:
        if out.finish_reason == "stop":
            assert isinstance(json.loads(out.text), dict)
        else:  # cut by max_tokens: still a prefix of a JSON object
            assert out.text.startswith("{")
    assert any(o.finish_reason == "stop" for o in obj)
    regex = engine.generate([prompt], SamplingParams(max_tokens=20, temperature=0,
                                                     grammar=GrammarSpec("regex", r"(yes|no), [a-z]{2,6}\.")))[0][0]
    assert re.fullmatch(r"(yes|no), [a-z]{2,6}\.", regex.text) and regex.finish_reason == "stop"
    choices = ["definitely yes", "no", "it depends"]
    picked = engine.generate([prompt] * 3, [SamplingParams(max_tokens=10, temperature=1.0, seed=s,
                                                           grammar=GrammarSpec.choice(choices)) for s in range(3)])
    assert all(p[0].text in choices and p[0].finish_reason == "stop" for p in picked)


def test_rows_without_a_grammar_are_untouched(engine, smollm):
    prompts = [chat_ids(smollm, "Name three colors."), chat_ids(smollm, "Invent a person as JSON.")]
    plain = SamplingParams(max_tokens=20, temperature=0)
    alone = engine.generate(prompts[:1], plain)[0][0]
    together = engine.generate(prompts, [plain, SamplingParams(max_tokens=40, temperature=0,
                                                               grammar=GrammarSpec.json_schema(PERSON))])
    assert together[0][0].token_ids == alone.token_ids
    jsonschema.validate(json.loads(together[1][0].text), PERSON)


def test_mask_logits_keeps_only_allowed_tokens(smollm):
    grammars = Grammars(smollm.tokenizer, smollm.config.vocab_size, list(smollm.eos_token_ids))
    state = grammars.matcher(GrammarSpec.choice(["yes", "no"]))
    logits = torch.randn(2, smollm.config.vocab_size)
    masked = mask_logits(logits, [None, state])
    assert torch.equal(masked[0], logits[0])
    allowed = torch.isfinite(masked[1]).nonzero().flatten().tolist()
    texts = {smollm.tokenizer.decode([t]) for t in allowed}
    assert allowed and all("yes".startswith(t) or "no".startswith(t) for t in texts), texts
    assert torch.equal(masked[1][allowed], logits[1][allowed])
    assert mask_logits(logits, [None, None]) is logits


def test_invalid_grammars_are_request_errors(engine, smollm):
    prompt = chat_ids(smollm, "hi")
    for spec, param in [(GrammarSpec("regex", "(", "guided_regex"), "guided_regex"),
                        (GrammarSpec.json_schema({"type": 5}, "response_format"), "response_format"),
                        (GrammarSpec("grammar", "root ::= (", "guided_grammar"), "guided_grammar")]:
        with pytest.raises(RequestError) as err:
            engine.add_request(f"bad-{param}", prompt, SamplingParams(grammar=spec))
        assert err.value.param == param
    assert not engine.requests
    with pytest.raises(GrammarError):
        engine.grammars.compile(GrammarSpec.choice([]))


def test_compiled_grammars_are_cached(engine):
    spec = GrammarSpec.json_schema(PERSON)
    assert engine.grammars.compile(spec) is engine.grammars.compile(GrammarSpec.json_schema(dict(PERSON)))


def test_grammar_on_an_encoder_decoder(tmp_path, smollm):
    ours, _ = random_seq2seq("t5-gated-gelu", tmp_path, smollm.tokenizer, 3)
    engine = LLMEngine(ours, EngineConfig())
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "tag": {"enum": ["a", "b"]}},
              "required": ["ok", "tag"], "additionalProperties": False}
    outs = engine.generate([[5, 6, 7, 8, 1]], SamplingParams(n=3, max_tokens=40, temperature=1.0, seed=5,
                                                             grammar=GrammarSpec.json_schema(schema)))[0]
    for out in outs:
        assert out.finish_reason == "stop"
        jsonschema.validate(json.loads(out.text), schema)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_beam_search_with_a_grammar_is_refused():
    with pytest.raises(ValueError, match="structured outputs"):
        SamplingParams(use_beam_search=True, beam_width=2, grammar=GrammarSpec("json_object"))


def test_a_grammar_the_vocabulary_cannot_finish_fails_alone_as_a_client_error(engine, smollm):
    from service.engine import RequestFailed

    unwritable = "\U00072d6e"  # SmolLM2's byte-level vocabulary has no token for this character's lead byte
    with pytest.raises(RequestError, match="cannot be written") as err:
        engine.add_request("choice", chat_ids(smollm, "hi"), SamplingParams(
            grammar=GrammarSpec.choice(["ok", "x" + unwritable], "guided_choice")))
    assert err.value.param == "guided_choice"
    prompts = [chat_ids(smollm, "hi"), chat_ids(smollm, "Name a color.")]
    params = [SamplingParams(max_tokens=8, temperature=0,
                             grammar=GrammarSpec("regex", "a" + unwritable, "guided_regex")),
              SamplingParams(max_tokens=8, temperature=0)]
    with pytest.raises(RequestFailed) as failed:
        engine.generate(prompts, params)
    assert failed.value.client_error and failed.value.param == "guided_regex"
    assert "vocabulary" in str(failed.value)
    assert not engine.requests and engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_bitmask_unpacking_equals_xgrammar(smollm):
    import xgrammar as xgr

    from service.engine.grammar import _apply_bitmask

    vocab = smollm.config.vocab_size + 7  # a width that is not a multiple of 32
    bitmask = torch.randint(-2**31, 2**31 - 1, (3, (vocab + 31) // 32), dtype=torch.int32)
    logits = torch.randn(3, vocab)
    expected = logits.clone()
    xgr.apply_token_bitmask_inplace(expected, bitmask)
    assert torch.equal(_apply_bitmask(logits, bitmask), expected)


@pytest.mark.parametrize("schema, value, limit_hit", [
    ({"type": "integer"}, "1234567890123456", "7"),  # 16 digits, then no 17th
    ({"type": "number"}, "-1234567890123456.1234567890123456", "7"),
    ({"type": "number"}, "1.5e123", "4"),
    ({"type": "array", "items": {"type": "integer"}}, "[1, 1234567890123456", "0"),
])
def test_json_schema_numbers_without_bounds_have_a_digit_limit(engine, schema, value, limit_hit):
    """A sampled integer with no bounds must end: as json_object's numbers do, at most 16 digits (before and
    after the point) and 3 in the exponent; without it a `parse()` with a plain int field may never end."""
    import xgrammar as xgr

    wrapped = {"type": "object", "properties": {"n": schema}, "required": ["n"]}
    matcher = xgr.GrammarMatcher(engine.grammars.compile(GrammarSpec.json_schema(wrapped)))
    assert matcher.accept_string('{"n": ' + value)
    assert not matcher.accept_string(limit_hit)
    bounded = {"type": "integer", "minimum": 0, "maximum": 10 ** 18}  # the schema's own bounds still rule
    matcher = xgr.GrammarMatcher(engine.grammars.compile(GrammarSpec.json_schema(
        {"type": "object", "properties": {"n": bounded}, "required": ["n"]})))
    assert matcher.accept_string('{"n": ' + "9" * 18 + "}")
