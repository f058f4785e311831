"""Offline generation throughput of the engine against transformers' generate, in one process.

    python benchmarks/offline_throughput.py [--prompts 64] [--max-tokens 128] [--concurrency 16]

SmolLM2-135M-Instruct, chat prompts from benchmarks/prompts.txt, ``ignore_eos``
so every request produces exactly ``--max-tokens`` tokens. The engine runs at
most ``--concurrency`` sequences at once, in fp32 and in bf16; transformers
generates greedily in batches of ``--concurrency`` (left padding). Peak RSS is
read after each of three repeats of the fp32 engine workload: it should stay
flat. Writes benchmarks/results/offline-throughput.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.report import publish  # noqa: E402
from models import load_model  # noqa: E402
from service.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402

SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"


def load_prompts(n: int) -> list[str]:
    with open(os.path.join(ROOT, "benchmarks", "prompts.txt")) as f:
        lines = [line.strip() for line in f if line.strip()]
    return [lines[i % len(lines)] for i in range(n)]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def engine_run(loaded, prompt_ids, max_tokens, concurrency) -> tuple[float, int]:
    engine = LLMEngine(loaded, EngineConfig(max_num_seqs=concurrency, max_num_batched_tokens=2048))
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    start = time.perf_counter()
    outs = engine.generate(prompt_ids, params)
    seconds = time.perf_counter() - start
    return seconds, sum(len(o[0].token_ids) for o in outs)


def transformers_run(path, prompt_ids, max_tokens, batch) -> tuple[float, int]:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                              dtype=torch.float32).eval()
    produced, start = 0, time.perf_counter()
    for i in range(0, len(prompt_ids), batch):
        group = prompt_ids[i:i + batch]
        width = max(map(len, group))
        ids = torch.tensor([[2] * (width - len(p)) + p for p in group])  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group])
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                              do_sample=False, pad_token_id=2)
        produced += (out.shape[1] - width) * len(group)
    return time.perf_counter() - start, produced


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "offline-throughput.md"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fp32 = load_model(SMOLLM, dtype="float32")
    tok = fp32.tokenizer
    prompt_ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}])) for p in load_prompts(args.prompts)]
    rows = []
    rss = []
    for repeat in range(3):
        seconds, tokens = engine_run(fp32, prompt_ids, args.max_tokens, args.concurrency)
        rss.append(rss_mb())
        if repeat == 0:
            rows.append(("kernelserve engine fp32", seconds, tokens))
        print(f"engine fp32 run {repeat + 1}: {tokens / seconds:.1f} tok/s, peak RSS {rss[-1]:.0f} MiB", flush=True)
    bf16 = load_model(SMOLLM, dtype="bfloat16")
    seconds, tokens = engine_run(bf16, prompt_ids, args.max_tokens, args.concurrency)
    rows.append(("kernelserve engine bf16", seconds, tokens))
    print(f"engine bf16: {tokens / seconds:.1f} tok/s", flush=True)
    seconds, tokens = transformers_run(fp32.source, prompt_ids, args.max_tokens, args.concurrency)
    rows.append((f"transformers generate fp32 (batches of {args.concurrency})", seconds, tokens))
    base = rows[-1][2] / rows[-1][1]
    lines = [f"# Offline throughput: SmolLM2-135M-Instruct, {args.prompts} chat prompts x {args.max_tokens} tokens",
             "", f"{datetime.date.today()} · {platform.node()} · {os.cpu_count()} cores · torch {torch.__version__} "
             f"· {torch.get_num_threads()} threads · at most {args.concurrency} sequences in flight", "",
             "| system | seconds | output tokens | tok/s | vs transformers |", "|---|---:|---:|---:|---:|"]
    for name, seconds, tokens in rows:
        lines.append(f"| {name} | {seconds:.1f} | {tokens} | {tokens / seconds:.1f} | {tokens / seconds / base:.2f}x |")
    growth = (max(rss) - min(rss)) / min(rss)
    lines += ["", f"Peak RSS after each of three fp32 engine repeats: {', '.join(f'{r:.0f}' for r in rss)} MiB "
              f"(spread {growth:.1%}; target within 5%)."]
    publish("\n".join(lines), args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
