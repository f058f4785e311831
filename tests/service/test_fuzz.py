"""Schema fuzzing: schemathesis draws requests from /openapi.json (valid and invalid) against a live
server; no answer may be a 5xx, and none may take longer than the request's own work.

The server runs a tiny random Llama with SmolLM2's real tokenizer and chat template (so the request
path is the real one and generation costs little) next to the real MiniLM embedding model.
``KERNELSERVE_FUZZ_EXAMPLES`` sets the examples per operation, half valid by the schema and half
not (default 140: over 560 cases; ``make fuzz`` runs 1,400, over 5,000 cases).
"""
from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from ..conftest import API_KEY, MINILM, Server

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("KERNELSERVE_FUZZ_EXAMPLES", "140"))
MAX_MODEL_LEN = 128
# the slowest legitimate request: 16 sequences x 128 tokens of the tiny model, plus a 2,048-input
# embedding batch; a stall (the engine waiting on something that never comes) blows far past it
MAX_RESPONSE_SECONDS = 20.0
TINY = "tiny-chat"


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory, smollm):
    import torch
    import transformers

    from models.export import write_tokenizer_files

    out = str(tmp_path_factory.mktemp("tiny-chat"))
    eos = sorted(smollm.eos_token_ids)[0]
    cfg = transformers.LlamaConfig(vocab_size=smollm.config.vocab_size, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=MAX_MODEL_LEN, tie_word_embeddings=True,
                                   eos_token_id=eos)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(out)
    write_tokenizer_files(smollm, out)
    return out


@pytest.fixture(scope="module")
def fuzz_server(tiny_chat_model):
    s = Server("--model", f"{TINY}={tiny_chat_model}", "--model", MINILM, "--api-key", API_KEY,
               "--max-model-len", str(MAX_MODEL_LEN), "--max-request-bytes", "262144")
    yield s
    assert s.stop() == 0


def operations(url: str):
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def check(case, url: str) -> None:
    if isinstance(case.body, dict) and case.body.get("model") not in (None, TINY, MINILM):
        # most cases should get past the model lookup (a 404) to the code behind it
        case.body["model"] = MINILM if case.path == "/v1/embeddings" else TINY
    response = case.call(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    SEEN["cases"] += 1
    where = f"{case.method} {case.path} {case.body!r:.400}"
    assert response.status_code < 500, f"{where} -> {response.status_code} {response.text[:500]}"
    assert response.elapsed < MAX_RESPONSE_SECONDS, f"{where} stalled"
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}, where


SEEN = {"cases": 0}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_5xx_and_no_stall(fuzz_server, mode):
    """Valid-by-schema requests (the engine's bounds answer 400 where the schema cannot say) and
    schema-violating ones; half the examples each."""
    for op in operations(fuzz_server.url):
        @given(case=op.as_strategy(mode))
        @settings(max_examples=max(1, EXAMPLES // 2), deadline=None, derandomize=True, database=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        def fuzz(case):
            check(case, fuzz_server.url)

        try:
            fuzz()
        except Unsatisfiable:  # negative mode: an operation without parameters or body has nothing to break
            assert mode is GenerationMode.NEGATIVE and op.method.upper() == "GET", op.path


def test_fuzzing_ran_enough_cases_and_the_server_still_serves(fuzz_server):
    import httpx

    print(f"fuzzed {SEEN['cases']} requests, no 5xx, none slower than {MAX_RESPONSE_SECONDS:.0f} s")
    assert SEEN["cases"] >= 4 * EXAMPLES, SEEN  # 5 POST operations get EXAMPLES each
    r = httpx.post(fuzz_server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
                   timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
