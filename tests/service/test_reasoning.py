"""Reasoning parsers (``--reasoning-parser qwen3 | deepseek_r1``): the split of whole outputs, the same split
however the output is cut into deltas, and a live server streaming delta.reasoning_content through the openai SDK
(the model's output forced into a thinking shape by a regex, so the test does not depend on random weights)."""
from __future__ import annotations

import pytest

from service.api.reasoning import PARSERS, ReasoningStream, split_reasoning

from ..conftest import API_KEY, SMOLLM, Server

CASES = {
    # (parser, output): (reasoning, content)
    ("qwen3", "<think>\nplan it\n</think>\n\nThe answer."): ("\nplan it\n", "\n\nThe answer."),
    ("qwen3", "  <think>a</think>b"): ("a", "b"),
    ("qwen3", "No thinking here."): (None, "No thinking here."),
    ("qwen3", "<think>cut by max_tokens"): ("cut by max_tokens", None),
    ("qwen3", "<think></think>"): ("", None),
    ("qwen3", "a <think>late</think> tag"): (None, "a <think>late</think> tag"),
    ("qwen3", "<thinking is not the tag"): (None, "<thinking is not the tag"),
    ("deepseek_r1", "reason first</think>answer"): ("reason first", "answer"),
    ("deepseek_r1", "<think>repeated tag</think>answer"): ("repeated tag", "answer"),
    ("deepseek_r1", "never closed"): ("never closed", None),
    ("deepseek_r1", "a</think>b</think>c"): ("a", "b</think>c"),
}


@pytest.mark.parametrize("parser,text", list(CASES), ids=[f"{p}-{i}" for i, (p, _) in enumerate(CASES)])
def test_split(parser, text):
    assert split_reasoning(PARSERS[parser], text) == CASES[parser, text]


@pytest.mark.parametrize("parser,text", list(CASES), ids=[f"{p}-{i}" for i, (p, _) in enumerate(CASES)])
def test_streamed_split_equals_whole_at_every_cut(parser, text):
    """Deltas of one character, and every two-piece cut (tags split across deltas included)."""
    reasoning, content = CASES[parser, text]
    cuts = [[text[i:i + 1] for i in range(len(text))]] + [[text[:i], text[i:]] for i in range(len(text) + 1)]
    for deltas in cuts:
        stream = ReasoningStream(PARSERS[parser])
        parts = [p for d in deltas for p in stream.feed(d)] + stream.finish()
        assert "".join(t for k, t in parts if k == "reasoning") == (reasoning or "")
        assert "".join(t for k, t in parts if k == "content") == (content or "")


@pytest.fixture(scope="module")
def reasoning_server():
    server = Server("--model", SMOLLM, "--reasoning-parser", f"{SMOLLM}=qwen3", "--api-key", API_KEY,
                    "--trust-request-chat-template")
    yield server
    server.stop()


THINKING = r"<think>[a-z ]{3,30}</think>\n\n[A-Z][a-z ]{3,30}\."


@pytest.mark.slow
def test_served_reasoning_content(reasoning_server):
    import openai

    client = openai.OpenAI(base_url=reasoning_server.url + "/v1", api_key=API_KEY, max_retries=0)
    messages = [{"role": "user", "content": "Think, then answer: what is a cat?"}]
    shaped = {"structured_outputs": {"regex": THINKING}}
    whole = client.chat.completions.create(model=SMOLLM, messages=messages, max_tokens=60, temperature=0,
                                           extra_body=shaped)
    message = whole.choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    assert reasoning and "<think>" not in reasoning and message.content.startswith("\n\n")
    assert "<think>" not in message.content and "</think>" not in message.content
    deltas = list(client.chat.completions.create(model=SMOLLM, messages=messages, max_tokens=60, temperature=0,
                                                 extra_body=shaped, stream=True))
    streamed_reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                                 for c in deltas if c.choices)
    streamed_content = "".join(c.choices[0].delta.content or "" for c in deltas if c.choices)
    assert (streamed_reasoning, streamed_content) == (reasoning, message.content)
    plain = client.chat.completions.create(model=SMOLLM, messages=messages, max_tokens=8, temperature=0)
    assert plain.choices[0].message.model_extra["reasoning_content"] is None  # no think block: all content


@pytest.mark.slow
def test_enable_thinking_reaches_the_template(reasoning_server):
    """Qwen3's switch: chat_template_kwargs.enable_thinking false renders an empty think block into the prompt."""
    import httpx

    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                "<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}"
                "<think>\n\n</think>\n\n{% endif %}")
    with httpx.Client(base_url=reasoning_server.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        def prompt(kwargs):
            body = {"model": SMOLLM, "messages": [{"role": "user", "content": "hi"}], "chat_template": template,
                    "chat_template_kwargs": kwargs}
            r = http.post("/tokenize", json=body)
            r.raise_for_status()
            return http.post("/detokenize", json={"model": SMOLLM, "tokens": r.json()["tokens"]}).json()["prompt"]

        assert prompt({"enable_thinking": False}).endswith("<think>\n\n</think>\n\n")
        assert "<think>" not in prompt({"enable_thinking": True})
