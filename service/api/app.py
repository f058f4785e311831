"""The FastAPI application: routes stay thin; serving.py does the work."""
from __future__ import annotations

import logging
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import __version__
from service.engine import RequestFailed
from service.metrics import Metrics

from .convert import chat_prompt, reject_invalid_unicode
from .errors import ERROR_RESPONSES, APIError, document_errors, error_response, install_error_handlers
from .gatekeeper import Gatekeeper, ServerState
from .protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest, ModelCard,
                       ModelList, RerankRequest, ResponsesRequest, ScoreRequest, TokenizeRequest)
from .registry import ModelRegistry
from .rerank import RerankServing
from .responses import ResponsesServing
from .serving import OpenAIServing, guarded_stream
from .tools import ToolPlan

log = logging.getLogger("kernelserve.api")
__all__ = ["ServerState", "build_app"]


def build_app(state: ServerState, metrics: Metrics) -> FastAPI:
    # /docs from the swagger-ui-bundle package, not a CDN: it renders offline; ReDoc has no such package
    app = FastAPI(title="kernelserve", version=__version__, docs_url=None, redoc_url=None,
                  description="OpenAI-compatible inference on fused Triton kernels")
    _serve_docs(app)
    app.state.server = state
    install_error_handlers(app)
    document_errors(app)
    serving: Callable[[], OpenAIServing] = lambda: OpenAIServing(_registry(state), state.templates)
    app.add_middleware(Gatekeeper, state=state, metrics=metrics)

    @app.get("/health", responses=ERROR_RESPONSES)
    async def health():
        if state.registry is None:
            return error_response(503, "loading models", "not_ready")
        if state.draining:
            return error_response(503, "shutting down", "draining")
        dead = state.registry.dead
        if dead:  # an orchestrator restarts the pod
            return error_response(503, f"engine stopped for {', '.join(dead)}", "engine_dead")
        return JSONResponse({"status": "ok"})

    @app.get("/version")
    async def version():
        return {"version": __version__}

    @app.get("/metrics")
    async def prometheus_metrics():
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", responses=ERROR_RESPONSES)
    async def list_models():
        return ModelList(data=[_card(m) for m in _registry(state).models.values()])

    @app.get("/v1/models/{model_id:path}", responses=ERROR_RESPONSES)
    async def get_model(model_id: str):
        return _card(_registry(state).get(model_id))

    @app.post("/v1/chat/completions", responses=ERROR_RESPONSES)
    async def chat(req: ChatCompletionRequest, request: Request):
        return _respond(await serving().chat(req, request), request)

    @app.post("/v1/completions", responses=ERROR_RESPONSES)
    async def completions(req: CompletionRequest, request: Request):
        return _respond(await serving().completion(req, request), request)

    @app.post("/v1/responses", responses=ERROR_RESPONSES)
    async def responses(req: ResponsesRequest, request: Request):
        return _respond(await ResponsesServing(serving()).create(req, request), request)

    @app.post("/v1/embeddings", responses=ERROR_RESPONSES)
    async def embeddings(req: EmbeddingRequest, request: Request):
        result = await serving().embeddings(req, request)
        metrics.embedding_requests.labels(result["model"]).inc()
        return result

    async def rerank(req: RerankRequest, request: Request):
        result = await RerankServing(_registry(state)).rerank(req, request)
        metrics.score_requests.labels(result["model"], "rerank").inc()
        return result

    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):  # vLLM's, Jina's and Cohere v2's paths
        app.post(path, responses=ERROR_RESPONSES)(rerank)

    async def score(req: ScoreRequest, request: Request):
        result = await RerankServing(_registry(state)).score(req, request)
        metrics.score_requests.labels(result["model"], "score").inc()
        return result

    for path in ("/v1/score", "/score"):
        app.post(path, responses=ERROR_RESPONSES)(score)

    @app.post("/tokenize", responses=ERROR_RESPONSES)
    async def tokenize(req: TokenizeRequest):
        served = _registry(state).get(req.model)
        tok = served.loaded.tokenizer
        reject_invalid_unicode(req.model_dump(exclude_none=True))
        if req.messages is not None:
            tools = ToolPlan.of(req.tools, None, None).offered
            _, ids = await chat_prompt(tok, req, state.templates, served.loaded.is_encoder_decoder, tools)
        elif req.prompt is not None:
            ids = tok.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        else:
            raise APIError(400, "give either prompt or messages", param="prompt")
        return {"tokens": ids, "count": len(ids), "max_model_len": served.max_model_len}

    @app.post("/detokenize", responses=ERROR_RESPONSES)
    async def detokenize(req: DetokenizeRequest):
        served = _registry(state).get(req.model)
        vocab = served.loaded.tokenizer.vocab_size
        if any(not 0 <= t < vocab for t in req.tokens):
            raise APIError(400, f"token ids must be in [0, {vocab})", param="tokens")
        return {"prompt": served.loaded.tokenizer.decode(req.tokens, skip_special_tokens=False)}

    return app


DOCS_ASSETS = "/docs-assets"


def _serve_docs(app: FastAPI) -> None:
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")


def _registry(state: ServerState) -> ModelRegistry:
    if state.registry is None:
        raise APIError(503, "the server is still loading its models", code="not_ready")
    return state.registry


def _card(served) -> ModelCard:
    return ModelCard(id=served.name, max_model_len=served.max_model_len, capabilities=served.capabilities,
                     quantization=served.loaded.quantization)


def _respond(result, request: Request):
    if isinstance(result, dict):
        return result
    request_id = request.state.request_id

    def on_error(err: Exception, api: APIError) -> None:  # logged once; the stream ends with an error event
        log.error("request %s: stream failed: %s", request_id, api.message,
                  exc_info=err if api.status >= 500 and not isinstance(err, RequestFailed) else None)

    return StreamingResponse(guarded_stream(result, on_error), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
