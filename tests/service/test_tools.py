"""Tool-call parsing, forced-call grammars, the tool prompt and the Responses input conversion (no server)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.api.errors import APIError
from service.api.protocol import ResponsesRequest
from service.api.responses import chat_request, input_messages
from service.api.structured import request_grammar
from service.api.tools import (ToolCallParser, ToolPlan, hermes_history, parse_tools, split_answer,
                               with_default_tool_block)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TOOLS = parse_tools([WEATHER, TIME])


def calls_of(text, parallel=True):
    content, calls = split_answer(text, TOOLS, parallel)
    return content, [(c.name, json.loads(c.arguments)) for c in calls]


def test_hermes_blocks_become_calls_and_the_rest_content():
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    content, calls = calls_of(text)
    assert calls == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert content.strip() == "Let me check."
    assert calls_of(text, parallel=False)[1] == [("get_weather", {"city": "Paris"})]


def test_plain_json_answers_are_calls():
    assert calls_of('{"name": "get_weather", "parameters": {"city": "Oslo"}}') == (
        None, [("get_weather", {"city": "Oslo"})])
    assert calls_of('```json\n[{"name": "get_time", "arguments": "{}"}]\n```') == (None, [("get_time", {})])
    # JSON that is not a call to a known tool stays the answer
    assert calls_of('{"name": "launch_rockets", "arguments": {}}') == (
        '{"name": "launch_rockets", "arguments": {}}', [])
    assert calls_of('{"city": "Paris"}') == ('{"city": "Paris"}', [])


NATIVE = {
    # Llama 3.x: the python tag (kept or detokenised away), several calls separated by ";"
    '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Rome"}}': [("get_weather", {"city": "Rome"})],
    '{"name": "get_weather", "parameters": {"city": "Rome"}}; {"name": "get_time", "parameters": {}}':
        [("get_weather", {"city": "Rome"}), ("get_time", {})],
    # Mistral tokenizer v3: [TOOL_CALLS] then a JSON list
    '[TOOL_CALLS][{"name": "get_time", "arguments": {}}]': [("get_time", {})],
    # Mistral v11+: name[ARGS]{...} per call, with the markers or without them (special tokens skipped)
    '[TOOL_CALLS]get_weather[ARGS]{"city": "Bonn"}[TOOL_CALLS]get_time[ARGS]{}':
        [("get_weather", {"city": "Bonn"}), ("get_time", {})],
    'get_weather{"city": "Bonn"}': [("get_weather", {"city": "Bonn"})],
}


@pytest.mark.parametrize("text", list(NATIVE))
def test_native_formats_of_other_families(text):
    assert calls_of(text) == (None, NATIVE[text])
    parser = ToolCallParser(TOOLS)  # one character at a time: the same calls
    events = [e for ch in text for e in parser.feed(ch)] + parser.finish()
    assert [(v.name, json.loads(v.arguments)) for k, v in events if k == "call"] == NATIVE[text]


@pytest.mark.parametrize("text", ["get me the weather", "get_weather is what I would call", "getaway", "get",
                                  "unknown_tool{\"a\": 1}", "[TOOL_CALLS]nope"])
def test_text_that_only_looks_like_a_native_call_stays_content(text):
    assert calls_of(text) == (text, [])


def test_unclosed_block_at_the_end_is_still_a_call_and_garbage_is_content():
    assert calls_of('<tool_call>{"name": "get_time", "arguments": {}}')[1] == [("get_time", {})]
    content, calls = calls_of("<tool_call>not json</tool_call> ok")
    assert calls == [] and content == "<tool_call>not json</tool_call> ok"


def test_plain_text_passes_through_even_with_angle_brackets():
    text = "Use <b>bold</b> and a < b; <tool"
    assert calls_of(text) == (text, [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=40))
def test_streaming_in_any_chunks_gives_the_same_events_joined(cuts):
    text = ('Sure: <tool_call>\n{"name": "get_weather", "arguments": {"city": "Lima"}}\n</tool_call> and '
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call> done <tool_')
    parser = ToolCallParser(TOOLS)
    events, at = [], 0
    for n in cuts * 20:
        if at >= len(text):
            break
        events += parser.feed(text[at:at + n])
        at += n
    events += parser.feed(text[at:]) + parser.finish()
    content = "".join(v for k, v in events if k == "content")
    calls = [(v.name, json.loads(v.arguments)) for k, v in events if k == "call"]
    assert (content, calls) == calls_of(text)


def test_forced_calls_and_their_grammars():
    named = ToolPlan.of([WEATHER, TIME], {"type": "function", "function": {"name": "get_weather"}}, None)
    assert named.mode == "named" and json.loads(named.grammar.source) == WEATHER["function"]["parameters"]
    content, calls = named.split('{"city": "Rome"}')
    assert content is None and calls[0].name == "get_weather" and calls[0].arguments == '{"city": "Rome"}'
    required = ToolPlan.of([WEATHER, TIME], "required", False)
    schema = json.loads(required.grammar.source)
    assert schema["maxItems"] == 1 and len(schema["items"]["anyOf"]) == 2
    _, calls = required.split('[{"name": "get_time", "arguments": {}}]')
    assert [(c.name, c.arguments) for c in calls] == [("get_time", "{}")]
    assert required.split('[{"name": "get_ti')[1] == []  # cut by max_tokens: no call
    # cut after whole calls: those calls, never the array as content
    cut = '[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "Ro'
    content, calls = required.split(cut)
    assert content is None and [(c.name, c.arguments) for c in calls] == [("get_time", "{}")]
    two = '[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]'
    assert [c.name for c in required.split(two)[1]] == ["get_time", "get_weather"]
    assert [c.name for c in required.split(two[:-1] + ", ")[1]] == ["get_time", "get_weather"]


@pytest.mark.parametrize("parallel", [False, True, None])
def test_required_grammar_allows_one_call_without_parallel_calls_and_more_with(smollm, parallel):
    """What the grammar lets the model write after one whole call: only the end of the array with
    parallel_tool_calls false; another call or the end with it true or absent (OpenAI's default)."""
    import xgrammar as xgr

    from service.engine.grammar import Grammars

    grammars = Grammars(smollm.tokenizer, smollm.config.vocab_size, list(smollm.eos_token_ids))
    plan = ToolPlan.of([WEATHER, TIME], "required", parallel)
    one = '[{"name": "get_time", "arguments": {}}'
    matcher = xgr.GrammarMatcher(grammars.compile(plan.grammar))
    assert matcher.accept_string(one)
    assert matcher.accept_string(", ") == (parallel is not False)
    closed = xgr.GrammarMatcher(grammars.compile(plan.grammar))
    assert closed.accept_string(one + "]")
    assert not xgr.GrammarMatcher(grammars.compile(plan.grammar)).accept_string("[]")  # at least one call
    assert ToolPlan.of([WEATHER], "none", None).offered == []
    assert ToolPlan.of([WEATHER], None, None).mode == "auto"


def test_streamed_named_call_is_the_same_call():
    plan = ToolPlan.of([WEATHER], {"type": "function", "function": {"name": "get_weather"}}, None)
    stream = plan.stream()
    events = stream.feed('{"city"') + stream.feed(': "Rome"}') + stream.finish()
    assert events[0][0] == "call_start" and events[0][1].name == "get_weather"
    assert "".join(v for k, v in events if k == "arguments") == plan.split('{"city": "Rome"}')[1][0].arguments
    assert stream.called


@pytest.mark.parametrize("tools, choice, param", [
    ([{"type": "code_interpreter"}], None, "tools.0.type"),
    ([{"type": "function", "function": {"name": "x" * 65}}], None, "tools.0.function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": []}}], None, "tools.0.function.parameters"),
    ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
    ([WEATHER], 3, "tool_choice"),
    (None, "required", "tool_choice"),
])
def test_bad_tools_are_400s_naming_the_field(tools, choice, param):
    with pytest.raises(APIError) as err:
        ToolPlan.of(tools, choice, None)
    assert err.value.status == 400 and err.value.param == param


def test_history_and_tool_block_for_templates_without_tools():
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                                  "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "18 C"}]
    rewritten = hermes_history(messages)
    assert rewritten[1]["content"] == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                                       '</tool_call>')
    assert rewritten[2] == {"role": "user", "content": "<tool_response>\n18 C\n</tool_response>"}
    with_block = with_default_tool_block(rewritten, TOOLS)
    assert with_block[0]["role"] == "system" and '"name": "get_weather"' in with_block[0]["content"]
    kept = with_default_tool_block([{"role": "system", "content": "Be brief."}], TOOLS)
    assert kept[0]["content"].startswith("Be brief.\n\n") and len(kept) == 1


def test_structured_output_sources():
    def grammar(**fields):
        return request_grammar(ResponsesLike(**fields))

    assert grammar(response_format={"type": "text"}) is None
    assert grammar(response_format={"type": "json_object"}).kind == "json_object"
    spec = grammar(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"},
                                                                           "strict": True}})
    assert spec.kind == "json_schema" and json.loads(spec.source) == {"type": "object"}
    assert grammar(guided_choice=["a", "b"]).kind == "choice"
    assert grammar(structured_outputs={"regex": "a+"}).source == "a+"
    assert grammar(structured_outputs={"json": '{"type": "object"}'}).kind == "json_schema"
    with pytest.raises(APIError):
        grammar(guided_regex="a", structured_outputs={"regex": "b"})


class ResponsesLike:
    def __init__(self, **fields):
        for name in ("response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
                     "guided_grammar"):
            setattr(self, name, fields.get(name))


def test_responses_input_items_become_chat_messages():
    req = ResponsesRequest(model="m", instructions="Be brief.", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in "}, {"type": "input_text",
                                                                                      "text": "Paris?"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "18 C"},
    ])
    messages = input_messages(req)
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1] == {"role": "user", "content": "Weather in Paris?"}
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["c1", "c2"] and messages[2]["content"] is None
    assert messages[3] == {"role": "tool", "tool_call_id": "c1", "content": "18 C"}
    chat = chat_request(ResponsesRequest(model="m", input="hi", max_output_tokens=7, tools=[
        {"type": "function", "name": "get_time", "parameters": {"type": "object"}}],
        tool_choice={"type": "function", "name": "get_time"},
        text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True}}))
    assert chat.max_completion_tokens == 7 and chat.tools[0]["function"]["name"] == "get_time"
    assert chat.tool_choice == {"type": "function", "function": {"name": "get_time"}}
    assert chat.response_format["json_schema"]["schema"] == {"type": "object"}
