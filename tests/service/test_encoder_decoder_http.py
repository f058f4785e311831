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
