"""Chat templates sent in requests, on a server that trusts them (--trust-request-chat-template): hostile
templates end in a 400 naming the limit within the render limit, the server's memory does not grow, and a
normal chat sent meanwhile is answered. (Without the flag they are refused: tests/service/test_bad_input.py.)"""
from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from service.api.templates import LIMIT_HINTS

from ..conftest import SMOLLM, Server
from .test_bad_input import ESCAPE, HUGE, LOOP, assert_openai_error

pytestmark = pytest.mark.slow

TIMEOUT = 1.0  # --chat-template-timeout of the server below
CHAT, TOK = "/v1/chat/completions", "/tokenize"
USER = [{"role": "user", "content": "Hi"}]
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# (id, template, the limit its 400 names: "code" chat_template_limit, or None for another template error)
HOSTILE = [
    ("nested-range-loop", LOOP, "max_range_items"),
    ("huge-string", HUGE, "max_chars"),
    ("string-doubling", "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}{{ ns.s }}", None),
    ("silent-loop-over-a-string", "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}"
                                  "{% endfor %}", "seconds"),
    ("capture-of-a-big-block", "{% set big = 'x' * 4000000 %}{% set s %}{% for i in range(1000) %}{{ big }}"
                               "{% endfor %}{% endset %}{{ s }}", "max_chars"),
    ("huge-padding", "{{ 'x'|center(10000000000) }}", "memory"),
    ("endless-recursion", "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursion"),
    ("huge-output", "{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", "max_chars"),
]
ESCAPES = [ESCAPE, "{{ cycler.__init__.__globals__ }}", "{{ messages.append(1) }}",
           "{{ raise_exception.__globals__['os'] }}", "{% set x = messages.pop() %}"]


@pytest.fixture(scope="module")
def trusting():
    s = Server("--model", SMOLLM, "--trust-request-chat-template", "--chat-template-timeout", str(TIMEOUT))
    with httpx.Client(base_url=s.url, timeout=120) as http:
        yield s, http
    s.stop()


def rss_mb(server: Server) -> float:
    with open(f"/proc/{server.proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def normal_chat(http: httpx.Client) -> tuple[int, float]:
    started = time.monotonic()
    r = http.post(CHAT, json={"model": SMOLLM, "messages": USER, "max_tokens": 4, "temperature": 0})
    return r.status_code, time.monotonic() - started


def test_a_trusted_request_template_renders(trusting):
    _, http = trusting
    r = http.post(CHAT, json={"model": SMOLLM, "messages": USER, "max_tokens": 10, "min_tokens": 10,
                              "temperature": 0, "chat_template": CHATML})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 10
    tokenized = http.post(TOK, json={"model": SMOLLM, "messages": USER, "chat_template": CHATML}).json()
    assert tokenized["count"] == r.json()["usage"]["prompt_tokens"]
    # chat_template_kwargs: names the template reads reach it, others are dropped, the template key is a template
    r = http.post(TOK, json={"model": SMOLLM, "messages": USER, "chat_template": "{{ greeting }}{{ absent }}",
                             "chat_template_kwargs": {"greeting": "hello", "unused": 1}})
    assert r.status_code == 200
    assert r.json()["tokens"] == http.post(TOK, json={"model": SMOLLM, "prompt": "hello",
                                                      "add_special_tokens": False}).json()["tokens"]
    r = http.post(TOK, json={"model": SMOLLM, "messages": USER, "chat_template_kwargs": {"chat_template": "abc"}})
    assert r.json()["tokens"] == http.post(TOK, json={"model": SMOLLM, "prompt": "abc",
                                                      "add_special_tokens": False}).json()["tokens"]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_template_is_a_400_within_the_limit_and_others_are_served(trusting, case):
    server, http = trusting
    _, template, limit = case
    before = rss_mb(server)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        hostile = pool.submit(http.post, CHAT, json={"model": SMOLLM, "messages": USER, "max_tokens": 4,
                                                     "chat_template": template})
        time.sleep(0.1)  # the hostile render is under way when the normal chat arrives
        status, took = pool.submit(normal_chat, http).result()
        r = hostile.result()
        elapsed = time.monotonic() - started
    assert_openai_error(r, 400, "chat_template")
    if limit is not None:
        assert r.json()["error"]["code"] == "chat_template_limit"
        assert f"(limit: {LIMIT_HINTS[limit]})" in r.json()["error"]["message"]
    assert elapsed < TIMEOUT + 2.0, elapsed  # the limit, plus a worker's start and the 2-core machine's noise
    assert status == 200 and took < 5.0, took  # the model's own template renders in its own lane
    assert rss_mb(server) - before < 200
    assert http.get("/health").status_code == 200


def test_limit_errors_say_which_limit(trusting):
    _, http = trusting
    r = http.post(CHAT, json={"model": SMOLLM, "messages": USER, "chat_template": LOOP})
    assert "range()" in r.json()["error"]["message"]
    r = http.post(CHAT, json={"model": SMOLLM, "messages": USER, "chat_template": HOSTILE[3][1]})
    assert "--chat-template-timeout" in r.json()["error"]["message"]


@pytest.mark.parametrize("template", ESCAPES)
def test_sandbox_violations_are_counted_400s(trusting, template):
    server, http = trusting
    r = http.post(CHAT, json={"model": SMOLLM, "messages": USER, "chat_template": template})
    assert_openai_error(r, 400, "chat_template")
    assert r.json()["error"]["type"] == "invalid_request_error"
    counted = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in http.get("/metrics").text.splitlines()
               if line.startswith("kernelserve:http_requests_total{")}
    assert counted['kernelserve:http_requests_total{method="POST",route="/v1/chat/completions",status="400"}'] >= 1
    assert not any('status="500"' in key and value > 0 for key, value in counted.items()), counted


def test_the_kwargs_route_is_bounded_too(trusting):
    _, http = trusting
    started = time.monotonic()
    r = http.post(CHAT, json={"model": SMOLLM, "messages": USER, "chat_template_kwargs": {"chat_template": LOOP}})
    assert_openai_error(r, 400, "chat_template_kwargs.chat_template")
    assert time.monotonic() - started < TIMEOUT + 2.0
    r = http.post(CHAT, json={"model": SMOLLM, "messages": USER, "chat_template_kwargs": {"tools": []}})
    assert_openai_error(r, 400, "chat_template_kwargs")
