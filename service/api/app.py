"""The FastAPI application: routes stay thin; serving.py does the work."""
from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import __version__
from service.metrics import Metrics

from .errors import APIError, error_response, install_error_handlers
from .protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest, ModelCard,
                       ModelList, TokenizeRequest)
from .registry import ModelRegistry
from .serving import OpenAIServing

PROTECTED = ("/v1/", "/tokenize", "/detokenize")
OPEN = ("/health", "/metrics", "/version", "/docs", "/openapi.json", "/redoc")


@dataclass
class ServerState:
    """Readiness and draining, shared by the routes and the server's signal handling."""
    registry: ModelRegistry | None = None  # None while the models load
    draining: bool = False
    api_key: str | None = None
    max_request_bytes: int = 1 << 20


def _route_name(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def build_app(state: ServerState, metrics: Metrics) -> FastAPI:
    app = FastAPI(title="kernelserve", version=__version__,
                  description="OpenAI-compatible inference on fused Triton kernels")
    app.state.server = state
    install_error_handlers(app)
    serving: Callable[[], OpenAIServing] = lambda: OpenAIServing(_registry(state))

    @app.middleware("http")
    async def gatekeeper(request: Request, call_next):
        start = time.monotonic()
        response = await _admit(request, state) or await call_next(request)
        metrics.http_requests.labels(_route_name(request), request.method, str(response.status_code)).inc()
        metrics.http_latency.labels(_route_name(request), request.method).observe(time.monotonic() - start)
        return response

    @app.get("/health")
    async def health():
        if state.registry is None:
            return error_response(503, "loading models", "not_ready")
        if state.draining:
            return error_response(503, "shutting down", "draining")
        return JSONResponse({"status": "ok"})

    @app.get("/version")
    async def version():
        return {"version": __version__}

    @app.get("/metrics")
    async def prometheus_metrics():
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models():
        return ModelList(data=[_card(m) for m in _registry(state).models.values()])

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        return _card(_registry(state).get(model_id))

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, request: Request):
        return _respond(await serving().chat(req, request))

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        return _respond(await serving().completion(req, request))

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest, request: Request):
        result = await serving().embeddings(req, request)
        metrics.embedding_requests.labels(result["model"]).inc()
        return result

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        served = _registry(state).get(req.model)
        tok = served.loaded.tokenizer
        if req.messages is not None:
            from .convert import message_dicts

            text = tok.apply_chat_template(message_dicts(req.messages), add_generation_prompt=req.add_generation_prompt)
            ids = tok.encode(text, add_special_tokens=False)
        elif req.prompt is not None:
            ids = tok.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        else:
            raise APIError(400, "give either prompt or messages", param="prompt")
        return {"tokens": ids, "count": len(ids), "max_model_len": served.max_model_len}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        served = _registry(state).get(req.model)
        vocab = served.loaded.tokenizer.vocab_size
        if any(not 0 <= t < vocab for t in req.tokens):
            raise APIError(400, f"token ids must be in [0, {vocab})", param="tokens")
        return {"prompt": served.loaded.tokenizer.decode(req.tokens, skip_special_tokens=False)}

    return app


def _registry(state: ServerState) -> ModelRegistry:
    if state.registry is None:
        raise APIError(503, "the server is still loading its models", code="not_ready")
    return state.registry


def _card(served) -> ModelCard:
    return ModelCard(id=served.name, max_model_len=served.max_model_len, capabilities=served.capabilities)


def _respond(result):
    if isinstance(result, dict):
        return result
    return StreamingResponse(result, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _admit(request: Request, state: ServerState):
    """A response that refuses the request (auth, size, readiness), or None to let it through."""
    path = request.url.path
    if path.startswith(OPEN) or request.method == "OPTIONS":
        return None
    if state.api_key and path.startswith(PROTECTED):
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), state.api_key.encode()):
            return error_response(401, "Incorrect API key provided. Send it as 'Authorization: Bearer <key>'.",
                                  "invalid_api_key")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > state.max_request_bytes:
        return error_response(413, f"Request body of {length} bytes exceeds the limit of {state.max_request_bytes}.",
                              "request_too_large")
    if request.method == "POST" and length is None:
        body = await request.body()  # chunked upload: measure what arrived
        if len(body) > state.max_request_bytes:
            return error_response(413, f"Request body exceeds the limit of {state.max_request_bytes} bytes.",
                                  "request_too_large")
    if state.draining:
        return error_response(503, "The server is shutting down.", "draining")
    if state.registry is None:
        return error_response(503, "The server is still loading its models.", "not_ready")
    return None
