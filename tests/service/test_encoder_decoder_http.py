"""An encoder-decoder (random T5 from a real config) served through chat and completions."""
from __future__ import annotations

import openai
import pytest
import torch

from ..models.test_encoder_decoder import t5
from ..conftest import Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def t5_server(tmp_path_factory, smollm):
    from transformers import AutoModelForSeq2SeqLM

    torch.manual_seed(2)
    cfg = t5("relu")
    cfg.vocab_size = tok_vocab = smollm.tokenizer.vocab_size  # real text in, so the real tokenizer's vocabulary
    hf = AutoModelForSeq2SeqLM.from_config(cfg).eval()
    assert hf.config.vocab_size == tok_vocab
    folder = tmp_path_factory.mktemp("t5-served")
    hf.save_pretrained(folder)
    smollm.tokenizer.backend.save(str(folder / "tokenizer.json"))  # no chat template: last user message is the input
    server = Server("--model", f"t5-test={folder}")
    yield server, hf, smollm.tokenizer
    server.stop()


def test_chat_and_completions_route_to_the_encoder(t5_server):
    server, hf, tok = t5_server
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    text = "translate: the house is small"
    ids = tok.encode(text)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, num_beams=1)[0, 1:].tolist()
    expected = tok.decode([t for t in ref if t != hf.config.eos_token_id])
    chat = client.chat.completions.create(model="t5-test", max_tokens=8, temperature=0,
                                          messages=[{"role": "system", "content": "ignored"},
                                                    {"role": "user", "content": text}])
    assert chat.choices[0].message.content == expected
    assert chat.usage.prompt_tokens == len(ids)
    completion = client.completions.create(model="t5-test", prompt=text, max_tokens=8, temperature=0)
    assert completion.choices[0].text == expected
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="t5-test", prompt=text, max_tokens=8, temperature=0, stream=True) if c.choices)
    assert streamed == expected


def test_structured_output_on_the_encoder_decoder(t5_server):
    """chat.completions.parse on a random T5: the grammar, not the weights, makes the answer valid."""
    from typing import Literal

    from pydantic import BaseModel, Field

    class Reading(BaseModel):
        ok: bool
        level: Literal["low", "high"]
        code: str = Field(max_length=4)

    server, _, _ = t5_server
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    for seed in (1, 2, 3):
        done = client.chat.completions.parse(model="t5-test", messages=[{"role": "user", "content": "status?"}],
                                             response_format=Reading, max_tokens=120, seed=seed)
        assert done.choices[0].finish_reason == "stop"
        assert isinstance(done.choices[0].message.parsed, Reading)


@pytest.fixture(scope="module")
def nllb_server(tmp_path_factory):
    from ..encoder_models import save_nllb

    folder, hf = save_nllb(tmp_path_factory.mktemp("nllb-served"))
    server = Server("--model", f"nllb-test={folder}")
    yield server, hf, folder
    server.stop()


def _nllb_reference(hf, ids: list[int], target: int, max_tokens: int, beams: int = 1) -> list[int]:
    """transformers' generate with the target language forced as the first new token (counted in max_new_tokens),
    the decoder start and the language code dropped from what it returns."""
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), forced_bos_token_id=target, max_new_tokens=max_tokens + 1,
                          do_sample=False, num_beams=beams, early_stopping=False, length_penalty=1.0)[0].tolist()
    assert out[:2] == [hf.config.decoder_start_token_id, target]
    return [t for t in out[2:] if t not in (hf.config.eos_token_id, hf.config.pad_token_id)]


def test_translation_with_target_and_source_languages(nllb_server):
    from models.tokenizer import Tokenizer
    from models.translation import language_codes

    server, hf, folder = nllb_server
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    tok = Tokenizer.from_folder(folder)
    codes = language_codes(tok)
    text = "Paris is the capital of France."
    for source, target in (("eng_Latn", "fra_Latn"), ("deu_Latn", "zho_Hans")):
        ids = [codes[source], *tok.encode(text)[1:]]
        ref = _nllb_reference(hf, ids, codes[target], 10)
        done = client.completions.create(model="nllb-test", prompt=text, max_tokens=10, temperature=0,
                                         extra_body={"target_lang": target, "source_lang": source},
                                         logprobs=0)
        assert done.choices[0].logprobs.tokens == [tok.decode([t], skip_special_tokens=False) for t in ref]
        chat = client.chat.completions.create(model="nllb-test", messages=[{"role": "user", "content": text}],
                                              max_tokens=10, temperature=0,
                                              extra_body={"target_lang": target, "source_lang": source})
        assert chat.choices[0].message.content == done.choices[0].text == tok.decode(ref)
        assert chat.usage.prompt_tokens == len(ids)
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model="nllb-test", prompt=text, max_tokens=10, temperature=0, stream=True,
            extra_body={"target_lang": target, "source_lang": source}) if c.choices)
        assert streamed == tok.decode(ref)


def test_translation_beam_search_matches_generate(nllb_server):
    from models.tokenizer import Tokenizer
    from models.translation import language_codes

    server, hf, folder = nllb_server
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    tok = Tokenizer.from_folder(folder)
    target = language_codes(tok)["spa_Latn"]
    for text in ("The cat is on the table.", "Machine learning is fun."):
        ref = _nllb_reference(hf, tok.encode(text), target, 12, beams=4)
        done = client.completions.create(model="nllb-test", prompt=text, max_tokens=12, temperature=0,
                                         extra_body={"target_lang": "spa_Latn", "use_beam_search": True,
                                                     "best_of": 4})
        assert len(ref) > 3 and done.choices[0].text == tok.decode(ref)


def test_translation_language_errors(nllb_server, t5_server):
    server, _, _ = nllb_server
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    cases = [({}, "target_lang"), ({"target_lang": "xx_Yyyy"}, "target_lang"),
             ({"target_lang": "fra_Latn", "source_lang": "klingon"}, "source_lang")]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model="nllb-test", prompt="hello", max_tokens=4, extra_body=extra)
        assert err.value.body["param"] == param
    with pytest.raises(openai.BadRequestError) as err:  # token ids without a language code: nothing to replace
        client.completions.create(model="nllb-test", prompt=[5, 6, 7], max_tokens=4,
                                  extra_body={"target_lang": "fra_Latn", "source_lang": "deu_Latn"})
    assert err.value.body["param"] == "source_lang"
    t5 = openai.OpenAI(base_url=t5_server[0].url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="not a multilingual translation model"):
        t5.completions.create(model="t5-test", prompt="hello", max_tokens=4, extra_body={"target_lang": "fra_Latn"})


@pytest.fixture(scope="module")
def marian_server(tmp_path_factory):
    from ..encoder_models import save_marian

    folder, hf = save_marian(tmp_path_factory.mktemp("marian-served"))
    server = Server("--model", f"marian-test={folder}")
    yield server, hf, folder
    server.stop()


def test_marian_translation_with_target_code(marian_server):
    """Multilingual Marian: target_lang writes ">>fra<<" before the text (or the text starts with it); greedy and
    beam outputs equal generate's, <pad> (the decoder start) never generated (generation_config's bad_words_ids)."""
    from models.tokenizer import Tokenizer

    server, hf, folder = marian_server
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    tok = Tokenizer.from_folder(folder)
    pad = hf.config.pad_token_id
    for text in ("Hello, how are you?", "The weather is nice today."):
        ids = tok.encode(">>spa<< " + text)
        for beams in (1, 4):
            with torch.no_grad():
                ref = hf.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, num_beams=beams,
                                  bad_words_ids=[[pad]], early_stopping=False)[0, 1:].tolist()
            expected = tok.decode([t for t in ref if t not in (0, pad)])
            extra = {"target_lang": "spa"} if beams == 1 else {"use_beam_search": True, "best_of": 4}
            prompt = text if beams == 1 else ">>spa<< " + text
            done = client.completions.create(model="marian-test", prompt=prompt, max_tokens=10, temperature=0,
                                             extra_body=extra)
            assert done.choices[0].text == expected and done.usage.prompt_tokens == len(ids)
    chat = client.chat.completions.create(model="marian-test", messages=[{"role": "user", "content": "Hello"}],
                                          max_tokens=5, extra_body={"target_lang": ">>fra<<"})
    assert chat.choices[0].finish_reason in ("stop", "length")
    for extra, param in (({}, "target_lang"), ({"target_lang": "deu"}, "target_lang"),
                         ({"target_lang": "fra", "source_lang": "eng"}, "source_lang")):
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model="marian-test", prompt="Hello", max_tokens=3, extra_body=extra)
        assert err.value.body["param"] == param
    with pytest.raises(openai.BadRequestError, match="give one"):
        client.completions.create(model="marian-test", prompt=">>fra<< Hello", max_tokens=3,
                                  extra_body={"target_lang": "spa"})
