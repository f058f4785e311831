"""5xx paths of a real uvicorn (in this process, so faults can be injected): an engine failure of one
request is a 500 naming it (or an error event mid-stream), a bug behind a route is one 500 with
OpenAI's body; each is counted in the HTTP metrics and logged once; the keep-alive connection and
the engine go on serving."""
from __future__ import annotations

import logging
import threading
import time

import httpx
import openai
import pytest
import uvicorn

import service.api.serving as serving_module
from service.api.app import ServerState, build_app
from service.api.registry import ModelRegistry, ServedModel
from service.engine import AsyncEngine, LLMEngine
from service.metrics import Metrics

from ..conftest import SMOLLM, free_port

pytestmark = pytest.mark.slow

POISON_PREFILL = [504, 3575, 282, 4649, 314, 7042]  # a prompt whose forward pass "fails"
POISON_DECODE = [504, 3575, 282, 4649, 314, 7043]  # a prompt whose 3rd decode step "fails"


@pytest.fixture(scope="module")
def live(smollm):
    engine = LLMEngine(smollm)
    real_run = engine.runner.run

    def run(out):
        seqs = [c.seq for c in out.prefills] + out.decodes
        if any(s.prompt_token_ids == POISON_PREFILL for s in seqs):
            raise RuntimeError("injected forward failure")
        if any(s.prompt_token_ids == POISON_DECODE and len(s.output_token_ids) >= 3 for s in out.decodes):
            raise RuntimeError("injected decode failure")
        return real_run(out)

    engine.runner.run = run
    aengine = AsyncEngine(engine)
    aengine.start()
    registry = ModelRegistry()
    registry.add(ServedModel(SMOLLM, smollm, engine=aengine))
    metrics = Metrics()
    app = build_app(ServerState(registry=registry), metrics)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.config.port}"
    yield url, engine
    server.should_exit = True
    thread.join(timeout=10)
    aengine.shutdown()


def local_port(response: httpx.Response) -> int:
    return response.extensions["network_stream"].get_extra_info("socket").getsockname()[1]


def status_count(client: httpx.Client, status: str, route: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("kernelserve:http_requests_total{") and f'status="{status}"' in line and \
                f'route="{route}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def completion(prompt, **extra):
    return {"model": SMOLLM, "prompt": prompt, "max_tokens": 8, "temperature": 0, **extra}


def test_engine_failure_is_a_500_naming_the_request_and_the_connection_is_reused(live, caplog):
    url, engine = live
    with httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=1)) as c:
        good = c.post("/v1/completions", json=completion("The capital of France is"))
        assert good.status_code == 200
        before = status_count(c, "500", "/v1/completions")
        with caplog.at_level(logging.ERROR):
            bad = c.post("/v1/completions", json=completion(POISON_PREFILL))
        assert bad.status_code == 500
        err = bad.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == "engine_error"
        assert "cmpl-" in err["message"] and "injected forward failure" in err["message"]
        engine_logs = [r for r in caplog.records if "injected forward failure" in str(r.exc_info)]
        assert len(engine_logs) == 1  # logged once, with its traceback
        again = c.post("/v1/completions", json=completion("The capital of France is"))
        assert again.status_code == 200 and again.json()["choices"] == good.json()["choices"]
        assert local_port(good) == local_port(bad) == local_port(again)  # one keep-alive connection throughout
        assert status_count(c, "500", "/v1/completions") == before + 1
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks


def test_failure_mid_stream_ends_with_an_error_event(live):
    url, engine = live
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    stream = client.completions.create(model=SMOLLM, prompt=POISON_DECODE, max_tokens=20, temperature=0,
                                       stream=True)
    got = []
    with pytest.raises(openai.APIError, match="injected decode failure"):
        for chunk in stream:
            got.append(chunk.choices[0].text)
    assert got  # the first tokens arrived before the failure
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/completions", json=completion("Hello", stream=True))
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_bug_behind_a_route_is_one_counted_500(live, monkeypatch, caplog):
    url, _ = live

    def explode(tokenizer, prompt):
        raise KeyError("injected bug")

    monkeypatch.setattr(serving_module, "completion_prompts", explode)
    with httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=1)) as c:
        before = status_count(c, "500", "/v1/completions")
        with caplog.at_level(logging.ERROR):
            r = c.post("/v1/completions", json=completion("hi"), headers={"X-Request-Id": "bug-1"})
        assert r.status_code == 500 and r.headers["x-request-id"] == "bug-1"
        assert r.json()["error"]["type"] == "internal_server_error" and "bug-1" in r.json()["error"]["message"]
        logged = [rec for rec in caplog.records if rec.exc_info and "bug-1" in rec.getMessage()]
        assert len(logged) == 1
        assert status_count(c, "500", "/v1/completions") == before + 1
        monkeypatch.undo()
        ok = c.post("/v1/completions", json=completion("hi"))
        assert ok.status_code == 200 and local_port(ok) == local_port(r)
