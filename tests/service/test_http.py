"""HTTP behaviour with httpx: error bodies, limits, disconnects, concurrency, draining."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

from ..conftest import API_KEY, SMOLLM, Server

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def chat_body(content="What is the capital of France?", **extra):
    return {"model": SMOLLM, "messages": [{"role": "user", "content": content}], **extra}


def assert_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    return err


def test_error_codes(http, server):
    assert_error(http.post("/v1/chat/completions", json={"model": SMOLLM}), 400, param="messages")
    assert_error(http.post("/v1/chat/completions", json=chat_body(temperature="hot")), 400, param="temperature")
    assert_error(http.post("/v1/chat/completions", json=chat_body(bogus=1)), 400, param="bogus")
    assert_error(http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert_error(http.post("/v1/chat/completions", json=chat_body(temperature=-1)), 400, param="temperature")
    assert_error(http.post("/v1/chat/completions", json=chat_body(max_tokens=10**6)), 400, "context_length_exceeded")
    assert_error(http.post("/v1/chat/completions", json=chat_body(response_format={"type": "xml"})), 400,
                 param="response_format.type")
    assert_error(http.post("/v1/completions", json={"model": SMOLLM, "prompt": [10**7]}), 400)
    assert_error(httpx.post(server.url + "/v1/chat/completions", json=chat_body()), 401, "invalid_api_key")
    assert_error(http.post("/v1/chat/completions", json={**chat_body(), "model": "missing"}), 404, "model_not_found")
    assert_error(http.get("/v1/nothing-here"), 404)
    assert_error(http.delete("/v1/chat/completions"), 405)
    assert_error(http.post("/v1/chat/completions", json=chat_body("x" * 70000)), 413, "request_too_large")
    # the server keeps serving after all of that
    assert http.post("/v1/chat/completions", json=chat_body(max_tokens=2)).status_code == 200


def test_open_endpoints_and_tokenizer_routes(http, server):
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200
    assert httpx.get(server.url + "/version").json()["version"]
    assert httpx.post(server.url + "/tokenize", json={"prompt": "hi"}).status_code == 401
    ids = http.post("/tokenize", json={"model": SMOLLM, "prompt": "Hello world"}).json()
    assert ids["count"] == len(ids["tokens"]) > 0
    assert http.post("/detokenize", json={"model": SMOLLM, "tokens": ids["tokens"]}).json()["prompt"] == "Hello world"
    assert httpx.get(server.url + "/docs").status_code == 200


def test_disconnect_mid_stream_frees_kv_blocks(server):
    body = chat_body("Write a long story about a dragon.", max_tokens=400, ignore_eos=True, stream=True)
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", server.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(8)]
            assert any(line.startswith("data:") for line in got)
            assert server.metric("kernelserve:kv_cache_usage_perc") > 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if server.metric("kernelserve:kv_cache_usage_perc") == 0 and server.metric("kernelserve:num_requests_running") == 0:
            break
        time.sleep(0.2)
    assert server.metric("kernelserve:kv_cache_usage_perc") == 0
    assert server.metric("kernelserve:num_requests_running") == 0


@pytest.fixture(scope="module")
def dense_server():
    """fp32 dense weights: the one configuration whose greedy outputs do not depend on what shares the
    batch (bf16 and the quantized default round differently with the batch size, as vLLM's do)."""
    s = Server("--api-key", API_KEY, "--quantization", "none", "--dtype", "float32")
    yield s
    s.stop()


def test_64_concurrent_streams_are_complete_and_unmixed(dense_server):
    server = dense_server
    prompts = [f"Repeat the number {i} three times, separated by spaces." for i in range(64)]

    async def one(c, p, stream):
        body = chat_body(p, max_tokens=16, temperature=0, stream=stream)
        if not stream:
            r = await c.post("/v1/chat/completions", json=body)
            return r.json()["choices"][0]["message"]["content"]
        text, done = "", 0
        async with c.stream("POST", "/v1/chat/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done += 1
                elif line.startswith("data: "):
                    choice = json.loads(line[6:])["choices"][0]
                    text += choice["delta"].get("content") or ""
        assert done == 1
        return text

    async def run_all(stream):
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=300) as c:
            return await asyncio.gather(*(one(c, p, stream) for p in prompts))

    streamed = asyncio.run(run_all(True))
    together = asyncio.run(run_all(False))
    assert streamed == together
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c:
        for i in (0, 17, 63):
            single = c.post("/v1/chat/completions", json=chat_body(prompts[i], max_tokens=16, temperature=0))
            assert single.json()["choices"][0]["message"]["content"] == streamed[i]
    assert all(str(i) in streamed[i] for i in range(64)), "each stream answers its own prompt"


@pytest.fixture(scope="module")
def small_server():
    s = Server("--model", SMOLLM, "--max-num-seqs", "1", "--max-waiting-requests", "1", "--shutdown-timeout", "60")
    yield s
    s.stop()


def test_queue_full_is_429_with_retry_after(small_server):
    body = chat_body(max_tokens=40, ignore_eos=True)

    async def burst():
        async with httpx.AsyncClient(base_url=small_server.url, timeout=120) as c:
            return await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(6)))

    codes = [r.status_code for r in asyncio.run(burst())]
    assert 200 in codes and 429 in codes
    limited = [r for r in asyncio.run(burst()) if r.status_code == 429]
    assert limited and limited[0].headers["retry-after"] == "1"
    assert_error(limited[0], 429, "queue_full")


def test_sigterm_drains_a_running_stream(small_server):
    body = chat_body("Tell me a story.", max_tokens=60, ignore_eos=True, stream=True)
    result = {}

    def stream():
        with httpx.stream("POST", small_server.url + "/v1/chat/completions", json=body, timeout=120) as r:
            result["lines"] = list(r.iter_lines())

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(1.5)  # the stream is under way
    small_server.proc.send_signal(__import__("signal").SIGTERM)
    time.sleep(0.5)
    with pytest.raises(httpx.HTTPError):  # new connections are refused while draining
        r = httpx.get(small_server.url + "/health", timeout=2)
        if r.status_code == 503:
            raise httpx.HTTPError("draining")
    t.join(timeout=120)
    assert small_server.proc.wait(timeout=60) == 0
    lines = [line for line in result["lines"] if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    finishes = [json.loads(line[6:])["choices"][0].get("finish_reason") for line in lines[:-1]]
    assert finishes[-1] == "length"
