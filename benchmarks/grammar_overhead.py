"""What grammar-constrained decoding costs: 8 concurrent JSON-schema requests against the same requests
unconstrained, on the model `make serve` runs (SmolLM2-135M, GGUF Q4_1 kept quantized, bf16 on CPU).

    python benchmarks/grammar_overhead.py [--rounds 3] [--tokens 128] [--concurrency 8]

Both sides generate exactly ``--tokens`` tokens per request, so their work differs only by the grammar:
the constrained requests ask for a JSON list of at least 200 people (name, age, city), which cannot end
before the token budget, and the unconstrained ones ignore EOS. Rounds alternate the two (the machine is
noisy); the figure is generated tokens per second, and the ratio constrained / unconstrained per round and
its median. Also prints the grammar's host time per step (bitmask fill + apply) measured alone. Writes
benchmarks/results/grammar-overhead.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.report import publish  # noqa: E402

SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
PEOPLE = {"type": "object", "properties": {"people": {"type": "array", "minItems": 200, "items": {
    "type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                     "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                     "city": {"enum": ["Paris", "Lima", "Oslo", "Kyoto", "Accra"]}},
    "required": ["name", "age", "city"], "additionalProperties": False}}},
    "required": ["people"], "additionalProperties": False}
QUESTIONS = ["List people you know.", "Invent a town's population.", "Who lives on my street?",
             "Make up a class roster.", "Name some travellers.", "Describe a team.", "Who came to the party?",
             "List a choir's singers."]


def tokens_per_second(engine, prompts, params) -> float:
    start = time.perf_counter()
    outs = engine.generate(prompts, params)
    elapsed = time.perf_counter() - start
    return sum(len(o.token_ids) for seqs in outs for o in seqs) / elapsed


def grammar_host_us(engine, batch: int, steps: int = 200) -> float:
    """Bitmask fill + apply for ``batch`` rows, per step, without the model."""
    from service.engine.grammar import GrammarSpec, mask_logits

    states = [engine.grammars.matcher(GrammarSpec.json_schema(PEOPLE)) for _ in range(batch)]
    logits = torch.randn(batch, engine.loaded.config.vocab_size)
    start = time.perf_counter()
    for _ in range(steps):
        mask_logits(logits, states)
    return (time.perf_counter() - start) / steps * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "grammar-overhead.md"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from models import load_model
    from service.engine import EngineConfig, LLMEngine, SamplingParams
    from service.engine.grammar import GrammarSpec

    loaded = load_model(SMOLLM, dtype="auto")  # what `make serve` runs
    engine = LLMEngine(loaded, EngineConfig())
    tok = loaded.tokenizer
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}]), add_special_tokens=False)
               for q in (QUESTIONS * args.concurrency)[:args.concurrency]]
    plain = SamplingParams(max_tokens=args.tokens, temperature=0.7, seed=1, ignore_eos=True)
    constrained = SamplingParams(max_tokens=args.tokens, temperature=0.7, seed=1,
                                 grammar=GrammarSpec.json_schema(PEOPLE))
    engine.generate(prompts[:1], SamplingParams(max_tokens=4, grammar=constrained.grammar))  # compile, warm up
    rows, ratios = [], []
    for r in range(args.rounds):
        free = tokens_per_second(engine, prompts, plain)
        bound = tokens_per_second(engine, prompts, constrained)
        ratios.append(bound / free)
        rows.append(f"| {r + 1} | {free:.1f} | {bound:.1f} | {bound / free:.3f} |")
        print(rows[-1], flush=True)
    host = grammar_host_us(engine, args.concurrency)
    median = statistics.median(ratios)
    text = "\n".join([
        f"# Grammar-constrained decoding: {args.concurrency} concurrent JSON-schema requests vs unconstrained", "",
        f"{datetime.date.today()} · {platform.node()} · {os.cpu_count()} cores · torch {torch.__version__} · "
        f"{SMOLLM} ({loaded.quantization}, {str(loaded.dtype).removeprefix('torch.')}) · {args.tokens} tokens per "
        "request, sampled (temperature 0.7, seeded)", "",
        "| round | unconstrained tok/s | JSON schema tok/s | ratio |", "|---:|---:|---:|---:|", *rows, "",
        f"Median ratio **{median:.3f}** (cost {100 * (1 - median):.1f}% of throughput; the bar is at most 10%).",
        f"Grammar host work alone (bitmask fill + apply, {args.concurrency} rows): {host:.0f} µs per step."])
    publish(text, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
