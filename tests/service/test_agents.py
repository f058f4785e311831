"""What agent frameworks and extraction pipelines send, judged by the official openai SDK against a real
uvicorn serving SmolLM2 (kept Q4_1): structured outputs, tool calls, the Responses API, vLLM's extras,
and what an operator sees (request log lines, throughput lines, offline /docs)."""
from __future__ import annotations

import json
import re
import time
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from ..conftest import SMOLLM

pytestmark = pytest.mark.slow

WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                   "unit": {"enum": ["celsius", "fahrenheit"]}},
                  "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": WEATHER_PARAMS}},
         {"type": "function", "function": {"name": "get_time", "description": "Current time",
                                           "parameters": {"type": "object", "properties": {}}}}]
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


class Pet(BaseModel):
    name: str = Field(max_length=16)
    age: int = Field(ge=0, le=40)
    kind: Literal["cat", "dog", "fish"]


def test_parse_with_a_pydantic_model(client):
    done = client.chat.completions.parse(model=SMOLLM, messages=[{"role": "user", "content": "Invent a pet."}],
                                         response_format=Pet, max_tokens=80, seed=4)
    message = done.choices[0].message
    assert done.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Pet)
    assert Pet.model_validate_json(message.content) == message.parsed


def test_json_object_output_parses_for_20_seeded_samples(client):
    texts = []
    for seed in (100, 200):  # n is at most 16 (the server's --max-n): two requests of 10 (seeds seed..seed+9)
        done = client.chat.completions.create(
            model=SMOLLM, messages=[{"role": "user", "content": "Give a JSON object with a name and an age."}],
            response_format={"type": "json_object"}, n=10, seed=seed, temperature=0.3, top_p=0.9, max_tokens=300)
        assert all(c.finish_reason == "stop" for c in done.choices), [c.message.content for c in done.choices]
        texts += [c.message.content for c in done.choices]
    assert len(texts) == 20 and all(isinstance(json.loads(t), dict) for t in texts)


def test_named_tool_choice_yields_valid_arguments(client):
    done = client.chat.completions.create(model=SMOLLM, messages=ASK_WEATHER, tools=TOOLS, tool_choice=NAMED,
                                          max_tokens=60, temperature=0)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)


def test_required_tool_choice_calls_one_of_the_tools(client):
    done = client.chat.completions.create(model=SMOLLM, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required",
                                          parallel_tool_calls=False, max_tokens=80, temperature=0)
    (call,) = done.choices[0].message.tool_calls
    assert call.function.name in ("get_weather", "get_time")
    if call.function.name == "get_weather":
        jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)


def _assembled(chunks) -> tuple[list[tuple[str, str]], str | None]:
    calls: dict[int, dict] = {}
    finish = None
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"name": "", "arguments": "", "id": None})
            entry["id"] = entry["id"] or delta.id
            entry["name"] += (delta.function.name or "") if delta.function else ""
            entry["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert all(c["id"] for c in calls.values())
    return [(c["name"], c["arguments"]) for _, c in sorted(calls.items())], finish


@pytest.mark.parametrize("tool_choice", [NAMED, "required"])
def test_streamed_tool_calls_assemble_to_the_non_streamed_call(client, tool_choice):
    kwargs = dict(model=SMOLLM, messages=ASK_WEATHER, tools=TOOLS, tool_choice=tool_choice,
                  parallel_tool_calls=False, max_tokens=80, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0]
    streamed, finish = _assembled(client.chat.completions.create(**kwargs, stream=True))
    assert streamed == [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert finish == whole.finish_reason == "tool_calls"


def test_tool_round_trip_with_null_content(client, http):
    history = ASK_WEATHER + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"}]
    done = client.chat.completions.create(model=SMOLLM, messages=history, tools=TOOLS, max_tokens=30,
                                          temperature=0)
    assert done.choices[0].finish_reason in ("stop", "length", "tool_calls")
    rendered = http.post("/tokenize", json={"model": SMOLLM, "messages": history}).json()
    assert rendered["count"] > 0
    assert http.get("/health").status_code == 200


def test_auto_tool_choice_parses_a_hermes_call(client):
    """tool_choice auto: the answer is parsed. A 135M model rarely calls on its own, so a regex (auto allows
    one) makes it answer with a Hermes block; the parser turns it into a call with finish_reason tool_calls,
    and the streamed answer assembles to the same call."""
    hermes = (r'Checking\.\n<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "[A-Z][a-z]{2,9}", '
              r'"unit": "celsius"\}\}\n</tool_call>')
    kwargs = dict(model=SMOLLM, messages=ASK_WEATHER, tools=TOOLS, max_tokens=60, temperature=0,
                  extra_body={"guided_regex": hermes})
    done = client.chat.completions.create(**kwargs).choices[0]
    assert done.finish_reason == "tool_calls", done.message
    assert done.message.content == "Checking.\n"
    (call,) = done.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    streamed, finish = _assembled(chunks)
    assert streamed == [(call.function.name, call.function.arguments)] and finish == "tool_calls"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Checking.\n"


def test_guided_choice_regex_and_structured_outputs(client):
    choices = ["yes", "no", "not sure"]
    for seed in range(3):
        done = client.chat.completions.create(model=SMOLLM, messages=[{"role": "user", "content": "Is it raining?"}],
                                              max_tokens=8, seed=seed, extra_body={"guided_choice": choices})
        assert done.choices[0].message.content in choices
    regex = client.completions.create(model=SMOLLM, prompt="My phone number is", max_tokens=20, temperature=0,
                                      extra_body={"structured_outputs": {"regex": r"\d{3}-\d{4}"}})
    assert re.fullmatch(r"\d{3}-\d{4}", regex.choices[0].text)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    guided = client.chat.completions.create(model=SMOLLM, messages=[{"role": "user", "content": "ok?"}],
                                            max_tokens=20, temperature=0, extra_body={"guided_json": schema})
    jsonschema.validate(json.loads(guided.choices[0].message.content), schema)


def test_streamed_json_schema_with_n(client):
    chunks = client.chat.completions.create(model=SMOLLM, messages=[{"role": "user", "content": "Invent a pet."}],
                                            response_format={"type": "json_schema", "json_schema": {
                                                "name": "pet", "schema": Pet.model_json_schema(), "strict": True}},
                                            n=3, seed=9, max_tokens=80, stream=True)
    texts = ["", "", ""]
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    for text in texts:
        Pet.model_validate_json(text)


def test_responses_create_and_stream(client):
    done = client.responses.create(model=SMOLLM, input="Say hello to Ada.", instructions="Answer in one sentence.",
                                   max_output_tokens=200, temperature=0)
    assert done.status == "completed" and done.output_text
    assert done.usage.input_tokens > 0 and done.usage.output_tokens > 0
    assert done.output[0].type == "message" and done.output[0].content[0].type == "output_text"
    kinds, deltas = [], ""
    with client.responses.stream(model=SMOLLM, input="Say hello to Ada.", instructions="Answer in one sentence.",
                                 max_output_tokens=200, temperature=0) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas += event.delta
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.output_item.added" in kinds and "response.output_text.done" in kinds
    assert deltas == final.output_text == done.output_text


def test_responses_structured_output_and_tools(client):
    parsed = client.responses.parse(model=SMOLLM, input="Invent a pet.", text_format=Pet, max_output_tokens=80)
    assert isinstance(parsed.output_parsed, Pet)
    tools = [{"type": "function", "name": "get_weather", "description": "Current weather in a city",
              "parameters": WEATHER_PARAMS}]
    called = client.responses.create(model=SMOLLM, input="Weather in Paris?", tools=tools,
                                     tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=60)
    (call,) = [item for item in called.output if item.type == "function_call"]
    jsonschema.validate(json.loads(call.arguments), WEATHER_PARAMS)
    follow_up = client.responses.create(model=SMOLLM, tools=tools, max_output_tokens=30, input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"}])
    assert follow_up.status in ("completed", "incomplete")
    with client.responses.stream(model=SMOLLM, input="Weather in Paris?", tools=tools, max_output_tokens=60,
                                 tool_choice={"type": "function", "name": "get_weather"}) as stream:
        final = stream.get_final_response()
    streamed = [item for item in final.output if item.type == "function_call"]
    assert streamed and json.loads(streamed[0].arguments) and streamed[0].name == "get_weather"
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        client.responses.create(model=SMOLLM, input="hi", previous_response_id="resp_123")


def test_vllm_extras_are_honoured(client, http):
    body = {"model": SMOLLM, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
    free = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert "Paris" in free
    banned = http.post("/v1/completions", json={**body, "bad_words": ["Paris"]}).json()["choices"][0]["text"]
    assert "Paris" not in banned
    with_plp = http.post("/v1/completions", json={**body, "prompt_logprobs": 2, "request_id": "my-req-1"}).json()
    assert with_plp["id"] == "cmpl-my-req-1"
    plp = with_plp["choices"][0]["prompt_logprobs"]
    assert plp[0] is None and len(plp) == with_plp["usage"]["prompt_tokens"]
    assert all(any(v["rank"] >= 1 for v in entry.values()) for entry in plp[1:])
    chat = http.post("/v1/chat/completions", json={
        "model": SMOLLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "min_tokens": 10,
        "temperature": 0})
    assert chat.json()["usage"]["completion_tokens"] == 10
    # a request's own chat_template needs --trust-request-chat-template (tests/service/test_chat_templates.py)
    refused = http.post("/v1/chat/completions", json={"model": SMOLLM, "messages": [{"role": "user", "content": "hi"}],
                                                      "chat_template": "{{ messages[0].content }}"})
    assert refused.status_code == 400 and "--trust-request-chat-template" in refused.json()["error"]["message"]
    continued = http.post("/v1/chat/completions", json={
        "model": SMOLLM, "max_tokens": 4, "temperature": 0, "add_generation_prompt": False,
        "continue_final_message": True,
        "messages": [{"role": "user", "content": "Count to ten."}, {"role": "assistant", "content": "1, 2, 3,"}]})
    assert continued.json()["choices"][0]["message"]["content"].startswith(" 4")  # the turn goes on, not a new one


def test_operators_see_each_request_and_throughput(server, http):
    http.post("/v1/chat/completions", json={"model": SMOLLM, "messages": [{"role": "user", "content": "Hi"}],
                                            "max_tokens": 40, "ignore_eos": True, "temperature": 0},
              headers={"X-Request-Id": "trace-me-42"})
    http.post("/v1/chat/completions", json={"model": SMOLLM, "messages": [], "max_tokens": 4},
              headers={"X-Request-Id": "trace-bad-43"})
    time.sleep(1.5)
    log = open(server.log_path).read()
    line = next(ln for ln in log.splitlines() if "trace-me-42" in ln)
    assert re.search(r"POST /v1/chat/completions 200 model=\S+ prompt_tokens=\d+ completion_tokens=40 "
                     r"ttft_ms=\d+ total_ms=\d+", line), line
    assert "Hi" not in line.split("total_ms")[1]  # no prompt text without --log-requests
    bad = next(ln for ln in log.splitlines() if "trace-bad-43" in ln)
    assert " 400 " in bad and "error=" in bad and "messages" in bad
    assert re.search(r"Avg prompt throughput: [\d.]+ tokens/s, Avg generation throughput: [\d.]+ tokens/s, "
                     r"Running: \d+ reqs, Waiting: \d+ reqs, KV cache usage: [\d.]+%", log)


def test_docs_render_without_a_cdn(http):
    page = http.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert assets and not [a for a in assets if a.startswith("http")], assets
    for asset in assets:
        assert http.get(asset).status_code == 200, asset
    assert "/v1/responses" in http.get("/openapi.json").json()["paths"]


def test_tokenize_shows_the_prompt_a_chat_with_tools_gets(http):
    """vLLM's chat /tokenize takes tools: the tokens are the prompt the chat request renders, tool block included."""
    messages = [{"role": "user", "content": "Weather in Rome?"}]
    with_tools = http.post("/tokenize", json={"model": SMOLLM, "messages": messages, "tools": TOOLS}).json()
    without = http.post("/tokenize", json={"model": SMOLLM, "messages": messages}).json()
    assert with_tools["count"] > without["count"]
    chat = http.post("/v1/chat/completions", json={"model": SMOLLM, "messages": messages, "tools": TOOLS,
                                                   "max_tokens": 1}).json()
    assert chat["usage"]["prompt_tokens"] == with_tools["count"]
    text = http.post("/detokenize", json={"model": SMOLLM, "tokens": with_tools["tokens"]}).json()["prompt"]
    assert "get_weather" in text
    bad = http.post("/tokenize", json={"model": SMOLLM, "messages": messages, "tools": [{"type": "web"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tools.0.type"
