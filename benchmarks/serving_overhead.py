"""HTTP serving overhead: the engine in-process against the same engine behind HTTP streaming.

    python benchmarks/serving_overhead.py [--concurrency 8] [--num-prompts 32] [--max-tokens 128]

Both sides run SmolLM2-135M-Instruct (fp32, CPU) on the same chat prompts with ``ignore_eos``:
first the engine alone with ``max_num_seqs = concurrency``, then a ``kernelserve serve``
subprocess measured by ``benchmarks.serve`` at that concurrency. Overhead = 1 - HTTP tok/s /
in-process tok/s. Writes benchmarks/results/serving-overhead.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.peers.run import start, stop  # noqa: E402
from benchmarks.report import publish  # noqa: E402
from benchmarks.serve import load_prompts  # noqa: E402

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def in_process(args) -> float:
    from models import load_model
    from service.engine import EngineConfig, LLMEngine, SamplingParams

    loaded = load_model(MODEL, quantization="none")
    tok = loaded.tokenizer
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}]))
               for p in load_prompts(args.num_prompts, 0)]
    engine = LLMEngine(loaded, EngineConfig(max_num_seqs=args.concurrency))
    engine.generate(prompts[:2], SamplingParams(max_tokens=8))  # warm-up
    start_time = time.perf_counter()
    outs = engine.generate(prompts, SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True))
    return sum(len(o[0].token_ids) for o in outs) / (time.perf_counter() - start_time)


def over_http(args) -> dict:
    port = 8190
    proc = start([sys.executable, "-m", "service", "serve", "--model", MODEL, "--port", str(port),
                  "--max-num-seqs", str(args.concurrency),
                  "--quantization", "none", "--dtype", "float32"], port, os.path.join(tempfile.gettempdir(), "kernelserve-overhead-server.log"))
    try:
        base = ["--base-url", f"http://127.0.0.1:{port}", "--model", MODEL]
        subprocess.run([sys.executable, "-m", "benchmarks.serve", *base, "--num-prompts", "2", "--max-tokens", "8"],
                       cwd=ROOT, capture_output=True)
        out = os.path.join(tempfile.gettempdir(), "kernelserve-overhead.json")
        subprocess.run([sys.executable, "-m", "benchmarks.serve", *base, "--num-prompts", str(args.num_prompts),
                        "--max-concurrency", str(args.concurrency), "--max-tokens", str(args.max_tokens),
                        "--ignore-eos", "--save-result", out], cwd=ROOT, check=True, capture_output=True)
        return json.load(open(out))
    finally:
        stop(proc)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    engine_tps = in_process(args)
    http = over_http(args)
    overhead = 1 - http["output_throughput"] / engine_tps
    text = "\n".join([
        f"# Serving overhead: SmolLM2-135M-Instruct fp32, {args.concurrency} concurrent streams, {args.max_tokens} tokens",
        "", f"{datetime.date.today()} · {platform.node()} · {os.cpu_count()} cores · {args.num_prompts} prompts", "",
        "| path | output tok/s |", "|---|---:|",
        f"| engine in-process (max_num_seqs={args.concurrency}) | {engine_tps:.1f} |",
        f"| HTTP streaming through kernelserve serve | {http['output_throughput']:.1f} |", "",
        f"Overhead: {overhead:.1%} (target < 10%). HTTP TTFT p50 {http['ttft']['median_ms']:.0f} ms, "
        f"ITL p50 {http['itl']['median_ms']:.1f} ms."])
    publish(text, os.path.join(ROOT, "benchmarks", "results", "serving-overhead.md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
