"""Offline generation throughput of the engine against transformers' generate, in one process.

    python benchmarks/offline_throughput.py [--prompts 64] [--max-tokens 128] [--concurrency 16]

SmolLM2-135M-Instruct, chat prompts from benchmarks/prompts.txt, ``ignore_eos``
so every request produces exactly ``--max-tokens`` tokens. The engine runs
one sequence at a time and at most ``--concurrency`` at once, for each weight
variant (dense fp32, dense bf16, the GGUF's Q4_1 kept quantized, int8), each in
its own process so its peak RSS is its own; transformers generates greedily in
batches of ``--concurrency`` (left padding). The fp32 workload repeats three
times: its peak RSS should stay flat. Writes benchmarks/results/offline-throughput.md.
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


# (label, dtype, quantization): each runs in its own process so that its peak RSS is its own
VARIANTS = {
    "fp32": ("float32", "none"),
    "bf16": ("bfloat16", "none"),
    "q4_1": ("bfloat16", "auto"),  # the GGUF's Q4_1 blocks kept (the server's default on CPU)
    "int8": ("bfloat16", "int8"),
}


def run_variant(name: str, args) -> dict:
    """One variant in this process: tok/s at concurrency 1 and ``--concurrency``, peak RSS."""
    dtype, quantization = VARIANTS[name]
    loaded = load_model(SMOLLM, dtype=dtype, quantization=quantization)
    tok = loaded.tokenizer
    prompt_ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}]))
                  for p in load_prompts(args.prompts)]
    engine_run(loaded, prompt_ids[:2], 8, 2)  # warm-up
    result = {"name": name, "quantization": loaded.quantization}
    seconds, tokens = engine_run(loaded, prompt_ids[:args.prompts_c1], args.max_tokens, 1)
    result["c1"] = tokens / seconds
    rss = []
    for _ in range(args.repeats):
        seconds, tokens = engine_run(loaded, prompt_ids, args.max_tokens, args.concurrency)
        rss.append(rss_mb())
    result.update(cn=tokens / seconds, rss=rss)
    return result


def in_subprocess(name: str, args) -> dict:
    import json
    import subprocess

    cmd = [sys.executable, __file__, "--variant", name, "--prompts", str(args.prompts), "--max-tokens",
           str(args.max_tokens), "--concurrency", str(args.concurrency), "--prompts-c1", str(args.prompts_c1),
           "--repeats", str(3 if name == "fp32" else 1)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(f"{name}: {result['c1']:.1f} tok/s at 1, {result['cn']:.1f} at {args.concurrency}, "
          f"peak RSS {max(result['rss']):.0f} MiB", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompts-c1", type=int, default=4, help="prompts for the one-at-a-time rows")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # child process
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "offline-throughput.md"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.variant:
        import json

        print(json.dumps(run_variant(args.variant, args)))
        return 0
    results = [in_subprocess(name, args) for name in VARIANTS]
    fp32 = load_model(SMOLLM, dtype="float32", quantization="none")
    tok = fp32.tokenizer
    prompt_ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}])) for p in load_prompts(args.prompts)]
    seconds, tokens = transformers_run(fp32.source, prompt_ids, args.max_tokens, args.concurrency)
    base = tokens / seconds
    lines = [f"# Offline throughput: SmolLM2-135M-Instruct, {args.prompts} chat prompts x {args.max_tokens} tokens",
             "", f"{datetime.date.today()} · {platform.node()} · {os.cpu_count()} cores · torch {torch.__version__} "
             f"· {torch.get_num_threads()} threads · one process per row (its own peak RSS) · "
             f"concurrency 1 over {args.prompts_c1} prompts", "",
             f"| system | weights | tok/s, 1 in flight | tok/s, {args.concurrency} in flight | "
             f"vs transformers at {args.concurrency} | peak RSS MiB |", "|---|---|---:|---:|---:|---:|"]
    for r in results:
        dtype = VARIANTS[r["name"]][0]
        lines.append(f"| kernelserve engine, {dtype} activations | {r['quantization']} | {r['c1']:.1f} | "
                     f"{r['cn']:.1f} | {r['cn'] / base:.2f}x | {max(r['rss']):.0f} |")
    lines.append(f"| transformers generate fp32 (batches of {args.concurrency}) | none | | {base:.1f} | 1.00x | |")
    rss = next(r["rss"] for r in results if r["name"] == "fp32")
    growth = (max(rss) - min(rss)) / min(rss)
    lines += ["", f"Peak RSS after each of three fp32 engine repeats: {', '.join(f'{r:.0f}' for r in rss)} MiB "
              f"(spread {growth:.1%}; target within 5%)."]
    publish("\n".join(lines), args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
