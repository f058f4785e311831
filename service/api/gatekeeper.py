"""The ASGI layer in front of the routes: request ids, admission, counting, and the last line of defence.

A plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``: a refusal (401, 413, 429,
503) is answered before routing, body parsing or validation, so under load a full server still
refuses in about a millisecond of event-loop time; and a bug behind a route becomes one 500 with
OpenAI's body, logged once with its traceback and request id, counted like every other status.
"""
from __future__ import annotations

import hmac
import json
import logging
import time
from dataclasses import dataclass, field

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response

from service.metrics import Metrics

from .errors import error_response
from .protocol import make_id
from .templates import TemplateRendering

log = logging.getLogger("kernelserve.api")

PROTECTED = ("/v1/", "/tokenize", "/detokenize")
OPEN = ("/health", "/metrics", "/version", "/docs", "/openapi.json")  # /docs covers /docs-assets
GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses")


@dataclass
class ServerState:
    """Readiness and draining, shared by the routes and the server's signal handling."""
    registry: object | None = None  # a ModelRegistry; None while the models load
    draining: bool = False
    api_key: str | None = None
    max_request_bytes: int = 1 << 20
    log_requests: bool = False  # prompts and sampling parameters in the request log lines
    templates: TemplateRendering = field(default_factory=TemplateRendering)  # chat templates: limits, trust, workers


QUIET = ("/health", "/metrics")  # polled by orchestrators and Prometheus: their lines go to DEBUG


@dataclass
class RequestRecord:
    """What one request did, filled in by the routes as it runs, logged in one line when it ends."""
    start: float
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token: float | None = None  # monotonic time of the first generated token
    detail: str | None = None  # the prompt and parameters, with --log-requests
    error: str | None = None  # an error response's code and message

    def line(self, request_id: str, method: str, path: str, status: int, end: float) -> str:
        parts = [request_id, method, path, str(status)]
        if self.model is not None:
            parts += [f"model={self.model}", f"prompt_tokens={self.prompt_tokens}",
                      f"completion_tokens={self.completion_tokens}"]
        if self.first_token is not None:
            parts.append(f"ttft_ms={(self.first_token - self.start) * 1000:.0f}")
        parts.append(f"total_ms={(end - self.start) * 1000:.0f}")
        if self.error:
            parts.append(f"error={self.error}")
        if self.detail:
            parts.append(self.detail)
        return " ".join(parts)


class Gatekeeper:
    def __init__(self, app, state: ServerState, metrics: Metrics):
        self.app, self.state, self.metrics = app, state, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.monotonic()
        headers = Headers(scope=scope)
        request_id = headers.get("x-request-id") or make_id("req")
        record = RequestRecord(start)
        scope.setdefault("state", {}).update(request_id=request_id, record=record)
        sent = {"status": None}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                MutableHeaders(scope=message).append("X-Request-Id", request_id)
            elif sent["status"] >= 400 and record.error is None:
                record.error = _error_summary(message.get("body", b""))
            await send(message)

        try:
            refusal, receive = await self._admit(scope, headers, receive)
            await (refusal or self.app)(scope, receive, send_with_id)
        except Exception as err:
            log.error("request %s %s %s failed", request_id, scope["method"], scope["path"], exc_info=err)
            if sent["status"] is None:  # nothing sent yet: the client gets one 500 with OpenAI's body
                await error_response(500, f"internal error ({type(err).__name__}) in request {request_id}",
                                     "internal_error")(scope, receive, send_with_id)
        end = time.monotonic()
        self._count(scope, sent["status"] or 500, end - start)
        self._log(scope, sent["status"] or 500, end, request_id, record)

    def _count(self, scope, status: int, elapsed: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        self.metrics.http_requests.labels(route, scope["method"], str(status)).inc()
        self.metrics.http_latency.labels(route, scope["method"]).observe(elapsed)

    def _log(self, scope, status: int, end: float, request_id: str, record: RequestRecord) -> None:
        """One line per request (a 5xx's traceback was logged where it happened)."""
        path = scope["path"]
        level = logging.DEBUG if path.startswith(QUIET) else logging.WARNING if status >= 500 else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "%s", record.line(request_id, scope["method"], path, status, end))

    async def _admit(self, scope, headers: Headers, receive) -> tuple[Response | None, object]:
        """(a response refusing the request or None, the receive channel to pass on)."""
        path, method, state = scope["path"], scope["method"], self.state
        if path.startswith(OPEN) or method == "OPTIONS":
            return None, receive
        if state.api_key and path.startswith(PROTECTED):
            header = headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), state.api_key.encode()):
                return error_response(401, "Incorrect API key provided. Send it as 'Authorization: Bearer <key>'.",
                                      "invalid_api_key"), receive
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > state.max_request_bytes:
            return error_response(413, f"Request body of {length} bytes exceeds the limit of "
                                       f"{state.max_request_bytes}.", "request_too_large"), receive
        if method == "POST" and length is None:  # chunked upload: measure what arrives, then replay it
            body = await _read_body(receive, state.max_request_bytes)
            if body is None:
                return error_response(413, f"Request body exceeds the limit of {state.max_request_bytes} bytes.",
                                      "request_too_large"), receive
            receive = _replay(body, receive)
        return self._availability(path, method), receive

    def _availability(self, path: str, method: str) -> Response | None:
        state = self.state
        if state.draining:
            return error_response(503, "The server is shutting down.", "draining")
        if state.registry is None:
            return error_response(503, "The server is still loading its models.", "not_ready")
        if method == "POST" and path in GENERATION_ROUTES:
            full = state.registry.all_generation_full()
            if full is not None:  # refused before the body is parsed: a 429 costs next to nothing under load
                return error_response(429, f"Server busy: {full}. Retry later.", "queue_full",
                                      headers={"Retry-After": "1"})
        return None


def _error_summary(body: bytes) -> str:
    """``code: message`` of an OpenAI error body (what a 4xx line in the log says went wrong)."""
    try:
        err = json.loads(body)["error"]
        return json.dumps(f"{err.get('code') or err.get('type')}: {err.get('message', '')}"[:300])
    except (ValueError, KeyError, TypeError):
        return "(no error body)"


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole request body, or None once it grows past ``limit``."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    """A receive channel that hands the already-read body to the app first."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed():
        return pending.pop() if pending else await receive()
    return replayed
