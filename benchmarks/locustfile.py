"""Locust load test for any OpenAI-compatible server (kernelserve, vLLM, ...).

    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 --headless -u 8 -r 2 -t 60s \\
        --csv benchmarks/results/locust --html benchmarks/results/locust.html

User classes (weights and models from the environment, or Locust's --class-picker / class names):
- ``StreamingChatUser``: streamed chat; records "TTFT" and "inter-token latency" as their own
  entries and reports each stream's tokens/s as "tokens per second (per user)" (in its
  response-time column, milliseconds standing for tokens/s).
- ``CompletionUser``: non-streamed completions.
- ``EmbeddingUser``: embeddings.

Environment: KERNELSERVE_CHAT_MODEL, KERNELSERVE_EMBED_MODEL, KERNELSERVE_API_KEY,
LOCUST_MAX_TOKENS (default 64), LOCUST_CHAT_WEIGHT / LOCUST_COMPLETION_WEIGHT / LOCUST_EMBED_WEIGHT.
"""
from __future__ import annotations

import json
import os
import random
import time

from locust import HttpUser, between, task

HERE = os.path.dirname(os.path.abspath(__file__))
CHAT_MODEL = os.environ.get("KERNELSERVE_CHAT_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct")
EMBED_MODEL = os.environ.get("KERNELSERVE_EMBED_MODEL", "sentence-transformers/all-MiniLM-L6-v2")
MAX_TOKENS = int(os.environ.get("LOCUST_MAX_TOKENS", "64"))
with open(os.path.join(HERE, "prompts.txt")) as f:
    PROMPTS = [line.strip() for line in f if line.strip()]


class _OpenAIUser(HttpUser):
    abstract = True
    wait_time = between(0.1, 0.5)

    def on_start(self):
        key = os.environ.get("KERNELSERVE_API_KEY")
        if key:
            self.client.headers["Authorization"] = f"Bearer {key}"

    def _record(self, name: str, seconds: float, length: int = 0, error: Exception | None = None):
        self.environment.events.request.fire(request_type="METRIC", name=name, response_time=seconds * 1000,
                                             response_length=length, exception=error, context={})


class StreamingChatUser(_OpenAIUser):
    weight = int(os.environ.get("LOCUST_CHAT_WEIGHT", "3"))

    @task
    def chat_stream(self):
        body = {"model": CHAT_MODEL, "stream": True, "max_tokens": MAX_TOKENS,
                "messages": [{"role": "user", "content": random.choice(PROMPTS)}]}
        start = time.perf_counter()
        first = last = None
        tokens = 0
        with self.client.post("/v1/chat/completions", json=body, stream=True, catch_response=True,
                              name="/v1/chat/completions (stream)") as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
                return
            done = False
            for line in r.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    now = time.perf_counter()
                    if first is None:
                        first = now
                        self._record("TTFT", now - start)
                    else:
                        self._record("inter-token latency", now - last)
                    last = now
                    tokens += 1
            if not done:
                r.failure("stream ended without [DONE]")
                return
            r.success()
        if first is not None and last > first:
            self._record("tokens per second (per user)", tokens / (last - start) / 1000, tokens)


class CompletionUser(_OpenAIUser):
    weight = int(os.environ.get("LOCUST_COMPLETION_WEIGHT", "1"))

    @task
    def completion(self):
        body = {"model": CHAT_MODEL, "prompt": random.choice(PROMPTS), "max_tokens": MAX_TOKENS}
        with self.client.post("/v1/completions", json=body, catch_response=True) as r:
            if r.status_code != 200 or "choices" not in r.json():
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")


class EmbeddingUser(_OpenAIUser):
    weight = int(os.environ.get("LOCUST_EMBED_WEIGHT", "1"))

    @task
    def embed(self):
        body = {"model": EMBED_MODEL, "input": random.sample(PROMPTS, 4)}
        with self.client.post("/v1/embeddings", json=body, catch_response=True) as r:
            if r.status_code != 200 or len(r.json().get("data", [])) != 4:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
