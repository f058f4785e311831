"""LangChain's ChatOpenAI against the server: structured output (each of its methods), bound tools, invoke
and stream, and a tool-call round trip through its message types."""
from __future__ import annotations

import json
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from ..conftest import API_KEY, SMOLLM

pytestmark = pytest.mark.slow


class Pet(BaseModel):
    """A pet."""
    name: str = Field(max_length=16, description="the pet's name")
    kind: Literal["cat", "dog", "fish"]


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
    """Current weather in a city.

    Args:
        city: the city
        unit: the temperature unit
    """
    return f"18 degrees {unit} in {city}"


@pytest.fixture(scope="module")
def llm(server):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=SMOLLM, base_url=server.url + "/v1", api_key=API_KEY, temperature=0, max_tokens=80,
                      max_retries=0, timeout=120)


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_with_structured_output(llm, method):
    structured = llm.with_structured_output(Pet if method != "json_mode" else Pet.model_json_schema(),
                                            method=method)
    if method == "json_mode":  # any JSON object (a 135M model loops on the pet prompt greedily)
        result = structured.invoke("Give a JSON object with a name and an age.")
        assert isinstance(result, dict) and result
    else:
        assert isinstance(structured.invoke("Invent a pet. Answer in JSON with a name and a kind."), Pet)


def test_bind_tools_invoke_and_stream(llm):
    bound = llm.bind_tools([get_weather], tool_choice="get_weather")
    message = bound.invoke("What is the weather in Paris?")
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and call["id"]
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "unit": {"enum": ["celsius", "fahrenheit"]}},
              "required": ["city", "unit"]}
    jsonschema.validate(call["args"], schema)
    merged = None
    for chunk in bound.stream("What is the weather in Paris?"):
        merged = chunk if merged is None else merged + chunk
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [(call["name"], call["args"])]


def test_tool_round_trip_through_langchain_messages(llm):
    from langchain_core.messages import HumanMessage, ToolMessage

    bound = llm.bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    forced = llm.bind_tools([get_weather], tool_choice="get_weather").invoke([question])
    call = forced.tool_calls[0]
    result = ToolMessage(get_weather.__call__(**call["args"]), tool_call_id=call["id"])
    answer = bound.invoke([question, forced, result])  # an AIMessage with tool_calls and empty content
    assert answer.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")
    assert json.dumps(answer.content)
