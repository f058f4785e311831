"""Chat, completions and embeddings: engine outputs -> OpenAI responses and SSE streams."""
from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from dataclasses import dataclass, field, replace
from typing import AsyncIterator

from fastapi import Request

from models import Tokenizer
from service import __version__
from service.engine import (EngineDead, QueueFull, RequestError, RequestFailed, RequestOutput, SamplingParams,
                            TokenLogprob)
from service.engine.grammar import GrammarError

from .convert import (chat_prompt, completion_prompts, reject_invalid_unicode, reject_unsupported_chat,
                      reject_unsupported_common, to_sampling_params)
from .errors import APIError, bad_request, error_body
from .protocol import MAX_EMBEDDING_INPUTS, ChatCompletionRequest, CompletionRequest, EmbeddingRequest, make_id
from .registry import ModelRegistry, ServedModel
from .structured import request_grammar
from .templates import TemplateRendering
from .reasoning import ReasoningStream, split_reasoning
from .tools import ToolPlan
from .translation import forced_languages, source_ids, with_forced

FINGERPRINT = f"kernelserve-{__version__}"


@dataclass
class Choice:
    """A choice accumulated from incremental outputs."""
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None


def _finish_reason(reason: str | None) -> str | None:
    return "stop" if reason == "abort" else reason  # an aborted request's client is gone


def engine_error(err: Exception) -> APIError:
    """The HTTP error for what the engine raised about one request."""
    if isinstance(err, RequestError):
        return APIError(400, str(err), code=err.code, param=err.param)
    if isinstance(err, QueueFull):
        return APIError(429, f"Server busy: {err}. Retry later.", code="queue_full", headers={"Retry-After": "1"})
    if isinstance(err, EngineDead):
        return APIError(503, f"{err}; the server must be restarted", code="engine_dead")
    if isinstance(err, RequestFailed) and err.client_error:  # e.g. a grammar this vocabulary cannot finish
        return APIError(400, str(err), code="invalid_request", param=err.param)
    return APIError(500, str(err), code="engine_error")  # RequestFailed: this request alone


ENGINE_ERRORS = (RequestError, QueueFull, EngineDead, RequestFailed)


def refuse_early(served: ServedModel) -> None:
    """429/503 before any tokenisation when the queue is full or the engine is gone (fast under load)."""
    try:
        served.engine.check_admission()
    except (QueueFull, EngineDead) as err:
        raise engine_error(err) from None


def note_request(request: Request, served: ServedModel, prompt_text: str | None, params: SamplingParams) -> None:
    """Name the model in the request's log line, and with --log-requests its prompt and parameters."""
    record = getattr(request.state, "record", None)
    if record is None:
        return
    record.model = served.name
    if request.app.state.server.log_requests:
        record.detail = f"prompt={(prompt_text or '')[:2000]!r} params={params}"


async def start_generation(served: ServedModel, request_id: str, prompt_ids: list[int],
                           params: SamplingParams, request: Request | None = None) -> AsyncIterator[RequestOutput]:
    """Submit to the engine and surface admission errors before any response bytes are sent.
    The request's log record counts its tokens and the time of its first one."""
    try:
        stream = await served.engine.generate(request_id, prompt_ids, params)
        first = await stream.__anext__()
    except ENGINE_ERRORS as err:
        raise engine_error(err) from None
    record = getattr(request.state, "record", None) if request is not None else None

    def count(out: RequestOutput) -> RequestOutput:
        if record is not None:
            new = sum(len(o.token_ids) for o in out.outputs)
            record.completion_tokens += new
            if new and record.first_token is None:
                record.first_token = time.monotonic()
        return out

    if record is not None:
        record.prompt_tokens += len(prompt_ids)

    async def chained():
        try:
            yield count(first)
            async for out in stream:
                yield count(out)
        finally:  # closing early (client gone) aborts the engine request
            await stream.aclose()

    return chained()


def matryoshka_dimension(served: ServedModel, dimensions: int | None) -> int | None:
    """The size to cut embeddings to (None: the model's own), or a 400 where the model was not trained for it."""
    size, allowed = served.loaded.config.hidden_size, served.loaded.matryoshka_dimensions
    if dimensions is None or dimensions == size:
        return None
    if allowed is None:
        raise bad_request(f"The model `{served.name}` does not support `dimensions` other than its own ({size}): it "
                          "was not trained for truncated (Matryoshka) embeddings.", "dimensions")
    if not 1 <= dimensions <= size or (allowed and dimensions not in allowed):
        sizes = ", ".join(map(str, allowed)) if allowed else f"1 to {size}"
        raise bad_request(f"dimensions must be one of this model's Matryoshka sizes ({sizes}), got {dimensions}",
                          "dimensions")
    return dimensions


def truncate_embedding(vector: list[float], size: int, normalize: bool) -> list[float]:
    """The first ``size`` features, re-normalised to unit length when the model's embeddings are."""
    head = vector[:size]
    if not normalize:
        return head
    norm = sum(x * x for x in head) ** 0.5
    return [x / norm for x in head] if norm > 0 else head


async def until_disconnect(request: Request, work):
    """Run ``work``; cancel it (aborting the engine requests) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.25)
        if done:
            try:
                return task.result()
            except ENGINE_ERRORS as err:  # a request the engine failed after admission: 500 naming it
                raise engine_error(err) from None
        if await request.is_disconnected():
            task.cancel()
            raise APIError(400, "client disconnected", code="client_disconnected")


def _merge(streams: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several engine streams as outputs arrive: (stream index, output)."""
    async def gen():
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i, s):
            try:
                async for out in s:
                    await queue.put((i, out))
            except BaseException as err:  # surface, then stop
                await queue.put((i, err))
            finally:
                await queue.put((i, None))

        tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
        live = len(streams)
        try:
            while live:
                i, item = await queue.get()
                if item is None:
                    live -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield i, item
        finally:  # stop the pumps before closing their streams (closing a running generator is an error)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for s in streams:
                await s.aclose()
    return gen()


def _token_str(tok: Tokenizer, token_id: int) -> str:
    return tok.decode([token_id], skip_special_tokens=False)


def chat_logprobs(tok: Tokenizer, items: list[TokenLogprob]) -> dict:
    def entry(token_id, logprob):
        s = _token_str(tok, token_id)
        return {"token": s, "logprob": max(logprob, -9999.0), "bytes": list(s.encode("utf-8"))}
    return {"content": [{**entry(i.token_id, i.logprob), "top_logprobs": [entry(t, lp) for t, lp in i.top]}
                        for i in items], "refusal": None}


def _top_dict(tok: Tokenizer, token_id: int, logprob: float, top: list) -> dict:
    """OpenAI's legacy ``top_logprobs`` entry: the most likely tokens and the chosen one (up to k + 1 keys)."""
    entries = {_token_str(tok, t): max(lp, -9999.0) for t, lp in top}
    entries.setdefault(_token_str(tok, token_id), max(logprob, -9999.0))
    return entries


def completion_logprobs(tok: Tokenizer, items: list[TokenLogprob], offset: int) -> dict:
    """Legacy completions ``logprobs`` of generated tokens, their ``text_offset`` counted from ``offset``."""
    tokens, lps, tops, offsets = [], [], [], []
    for i in items:
        s = _token_str(tok, i.token_id)
        tokens.append(s)
        lps.append(max(i.logprob, -9999.0))
        tops.append(_top_dict(tok, i.token_id, i.logprob, i.top))
        offsets.append(offset)
        offset += len(s)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def echo_logprobs(tok: Tokenizer, prompt_ids: list[int], entries: list | None, k: int) -> dict:
    """Legacy completions ``logprobs`` of an echoed prompt (OpenAI's and vLLM's ``echo``): every prompt token,
    the first one's logprob and top entry ``None`` (nothing precedes it), offsets from 0."""
    entries = entries or []
    tokens = [_token_str(tok, t) for t in prompt_ids]
    offsets = [0]
    for s in tokens[:-1]:
        offsets.append(offsets[-1] + len(s))
    return {"tokens": tokens, "token_logprobs": [None] + [max(e[0], -9999.0) for e in entries],
            "top_logprobs": [None] + [_top_dict(tok, t, e[0], e[2][:k]) for t, e in zip(prompt_ids[1:], entries)],
            "text_offset": offsets}


def joined_logprobs(first: dict | None, second: dict) -> dict:
    return second if first is None else {key: first[key] + second[key] for key in second}


def usage(prompt_tokens: int, completion_tokens: int, cached: int = 0) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached}}


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


async def guarded_stream(events: AsyncIterator[str], on_error) -> AsyncIterator[str]:
    """An SSE stream that ends with an OpenAI error event and ``[DONE]`` if producing it fails
    (the status line is already sent): the client's SDK raises an APIError, the connection stays sound."""
    try:
        async for event in events:
            yield event
    except Exception as err:
        api = engine_error(err) if isinstance(err, ENGINE_ERRORS) else APIError(500, f"internal error: "
                                                                                     f"{type(err).__name__}")
        on_error(err, api)
        yield sse(error_body(api.status, api.message, api.code, api.param))
        yield sse("[DONE]")
    finally:
        await events.aclose()


async def check_grammar(served: ServedModel, params: SamplingParams) -> None:
    """Compile the request's grammar off the event loop (a large schema takes a while; the engine
    thread then finds it cached), and turn an invalid one into a 400 naming its field."""
    if params.grammar is None:
        return
    try:
        await asyncio.to_thread(served.engine.engine.grammars.compile, params.grammar)
    except GrammarError as err:
        raise bad_request(str(err), err.param) from None


def chat_deltas(events: list) -> list[dict]:
    """Tool-stream events as chat ``delta`` objects (content text, or ``tool_calls`` entries)."""
    deltas = []
    for kind, value in events:
        if kind == "content":
            deltas.append({"content": value})
        elif kind == "arguments":
            deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": value}}]})
        else:  # "call" (whole) or "call_start" (named: arguments follow)
            deltas.append({"tool_calls": [value.as_openai(streamed=True)]})
    return deltas


def prompt_logprobs_body(tok: Tokenizer, prompt_ids: list[int], entries: list | None, k: int) -> list | None:
    """vLLM's shape: per prompt position None (the first token) or {token id: {logprob, rank, decoded_token}}
    with the ``k`` most likely alternatives."""
    if entries is None:
        return None
    out = [None]
    for token, entry in zip(prompt_ids[1:], entries):
        logprob, rank, top = entry
        top = top[:k]
        items = {str(token): {"logprob": max(logprob, -9999.0), "rank": rank, "decoded_token": _token_str(tok, token)}}
        for r, (t, lp) in enumerate(top, 1):
            items.setdefault(str(t), {"logprob": max(lp, -9999.0), "rank": r, "decoded_token": _token_str(tok, t)})
        out.append(items)
    return out


def _width(req) -> int:
    """How many sequences of a request share the KV cache at once."""
    return max(req.n, req.best_of or 1) if req.use_beam_search else req.n


class OpenAIServing:
    def __init__(self, registry: ModelRegistry, rendering: TemplateRendering):
        self.registry, self.rendering = registry, rendering

    # -- chat ------------------------------------------------------------------------------
    async def _chat_inputs(self, req: ChatCompletionRequest):
        served = self.registry.for_generation(req.model)
        reject_unsupported_chat(req)
        reject_unsupported_common(req)
        reject_invalid_unicode(req.model_dump(exclude_none=True))
        refuse_early(served)
        plan = ToolPlan.of(req.tools, req.tool_choice, req.parallel_tool_calls)
        grammar = request_grammar(req)
        if plan.grammar is not None and grammar is not None:
            raise bad_request("a forced tool_choice and a structured-output format cannot be combined",
                              "tool_choice")
        tok = served.loaded.tokenizer
        forced = forced_languages(served, req)
        text, prompt_ids = await chat_prompt(tok, req, self.rendering, served.loaded.is_encoder_decoder, plan.offered)
        prompt_ids = source_ids(served, req, prompt_ids)
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        room = served.default_max_tokens(len(prompt_ids), _width(req), len(forced))
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = with_forced(to_sampling_params(req, max_tokens=requested, default_max=room, logprobs=logprobs,
                                                vocab=served.loaded.config.vocab_size,
                                                grammar=plan.grammar or grammar, tokenizer=tok), forced)
        await check_grammar(served, params)
        return served, text, prompt_ids, params, plan

    async def chat(self, req: ChatCompletionRequest, request: Request):
        served, text, prompt_ids, params, plan = await self._chat_inputs(req)
        request_id = make_id("chatcmpl", req.request_id)
        note_request(request, served, text, params)
        stream = await start_generation(served, request_id, prompt_ids, params, request)
        if req.stream:
            return self._chat_stream(req, served, request_id, prompt_ids, text, stream, plan)
        choices, cached, prompt_lps = await until_disconnect(request, self._collect(stream, params.n))
        tok = served.loaded.tokenizer
        body = []
        for i, c in enumerate(choices):
            reasoning, answer = split_reasoning(served.reasoning, c.text) if served.reasoning else (None, c.text)
            content, calls = plan.split(answer) if answer is not None else (None, [])
            message = {"role": "assistant", "content": content, "refusal": None}
            if served.reasoning:
                message["reasoning_content"] = reasoning
            if req.echo:
                message["content"] = text + (content or "")
            finish = _finish_reason(c.finish_reason)
            if calls:  # no tool_calls key when there are none, as OpenAI answers
                message["tool_calls"] = [call.as_openai() for call in calls]
                finish = "tool_calls" if finish == "stop" else finish
            body.append({"index": i, "message": message,
                         "logprobs": chat_logprobs(tok, c.logprobs) if req.logprobs else None,
                         "finish_reason": finish, "stop_reason": c.stop_reason})
        result = {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": served.name,
                  "system_fingerprint": FINGERPRINT, "choices": body,
                  "usage": usage(len(prompt_ids), sum(len(c.token_ids) for c in choices), cached)}
        if req.prompt_logprobs is not None:
            result["prompt_logprobs"] = prompt_logprobs_body(tok, prompt_ids, prompt_lps, req.prompt_logprobs)
        return result

    async def _collect(self, stream, n: int) -> tuple[list[Choice], int, list | None]:
        choices = [Choice() for _ in range(n)]
        cached, prompt_lps = 0, None
        async for out in stream:
            cached = out.num_cached_tokens
            prompt_lps = out.prompt_logprobs or prompt_lps
            for o in out.outputs:
                c = choices[o.index]
                c.text += o.text
                c.token_ids += o.token_ids
                c.logprobs += o.logprobs or []
                if o.finish_reason:
                    c.finish_reason, c.stop_reason = o.finish_reason, o.stop_reason
        return choices, cached, prompt_lps

    async def _chat_stream(self, req, served, request_id, prompt_ids, prompt_text, stream, plan: ToolPlan):
        created, tok = int(time.time()), served.loaded.tokenizer
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        base = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": served.name,
                "system_fingerprint": FINGERPRINT}

        def chunk(index, delta, finish=None, logprobs=None, stop_reason=None):
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            if finish:
                choice["stop_reason"] = stop_reason
            return sse({**base, "choices": [choice], **({"usage": None} if include_usage else {})})

        for i in range(req.n):
            yield chunk(i, {"role": "assistant", "content": prompt_text if req.echo else ""})
        completion_tokens, cached = 0, 0
        tool_streams = [plan.stream() for _ in range(req.n)]
        thinking = [ReasoningStream(served.reasoning) if served.reasoning else None for _ in range(req.n)]
        async for out in stream:
            cached = out.num_cached_tokens
            for o in out.outputs:
                completion_tokens += len(o.token_ids)
                lp = chat_logprobs(tok, o.logprobs) if req.logprobs and o.logprobs else None
                ts, rs = tool_streams[o.index], thinking[o.index]
                parts = [("content", o.text)] if rs is None else rs.feed(o.text) + (rs.finish() if o.finish_reason else [])
                deltas = []
                for kind, text in parts:  # reasoning as it comes; the answer through the tool-call parser
                    deltas += [{"reasoning_content": text}] if kind == "reasoning" else chat_deltas(ts.feed(text))
                if o.finish_reason:
                    deltas += chat_deltas(ts.finish())
                for k, delta in enumerate(deltas or ([{}] if lp else [])):
                    yield chunk(o.index, delta, logprobs=lp if k == 0 else None)
                if o.finish_reason:
                    finish = _finish_reason(o.finish_reason)
                    yield chunk(o.index, {}, "tool_calls" if ts.called and finish == "stop" else finish,
                                stop_reason=o.stop_reason)
        if include_usage:
            yield sse({**base, "choices": [], "usage": usage(len(prompt_ids), completion_tokens, cached)})
        yield sse("[DONE]")

    # -- completions -----------------------------------------------------------------------
    async def completion(self, req: CompletionRequest, request: Request):
        served = self.registry.for_generation(req.model)
        reject_unsupported_common(req)
        reject_invalid_unicode(req.model_dump(exclude_none=True))
        refuse_early(served)
        if req.suffix:
            raise bad_request("suffix (fill-in-the-middle) is not supported yet", "suffix", "unsupported_parameter")
        tok = served.loaded.tokenizer
        forced = forced_languages(served, req)
        prompts = [(text, source_ids(served, req, ids)) for text, ids in completion_prompts(tok, req.prompt)]
        base_id = make_id("cmpl", req.request_id)
        grammar = request_grammar(req)
        # echo with max_tokens 0 scores the prompt without generating (lm-eval's loglikelihood requests): the
        # engine computes one token, which is not returned
        score_only = req.echo and req.max_tokens == 0
        requested = 1 if score_only else req.max_tokens if req.max_tokens is not None else 16
        streams, metas = [], []
        try:
            for i, (text, ids) in enumerate(prompts):
                room = served.default_max_tokens(len(ids), _width(req), len(forced))
                params = with_forced(to_sampling_params(req, max_tokens=requested, default_max=room,
                                                        logprobs=req.logprobs, vocab=served.loaded.config.vocab_size,
                                                        grammar=grammar, tokenizer=tok), forced)
                if req.echo and req.logprobs is not None:  # the echoed prompt's logprobs, as many alternatives
                    params = replace(params, prompt_logprobs=max(req.logprobs, req.prompt_logprobs or 0))
                if i == 0:
                    await check_grammar(served, params)
                    note_request(request, served, text, params)
                streams.append(await start_generation(served, f"{base_id}-{i}", ids, params, request))
                metas.append((text if text is not None else tok.decode(ids, skip_special_tokens=False), ids))
        except BaseException:
            for s in streams:
                await s.aclose()
            raise
        merged = _merge(streams)
        if req.stream:
            return self._completion_stream(req, served, base_id, metas, merged, score_only)
        return await until_disconnect(request, self._completion_body(req, served, base_id, metas, merged,
                                                                     score_only))

    async def _completion_body(self, req, served, base_id, metas, merged, score_only: bool):
        n, tok = req.n, served.loaded.tokenizer
        choices = [Choice() for _ in range(n * len(metas))]
        cached, prompt_lps = 0, [None] * len(metas)
        async for i, out in merged:
            cached += out.num_cached_tokens if out.finished else 0
            if out.prompt_logprobs is not None:
                prompt_lps[i] = out.prompt_logprobs
            for o in out.outputs:
                c = choices[i * n + o.index]
                if not score_only:
                    c.text += o.text
                    c.token_ids += o.token_ids
                    c.logprobs += o.logprobs or []
                if o.finish_reason:
                    c.finish_reason, c.stop_reason = o.finish_reason, o.stop_reason
        body = []
        for k, c in enumerate(choices):
            prompt_text, prompt_ids = metas[k // n] if req.echo else ("", [])
            logprobs = None
            if req.logprobs is not None:
                echoed = echo_logprobs(tok, prompt_ids, prompt_lps[k // n], req.logprobs) if req.echo else None
                logprobs = joined_logprobs(echoed, completion_logprobs(tok, c.logprobs, len(prompt_text)))
            body.append({"index": k, "text": prompt_text + c.text, "finish_reason": _finish_reason(c.finish_reason),
                         "stop_reason": c.stop_reason, "logprobs": logprobs})
            if req.prompt_logprobs is not None:
                body[-1]["prompt_logprobs"] = prompt_logprobs_body(tok, metas[k // n][1], prompt_lps[k // n],
                                                                   req.prompt_logprobs)
        prompt_tokens = sum(len(ids) for _, ids in metas)
        return {"id": base_id, "object": "text_completion", "created": int(time.time()), "model": served.name,
                "system_fingerprint": FINGERPRINT, "choices": body,
                "usage": usage(prompt_tokens, sum(len(c.token_ids) for c in choices), cached)}

    async def _completion_stream(self, req, served, base_id, metas, merged, score_only: bool):
        n, tok, created = req.n, served.loaded.tokenizer, int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        offsets = [0] * (n * len(metas))

        def chunk(index, text, finish=None, logprobs=None, stop_reason=None):
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
            if finish:
                choice["stop_reason"] = stop_reason
            return sse({"id": base_id, "object": "text_completion", "created": created, "model": served.name,
                        "system_fingerprint": FINGERPRINT, "choices": [choice],
                        **({"usage": None} if include_usage else {})})

        def echo(i: int, entries: list | None):  # prompt i's text, once for each of its n choices
            text, ids = metas[i]
            lp = echo_logprobs(tok, ids, entries, req.logprobs) if req.logprobs is not None else None
            for k in range(i * n, (i + 1) * n):
                offsets[k] = len(text)
                yield chunk(k, text, logprobs=lp)

        # with logprobs, a prompt is echoed once the engine has its logprobs (the first output, before any token)
        echo_waits = set(range(len(metas))) if req.echo and req.logprobs is not None else set()
        if req.echo and not echo_waits:
            for i in range(len(metas)):
                for event in echo(i, None):
                    yield event
        completion_tokens = 0
        async for i, out in merged:
            if i in echo_waits and out.prompt_logprobs is not None:
                echo_waits.discard(i)
                for event in echo(i, out.prompt_logprobs):
                    yield event
            for o in out.outputs:
                k = i * n + o.index
                if not score_only:
                    completion_tokens += len(o.token_ids)
                    lp = completion_logprobs(tok, o.logprobs, offsets[k]) if req.logprobs is not None and o.logprobs \
                        else None
                    offsets[k] += len(o.text)
                    if o.text or lp:
                        yield chunk(k, o.text, logprobs=lp)
                if o.finish_reason:
                    yield chunk(k, "", _finish_reason(o.finish_reason), stop_reason=o.stop_reason)
        if include_usage:
            prompt_tokens = sum(len(ids) for _, ids in metas)
            yield sse({"id": base_id, "object": "text_completion", "created": created, "model": served.name,
                       "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
        yield sse("[DONE]")

    # -- embeddings ------------------------------------------------------------------------
    async def embeddings(self, req: EmbeddingRequest, request: Request):
        served = self.registry.for_embeddings(req.model)
        tok = served.loaded.tokenizer
        inputs = req.input
        reject_invalid_unicode(inputs, "input")
        if isinstance(inputs, list) and len(inputs) > MAX_EMBEDDING_INPUTS:
            raise bad_request(f"input has {len(inputs)} items; at most {MAX_EMBEDDING_INPUTS} are allowed per "
                              "request", "input")
        if inputs == "" or (isinstance(inputs, list) and any(x == "" for x in inputs)):
            raise bad_request("input must not contain empty strings", "input")
        if isinstance(inputs, str):
            ids = [tok.encode(inputs)]
        elif inputs and all(isinstance(x, int) for x in inputs):
            ids = [list(inputs)]
        elif inputs and all(isinstance(x, str) for x in inputs):
            ids = tok.encode_batch(list(inputs))
        elif inputs and all(isinstance(x, list) and x for x in inputs):
            ids = [list(x) for x in inputs]
        else:
            raise bad_request("input must be a non-empty string, list of strings, token ids or list of those", "input")
        limit, vocab = served.max_model_len, served.loaded.config.vocab_size
        for i, seq in enumerate(ids):
            if len(seq) > limit:
                raise APIError(400, f"input {i} has {len(seq)} tokens; this model's maximum is {limit}",
                               code="context_length_exceeded", param="input")
            if any(not 0 <= t < vocab for t in seq):
                raise bad_request(f"input {i}: token ids must be in [0, {vocab})", "input")
        dim = matryoshka_dimension(served, req.dimensions)
        vectors = await until_disconnect(request, served.embedder.embed(ids))
        if dim is not None:
            vectors = [truncate_embedding(v, dim, served.loaded.pooling.normalize) for v in vectors]
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
                 if req.encoding_format == "base64" else v} for i, v in enumerate(vectors)]
        tokens = sum(map(len, ids))
        return {"object": "list", "data": data, "model": served.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
