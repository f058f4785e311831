"""A battery of hostile requests, across every route: each gets a 4xx with OpenAI's error body,
and a normal request is served right after it (nothing a client sends can stop the engine)."""
from __future__ import annotations

import json
import time

import httpx
import pytest

from ..conftest import MINILM, SMOLLM

pytestmark = pytest.mark.slow

CHAT, COMP, EMB, TOK, DETOK = "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize"
USER = [{"role": "user", "content": "Hi"}]
SURROGATE = "\ud800"  # a lone surrogate: JSON can carry it ("\\ud800"), UTF-8 cannot
# chat templates that once grew the server until the OOM killer ended it, or reached Python internals
LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
HUGE = "{{ 'x' * 100000000000 }}"
ESCAPE = "{{ ''.__class__.__mro__[1].__subclasses__() }}"


def chat(**fields):
    return {"model": SMOLLM, "messages": USER, "max_tokens": 4, **fields}


def comp(**fields):
    return {"model": SMOLLM, "prompt": "Hi", "max_tokens": 4, **fields}


def emb(**fields):
    return {"model": MINILM, "input": "Hi", **fields}


def msgs(*messages):
    return chat(messages=list(messages))


# (id, method, path, json body (or raw bytes), expected status, expected param or None)
CASES = [
    # -- chat: messages -----------------------------------------------------------------------------
    ("no-messages", "POST", CHAT, {"model": SMOLLM}, 400, "messages"),
    ("empty-messages", "POST", CHAT, chat(messages=[]), 400, "messages"),
    ("messages-string", "POST", CHAT, chat(messages="hi"), 400, "messages"),
    ("messages-of-strings", "POST", CHAT, chat(messages=["hi"]), 400, "messages.0"),
    ("no-role", "POST", CHAT, msgs({"content": "hi"}), 400, "messages.0.role"),
    ("bad-role", "POST", CHAT, msgs({"role": "robot", "content": "hi"}), 400, "messages.0.role"),
    ("user-null-content", "POST", CHAT, msgs({"role": "user", "content": None}), 400, "messages.0.content"),
    ("user-no-content", "POST", CHAT, msgs({"role": "user"}), 400, "messages.0.content"),
    ("system-null-content", "POST", CHAT, msgs({"role": "system", "content": None}, *USER), 400, "messages.0.content"),
    ("developer-no-content", "POST", CHAT, msgs({"role": "developer"}, *USER), 400, "messages.0.content"),
    ("tool-null-content", "POST", CHAT, msgs(*USER, {"role": "tool", "tool_call_id": "c1", "content": None}), 400,
     "messages.1.content"),
    ("tool-no-content", "POST", CHAT, msgs(*USER, {"role": "tool", "tool_call_id": "c1"}), 400, "messages.1.content"),
    ("function-null-content", "POST", CHAT, msgs(*USER, {"role": "function", "name": "f", "content": None}), 400,
     "messages.1.content"),
    ("content-int", "POST", CHAT, msgs({"role": "user", "content": 5}), 400, "messages.0.content"),
    ("content-image-part", "POST", CHAT,
     msgs({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}), 400, "messages.0.content"),
    ("content-part-no-text", "POST", CHAT, msgs({"role": "user", "content": [{"type": "text"}]}), 400,
     "messages.0.content"),
    ("content-part-not-dict", "POST", CHAT, msgs({"role": "user", "content": ["hi"]}), 400, "messages.0.content"),
    ("name-int", "POST", CHAT, msgs({"role": "user", "content": "hi", "name": 5}), 400, "messages.0.name"),
    ("surrogate-user", "POST", CHAT, msgs({"role": "user", "content": "a" + SURROGATE}), 400, "messages.0.content"),
    ("surrogate-system", "POST", CHAT, msgs({"role": "system", "content": SURROGATE}, *USER), 400,
     "messages.0.content"),
    ("surrogate-part", "POST", CHAT, msgs({"role": "user", "content": [{"type": "text", "text": SURROGATE}]}), 400,
     "messages.0.content.0.text"),
    ("surrogate-stop", "POST", CHAT, chat(stop=[SURROGATE]), 400, "stop.0"),
    ("surrogate-name", "POST", CHAT, msgs({"role": "user", "content": "hi", "name": SURROGATE}), 400,
     "messages.0.name"),
    # -- chat: sampling fields ------------------------------------------------------------------------
    ("temperature-string", "POST", CHAT, chat(temperature="hot"), 400, "temperature"),
    ("temperature-negative", "POST", CHAT, chat(temperature=-1), 400, "temperature"),
    ("top-p-zero", "POST", CHAT, chat(top_p=0), 400, "top_p"),
    ("top-p-above-one", "POST", CHAT, chat(top_p=1.5), 400, "top_p"),
    ("top-k-below-minus-one", "POST", CHAT, chat(top_k=-2), 400, "top_k"),
    ("top-k-2^63", "POST", CHAT, chat(top_k=2**63), 400, "top_k"),
    ("top-k-float", "POST", CHAT, chat(top_k=1.5), 400, "top_k"),
    ("min-p-2", "POST", CHAT, chat(min_p=2), 400, "min_p"),
    ("presence-penalty-3", "POST", CHAT, chat(presence_penalty=3), 400, "presence_penalty"),
    ("frequency-penalty-minus-3", "POST", CHAT, chat(frequency_penalty=-3), 400, "frequency_penalty"),
    ("repetition-penalty-0", "POST", CHAT, chat(repetition_penalty=0), 400, "repetition_penalty"),
    ("seed-2^64", "POST", CHAT, chat(seed=2**64), 400, "seed"),
    ("seed-below-int64", "POST", CHAT, chat(seed=-(2**63) - 1), 400, "seed"),
    ("seed-string", "POST", CHAT, chat(seed="1"), 400, "seed"),
    ("seed-float", "POST", CHAT, chat(seed=1.5), 400, "seed"),
    ("n-0", "POST", CHAT, chat(n=0), 400, "n"),
    ("n-negative", "POST", CHAT, chat(n=-1), 400, "n"),
    ("n-10000", "POST", CHAT, chat(n=10000), 400, "n"),
    ("n-17", "POST", CHAT, chat(n=17), 400, "n"),
    ("n-string", "POST", CHAT, chat(n="2"), 400, "n"),
    ("n-16-max-context", "POST", CHAT, chat(n=16, max_tokens=8000), 400, None),
    ("max-tokens-0", "POST", CHAT, chat(max_tokens=0), 400, "max_tokens"),
    ("max-tokens-negative", "POST", CHAT, chat(max_tokens=-5), 400, "max_tokens"),
    ("max-tokens-million", "POST", CHAT, chat(max_tokens=10**6), 400, "messages"),
    ("max-tokens-2^70", "POST", CHAT, chat(max_tokens=2**70), 400, None),
    ("max-tokens-string", "POST", CHAT, chat(max_tokens="5"), 400, "max_tokens"),
    ("max-tokens-float", "POST", CHAT, chat(max_tokens=5.5), 400, "max_tokens"),
    ("max-completion-tokens-negative", "POST", CHAT, chat(max_completion_tokens=-1), 400, "max_tokens"),
    ("stream-string", "POST", CHAT, chat(stream="yes"), 400, "stream"),
    ("stream-int", "POST", CHAT, chat(stream=1), 400, "stream"),
    ("stream-options-without-stream", "POST", CHAT, chat(stream_options={"include_usage": True}), 400,
     "stream_options"),
    ("stream-options-string-flag", "POST", CHAT, chat(stream=True, stream_options={"include_usage": "yes"}), 400,
     "stream_options.include_usage"),
    ("stream-options-unknown", "POST", CHAT, chat(stream=True, stream_options={"bogus": 1}), 400,
     "stream_options.bogus"),
    ("logit-bias-key-text", "POST", CHAT, chat(logit_bias={"abc": 1}), 400, "logit_bias"),
    ("logit-bias-key-outside-vocab", "POST", CHAT, chat(logit_bias={"999999999": 1}), 400, "logit_bias"),
    ("logit-bias-key-2^70", "POST", CHAT, chat(logit_bias={str(2**70): 1}), 400, "logit_bias"),
    ("logit-bias-negative-key", "POST", CHAT, chat(logit_bias={"-1": 1}), 400, "logit_bias"),
    ("logit-bias-value-1000", "POST", CHAT, chat(logit_bias={"1": 1000}), 400, "logit_bias"),
    ("top-logprobs-21", "POST", CHAT, chat(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    ("top-logprobs-negative", "POST", CHAT, chat(logprobs=True, top_logprobs=-1), 400, "top_logprobs"),
    ("top-logprobs-without-logprobs", "POST", CHAT, chat(top_logprobs=2), 400, "top_logprobs"),
    ("logprobs-string", "POST", CHAT, chat(logprobs="yes"), 400, "logprobs"),
    ("stop-empty", "POST", CHAT, chat(stop=""), 400, "stop"),
    ("stop-list-empty-string", "POST", CHAT, chat(stop=[""]), 400, "stop"),
    ("stop-int", "POST", CHAT, chat(stop=5), 400, "stop"),
    ("stop-token-ids-strings", "POST", CHAT, chat(stop_token_ids=["a"]), 400, "stop_token_ids.0"),
    ("ignore-eos-string", "POST", CHAT, chat(ignore_eos="yes"), 400, "ignore_eos"),
    ("beam-and-stream", "POST", CHAT, chat(use_beam_search=True, best_of=2, stream=True), 400, "stream"),
    ("beam-best-of-100000", "POST", CHAT, chat(use_beam_search=True, best_of=100000), 400, "best_of"),
    ("best-of-0", "POST", CHAT, chat(best_of=0), 400, "best_of"),
    ("best-of-without-beam", "POST", CHAT, chat(best_of=3), 400, "best_of"),
    ("early-stopping-word", "POST", CHAT, chat(use_beam_search=True, early_stopping="sometimes"), 400,
     "early_stopping"),
    ("response-format-json-schema-without-schema", "POST", CHAT, chat(response_format={"type": "json_schema"}), 400,
     "response_format.json_schema"),
    ("response-format-unknown-type", "POST", CHAT, chat(response_format={"type": "yaml"}), 400,
     "response_format.type"),
    ("json-schema-invalid", "POST", CHAT, chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": 5}}}), 400, "response_format.json_schema.schema"),
    ("guided-regex-invalid", "POST", CHAT, chat(guided_regex="("), 400, "guided_regex"),
    ("guided-choice-empty", "POST", CHAT, chat(guided_choice=[]), 400, "guided_choice"),
    ("guided-grammar-invalid", "POST", COMP, comp(guided_grammar="root ::= ("), 400, "guided_grammar"),
    ("grammar-the-vocabulary-cannot-finish", "POST", COMP, comp(guided_regex="a\U00072d6e", temperature=0), 400,
     "guided_regex"),
    ("choice-the-vocabulary-cannot-write", "POST", CHAT, chat(guided_choice=["ok", "\U00072d6e"]), 400,
     "guided_choice"),
    ("two-grammars", "POST", CHAT, chat(guided_regex="a+", guided_choice=["a"]), 400, "guided_choice"),
    ("structured-outputs-two-keys", "POST", CHAT, chat(structured_outputs={"regex": "a", "choice": ["a"]}), 400,
     "structured_outputs"),
    ("structured-outputs-unknown-key", "POST", CHAT, chat(structured_outputs={"yaml": "a"}), 400,
     "structured_outputs"),
    ("tools-not-function", "POST", CHAT, chat(tools=[{"type": "web_search"}]), 400, "tools.0.type"),
    ("tools-bad-name", "POST", CHAT, chat(tools=[{"type": "function", "function": {"name": "a b"}}]), 400,
     "tools.0.function.name"),
    ("tools-duplicate-names", "POST", CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}] * 2), 400,
     "tools"),
    ("tool-choice-unknown-function", "POST", CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}],
                                                         tool_choice={"type": "function", "function": {"name": "g"}}),
     400, "tool_choice"),
    ("tool-choice-required-without-tools", "POST", CHAT, chat(tool_choice="required"), 400, "tool_choice"),
    ("tool-choice-word", "POST", CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}],
                                            tool_choice="always"), 400, "tool_choice"),
    ("forced-tool-and-response-format", "POST", CHAT, chat(
        tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="required",
        response_format={"type": "json_object"}), 400, "tool_choice"),
    ("continue-final-and-generation-prompt", "POST", CHAT, chat(continue_final_message=True), 400,
     "continue_final_message"),
    ("chat-template-broken", "POST", CHAT, chat(chat_template="{% for %}"), 400, "chat_template"),
    # request-supplied templates are refused without --trust-request-chat-template (vLLM's GHSA-6fvq-23cw-5628)
    ("chat-template-loop", "POST", CHAT, chat(chat_template=LOOP), 400, "chat_template"),
    ("chat-template-huge-string", "POST", CHAT, chat(chat_template=HUGE), 400, "chat_template"),
    ("chat-template-sandbox-escape", "POST", CHAT, chat(chat_template=ESCAPE), 400, "chat_template"),
    ("chat-template-in-kwargs", "POST", CHAT, chat(chat_template_kwargs={"chat_template": LOOP}), 400,
     "chat_template_kwargs.chat_template"),
    ("chat-template-streamed", "POST", CHAT, chat(chat_template=LOOP, stream=True), 400, "chat_template"),
    ("chat-template-tokenize", "POST", TOK, {"model": SMOLLM, "messages": USER, "chat_template": LOOP}, 400,
     "chat_template"),
    ("chat-template-tokenize-kwargs", "POST", TOK, {"model": SMOLLM, "messages": USER,
                                                    "chat_template_kwargs": {"chat_template": HUGE}}, 400,
     "chat_template_kwargs.chat_template"),
    ("chat-template-responses", "POST", "/v1/responses", {"model": SMOLLM, "input": "hi", "chat_template": LOOP},
     400, "chat_template"),
    ("template-kwargs-tools", "POST", CHAT, chat(chat_template_kwargs={"tools": []}), 400, "chat_template_kwargs"),
    ("min-tokens-over-max", "POST", CHAT, chat(min_tokens=10, max_tokens=4), 400, "min_tokens"),
    ("min-tokens-negative", "POST", CHAT, chat(min_tokens=-1), 400, "min_tokens"),
    ("bad-words-empty-string", "POST", CHAT, chat(bad_words=[""]), 400, "bad_words"),
    ("prompt-logprobs-too-many", "POST", COMP, comp(prompt_logprobs=21), 400, "prompt_logprobs"),
    ("prompt-logprobs-streamed", "POST", COMP, comp(prompt_logprobs=1, stream=True), 400, "prompt_logprobs"),
    ("priority-under-fcfs", "POST", CHAT, chat(priority=5), 400, "priority"),
    ("request-id-empty", "POST", CHAT, chat(request_id=""), 400, "request_id"),
    ("responses-previous-id", "POST", "/v1/responses", {"model": SMOLLM, "input": "hi",
                                                        "previous_response_id": "resp_1"}, 400,
     "previous_response_id"),
    ("responses-bad-item", "POST", "/v1/responses", {"model": SMOLLM, "input": [{"type": "image"}]}, 400,
     "input.0.type"),
    ("responses-builtin-tool", "POST", "/v1/responses", {"model": SMOLLM, "input": "hi",
                                                         "tools": [{"type": "web_search"}]}, 400, "tools.0.type"),
    ("responses-empty-input", "POST", "/v1/responses", {"model": SMOLLM, "input": []}, 400, "input"),
    ("responses-text-format-unknown", "POST", "/v1/responses", {"model": SMOLLM, "input": "hi",
                                                                "text": {"format": {"type": "yaml"}}}, 400,
     "text.format.type"),
    ("unknown-field", "POST", CHAT, chat(bogus=1), 400, "bogus"),
    ("model-missing", "POST", CHAT, {"messages": USER}, 400, "model"),
    ("model-int", "POST", CHAT, chat(model=5), 400, "model"),
    ("model-unknown", "POST", CHAT, chat(model="missing"), 404, "model"),
    ("model-is-embedding", "POST", CHAT, chat(model=MINILM), 400, "model"),
    ("template-kwargs-messages", "POST", CHAT, chat(chat_template_kwargs={"messages": []}), 400,
     "chat_template_kwargs"),
    ("template-kwargs-generation-prompt", "POST", CHAT, chat(chat_template_kwargs={"add_generation_prompt": False}),
     400, "chat_template_kwargs"),
    ("template-kwargs-string", "POST", CHAT, chat(chat_template_kwargs="x"), 400, "chat_template_kwargs"),
    ("add-generation-prompt-string", "POST", CHAT, chat(add_generation_prompt="no"), 400, "add_generation_prompt"),
    # -- chat: the body itself ------------------------------------------------------------------------
    ("invalid-json", "POST", CHAT, b"{not json", 400, None),
    ("body-array", "POST", CHAT, [1, 2], 400, None),
    ("body-null", "POST", CHAT, None, 400, None),
    ("body-empty", "POST", CHAT, b"", 400, None),
    ("body-string", "POST", CHAT, "hello", 400, None),
    ("body-too-large", "POST", CHAT, chat(messages=[{"role": "user", "content": "x" * 70000}]), 413, None),
    ("chat-get", "GET", CHAT, None, 405, None),
    # -- completions -----------------------------------------------------------------------------------
    ("prompt-missing", "POST", COMP, {"model": SMOLLM}, 400, "prompt"),
    ("prompt-empty-string", "POST", COMP, comp(prompt=""), 400, "prompt"),
    ("prompt-empty-list", "POST", COMP, comp(prompt=[]), 400, "prompt"),
    ("prompt-list-of-empty", "POST", COMP, comp(prompt=[[]]), 400, "prompt"),
    ("prompt-negative-token", "POST", COMP, comp(prompt=[-1]), 400, "prompt"),
    ("prompt-token-outside-vocab", "POST", COMP, comp(prompt=[10**7]), 400, "prompt"),
    ("prompt-token-2^70", "POST", COMP, comp(prompt=[2**70]), 400, "prompt"),
    ("prompt-mixed", "POST", COMP, comp(prompt=["a", 5]), 400, "prompt"),
    ("prompt-float-tokens", "POST", COMP, comp(prompt=[1.5]), 400, "prompt"),
    ("prompt-surrogate", "POST", COMP, comp(prompt=SURROGATE), 400, "prompt"),
    ("prompt-list-surrogate", "POST", COMP, comp(prompt=["ok", SURROGATE]), 400, "prompt.1"),
    ("prompt-3000-strings", "POST", COMP, comp(prompt=["a"] * 3000), 400, "prompt"),
    ("suffix", "POST", COMP, comp(suffix="x"), 400, "suffix"),
    ("echo-string", "POST", COMP, comp(echo="yes"), 400, "echo"),
    ("logprobs-21", "POST", COMP, comp(logprobs=21), 400, "logprobs"),
    ("logprobs-negative", "POST", COMP, comp(logprobs=-1), 400, "logprobs"),
    ("completion-max-tokens-million", "POST", COMP, comp(max_tokens=10**6), 400, None),
    ("completion-n-10000", "POST", COMP, comp(n=10000), 400, "n"),
    ("completion-seed-2^64", "POST", COMP, comp(seed=2**64), 400, "seed"),
    ("completion-top-k-2^63", "POST", COMP, comp(top_k=2**63), 400, "top_k"),
    ("completion-stream-options-without-stream", "POST", COMP, comp(stream_options={"include_usage": True}), 400,
     "stream_options"),
    ("completion-stream-string", "POST", COMP, comp(stream="true"), 400, "stream"),
    ("completion-beam-best-of-100000", "POST", COMP, comp(use_beam_search=True, best_of=100000), 400, "best_of"),
    ("completion-model-is-embedding", "POST", COMP, comp(model=MINILM), 400, "model"),
    ("completion-unknown-field", "POST", COMP, comp(messages=USER), 400, "messages"),
    # -- embeddings ------------------------------------------------------------------------------------
    ("input-missing", "POST", EMB, {"model": MINILM}, 400, "input"),
    ("input-empty-string", "POST", EMB, emb(input=""), 400, "input"),
    ("input-list-with-empty-string", "POST", EMB, emb(input=["", "a"]), 400, "input"),
    ("input-list-of-empty-strings", "POST", EMB, emb(input=["", ""]), 400, "input"),
    ("input-empty-list", "POST", EMB, emb(input=[]), 400, "input"),
    ("input-list-of-empty-lists", "POST", EMB, emb(input=[[]]), 400, "input"),
    ("input-10000-items", "POST", EMB, emb(input=["a"] * 10000), 400, "input"),
    ("input-2049-token-lists", "POST", EMB, emb(input=[[1]] * 2049), 400, "input"),
    ("input-negative-token", "POST", EMB, emb(input=[-1]), 400, "input"),
    ("input-token-outside-vocab", "POST", EMB, emb(input=[[1, 10**7]]), 400, "input"),
    ("input-surrogate", "POST", EMB, emb(input=SURROGATE), 400, "input"),
    ("input-list-surrogate", "POST", EMB, emb(input=["a", SURROGATE]), 400, "input.1"),
    ("input-int", "POST", EMB, emb(input=5), 400, "input"),
    ("input-floats", "POST", EMB, emb(input=[1.5]), 400, "input"),
    ("input-too-long", "POST", EMB, emb(input=[[100] * 600]), 400, "input"),
    ("encoding-format-hex", "POST", EMB, emb(encoding_format="hex"), 400, "encoding_format"),
    ("dimensions-5", "POST", EMB, emb(dimensions=5), 400, "dimensions"),
    ("dimensions-string", "POST", EMB, emb(dimensions="384"), 400, "dimensions"),
    ("embedding-model-is-chat", "POST", EMB, emb(model=SMOLLM), 400, "model"),
    ("embedding-unknown-model", "POST", EMB, emb(model="missing"), 404, "model"),
    ("embedding-user-int", "POST", EMB, emb(user=5), 400, "user"),
    # -- tokenize / detokenize / models -----------------------------------------------------------------
    ("tokenize-messages-on-embedding-model", "POST", TOK, {"model": MINILM, "messages": USER}, 400, "messages"),
    ("tokenize-nothing", "POST", TOK, {"model": SMOLLM}, 400, "prompt"),
    ("tokenize-surrogate", "POST", TOK, {"model": SMOLLM, "prompt": SURROGATE}, 400, "prompt"),
    ("tokenize-user-null-content", "POST", TOK, {"model": SMOLLM, "messages": [{"role": "user", "content": None}]},
     400, "messages.0.content"),
    ("tokenize-unknown-model", "POST", TOK, {"model": "missing", "prompt": "hi"}, 404, "model"),
    ("tokenize-special-string", "POST", TOK, {"model": SMOLLM, "prompt": "hi", "add_special_tokens": "yes"}, 400,
     "add_special_tokens"),
    ("detokenize-negative", "POST", DETOK, {"model": SMOLLM, "tokens": [-1]}, 400, "tokens"),
    ("detokenize-outside-vocab", "POST", DETOK, {"model": SMOLLM, "tokens": [10**7]}, 400, "tokens"),
    ("detokenize-2^70", "POST", DETOK, {"model": SMOLLM, "tokens": [2**70]}, 400, "tokens"),
    ("detokenize-string", "POST", DETOK, {"model": SMOLLM, "tokens": "abc"}, 400, "tokens"),
    ("model-retrieve-unknown", "GET", "/v1/models/missing", None, 404, "model"),
    ("models-delete", "DELETE", "/v1/models", None, 405, None),
    ("unknown-route", "POST", "/v1/nothing", {}, 404, None),
]


def send(http: httpx.Client, method: str, path: str, body):
    if method == "GET" or method == "DELETE":
        return http.request(method, path)
    if isinstance(body, bytes):
        return http.post(path, content=body, headers={"content-type": "application/json"})
    return http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def assert_openai_error(r: httpx.Response, status: int, param):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err


def test_battery_has_over_100_cases():
    assert len(CASES) >= 100 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_request_gets_a_4xx_and_the_server_keeps_serving(http, case):
    _, method, path, body, status, param = case
    started = time.monotonic()
    assert_openai_error(send(http, method, path, body), status, param)
    assert time.monotonic() - started < 1.0 or "template" not in case[0]  # refused, not rendered
    ok = http.post(COMP, json=comp(max_tokens=1, temperature=0))
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("path", [CHAT, COMP, TOK])
def test_missing_or_wrong_key_is_401(server, path):
    body = chat() if path == CHAT else comp()
    assert_openai_error(httpx.post(server.url + path, json=body), 401, None)
    assert_openai_error(httpx.post(server.url + path, json=body, headers={"Authorization": "Bearer nope"}), 401, None)


def test_requests_that_once_killed_the_engine_are_400_and_the_next_is_served(http):
    for fields in ({"seed": 2**64}, {"top_k": 2**63}, {"n": 10000}, {"use_beam_search": True, "best_of": 100000}):
        assert http.post(CHAT, json=chat(**fields)).status_code == 400
    for seed in (2**63 - 1, -(2**63), -1):  # the extremes of the accepted range sample normally
        r = http.post(CHAT, json=chat(seed=seed, n=2, temperature=1.0))
        assert r.status_code == 200 and len(r.json()["choices"]) == 2
    r = http.post(CHAT, json=chat(temperature=0))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_assistant_turn_with_null_content_renders(http):
    """OpenAI's shape after a tool call: assistant content null (or absent) is valid; the template gets ""."""
    for assistant in ({"role": "assistant", "content": None}, {"role": "assistant"},
                      {"role": "assistant", "content": None,
                       "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}):
        r = http.post(CHAT, json=msgs(*USER, assistant, {"role": "user", "content": "And?"}))
        assert r.status_code == 200, r.text
    r = http.post(TOK, json={"model": SMOLLM, "messages": [*USER, {"role": "assistant", "content": None}]})
    assert r.status_code == 200 and r.json()["count"] > 0


def test_request_id_is_echoed(http):
    r = http.post(COMP, json=comp(max_tokens=1), headers={"X-Request-Id": "my-id-1"})
    assert r.headers["x-request-id"] == "my-id-1"
    assert http.get("/v1/models").headers["x-request-id"].startswith("req-")


def test_openapi_documents_the_real_errors(http):
    schema = http.get("/openapi.json").json()
    for path in (CHAT, COMP, EMB):
        responses = schema["paths"][path]["post"]["responses"]
        assert {"400", "401", "404", "413", "429", "500", "503"} <= set(responses) and "422" not in responses
        ref = responses["400"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorResponse")
    assert "HTTPValidationError" not in json.dumps(schema)


def test_models_report_their_quantization(http):
    cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert cards[SMOLLM]["quantization"] == "gguf:Q4_1+Q8_0"  # the default: the GGUF's blocks kept (Q8_0: its
    # tied embedding / LM head)
    assert cards[MINILM]["quantization"] == "none"
