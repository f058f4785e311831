"""kernelserve's C++ CPU kernels against the torch paths they replace, in one process.

    python -m benchmarks.cpu_kernels [--rounds 30] [--steps 30]

1. The quantized GEMM on SmolLM2-135M's projection shapes (4-bit, groups of 32, float16 scales as its Q4_1 GGUF
   has them) and its Q8_0 LM head, at M = 1, 8, 16, 32 rows: ours vs torch's packed int4 kernel
   (``_weight_int4pack_mm_for_cpu``, the 8-bit head as two nibble matmuls), best of ``--rounds`` alternating
   calls on a warm cache.
2. The engine's decode step (SmolLM2 Q4_1 kept, bf16, greedy) at concurrency 1 and 8 with the C++ kernels and
   with ``KERNELSERVE_CPU_KERNELS=0`` (each in its own process, alternating), and the weight bytes a token reads.

Writes benchmarks/results/cpu-kernels.md. Ratios are same-run: the machine is noisy.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.report import publish  # noqa: E402

SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
SHAPES = {"qkv": (960, 576, 4), "o": (576, 576, 4), "gate_up": (3072, 576, 4), "down": (576, 1536, 4),
          "lm_head (Q8_0)": (49152, 576, 8)}  # name -> (N, K, bits)


def gguf_like(n: int, k: int, bits: int):
    from kernels.quant_gemm import pack_codes

    g = torch.Generator().manual_seed(n + k)
    codes = torch.randint(0, 2 ** bits, (n, k), generator=g, dtype=torch.int32).to(torch.uint8)
    scales = (torch.rand(n, k // 32, generator=g) * 0.01 + 1e-3).half().float()
    return pack_codes(codes, scales, (-(2 ** (bits - 1)) * scales).half().float(), bits, 32)


def gemm_rows(rounds: int) -> list[str]:
    from kernels.quant_gemm import _cpu_layout

    rows = []
    for name, (n, k, bits) in SHAPES.items():
        qw = gguf_like(n, k, bits)
        layout = _cpu_layout(qw, torch.bfloat16)
        for m in (1, 8, 16, 32):
            x = torch.randn(m, k).bfloat16()
            ours = lambda: torch.ops.kernelserve.quant_linear(x, qw.qweight, qw.scales, qw.offsets, bits, 32)  # noqa
            theirs = lambda: [torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, 32, z) for p, z in layout]  # noqa
            best = {"ours": float("inf"), "torch": float("inf")}
            for _ in range(rounds):
                for label, fn in (("ours", ours), ("torch", theirs)):
                    start = time.perf_counter()
                    fn()
                    best[label] = min(best[label], time.perf_counter() - start)
            rows.append(f"| {name} {n}x{k} | {m} | {best['ours'] * 1e6:.0f} | {best['torch'] * 1e6:.0f} | "
                        f"{best['torch'] / best['ours']:.2f}x |")
    return rows


def step_times(steps: int) -> dict:
    """In this process: the mean decode step at concurrency 1 and 8 (after 5 warm-up steps)."""
    from benchmarks.offline_throughput import load_prompts
    from models import load_model
    from service.engine import EngineConfig, LLMEngine, SamplingParams

    loaded = load_model(SMOLLM, dtype="auto")
    tok = loaded.tokenizer
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}])) for p in load_prompts(8)]
    out = {}
    for c in (1, 8):
        engine = LLMEngine(loaded, EngineConfig(max_num_seqs=c, max_num_batched_tokens=2048))
        for i in range(c):
            engine.add_request(str(i), ids[i], SamplingParams(max_tokens=steps + 10, temperature=0, ignore_eos=True))
        for _ in range(5):
            engine.step()
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        out[c] = (time.perf_counter() - start) / steps * 1e3
    return out


def in_subprocess(cpp: bool, steps: int) -> dict:
    env = {**os.environ, "KERNELSERVE_CPU_KERNELS": "1" if cpp else "0"}
    done = subprocess.run([sys.executable, __file__, "--child-steps", str(steps)], env=env, capture_output=True,
                          text=True, check=True, cwd=ROOT)
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--alternations", type=int, default=4, help="runs of each side, alternating")
    parser.add_argument("--child-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_steps:
        print(json.dumps(step_times(args.child_steps)))
        return 0
    import kernels.cpu

    if not kernels.cpu.vectorised():
        print("the C++ CPU kernels are not built with AVX512-BF16 here; nothing to compare")
        return 0
    lines = [f"# C++ CPU kernels vs the torch paths ({datetime.date.today()} · {platform.node()} · "
             f"{os.cpu_count()} cores · torch {torch.__version__})", "",
             "## Quantized GEMM (bf16 activations, best of rounds, warm cache)", "",
             "| weight | M | ours us | torch int4 us | speed-up |", "|---|---:|---:|---:|---:|", *gemm_rows(args.rounds)]
    runs = {True: [], False: []}
    for _ in range(args.alternations):  # alternate: the machine's speed drifts (±40% over minutes here)
        for cpp in (True, False):
            runs[cpp].append(in_subprocess(cpp, args.steps))
    best = {cpp: {c: min(r[c] for r in rs) for c in (1, 8)} for cpp, rs in runs.items()}
    lines += ["", f"## Engine decode step, SmolLM2-135M Q4_1 kept, bf16, greedy (best of {args.alternations} "
              "alternating runs)", "",
              "| concurrency | C++ kernels ms | torch paths ms | speed-up |", "|---:|---:|---:|---:|"]
    lines += [f"| {c} | {best[True][c]:.1f} | {best[False][c]:.1f} | {best[False][c] / best[True][c]:.2f}x |"
              for c in (1, 8)]
    publish("\n".join(lines), os.path.join(ROOT, "benchmarks", "results", "cpu-kernels.md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
