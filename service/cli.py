"""Command line: ``kernelserve serve`` (also ``python -m service``).

Every flag can also come from an environment variable ``KERNELSERVE_<FLAG>``
(``--max-num-seqs`` <- ``KERNELSERVE_MAX_NUM_SEQS``); the command line wins.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import threading

log = logging.getLogger("kernelserve")

DEFAULT_MODELS = ("HuggingFaceTB/SmolLM2-135M-Instruct", "sentence-transformers/all-MiniLM-L6-v2")


def parse_bytes(text: str) -> int:
    """'1073741824', '1GiB', '512MiB', '2G' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)\s*", text, flags=re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1GiB, 512MiB, 1073741824)")
    scale = 1024 ** " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * scale)


def _env(name: str, default=None):
    return os.environ.get("KERNELSERVE_" + name.upper().replace("-", "_"), default)


def serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add = parser.add_argument
    add("--host", default=_env("host", "127.0.0.1"), help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    add("--port", type=int, default=int(_env("port", 8000)), help="port (default 8000)")
    add("--model", action="append", default=None, metavar="NAME=PATH",
        help="a model to serve: a Hugging Face folder, a .gguf file, a hub id or a default model name, "
             "optionally named (NAME=PATH). Repeatable. Default: " + " and ".join(DEFAULT_MODELS))
    add("--dtype", default=_env("dtype", "auto"), choices=["auto", "float32", "bfloat16", "float16"],
        help="activations and full-precision weights (auto: bfloat16 on CUDA and for quantized weights "
             "on CPU, float32 otherwise)")
    add("--quantization", default=_env("quantization", "auto"), choices=["auto", "none", "int8", "int4"],
        help="weights: auto keeps a GGUF's Q4_0/Q4_1/Q8_0/Q4_K blocks quantized (full precision for "
             "safetensors); none dequantises; int8/int4 quantise a decoder's projections at load")
    add("--hf-overrides", action="append", type=_overrides, metavar="[NAME=]JSON",
        default=[_overrides(_env("hf_overrides"))] if _env("hf_overrides") else [],
        help="JSON merged into a served folder's config.json, as vLLM's flag; NAME= limits it to that model "
             "(repeatable). E.g. serve Qwen3-Reranker as a reranker: "
             "--hf-overrides 'rr={\"classifier_from_token\": [\"no\", \"yes\"]}'")
    add("--reasoning-parser", action="append", type=_reasoning, metavar="[NAME=]PARSER",
        default=[_reasoning(_env("reasoning_parser"))] if _env("reasoning_parser") else [],
        help="split chat answers of reasoning models into reasoning_content and content, as vLLM's flag: qwen3 "
             "(Qwen3, QwQ: the output opens <think>) or deepseek_r1 (the template opened it); NAME= limits it to "
             "that model (repeatable)")
    add("--device", default=_env("device", "auto"), help="cpu, cuda or cuda:N (auto: cuda when available)")
    add("--api-key", default=_env("api_key"), help="require 'Authorization: Bearer KEY' on /v1/* and /tokenize")
    add("--max-num-seqs", type=int, default=int(_env("max_num_seqs", 64)), help="sequences per step (default 64)")
    add("--max-num-batched-tokens", type=int, default=int(_env("max_num_batched_tokens", 2048)),
        help="tokens per step, prefill chunks included (default 2048)")
    add("--kv-cache-memory", type=parse_bytes, default=parse_bytes(_env("kv_cache_memory")) if _env("kv_cache_memory") else None,
        help="KV-cache size per model, e.g. 1GiB (default: 1GiB on CPU, 90%% of free memory on CUDA)")
    add("--max-model-len", type=int, default=int(_env("max_model_len")) if _env("max_model_len") else None,
        help="cap on prompt + completion tokens (default: the model's)")
    add("--max-waiting-requests", type=int, default=int(_env("max_waiting_requests", 1024)),
        help="waiting requests before answering 429 (default 1024)")
    add("--max-n", type=int, default=int(_env("max_n", 16)),
        help="largest n (and best_of for beam search) one request may ask for (default 16)")
    add("--enforce-eager", action="store_true", default=_env("enforce_eager", "") in ("1", "true"),
        help="no CUDA graphs for decode steps (on CUDA they are captured at start-up for batch sizes 1, 2, 4, 8, "
             "16, 24, ... --max-num-seqs)")
    add("--scheduling-policy", default=_env("scheduling_policy", "fcfs"), choices=["fcfs", "priority"],
        help="fcfs: arrival order; priority: a request's 'priority' field orders the queue, lower first "
             "(default fcfs; other values of 'priority' are refused under fcfs, as vLLM does)")
    add("--log-requests", action="store_true", default=_env("log_requests", "") in ("1", "true"),
        help="include each request's prompt and sampling parameters in its log line (default: off)")
    add("--log-stats-interval", type=float, default=float(_env("log_stats_interval", 10)),
        help="seconds between throughput lines while the engine is busy (default 10; 0 turns them off)")
    add("--max-request-bytes", type=parse_bytes, default=parse_bytes(_env("max_request_bytes", "1MiB")),
        help="largest request body before answering 413 (default 1MiB)")
    add("--trust-request-chat-template", action="store_true",
        default=_env("trust_request_chat_template", "") in ("1", "true"),
        help="accept chat templates sent in requests (chat_template, chat_template_kwargs.chat_template on chat, "
             "/v1/responses and /tokenize); without it they are a 400, as in vLLM. Trusted or not, every "
             "template renders in a worker process under the limits below")
    add("--chat-template-timeout", type=float, default=float(_env("chat_template_timeout", 2.0)),
        help="seconds one chat-template render may take before it is stopped with a 400 (default 2)")
    add("--shutdown-timeout", type=float, default=float(_env("shutdown_timeout", 30)),
        help="seconds SIGTERM waits for in-flight requests before exiting (default 30)")
    add("--log-level", default=_env("log_level", "info"), choices=["debug", "info", "warning", "error"])
    return parser


def _reasoning(text: str) -> tuple[str | None, str]:
    from service.api.reasoning import PARSERS

    target, parser = text.split("=", 1) if "=" in text else (None, text)
    if parser not in PARSERS:
        raise argparse.ArgumentTypeError(f"unknown reasoning parser {parser!r} (choose from {', '.join(PARSERS)})")
    return target, parser


def _overrides(text: str) -> tuple[str | None, dict]:
    """``JSON`` (every model) or ``NAME=JSON`` (that model) -> (NAME or None, the object)."""
    target, body = (None, text) if text.lstrip().startswith("{") else text.split("=", 1) if "=" in text else (None, text)
    try:
        value = json.loads(body)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return target, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelserve", description="OpenAI-compatible inference server on fused Triton kernels.",
        epilog="Example: kernelserve serve --port 8000  then  curl localhost:8000/v1/models")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser(sub.add_parser("serve", help="start the HTTP server",
                                description="Start the OpenAI-compatible server. Flags also read KERNELSERVE_<FLAG>."))
    return parser


def model_specs(values: list[str] | None) -> list[tuple[str, str]]:
    """[(name, source)] from --model NAME=PATH flags (or KERNELSERVE_MODEL, comma separated)."""
    values = values or [v for v in (_env("model") or "").split(",") if v] or list(DEFAULT_MODELS)
    specs = []
    for v in values:
        name, sep, path = v.partition("=")
        specs.append((name, path) if sep and path else (v, v))
    return specs


def _load_all(args, state, metrics) -> None:
    import torch

    from models import load_model
    from service.api.registry import ModelRegistry, ServedModel
    from service.engine import AsyncEngine, EmbeddingEngine, EngineConfig

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    config = EngineConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                          kv_cache_memory=args.kv_cache_memory, max_model_len=args.max_model_len,
                          max_waiting_requests=args.max_waiting_requests, max_n=args.max_n,
                          scheduling_policy=args.scheduling_policy,
                          cuda_graphs="off" if args.enforce_eager else "auto")
    registry = ModelRegistry()
    from kernels import backend_for
    from service import __version__
    from service.engine import LLMEngine

    metrics.build_info.labels(__version__, backend_for(device), args.dtype, device).set(1)
    for name, source in model_specs(args.model):
        overrides = {k: v for target, values in args.hf_overrides if target in (None, name) for k, v in values.items()}
        loaded = load_model(source, name=name, dtype=args.dtype, device=device, quantization=args.quantization,
                            hf_overrides=overrides)
        dtype = str(loaded.dtype).removeprefix("torch.")
        if loaded.kind in ("embed", "score"):
            embedder = EmbeddingEngine(loaded, observer=lambda b, t, n=name: metrics.on_embedding_batch(n, b, t))
            embedder.start()
            registry.add(ServedModel(name, loaded, embedder=embedder))
        else:
            engine = AsyncEngine(LLMEngine(loaded, config), observer=lambda e, outs, n=name: metrics.on_step(n, outs),
                                 log_stats_interval=args.log_stats_interval)
            engine.start()
            metrics.watch_engine(name, engine)
            metrics.engine_info.labels(name, backend_for(device), dtype, device, str(config.block_size),
                                       str(config.max_num_seqs), str(config.max_num_batched_tokens),
                                       str(engine.engine.block_manager.num_blocks), loaded.quantization).set(1)
            registry.add(ServedModel(name, loaded, engine=engine, reasoning=reasoning_format(args, name)))
        log.info("serving %s (%s) from %s", name, {"embed": "embeddings, rerank, score", "score": "rerank, score"}
                 .get(loaded.kind, "chat, completions"), loaded.source)
    state.registry = registry


def reasoning_format(args, name: str):
    from service.api.reasoning import PARSERS

    chosen = [parser for target, parser in args.reasoning_parser if target in (None, name)]
    return PARSERS[chosen[-1]] if chosen else None


def template_rendering(args):
    """Chat-template limits from the flags: the rendered text may be 4x the largest request body (a prompt's
    messages plus the template's own text), and never less than RenderLimits' default."""
    from models.chat_template import RenderLimits
    from service.api.templates import TemplateRendering

    if not args.chat_template_timeout > 0:
        raise SystemExit("--chat-template-timeout must be positive")
    limits = RenderLimits(seconds=args.chat_template_timeout,
                          max_chars=max(RenderLimits.max_chars, 4 * args.max_request_bytes))
    return TemplateRendering(limits, trust_request_templates=args.trust_request_chat_template)


def serve(args) -> int:
    import uvicorn

    from service.api.app import ServerState, build_app
    from service.metrics import Metrics

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = ServerState(api_key=args.api_key, max_request_bytes=args.max_request_bytes,
                        log_requests=args.log_requests, templates=template_rendering(args))
    metrics = Metrics()
    app = build_app(state, metrics)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # stop admitting (503), let in-flight requests finish up to --shutdown-timeout
            log.info("signal %s: draining for up to %.0fs", sig, args.shutdown_timeout)
            state.draining = True
            super().handle_exit(sig, frame)
            # uvicorn re-raises captured signals after shutdown (the exit status would be -SIGTERM);
            # a drained shutdown is a clean one, so exit 0
            self._captured_signals.clear()

    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                   timeout_graceful_shutdown=args.shutdown_timeout, access_log=False))
    failed = []

    def load():
        try:
            _load_all(args, state, metrics)
            from kernels.tuning import mark_ready

            mark_ready()  # from here on a compilation or a tuning is a stall: counted in /metrics
            log.info("ready: http://%s:%d/v1  (try: curl http://%s:%d/v1/models)", args.host, args.port, args.host, args.port)
        except Exception as err:  # a model that cannot load stops the server with its reason
            log.error("could not load models: %s", err)
            failed.append(err)
            server.should_exit = True

    threading.Thread(target=load, name="model-loader", daemon=True).start()
    server.run()
    state.templates.close()
    if state.registry is not None:
        state.registry.shutdown()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
