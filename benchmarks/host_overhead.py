"""Host work per decode step: the engine around a stub forward pass, at batch 1, 64 and 256.

    python benchmarks/host_overhead.py [--steps 50] [--batches 1 64 256]

Decode inputs go through the eager metadata path and through the CUDA graphs' padded buffers (without
capture, on CPU). The model is a 1-layer Llama with SmolLM2's real tokenizer (so detokenisation is real) whose
forward returns at once and whose logits are SmolLM2's real next-token logits for a chat prompt,
the same every step: what is left of a step is the
scheduler, the step's metadata, sampling (greedy, temperature over the whole vocabulary, and top-p with
seeds) and postprocessing —
the work a GPU would wait on. Prints microseconds per step and per sequence and writes
benchmarks/results/host-overhead.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.report import publish  # noqa: E402

SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"


def stub_model(folder: str):
    """A tiny Llama folder with SmolLM2's tokenizer, loaded, its forward and logits replaced by stubs."""
    import transformers

    from models import load_model
    from models.export import write_tokenizer_files

    tokenizer_source = load_model(SMOLLM, quantization="none")
    cfg = transformers.LlamaConfig(vocab_size=tokenizer_source.config.vocab_size, hidden_size=64,
                                   intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=4096, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    write_tokenizer_files(tokenizer_source, folder)
    loaded = load_model(folder)
    vocab = loaded.config.vocab_size
    # real next-token logits of SmolLM2 (sampling costs depend on how peaked they are)
    tok = tokenizer_source.tokenizer
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Tell me a story about the sea."}]))
    from models.metadata import AttentionMetadata

    with torch.inference_mode():
        hidden = tokenizer_source.model(torch.tensor(ids), torch.arange(len(ids)),
                                        AttentionMetadata.for_sequences([len(ids)], torch.device("cpu")))
        logits = tokenizer_source.model.logits(hidden[-1:]).float()
    loaded.model.forward = lambda ids, positions, meta, caches=None: torch.zeros(len(ids), 1)
    loaded.model.logits = lambda hidden: logits.expand(hidden.shape[0], vocab)
    return loaded


def per_step_us(loaded, batch: int, steps: int, params, graphs: str = "off") -> float:
    from service.engine import EngineConfig, LLMEngine

    engine = LLMEngine(loaded, EngineConfig(max_num_seqs=batch, max_num_batched_tokens=max(2048, batch * 64),
                                            kv_cache_memory=256 * 2**20, cuda_graphs=graphs))
    prompt = loaded.tokenizer.encode("Write a long story about the sea and the stars.")
    for i in range(batch):
        engine.add_request(f"r{i}", prompt, params)
    for _ in range(3):  # prefill, then a couple of decodes
        engine.step()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    return (time.perf_counter() - start) / steps * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "host-overhead.md"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from service.engine import SamplingParams

    with tempfile.TemporaryDirectory() as folder:
        loaded = stub_model(folder)
        workloads = {"greedy": SamplingParams(max_tokens=4000, temperature=0, ignore_eos=True),
                     "temperature 1 (full vocabulary)": SamplingParams(max_tokens=4000, temperature=1.0,
                                                                       ignore_eos=True),
                     "top-p 0.9, seeded": SamplingParams(max_tokens=4000, temperature=0.8, top_p=0.9, seed=1,
                                                         ignore_eos=True)}
        rows = []
        for name, params in workloads.items():
            for graphs in ("off", "padded"):
                for batch in args.batches:
                    us = per_step_us(loaded, batch, args.steps, params, graphs)
                    rows.append(f"| {name} | {'eager metadata' if graphs == 'off' else 'graph buffers'} | {batch} | "
                                f"{us:.0f} | {us / batch:.1f} |")
                    print(rows[-1], flush=True)
    text = "\n".join([
        "# Host work per decode step (stub forward, SmolLM2's tokenizer, vocabulary 49,152)", "",
        f"{datetime.date.today()} · {platform.node()} · {os.cpu_count()} cores · torch {torch.__version__} · "
        f"{args.steps} steps after warm-up", "",
        "| sampling | decode inputs | batch | µs per step | µs per sequence |", "|---|---|---:|---:|---:|", *rows,
        "", "Decode inputs: `eager metadata` builds the step's AttentionMetadata tensors (the path prefill and "
        "mixed steps take); `graph buffers` fills the CUDA graphs' static, padded buffers (one host-to-device "
        "copy a step on CUDA; the padded path without capture here). Logits and forward are stubs in both."])
    publish(text, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
