"""A Qwen3-shaped and a Gemma-3-shaped random model served: chat (whole and streamed) equal to transformers' greedy
generate on the same prompt tokens (Gemma 3's 8-token windows crossed in prefill and decode), forced tool calls,
and Qwen3's reasoning parser."""
from __future__ import annotations

import json

import openai
import pytest
import torch

from ..conftest import API_KEY, Server

pytestmark = pytest.mark.slow

GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' "
                  "else m['role'] %}<start_of_turn>{{ role }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
                  "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}}}


def save(kind: str, folder, smollm):
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, Qwen3Config

    from models.export import write_tokenizer_files

    common = dict(vocab_size=smollm.config.vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                  tie_word_embeddings=True, eos_token_id=sorted(smollm.eos_token_ids)[0])
    if kind == "qwen3":
        cfg = Qwen3Config(rope_theta=1000000.0, **common)
    else:
        cfg = Gemma3TextConfig(sliding_window=8, sliding_window_pattern=3, query_pre_attn_scalar=32,
                               pad_token_id=0, bos_token_id=1, **common)
    torch.manual_seed(7)
    hf = AutoModelForCausalLM.from_config(cfg).eval()
    hf.save_pretrained(folder)
    write_tokenizer_files(smollm, str(folder))
    if kind == "gemma3":
        path = folder / "tokenizer_config.json"
        tok_cfg = json.loads(path.read_text())
        tok_cfg["chat_template"] = GEMMA_TEMPLATE
        path.write_text(json.dumps(tok_cfg))
    return hf


@pytest.fixture(scope="module")
def served(tmp_path_factory, smollm):
    folders = {kind: tmp_path_factory.mktemp(f"served-{kind}") for kind in ("qwen3", "gemma3")}
    models = {kind: save(kind, folder, smollm) for kind, folder in folders.items()}
    server = Server("--model", f"qwen3-test={folders['qwen3']}", "--model", f"gemma3-test={folders['gemma3']}",
                    "--api-key", API_KEY, "--reasoning-parser", "qwen3-test=qwen3")
    yield server, models
    server.stop()


@pytest.mark.parametrize("kind", ["qwen3", "gemma3"])
def test_chat_equals_transformers_greedy(served, kind):
    import httpx

    server, models = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Describe the sea in a few words, please, at some length."}]
    prompt = http.post("/tokenize", json={"model": f"{kind}-test", "messages": messages}).json()["tokens"]
    assert len(prompt) > 16  # past Gemma 3's 8-token windows already in the prefill
    with torch.no_grad():
        ref = models[kind].generate(torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24,
                                    do_sample=False)[0, len(prompt):].tolist()
    expected = http.post("/detokenize", json={"model": f"{kind}-test", "tokens": ref}).json()["prompt"]
    completion = client.completions.create(model=f"{kind}-test", prompt=prompt, max_tokens=24, temperature=0,
                                           extra_body={"ignore_eos": True, "skip_special_tokens": False})
    assert completion.choices[0].text == expected
    chat = client.chat.completions.create(model=f"{kind}-test", messages=messages, max_tokens=24, temperature=0,
                                          extra_body={"ignore_eos": True, "skip_special_tokens": False})
    assert chat.choices[0].message.content == expected
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=f"{kind}-test", messages=messages, max_tokens=24, temperature=0, stream=True,
        extra_body={"ignore_eos": True, "skip_special_tokens": False}) if c.choices)
    assert streamed == expected
    http.close()


@pytest.mark.parametrize("kind", ["qwen3", "gemma3"])
def test_forced_tool_call(served, kind):
    server, _ = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
    done = client.chat.completions.create(
        model=f"{kind}-test", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=60, temperature=0)
    call = done.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    assert done.choices[0].finish_reason == "tool_calls"


def test_qwen3_reasoning_field_present(served):
    server, _ = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
    done = client.chat.completions.create(model="qwen3-test", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=40, temperature=0,
                                          extra_body={"structured_outputs": {"regex": r"<think>[a-z]{2,5}</think>ok"}})
    assert done.choices[0].message.model_extra["reasoning_content"] and done.choices[0].message.content == "ok"
    gemma = client.chat.completions.create(model="gemma3-test", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4, temperature=0)
    assert "reasoning_content" not in gemma.choices[0].message.model_extra  # the parser is Qwen3's alone
