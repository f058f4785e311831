"""The engine on a GPU against transformers' ``generate`` in the same process: Llama-3.2-1B-shaped and
SmolLM2-135M-shaped random models (benchmarks/synthetic.py), bfloat16, concurrency 1/16/64/256, 256-token
prompts, 128 generated tokens each (EOS ignored), CUDA graphs on and off.

    python benchmarks/gpu_serving.py [--models llama-1b smollm2-135m] [--concurrency 1 16 64 256]
                                     [--output benchmarks/results/gpu-serving.md]
    python benchmarks/gpu_serving.py --quick --device cpu    # a smoke run of the whole script on CPU

Per row: generated tokens per second for both (wall time of the whole run, prefill included), their
ratio, the engine's median step time, and — at concurrency 1 — the share of the weight-read roofline:
one decode step must read every weight once, so ``weight bytes / copy bandwidth`` (bandwidth measured
here, a device-to-device copy) is the fastest a step can be; the figure is that time over the median step.
Start-up (warm-up, tuning, graph capture) is timed separately: nothing compiles after it.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.report import publish  # noqa: E402
from benchmarks.synthetic import save_random, weight_bytes  # noqa: E402


def copy_bandwidth(device: str, nbytes: int = 1 << 30) -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    if device == "cpu":
        nbytes = 1 << 27
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


def timed_engine_run(engine, prompts, max_tokens) -> tuple[float, float, int]:
    """(tokens/s, median step seconds, tokens) of one ``generate`` call, each step timed."""
    from service.engine import SamplingParams

    steps = []
    real_step = engine.step

    def timed_step():
        start = time.perf_counter()
        out = real_step()
        steps.append(time.perf_counter() - start)  # the step ends with the sampled ids on the host
        return out

    engine.step = timed_step
    try:
        start = time.perf_counter()
        outs = engine.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))
        elapsed = time.perf_counter() - start
    finally:
        engine.step = real_step
    tokens = sum(len(o.token_ids) for seqs in outs for o in seqs)
    return tokens / elapsed, statistics.median(steps), tokens


@torch.inference_mode()
def transformers_run(hf, prompts, max_tokens, device) -> float:
    ids = torch.tensor(prompts, device=device)
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                      min_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
    if device != "cpu":
        torch.cuda.synchronize()
    return (out.shape[1] - ids.shape[1]) * ids.shape[0] / (time.perf_counter() - start)


def bench_model(shape: str, args, bandwidth: float) -> list[str]:
    from kernels.tuning import STATS, mark_ready
    from models import load_model
    from service.engine import EngineConfig, LLMEngine
    from service.engine.model_runner import graph_memory

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        hf = save_random(shape, folder).to(torch.bfloat16)
        hf.save_pretrained(folder)  # the engine loads bf16 weights from the folder
        hf = hf.to(args.device).eval()
        loaded = load_model(folder, dtype="bfloat16", device=args.device)
        roofline = weight_bytes(loaded.model) / bandwidth
        g = torch.Generator().manual_seed(0)
        vocab = loaded.config.vocab_size
        modes = ["auto", "off"] if args.device != "cpu" else ["padded", "off"]
        for mode in modes:
            STATS.ready = False  # this engine's warm-up is start-up, not serving (mark_ready() again below)
            start = time.perf_counter()
            engine = LLMEngine(loaded, EngineConfig(max_num_seqs=max(args.concurrency), cuda_graphs=mode,
                                                    kv_cache_memory=args.kv_cache_gib << 30,
                                                    max_model_len=args.prompt_len + args.max_tokens + 16,
                                                    warmup="on"))
            startup = time.perf_counter() - start
            graphs = engine.runner.graphs
            pool = "" if graphs is None or not graphs.graphs else (
                f"{graphs.pool_bytes / 2**20:,.0f} ({graph_memory(loaded, engine.config) / 2**20:,.0f})")
            mark_ready()  # from here on every compilation or tuning is counted (it would stall a request)
            for c in args.concurrency:
                prompts = [torch.randint(3, vocab, (args.prompt_len,), generator=g).tolist() for _ in range(c)]
                before = (STATS.compilations_after_ready, STATS.tunings_after_ready)
                ours, step, _ = timed_engine_run(engine, prompts, args.max_tokens)
                late = (STATS.compilations_after_ready - before[0], STATS.tunings_after_ready - before[1])
                theirs = None
                if mode == modes[0]:  # warmed first: its first generate pays CUDA and cuBLAS start-up
                    transformers_run(hf, prompts, 2, args.device)
                    theirs = transformers_run(hf, prompts, args.max_tokens, args.device)
                share = f"{100 * roofline / step:.1f}%" if c == 1 else ""
                rows.append(f"| {shape} | {c} | {'on' if mode != 'off' else 'off'} | {ours:,.0f} | "
                            f"{'' if theirs is None else f'{theirs:,.0f}'} | "
                            f"{'' if theirs is None else f'{ours / theirs:.2f}x'} | {step * 1000:.2f} | {share} | "
                            f"{late[0]} / {late[1]} | {startup:.0f} | {pool} |")
                print(rows[-1], flush=True)
            del engine
            gc.collect()
            if args.device != "cpu":
                torch.cuda.empty_cache()
        del hf, loaded
        gc.collect()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["llama-1b", "smollm2-135m"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--kv-cache-gib", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="a tiny model, concurrency 1 and 2, 8 tokens (smoke)")
    parser.add_argument("--warm-caches", action="store_true",
                        help="keep the Triton and tuning caches already on disk (default: fresh ones, so start-up is "
                             "the cold figure)")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "gpu-serving.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.concurrency, args.prompt_len, args.max_tokens, args.kv_cache_gib = (
            ["tiny-llama"], [1, 2], 16, 8, 1)
    if not args.warm_caches:  # before any kernel compiles: Triton reads TRITON_CACHE_DIR when it first needs it
        fresh = tempfile.mkdtemp(prefix="kernelserve-cold-")
        os.environ["TRITON_CACHE_DIR"] = os.path.join(fresh, "triton")
        os.environ["KERNELSERVE_TUNING_CACHE"] = os.path.join(fresh, "tuning")
    bandwidth = copy_bandwidth(args.device)
    name = torch.cuda.get_device_name() if args.device != "cpu" else "CPU"
    rows = [row for shape in args.models for row in bench_model(shape, args, bandwidth)]
    text = "\n".join([
        f"# Serving on {name}: kernelserve LLMEngine vs transformers generate (same process, same weights)", "",
        f"{datetime.date.today()} · torch {torch.__version__} · bf16 · {args.prompt_len}-token prompts, "
        f"{args.max_tokens} generated tokens each (EOS ignored) · measured copy bandwidth "
        f"{bandwidth / 1e12:.2f} TB/s", "",
        "| model | concurrency | CUDA graphs | kernelserve tok/s | transformers tok/s | ratio | median step ms "
        "| weight-read roofline | compilations / tunings after ready | start-up s | graph MiB (kept back) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
        "Roofline: weight bytes / copy bandwidth over the median step at concurrency 1 (100% = every step reads "
        "the weights once at copy speed). transformers runs a 2-token generate of the same batch before it is "
        "timed. Compilations / tunings after ready: Triton compilations and GEMM tunings during the timed run "
        "(must be 0). Start-up: engine construction (KV cache, warm-up, tuning, graphs) with "
        f"{'warm' if args.warm_caches else 'cold (fresh, empty)'} Triton and tuning caches. Graph MiB: device "
        "memory the capture took (free memory before minus after), and in brackets the estimate the engine keeps "
        "back from the KV cache when it sizes the cache itself."])
    publish(text, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
