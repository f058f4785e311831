"""Tool calling: tool definitions, the prompt they go into, forced calls as grammars, and the output parser.

Output format: the Hermes / Qwen convention, one call per block::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

and, as small models often answer, plain JSON: ``{"name": ..., "arguments": ...}`` (or ``"parameters"``)
or a list of those as the whole output. The native formats of other families, as the whole answer:
- Llama 3.x: ``<|python_tag|>`` (optional) then JSON calls, several separated by ``;``;
- Mistral: ``[TOOL_CALLS]`` then a JSON list (tokenizer v3), or ``[TOOL_CALLS]name[ARGS]{...}`` per call (v11+);
  the markers are special tokens, so the detokenised text usually lacks them: ``name{...}`` is read as a call
  when ``name`` is an offered tool.
``tool_choice``:
- ``none``: tools are left out of the prompt and nothing is parsed;
- ``auto``: the model decides; the output is parsed (:class:`ToolCallParser`);
- ``required``: a grammar forces a JSON list of one or more calls ``[{"name", "arguments"}]`` (one when
  ``parallel_tool_calls`` is false), each call's arguments valid against its tool's parameter schema;
- a named function: a grammar forces that function's arguments object; the call is built around it.

Templates with tool support (they mention ``tools``) get ``tools=`` as transformers passes them. Others get a
system block listing the tools in the Hermes format (:func:`default_tool_block`), and the conversation's
earlier calls and results rewritten into that format, so any chat model can be offered tools.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from service.engine.grammar import GrammarSpec

from .errors import bad_request

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for function names
OPEN, CLOSE = "<tool_call>", "</tool_call>"
PREFIXES = ("<|python_tag|>", "[TOOL_CALLS]")  # Llama 3.x, Mistral: what an answer of calls opens with


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict

    def as_openai(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    index: int = 0  # its place among the answer's calls (streamed deltas carry it)

    def as_openai(self, streamed: bool = False) -> dict:
        call = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return {"index": self.index, **call} if streamed else call


def parse_tools(raw: list[dict] | None, param: str = "tools") -> list[Tool]:
    """Chat's ``[{"type": "function", "function": {...}}]`` or the Responses API's flat
    ``[{"type": "function", "name": ...}]``; a 400 naming the tool that is malformed."""
    tools = []
    for i, item in enumerate(raw or []):
        where = f"{param}.{i}"
        if not isinstance(item, dict) or item.get("type") != "function":
            raise bad_request(f"{where}: only function tools are supported (type 'function')", f"{where}.type")
        fn = item.get("function", item)
        if not isinstance(fn, dict):
            raise bad_request(f"{where}.function must be an object", f"{where}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise bad_request(f"{where}: function name must match {NAME_PATTERN.pattern}", f"{where}.function.name")
        params = fn.get("parameters")
        params = {"type": "object", "properties": {}} if params is None else params
        if not isinstance(params, dict):
            raise bad_request(f"{where}.function.parameters must be a JSON schema object",
                              f"{where}.function.parameters")
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise bad_request(f"{where}.function.description must be a string", f"{where}.function.description")
        tools.append(Tool(name, description, params))
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise bad_request("tools must have distinct function names", param)
    return tools


def tool_choice_mode(choice, tools: list[Tool], param: str = "tool_choice") -> tuple[str, str | None]:
    """("none" | "auto" | "required" | "named", the named function or None)."""
    if choice is None:
        return ("auto" if tools else "none"), None
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise bad_request(f"tool_choice must be 'none', 'auto', 'required' or a function, got {choice!r}", param)
        if choice != "none" and not tools:
            raise bad_request(f"tool_choice {choice!r} needs tools", param)
        return choice, None
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function", choice)  # chat: {"function": {"name"}}; Responses: {"name"}
        name = fn.get("name") if isinstance(fn, dict) else None
        if name not in {t.name for t in tools}:
            raise bad_request(f"tool_choice names function {name!r}, which is not among the tools", param)
        return "named", name
    raise bad_request("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': "
                      "{'name': ...}}", param)


def _call_schema(tool: Tool) -> dict:
    return {"type": "object", "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def forced_grammar(mode: str, name: str | None, tools: list[Tool], parallel: bool) -> GrammarSpec | None:
    """The grammar of a forced call (``required`` / named), or None when the model may answer freely."""
    if mode == "named":
        return GrammarSpec.json_schema(next(t for t in tools if t.name == name).parameters, "tool_choice")
    if mode == "required":
        schema = {"type": "array", "minItems": 1, "items": {"anyOf": [_call_schema(t) for t in tools]}}
        if not parallel:
            schema["maxItems"] = 1
        return GrammarSpec.json_schema(schema, "tools")
    return None


def forced_calls(mode: str, name: str | None, text: str) -> list[ToolCall]:
    """The calls in a grammar-forced output. The grammar guarantees the shape unless max_tokens cut it: then a
    named call has none, and a ``required`` array has the calls it completed before the cut."""
    if mode == "named":  # the arguments as generated (and as streamed)
        try:
            value = json.loads(text)
        except ValueError:
            return []
        return [ToolCall(name, text.strip())] if isinstance(value, dict) else []
    return [ToolCall(c["name"], json.dumps(c["arguments"], ensure_ascii=False)) for c in _complete_items(text)
            if isinstance(c, dict) and isinstance(c.get("name"), str) and "arguments" in c]


def _complete_items(text: str) -> list:
    """The whole elements at the start of a JSON array, however the text ends."""
    decoder, at = json.JSONDecoder(), text.find("[") + 1
    items = []
    while 0 < at < len(text):
        at = len(text) - len(text[at:].lstrip())
        try:
            item, at = decoder.raw_decode(text, at)
        except ValueError:  # cut inside this element (or the array is closed)
            break
        items.append(item)
        rest = text[at:].lstrip()
        if not rest.startswith(","):
            break
        at = len(text) - len(rest) + 1
    return items


# -- the prompt ----------------------------------------------------------------------------------

def template_supports_tools(template: str | None) -> bool:
    return bool(template) and "tools" in template


def default_tool_block(tools: list[Tool]) -> str:
    listed = "\n".join(json.dumps(t.as_openai(), ensure_ascii=False) for t in tools)
    return ("You can call functions to help with the user's request. The functions, as JSON schemas:\n"
            f"<tools>\n{listed}\n</tools>\n"
            "To call one or more functions, answer with one block per call, each a JSON object with the "
            f"function's name and its arguments:\n{OPEN}\n"
            '{"name": "<function name>", "arguments": {<arguments as a JSON object>}}\n'
            f"{CLOSE}\nOtherwise answer the user directly.")


def _arguments_object(arguments) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def hermes_history(messages: list[dict]) -> list[dict]:
    """Earlier calls and results in the Hermes text format, for templates that know no tool fields."""
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            blocks = [json.dumps({"name": c.get("function", {}).get("name"),
                                  "arguments": _arguments_object(c.get("function", {}).get("arguments"))},
                                 ensure_ascii=False) for c in m["tool_calls"]]
            text = "\n".join(f"{OPEN}\n{b}\n{CLOSE}" for b in blocks)
            m = {"role": "assistant", "content": (m["content"] + "\n" if m["content"] else "") + text}
        elif m["role"] == "tool":
            m = {"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
        out.append(m)
    return out


def with_default_tool_block(messages: list[dict], tools: list[Tool]) -> list[dict]:
    block = default_tool_block(tools)
    if messages and messages[0]["role"] in ("system", "developer"):
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{block}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


# -- parsing the model's answer ------------------------------------------------------------------

def _as_call(value, names: set[str]) -> ToolCall | None:
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    args = value.get("arguments", value.get("parameters", {}))
    args = _arguments_object(args)
    if not isinstance(args, dict):
        return None
    return ToolCall(value["name"], json.dumps(args, ensure_ascii=False))


def _plain_json_calls(text: str, names: set[str]) -> list[ToolCall] | None:
    body = text.strip()
    for prefix in PREFIXES:
        body = body.removeprefix(prefix).strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.S)
    body = fenced.group(1) if fenced else body
    try:
        value = json.loads(body)
    except ValueError:
        return _semicolon_calls(body, names) or _named_argument_calls(body, names)
    items = value if isinstance(value, list) else [value]
    calls = [_as_call(v, names) for v in items]
    return calls if calls and all(calls) else None


def _semicolon_calls(body: str, names: set[str]) -> list[ToolCall] | None:
    """Llama 3.x's several calls: ``{...}; {...}``."""
    decoder, calls, at = json.JSONDecoder(), [], 0
    while at < len(body):
        try:
            value, end = decoder.raw_decode(body, at)
        except ValueError:
            return None
        calls.append(_as_call(value, names))
        at = end
        rest = body[at:].lstrip()
        if rest.startswith(";"):
            rest = rest[1:].lstrip()
        at = len(body) - len(rest)
    return calls if len(calls) > 1 and all(calls) else None


_NAMED = re.compile(r"\s*(?:\[TOOL_CALLS\])?\s*([a-zA-Z0-9_-]{1,64})\s*(?:\[ARGS\])?\s*(?=\{)")


def _named_argument_calls(body: str, names: set[str]) -> list[ToolCall] | None:
    """Mistral v11+: ``name[ARGS]{...}`` per call, markers kept or (special tokens) dropped: ``name{...}``."""
    decoder, calls, at = json.JSONDecoder(), [], 0
    while at < len(body):
        found = _NAMED.match(body, at)
        if not found or found.group(1) not in names:
            return None
        try:
            args, at = decoder.raw_decode(body, found.end())
        except ValueError:
            return None
        if not isinstance(args, dict):
            return None
        calls.append(ToolCall(found.group(1), json.dumps(args, ensure_ascii=False)))
        at = len(body) - len(body[at:].lstrip())
    return calls or None


class ToolCallParser:
    """Splits a model's answer, as it streams, into content and tool calls.

    ``feed(delta)`` and ``finish()`` return events: ``("content", text)`` or ``("call", ToolCall)``. Text
    that may be the start of ``<tool_call>`` is held back until it is known; an answer that opens with
    ``{``, ``[`` or a code fence is held whole, since it may be a plain-JSON call. Feeding a whole answer at
    once gives the same calls as feeding it token by token, so streamed and non-streamed agree.
    """

    def __init__(self, tools: list[Tool], parallel: bool = True):
        self.names = {t.name for t in tools}
        self.parallel = parallel
        self.buffer = ""
        self.seen_text = False  # anything other than whitespace emitted or held
        self.mode = "text"  # "text", "call" (inside <tool_call>), "json" (whole answer may be a JSON call)
        self.calls = 0

    def _emit_call(self, call: ToolCall | None, raw: str, events: list) -> None:
        if call is None:  # not a call to a known tool: it stays visible as content
            events.append(("content", raw))
        elif self.parallel or self.calls == 0:
            self.calls += 1
            events.append(("call", call))

    def feed(self, delta: str) -> list:
        self.buffer += delta
        events: list = []
        while True:
            if self.mode == "json":
                return events
            if self.mode == "text":
                if not self.seen_text and self._opens_calls(self.buffer.lstrip()):
                    self.mode = "json"
                    continue
                if not self.seen_text and self._may_open_calls(self.buffer.lstrip()):
                    return events  # "<|python", "get_wea": wait for the rest
                at = self.buffer.find(OPEN)
                if at < 0:
                    keep = _partial_suffix(self.buffer, OPEN)
                    self._content(self.buffer[:len(self.buffer) - keep], events)
                    self.buffer = self.buffer[len(self.buffer) - keep:]
                    return events
                self._content(self.buffer[:at], events)
                self.buffer, self.mode = self.buffer[at + len(OPEN):], "call"
            end = self.buffer.find(CLOSE)
            if end < 0:
                return events
            raw = self.buffer[:end]
            self._emit_call(_json_call(raw, self.names), OPEN + raw + CLOSE, events)
            self.buffer, self.mode = self.buffer[end + len(CLOSE):], "text"

    def _opens_calls(self, text: str) -> bool:
        """Whether an answer starting so is (maybe) calls as a whole: JSON, a fence, a family's marker, or an
        offered tool's name then its arguments (Mistral v11 with the markers detokenised away)."""
        if text[:1] in ("{", "[", "`") or text.startswith(PREFIXES):
            return True
        named = _NAMED.match(text)
        return bool(named and named.group(1) in self.names)

    def _may_open_calls(self, text: str) -> bool:
        """A start of the answer that could still become one of those (held back until it is known)."""
        if not text:
            return False
        word = re.match(r"[a-zA-Z0-9_-]*\s*(\[(A(R(G(S\]?)?)?)?)?)?$", text)
        return any(p.startswith(text) for p in PREFIXES) or bool(
            word and any(n.startswith(text.split("[")[0].strip()) for n in self.names))

    def _content(self, text: str, events: list) -> None:
        if text:
            self.seen_text = self.seen_text or bool(text.strip())
            events.append(("content", text))

    def finish(self) -> list:
        events: list = []
        rest, self.buffer = self.buffer, ""
        if self.mode == "json":
            calls = _plain_json_calls(rest, self.names)
            if calls:
                for call in calls:
                    self._emit_call(call, "", events)
            else:
                events.append(("content", rest))
        elif self.mode == "call":  # an unclosed block at the end (EOS right after the JSON)
            self._emit_call(_json_call(rest, self.names), OPEN + rest, events)
        elif rest:
            events.append(("content", rest))
        return events


def _json_call(raw: str, names: set[str]) -> ToolCall | None:
    try:
        return _as_call(json.loads(raw.strip()), names)
    except ValueError:
        return None


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``marker``."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def split_answer(text: str, tools: list[Tool], parallel: bool = True) -> tuple[str | None, list[ToolCall]]:
    """(content or None, tool calls) of a whole answer, as the streaming parser would give them."""
    parser = ToolCallParser(tools, parallel)
    events = parser.feed(text) + parser.finish()
    calls = [e[1] for e in events if e[0] == "call"]
    content = "".join(e[1] for e in events if e[0] == "content")
    if calls and not content.strip():
        return None, calls
    return content, calls


# -- one request's tool handling -----------------------------------------------------------------

@dataclass
class ToolPlan:
    """What a request asked of tools, and how each of its answers becomes content and calls."""
    tools: list[Tool] = field(default_factory=list)
    mode: str = "none"
    name: str | None = None  # the forced function when mode == "named"
    parallel: bool = True

    @staticmethod
    def of(tools_raw, choice, parallel: bool | None, param: str = "tools") -> "ToolPlan":
        tools = parse_tools(tools_raw, param)
        mode, name = tool_choice_mode(choice, tools)
        return ToolPlan(tools, mode, name, parallel is not False)

    @property
    def offered(self) -> list[Tool]:
        """The tools the prompt shows (none under tool_choice none)."""
        return [] if self.mode == "none" else self.tools

    @property
    def grammar(self) -> GrammarSpec | None:
        return forced_grammar(self.mode, self.name, self.tools, self.parallel)

    def split(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, calls) of a whole answer."""
        if self.mode in ("named", "required"):
            calls = forced_calls(self.mode, self.name, text)
            return (None, calls) if calls else (text, [])
        if self.mode == "auto":
            return split_answer(text, self.tools, self.parallel)
        return text, []

    def stream(self) -> "ToolStream":
        return ToolStream(self)


class ToolStream:
    """One answer's stream as events: ("content", text), ("call", ToolCall) — a whole call —, or, for a
    named tool_choice, ("call_start", ToolCall with empty arguments) then ("arguments", text delta)."""

    def __init__(self, plan: ToolPlan):
        self.plan = plan
        self.parser = ToolCallParser(plan.tools, plan.parallel) if plan.mode == "auto" else None
        self.forced_text = ""
        self.started = False
        self.called = False
        self.count = 0  # calls emitted so far

    def feed(self, delta: str) -> list:
        mode = self.plan.mode
        if mode == "none":
            return [("content", delta)] if delta else []
        if mode == "auto":
            return self._seen(self.parser.feed(delta))
        if mode == "required":  # the list is parsed whole at the end
            self.forced_text += delta
            return []
        events = []
        if not self.started:
            self.started = self.called = True
            events.append(("call_start", ToolCall(self.plan.name, "")))
        return events + ([("arguments", delta)] if delta else [])

    def finish(self) -> list:
        if self.plan.mode == "auto":
            return self._seen(self.parser.finish())
        if self.plan.mode == "required":
            content, calls = self.plan.split(self.forced_text)
            return self._seen([("call", c) for c in calls]) or ([("content", content)] if content else [])
        if self.plan.mode == "named" and not self.started:  # an empty answer still names its call
            self.started = self.called = True
            return [("call_start", ToolCall(self.plan.name, ""))]
        return []

    def _seen(self, events: list) -> list:
        for kind, value in events:
            if kind == "call":
                value.index = self.count
                self.count += 1
                self.called = True
        return events
