"""OpenAI's Responses API (``POST /v1/responses``) on top of the chat path.

A Responses request becomes a chat request (``instructions`` a system message; ``input`` messages,
``function_call`` and ``function_call_output`` items the assistant tool calls and tool messages they
stand for; ``text.format`` the ``response_format``; flat function tools the chat tools), so prompts,
grammars and tool parsing are the chat path's own. The answer comes back as output items — a
``message`` with ``output_text``, then ``function_call`` items — or, streamed, as the Responses event
sequence: ``response.created``, ``response.in_progress``, per item ``response.output_item.added`` /
``.done`` around ``response.content_part.*`` and ``response.output_text.delta`` / ``.done`` (or
``response.function_call_arguments.delta`` / ``.done``), then ``response.completed`` (or
``response.incomplete`` when ``max_output_tokens`` cut it short). Responses are not stored:
``previous_response_id`` is a 400.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import Request

from .errors import bad_request
from .protocol import ChatCompletionRequest, ResponsesRequest, make_id
from .serving import OpenAIServing, note_request, start_generation, until_disconnect
from .tools import ToolCall, ToolPlan

ROLES = ("user", "system", "developer", "assistant")


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _content_text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or a list of text parts", where)
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text") \
                or not isinstance(part.get("text"), str):
            raise bad_request(f"{where}.{i}: only input_text / output_text parts are supported", f"{where}.{i}")
        texts.append(part["text"])
    return "".join(texts)


def input_messages(req: ResponsesRequest) -> list[dict]:
    """Chat messages for ``instructions`` + ``input``."""
    messages = [{"role": "system", "content": req.instructions}] if req.instructions else []
    if isinstance(req.input, str):
        return messages + [{"role": "user", "content": req.input}]
    for i, item in enumerate(req.input):
        where = f"input.{i}"
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in ROLES:
                raise bad_request(f"{where}.role must be one of {ROLES}", f"{where}.role")
            messages.append({"role": item["role"], "content": _content_text(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")}}
            if not all(isinstance(v, str) for v in (call["id"], call["function"]["name"])):
                raise bad_request(f"{where}: a function_call item needs call_id and name", where)
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and "tool_calls" in last:  # parallel calls: one turn
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(item.get("call_id"), str) or not isinstance(output, (str, list)):
                raise bad_request(f"{where}: a function_call_output item needs call_id and output", where)
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": _content_text(output, f"{where}.output")})
        else:
            raise bad_request(f"{where}: input items of type {kind!r} are not supported (message, "
                              "function_call, function_call_output)", f"{where}.type")
    if not messages:
        raise bad_request("input must not be empty", "input")
    return messages


def _response_format(text: dict | None) -> dict | None:
    fmt = (text or {}).get("format")
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema", "strict",
                                                                            "description") if k in fmt}}
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    raise bad_request(f"text.format type {fmt.get('type')!r} is not supported (text, json_object, json_schema)",
                      "text.format.type")


def _chat_tools(tools: list[dict] | None) -> list[dict] | None:
    if tools is None:
        return None
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type") != "function":
            raise bad_request(f"tools.{i}: only function tools are supported (no built-in tools)", f"tools.{i}.type")
        out.append({"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters",
                                                                        "strict") if k in t}})
    return out


def _chat_tool_choice(choice):
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def chat_request(req: ResponsesRequest) -> ChatCompletionRequest:
    if req.previous_response_id is not None:
        raise bad_request("previous_response_id is not supported: this server does not store responses; send the "
                          "conversation in input", "previous_response_id", "unsupported_parameter")
    if req.background:
        raise bad_request("background responses are not supported", "background", "unsupported_parameter")
    fields: dict[str, Any] = {
        "model": req.model, "messages": input_messages(req), "stream": req.stream,
        "response_format": _response_format(req.text), "tools": _chat_tools(req.tools),
        "tool_choice": _chat_tool_choice(req.tool_choice), "parallel_tool_calls": req.parallel_tool_calls,
        "max_completion_tokens": req.max_output_tokens, "temperature": req.temperature, "top_p": req.top_p,
        "seed": req.seed, "top_k": req.top_k, "request_id": req.request_id,
        "logprobs": req.top_logprobs is not None, "top_logprobs": req.top_logprobs,
        "chat_template": req.chat_template, "chat_template_kwargs": req.chat_template_kwargs,
    }
    return ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None}, strict=False)


class ResponseShape:
    """The response object's fixed fields, and its output items."""

    def __init__(self, req: ResponsesRequest, model: str, response_id: str):
        self.req, self.model, self.id, self.created = req, model, response_id, int(time.time())

    def body(self, status: str, output: list[dict], usage: dict | None = None) -> dict:
        req = self.req
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "model": self.model, "output": output, "usage": usage, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "metadata": req.metadata or {}, "parallel_tool_calls": req.parallel_tool_calls is not False,
            "temperature": req.temperature, "top_p": req.top_p, "tool_choice": req.tool_choice or "auto",
            "tools": req.tools or [], "text": req.text or {"format": {"type": "text"}},
            "previous_response_id": None, "reasoning": None, "store": False, "truncation": "disabled",
            "user": req.user, "background": False,
        }

    @staticmethod
    def message(item_id: str, text: str, status: str = "completed") -> dict:
        content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status == \
            "completed" else []
        return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}

    @staticmethod
    def function_call(item_id: str, call: ToolCall, status: str = "completed") -> dict:
        return {"type": "function_call", "id": item_id, "call_id": call.id, "name": call.name,
                "arguments": call.arguments if status == "completed" else "", "status": status}

    @staticmethod
    def usage(prompt: int, completion: int, cached: int) -> dict:
        return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
                "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion}


class ResponsesServing:
    def __init__(self, chat: OpenAIServing):
        self.chat = chat

    async def create(self, req: ResponsesRequest, request: Request):
        chat_req = chat_request(req)
        served, text, prompt_ids, params, plan = await self.chat._chat_inputs(chat_req)
        response_id = make_id("resp", req.request_id).replace("resp-", "resp_", 1)
        note_request(request, served, text, params)
        stream = await start_generation(served, response_id, prompt_ids, params, request)
        shape = ResponseShape(req, served.name, response_id)
        if req.stream:
            return self._stream(shape, plan, stream, len(prompt_ids))
        choices, cached, _ = await until_disconnect(request, self.chat._collect(stream, 1))
        choice = choices[0]
        content, calls = plan.split(choice.text)
        output = [ResponseShape.message(_item_id("msg"), content)] if content else []
        output += [ResponseShape.function_call(_item_id("fc"), call) for call in calls]
        status = "incomplete" if choice.finish_reason == "length" and not calls else "completed"
        return shape.body(status, output, ResponseShape.usage(len(prompt_ids), len(choice.token_ids), cached))

    async def _stream(self, shape: ResponseShape, plan: ToolPlan, stream, prompt_tokens: int) -> AsyncIterator[str]:
        events = _EventWriter()
        yield events.emit("response.created", response=shape.body("in_progress", []))
        yield events.emit("response.in_progress", response=shape.body("in_progress", []))
        items = _OutputItems(events)
        tool_stream = plan.stream()
        completion_tokens, cached, finish = 0, 0, None
        async for out in stream:
            cached = out.num_cached_tokens
            for o in out.outputs:
                completion_tokens += len(o.token_ids)
                for kind, value in tool_stream.feed(o.text) + (tool_stream.finish() if o.finish_reason else []):
                    for event in items.on(kind, value):
                        yield event
                finish = o.finish_reason or finish
        for event in items.close():
            yield event
        status = "incomplete" if finish == "length" and not tool_stream.called else "completed"
        usage = ResponseShape.usage(prompt_tokens, completion_tokens, cached)
        yield events.emit(f"response.{status}", response=shape.body(status, items.done, usage))


class _EventWriter:
    """SSE events with OpenAI's ``event:`` line and a running ``sequence_number``."""

    def __init__(self):
        self.sequence = 0

    def emit(self, kind: str, **fields) -> str:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


class _OutputItems:
    """Opens, fills and closes streamed output items from tool-stream events."""

    def __init__(self, events: _EventWriter):
        self.events = events
        self.done: list[dict] = []  # completed items, in output order
        self.open: dict | None = None  # {"item": ..., "index": output index, "text": accumulated}
        self.blank = ""  # whitespace waiting for text: alone (around tool calls) it opens no message

    def on(self, kind: str, value) -> list[str]:
        if kind == "content":
            in_message = self.open is not None and self.open["item"]["type"] == "message"
            if not in_message and not value.strip():
                self.blank += value
                return []
            value, self.blank = self.blank + value, ""
            out = self._open_message() if self.open is None or self.open["item"]["type"] != "message" else []
            self.open["text"] += value
            return out + [self.events.emit("response.output_text.delta", item_id=self.open["item"]["id"],
                                           output_index=self.open["index"], content_index=0, delta=value,
                                           logprobs=[])]
        if kind == "arguments":
            self.open["text"] += value
            return [self.events.emit("response.function_call_arguments.delta", item_id=self.open["item"]["id"],
                                     output_index=self.open["index"], delta=value)]
        out = self.close()  # "call" (whole) or "call_start" (arguments follow)
        out += self._open_call(value)
        if kind == "call":
            out += self.on("arguments", value.arguments) + self.close()
        return out

    def _open_message(self) -> list[str]:
        out = self.close()
        item = ResponseShape.message(_item_id("msg"), "", status="in_progress")
        self.open = {"item": item, "index": len(self.done), "text": ""}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return out + [self.events.emit("response.output_item.added", output_index=self.open["index"], item=item),
                      self.events.emit("response.content_part.added", item_id=item["id"],
                                       output_index=self.open["index"], content_index=0, part=part)]

    def _open_call(self, call: ToolCall) -> list[str]:
        item = ResponseShape.function_call(_item_id("fc"), call, status="in_progress")
        self.open = {"item": item, "index": len(self.done), "text": "", "call": call}
        return [self.events.emit("response.output_item.added", output_index=self.open["index"], item=item)]

    def close(self) -> list[str]:
        if self.open is None:
            return []
        item, index, text = self.open["item"], self.open["index"], self.open["text"]
        self.open = None
        if item["type"] == "message":
            final = ResponseShape.message(item["id"], text)
            part = final["content"][0]
            out = [self.events.emit("response.output_text.done", item_id=item["id"], output_index=index,
                                    content_index=0, text=text, logprobs=[]),
                   self.events.emit("response.content_part.done", item_id=item["id"], output_index=index,
                                    content_index=0, part=part)]
        else:
            final = {**item, "arguments": text, "status": "completed"}
            out = [self.events.emit("response.function_call_arguments.done", item_id=item["id"],
                                    output_index=index, name=item["name"], arguments=text)]
        self.done.append(final)
        return out + [self.events.emit("response.output_item.done", output_index=index, item=final)]
