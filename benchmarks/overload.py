"""Refusals under load: how fast a full server answers 429 and /health while the engine is saturated.

    python benchmarks/overload.py [--burst 100] [--max-num-seqs 4] [--max-waiting 8]

Starts ``kernelserve serve`` (SmolLM2, CPU) with a small queue, fills it with long streaming
requests (max_num_seqs running + max_waiting queued), then fires a burst of ``--burst``
chat requests (10x the queue by default) while polling /health. Every burst request must
get a 429 with Retry-After; the latencies of those 429s and of /health are compared with
the same requests on the idle server (same run). Target: p99 < 100 ms for both under load.
Writes benchmarks/results/overload.md.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.peers.run import start, stop  # noqa: E402
from benchmarks.report import publish  # noqa: E402

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def chat(content: str, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def quantiles(values: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return statistics.median(ordered) * 1000, p99 * 1000


async def timed(client: httpx.AsyncClient, method: str, path: str, **kw) -> tuple[float, httpx.Response]:
    t0 = time.perf_counter()
    r = await client.request(method, path, **kw)
    return time.perf_counter() - t0, r


async def raw(port: int, method: str, path: str, body: dict | None = None) -> tuple[float, int, dict]:
    """One request over a bare socket: (seconds, status, headers). A thin client, so that a burst
    measures the server rather than the client library."""
    payload = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + payload)
    await writer.drain()
    status_line = await reader.readline()
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    elapsed = time.perf_counter() - t0
    writer.close()
    return elapsed, int(status_line.split()[1]), headers


async def hold(client: httpx.AsyncClient, stop_event: asyncio.Event) -> None:
    """A long streaming request that keeps a slot (running or waiting) busy until told to stop."""
    body = chat("Write a very long story about the sea.", max_tokens=1000, ignore_eos=True, stream=True)
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        async for _ in r.aiter_lines():
            if stop_event.is_set():
                return


async def poll_health(port: int, stop_event: asyncio.Event, out: list[float]) -> None:
    while not stop_event.is_set():
        dt, status, _ = await raw(port, "GET", "/health")
        assert status == 200, status
        out.append(dt)
        await asyncio.sleep(0.01)


async def wait_for_gauge(client: httpx.AsyncClient, name: str, value: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = (await client.get("/metrics")).text
        line = next((x for x in text.splitlines() if x.startswith(f"kernelserve:{name}{{")), "")
        if line and float(line.rsplit(" ", 1)[1]) >= value:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{name} never reached {value}")


async def fill(client: httpx.AsyncClient, args, stop_event: asyncio.Event) -> list[asyncio.Future]:
    """max_num_seqs running, then max_waiting queued behind them: the server is exactly full."""
    holders = [asyncio.ensure_future(hold(client, stop_event)) for _ in range(args.max_num_seqs)]
    await wait_for_gauge(client, "num_requests_running", args.max_num_seqs)
    holders += [asyncio.ensure_future(hold(client, stop_event)) for _ in range(args.max_waiting)]
    await wait_for_gauge(client, "num_requests_waiting", args.max_waiting)
    return holders


async def measure(base_url: str, args) -> dict:
    limits = httpx.Limits(max_connections=args.burst + args.max_num_seqs + args.max_waiting + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(120, read=None), limits=limits) as client:
        idle_health = [(await raw(args.port, "GET", "/health"))[0] for _ in range(20)]
        idle_burst = await asyncio.gather(*[raw(args.port, "GET", "/health") for _ in range(args.burst)])
        idle_chat = [(await timed(client, "POST", "/v1/chat/completions", json=chat("Hi", max_tokens=1)))[0]
                     for _ in range(5)]
        stop_event = asyncio.Event()
        holders = await fill(client, args, stop_event)
        health: list[float] = []
        poller = asyncio.ensure_future(poll_health(args.port, stop_event, health))
        await asyncio.sleep(0.5)
        burst = await asyncio.gather(*[raw(args.port, "POST", "/v1/chat/completions", chat(f"Question {i}?"))
                                       for i in range(args.burst)])
        await asyncio.sleep(0.5)
        stop_event.set()
        await poller
        for h in holders:
            h.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
    refused = [dt for dt, status, headers in burst if status == 429 and headers.get("retry-after")]
    return {"idle_health": idle_health, "idle_burst": [dt for dt, _, _ in idle_burst], "idle_chat": idle_chat,
            "health": health, "refused": refused, "statuses": sorted({status for _, status, _ in burst})}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--max-num-seqs", type=int, default=4)
    parser.add_argument("--max-waiting", type=int, default=8)
    parser.add_argument("--port", type=int, default=8191)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    proc = start([sys.executable, "-m", "service", "serve", "--model", MODEL, "--port", str(args.port),
                  "--max-num-seqs", str(args.max_num_seqs), "--max-waiting-requests", str(args.max_waiting)],
                 args.port, os.path.join(tempfile.gettempdir(), "kernelserve-overload-server.log"))
    try:
        m = asyncio.run(measure(f"http://127.0.0.1:{args.port}", args))
    finally:
        stop(proc)
    rows = [("/health, idle", m["idle_health"]), (f"/health x{args.burst} at once, idle", m["idle_burst"]),
            ("chat 1 token, idle", m["idle_chat"]),
            ("/health during the burst", m["health"]), (f"429 refusals of the burst ({len(m['refused'])}"
                                                        f"/{args.burst})", m["refused"])]
    table = ["| request | n | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
    for name, values in rows:
        p50, p99 = quantiles(values) if values else (float("nan"), float("nan"))
        table.append(f"| {name} | {len(values)} | {p50:.1f} | {p99:.1f} |")
    ok = len(m["refused"]) == args.burst and max(quantiles(m["refused"])[1], quantiles(m["health"])[1]) < 100
    text = "\n".join([
        f"# Overload: a {args.burst}-request burst against a full queue (max_num_seqs {args.max_num_seqs}, "
        f"max waiting {args.max_waiting})", "",
        f"{datetime.date.today()} · {platform.node()} · {os.cpu_count()} cores · SmolLM2-135M-Instruct fp32 CPU · "
        f"burst statuses {m['statuses']}", "", *table, "",
        f"Target (p99 < 100 ms for 429s and /health under load, every burst request refused): "
        f"{'met' if ok else 'MISSED'}."])
    publish(text, os.path.join(ROOT, "benchmarks", "results", "overload.md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
