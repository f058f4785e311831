"""Metric names and types, and a real Prometheus server scraping a live kernelserve."""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time

import httpx
import pytest

from ..conftest import API_KEY, MINILM, SMOLLM

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {API_KEY}"}

EXPECTED = {  # vLLM's names under kernelserve:, with their types
    "num_requests_running": "gauge", "num_requests_waiting": "gauge", "kv_cache_usage_perc": "gauge",
    "prompt_tokens": "counter", "generation_tokens": "counter", "request_success": "counter",
    "num_preemptions": "counter", "prefix_cache_queries": "counter", "prefix_cache_hits": "counter",
    "request_failure": "counter", "time_to_first_token_seconds": "histogram",
    "inter_token_latency_seconds": "histogram", "e2e_request_latency_seconds": "histogram",
    "request_queue_time_seconds": "histogram", "request_prompt_tokens": "histogram",
    "request_generation_tokens": "histogram", "embedding_requests": "counter", "embedding_inputs": "counter",
    "embedding_batch_size": "histogram", "http_requests": "counter", "http_request_duration_seconds": "histogram",
    "build_info": "gauge", "engine_config_info": "gauge",
    "kernel_compilations_after_ready": "counter", "kernel_tunings_after_ready": "counter",
}


def test_metric_names_types_and_labels(server, http):
    http.post("/v1/chat/completions", json={"model": SMOLLM, "max_tokens": 3,
                                            "messages": [{"role": "user", "content": "hi"}]})
    http.post("/v1/embeddings", json={"model": MINILM, "input": ["a", "b"]})
    text = httpx.get(server.url + "/metrics").text
    types = {name.removesuffix("_total") if kind == "counter" else name: kind
             for name, kind in re.findall(r"^# TYPE kernelserve:(\S+) (\S+)$", text, flags=re.M)}
    assert not any(name.endswith("_created") for name in types), "no _created series (as vLLM)"
    for name, kind in EXPECTED.items():
        assert types.get(name) == kind, f"kernelserve:{name} should be a {kind}, got {types.get(name)}"
    assert f'kernelserve:generation_tokens_total{{model_name="{SMOLLM}"}}' in text
    assert re.search(r'kernelserve:request_success_total\{finished_reason="(stop|length)",model_name=', text) or \
        re.search(r'kernelserve:request_success_total\{model_name="[^"]+",finished_reason="(stop|length)"\}', text)
    assert 'le="0.001"' in text and 'le="2560.0"' in text  # vLLM's TTFT buckets
    assert re.search(r'kernelserve:build_info\{.*kernel_backend="torch".*\} 1\.0', text)
    assert "kernelserve:kernel_compilations_after_ready_total 0.0" in text  # nothing compiles while serving


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus server is not installed: `make test` installs Debian's prometheus")
    folder = tmp_path_factory.mktemp("prometheus")
    host = server.url.removeprefix("http://")
    (folder / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: kernelserve\n    static_configs: [{{targets: ['{host}']}}]\n")
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=open(folder / "log", "w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def query(url: str, expr: str) -> float | None:
    data = httpx.get(url + "/api/v1/query", params={"query": expr}).json()
    assert data["status"] == "success", data
    result = data["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def wait_for(url, expr, predicate, timeout=30):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = query(url, expr)
        if value is not None and predicate(value):
            return value
        time.sleep(1)
    return value


def test_prometheus_scrape_agrees_with_the_client(server, prometheus):
    up = wait_for(prometheus, 'up{job="kernelserve"}', lambda v: v == 1)
    assert up == 1, "Prometheus could not scrape kernelserve"
    selector = f'{{model_name="{SMOLLM}"}}'
    before = query(prometheus, f"kernelserve:generation_tokens_total{selector}") or 0.0
    generated, ttfts = 0, []
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c:
        for i in range(6):
            start = time.monotonic()
            with c.stream("POST", "/v1/chat/completions", json={
                    "model": SMOLLM, "max_tokens": 12, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": f"Say something about the number {i}."}]}) as r:
                first = None
                for line in r.iter_lines():
                    if line.startswith("data: {") and '"content": "' in line and first is None and '"role"' not in line:
                        first = time.monotonic() - start
                    if '"usage": {' in line:
                        generated += int(re.search(r'"completion_tokens": (\d+)', line).group(1))
                ttfts.append(first)
    expected = before + generated
    after = wait_for(prometheus, f"kernelserve:generation_tokens_total{selector}", lambda v: v >= expected)
    assert after == expected, "Prometheus' counter should equal the tokens the client received"
    rate = query(prometheus, f"rate(kernelserve:generation_tokens_total{selector}[1m])")
    assert rate is not None and rate > 0
    p50 = query(prometheus, f"histogram_quantile(0.5, sum by (le) (kernelserve:time_to_first_token_seconds_bucket{selector}))")
    assert p50 is not None and p50 > 0
    # the server's TTFT excludes HTTP and client time: it cannot exceed what the client saw by a bucket
    assert p50 <= 2.5 * max(ttfts) + 0.1, (p50, ttfts)
