"""Serving benchmark for any OpenAI-compatible server, in the spirit of ``vllm bench serve``.

    python -m benchmarks.serve --base-url http://127.0.0.1:8000 --model HuggingFaceTB/SmolLM2-135M-Instruct \\
        --num-prompts 64 --max-concurrency 8 --max-tokens 128 --ignore-eos --save-result out.json

Streams chat completions (or completions with ``--endpoint completions``), sends them at
``--request-rate`` requests/s (Poisson arrivals; default: all at once) with at most
``--max-concurrency`` in flight, and reports successful/failed requests, duration, request/s,
output and total tokens/s, and mean / median / p99 of TTFT, TPOT (time per output token after
the first), ITL (time between streamed chunks) and end-to-end latency.

``--plot PNG RESULT.json ...`` draws output throughput and TTFT against concurrency for every
system in a set of saved results. Targets must be on this machine (loopback): a load test
never leaves it.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import random
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class RequestResult:
    ok: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str = ""


def check_loopback(base_url: str) -> None:
    host = urlparse(base_url).hostname or ""
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise SystemExit(f"refusing to load-test {host}: only servers on this machine (loopback) are allowed")


def load_prompts(n: int, seed: int) -> list[str]:
    with open(os.path.join(HERE, "prompts.txt")) as f:
        lines = [line.strip() for line in f if line.strip()]
    rng = random.Random(seed)
    return [rng.choice(lines) for _ in range(n)]


async def one_request(client: httpx.AsyncClient, args, prompt: str) -> RequestResult:
    chat = args.endpoint == "chat"
    body = {"model": args.model, "max_tokens": args.max_tokens, "stream": True, "temperature": 0.0,
            "stream_options": {"include_usage": True}, "ignore_eos": args.ignore_eos}
    body.update({"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt})
    start = time.perf_counter()
    result, last = RequestResult(ok=False), None
    try:
        async with client.stream("POST", "/v1/chat/completions" if chat else "/v1/completions", json=body) as r:
            if r.status_code != 200:
                result.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data.get("usage"):
                    result.prompt_tokens = data["usage"]["prompt_tokens"]
                    result.output_tokens = data["usage"]["completion_tokens"]
                for choice in data.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                    if text:
                        now = time.perf_counter()
                        if last is None:
                            result.ttft = now - start
                        else:
                            result.itl.append(now - last)
                        last = now
        result.latency = time.perf_counter() - start
        result.ok = last is not None
        if not result.ok:
            result.error = "no tokens streamed"
    except (httpx.HTTPError, json.JSONDecodeError) as err:
        result.error = f"{type(err).__name__}: {err}"
    return result


async def run(args) -> tuple[list[RequestResult], float]:
    prompts = load_prompts(args.num_prompts, args.seed)
    rng = random.Random(args.seed)
    limit = asyncio.Semaphore(args.max_concurrency or len(prompts))
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=(args.max_concurrency or len(prompts)) + 4)
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers, timeout=args.timeout, limits=limits) as c:
        async def limited(prompt):
            async with limit:
                return await one_request(c, args, prompt)

        tasks = []
        start = time.perf_counter()
        for prompt in prompts:
            tasks.append(asyncio.ensure_future(limited(prompt)))
            if args.request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(args.request_rate))  # Poisson arrivals
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.timeout * 4)
        return results, time.perf_counter() - start


def summarise(results: list[RequestResult], duration: float, args) -> dict:
    ok = [r for r in results if r.ok]

    def stats(values: list[float]) -> dict:
        if not values:
            return {"mean_ms": 0.0, "median_ms": 0.0, "p99_ms": 0.0}
        values = sorted(values)
        return {"mean_ms": 1000 * statistics.fmean(values), "median_ms": 1000 * statistics.median(values),
                "p99_ms": 1000 * values[min(len(values) - 1, int(0.99 * len(values)))]}

    output = sum(r.output_tokens for r in ok)
    prompt = sum(r.prompt_tokens for r in ok)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    return {
        "model": args.model, "base_url": args.base_url, "label": args.label, "max_concurrency": args.max_concurrency,
        "request_rate": str(args.request_rate), "num_prompts": args.num_prompts, "max_tokens": args.max_tokens,
        "successful_requests": len(ok), "failed_requests": len(results) - len(ok), "duration_s": duration,
        "request_throughput": len(ok) / duration, "output_throughput": output / duration,
        "total_token_throughput": (output + prompt) / duration, "total_output_tokens": output,
        "ttft": stats([r.ttft for r in ok]), "tpot": stats(tpot), "itl": stats([x for r in ok for x in r.itl]),
        "e2el": stats([r.latency for r in ok]),
        "errors": sorted({r.error for r in results if r.error})[:5],
    }


def print_summary(s: dict) -> None:
    print(f"{' Serving Benchmark Result ':=^60}")
    for label, key in [("Successful requests", "successful_requests"), ("Failed requests", "failed_requests"),
                       ("Benchmark duration (s)", "duration_s"), ("Request throughput (req/s)", "request_throughput"),
                       ("Output token throughput (tok/s)", "output_throughput"),
                       ("Total token throughput (tok/s)", "total_token_throughput")]:
        value = s[key]
        print(f"{label:<45}{value:>15.2f}" if isinstance(value, float) else f"{label:<45}{value:>15}")
    for name in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean_ms", "median_ms", "p99_ms"):
            print(f"{stat.split('_')[0].capitalize() + ' ' + name.upper() + ' (ms)':<45}{s[name][stat]:>15.2f}")
    if s["errors"]:
        print("errors:", *s["errors"], sep="\n  ")


def plot(png: str, files: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.load(open(f)) for f in files]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label in sorted({r.get("label") or r["base_url"] for r in runs}):
        mine = sorted((r for r in runs if (r.get("label") or r["base_url"]) == label), key=lambda r: r["max_concurrency"])
        xs = [r["max_concurrency"] for r in mine]
        ax1.plot(xs, [r["output_throughput"] for r in mine], marker="o", label=label)
        ax2.plot(xs, [r["ttft"]["median_ms"] for r in mine], marker="o", label=label)
    ax1.set(xlabel="concurrency", ylabel="output tokens/s", title="Throughput")
    ax2.set(xlabel="concurrency", ylabel="median TTFT (ms)", title="Time to first token")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--max-concurrency", type=int, default=None, help="requests in flight (default: all)")
    parser.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s, Poisson (default inf)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--ignore-eos", action="store_true", help="always generate --max-tokens tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", default=os.environ.get("KERNELSERVE_API_KEY"))
    parser.add_argument("--timeout", type=float, default=600, help="seconds per request (the run is bounded by 4x)")
    parser.add_argument("--label", default="", help="the system's name in saved results and plots")
    parser.add_argument("--save-result", help="write the summary as JSON")
    parser.add_argument("--plot", nargs="+", metavar=("PNG", "RESULT"), help="plot saved results and exit")
    args = parser.parse_args(argv)
    if args.plot:
        plot(args.plot[0], args.plot[1:])
        return 0
    check_loopback(args.base_url)
    results, duration = asyncio.run(run(args))
    summary = summarise(results, duration, args)
    print_summary(summary)
    if args.save_result:
        with open(args.save_result, "w") as f:
            json.dump(summary, f, indent=2)
    return 0 if summary["failed_requests"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
