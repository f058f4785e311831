"""Prometheus metrics with vLLM's names under the ``kernelserve:`` prefix.

Values come from the engine's own events and counters: latency histograms
from each request's timestamps as its outputs arrive, token counters from the
tokens the engine produced, gauges and cache/preemption counters read from
``engine.stats()`` at scrape time.
"""
from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "kernelserve:"
disable_created_metrics()  # no *_created series, as vLLM
# vLLM's bucket boundaries
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0]
LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0]
HTTP_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]


def buckets_1_2_5(limit: int) -> list[float]:
    """1, 2, 5, 10, 20, 50, ... up to ``limit`` (vLLM's token-count buckets)."""
    out, scale = [], 1
    while True:
        for m in (1, 2, 5):
            if m * scale > limit:
                return out
            out.append(float(m * scale))
        scale *= 10


class Metrics:
    def __init__(self, max_model_len: int = 8192):
        self.registry = CollectorRegistry()
        r, label = self.registry, ["model_name"]
        tokens = buckets_1_2_5(max_model_len)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prefill tokens processed", label, registry=r)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated", label, registry=r)
        self.success = Counter(PREFIX + "request_success", "Finished requests", label + ["finished_reason"], registry=r)
        self.failure = Counter(PREFIX + "request_failure", "Requests that did not finish normally",
                               label + ["reason"], registry=r)
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "Time to first token", label,
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram(PREFIX + "inter_token_latency_seconds", "Time between tokens", label,
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds", "End-to-end request latency", label,
                             buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram(PREFIX + "request_queue_time_seconds", "Time waiting before first scheduled",
                                    label, buckets=LATENCY_BUCKETS, registry=r)
        self.request_prompt = Histogram(PREFIX + "request_prompt_tokens", "Prompt tokens per request", label,
                                        buckets=tokens, registry=r)
        self.request_generation = Histogram(PREFIX + "request_generation_tokens", "Generated tokens per request",
                                            label, buckets=tokens, registry=r)
        self.embedding_requests = Counter(PREFIX + "embedding_requests", "Embedding requests", label, registry=r)
        self.embedding_inputs = Counter(PREFIX + "embedding_inputs", "Embedding inputs", label, registry=r)
        self.score_requests = Counter(PREFIX + "score_requests", "Rerank and score requests",
                                      label + ["endpoint"], registry=r)
        self.embedding_batch = Histogram(PREFIX + "embedding_batch_size", "Inputs per embedding forward pass",
                                         label, buckets=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512], registry=r)
        self.http_requests = Counter(PREFIX + "http_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.http_latency = Histogram(PREFIX + "http_request_duration_seconds", "HTTP request latency",
                                      ["route", "method"], buckets=HTTP_BUCKETS, registry=r)
        self.build_info = Gauge(PREFIX + "build_info", "Build information",
                                ["version", "kernel_backend", "dtype", "device"], registry=r)
        self.engine_info = Gauge(PREFIX + "engine_config_info", "Engine configuration", label +
                                 ["kernel_backend", "dtype", "device", "block_size", "max_num_seqs",
                                  "max_num_batched_tokens", "num_gpu_blocks", "quantization"], registry=r)
        self._engines: dict[str, object] = {}
        self._lock = threading.Lock()
        self._seen_first: dict[tuple[str, str], float] = {}  # (model, request) -> time of last token
        r.register(_EngineCollector(self._engines))

    def watch_engine(self, model: str, async_engine) -> None:
        """Export ``async_engine.stats()`` as gauges and counters at scrape time."""
        self._engines[model] = async_engine

    def on_step(self, model: str, outputs) -> None:
        """Engine observer: called on the engine thread with each step's outputs."""
        now = time.monotonic()
        with self._lock:
            for out in outputs:
                self._on_output(model, out, now)

    def _on_output(self, model: str, out, now: float) -> None:
        key = (model, out.request_id)
        new_tokens = sum(len(o.token_ids) for o in out.outputs)
        t = out.times
        if key not in self._seen_first and t is not None and t.first_token is not None:
            self.ttft.labels(model).observe(t.first_token - t.arrival)
            self.prompt_tokens.labels(model).inc(len(out.prompt_token_ids))
            self._seen_first[key] = now
        elif key in self._seen_first and new_tokens:
            self.itl.labels(model).observe(now - self._seen_first[key])
            self._seen_first[key] = now
        self.generation_tokens.labels(model).inc(new_tokens)
        if out.finished:
            self._on_finished(model, out, now)
            self._seen_first.pop(key, None)

    def _on_finished(self, model: str, out, now: float) -> None:
        reasons = {o.finish_reason for o in out.outputs if o.finish_reason}
        if "abort" in reasons:
            self.failure.labels(model, "aborted").inc()
        else:
            for reason in reasons or {"stop"}:
                self.success.labels(model, reason).inc()
        t = out.times
        if t is not None:
            self.e2e.labels(model).observe(now - t.arrival)
            if t.scheduled is not None:
                self.queue_time.labels(model).observe(t.scheduled - t.arrival)
        self.request_prompt.labels(model).observe(len(out.prompt_token_ids))
        self.request_generation.labels(model).observe(out.num_generated_tokens)

    def on_rejected(self, model: str, reason: str) -> None:
        self.failure.labels(model, reason).inc()

    def on_embedding_batch(self, model: str, inputs: int, tokens: int) -> None:
        self.embedding_batch.labels(model).observe(inputs)
        self.embedding_inputs.labels(model).inc(inputs)
        self.prompt_tokens.labels(model).inc(tokens)


class _EngineCollector:
    """Scrape-time view of each engine's own counters and gauges."""

    def __init__(self, engines: dict):
        self.engines = engines

    def collect(self):
        gauges = {k: GaugeMetricFamily(PREFIX + k, d, labels=["model_name"]) for k, d in (
            ("num_requests_running", "Requests being processed"),
            ("num_requests_waiting", "Requests waiting to be scheduled"),
            ("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0-1)"))}
        counters = {k: CounterMetricFamily(PREFIX + k, d, labels=["model_name"]) for k, d in (
            ("num_preemptions", "Sequences preempted for lack of KV blocks"),
            ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache"),
            ("prefix_cache_hits", "Prompt tokens found in the prefix cache"))}
        for model, engine in list(self.engines.items()):
            s = engine.stats()
            for k, g in gauges.items():
                g.add_metric([model], float(s[k]))
            for k, c in counters.items():
                c.add_metric([model], float(s[k]))
        yield from gauges.values()
        yield from counters.values()
        yield from _kernel_tuning_metrics()


def _kernel_tuning_metrics():
    """Triton compilations and tile tunings since ``ready`` (kernels/tuning.py): 0 when warm-up covered
    every variant; anything else is a stall some request waited on."""
    from kernels.tuning import STATS

    for name, value, doc in (
            ("kernel_compilations_after_ready", STATS.compilations_after_ready,
             "Triton kernels compiled after the server was ready (each stalled serving)"),
            ("kernel_tunings_after_ready", STATS.tunings_after_ready,
             "GEMM tile tunings after the server was ready (each stalled serving)")):
        family = CounterMetricFamily(PREFIX + name, doc)
        family.add_metric([], float(value))
        yield family
