"""Time every kernelserve kernel against its PyTorch baseline on a CUDA GPU.

    python benchmarks/kernels.py [--quick] [--output benchmarks/results/kernels-<gpu>.md]

First measures the card's two ceilings (device-to-device copy bandwidth,
counting bytes read plus written, and a bf16 8192^3 matmul), then times each
kernel and its baseline with ``triton.testing.do_bench`` (median, fresh random
inputs per case) and prints one table: time, TFLOP/s or GB/s, fraction of the
measured ceiling and speedup over the baseline. The table is also written as
markdown with the GPU, versions and date. Without CUDA it says so and exits 0.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kernels  # noqa: E402
from benchmarks.report import publish  # noqa: E402
from kernels.paged import paged_attention_ref  # noqa: E402


@dataclass
class Case:
    name: str
    ours: Callable[[], object]
    baseline: Callable[[], object]
    baseline_name: str
    flops: float = 0.0  # useful floating-point operations per call
    bytes: float = 0.0  # fewest bytes a call must move


@dataclass
class Row:
    case: Case
    ms: float
    base_ms: float


def bench(fn, quick: bool) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=30 if quick else 100, return_mode="median")


def ceilings(quick: bool) -> tuple[float, float]:
    """(copy GB/s counting read + write, bf16 matmul TFLOP/s) measured on this card."""
    src = torch.randn(256 * 2**20, device="cuda", dtype=torch.float32)  # 1 GiB
    dst = torch.empty_like(src)
    copy_ms = bench(lambda: dst.copy_(src), quick)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm_ms = bench(lambda: a @ b, quick)
    return 2 * src.numel() * 4 / copy_ms / 1e6, 2 * 8192**3 / mm_ms / 1e9


def attention_case(dtype=torch.bfloat16, batch=4, seqlen=4096, heads=16, dim=128) -> Case:
    q, k, v = (torch.randn(batch * seqlen, heads, dim, device="cuda", dtype=dtype) for _ in range(3))
    cu = torch.arange(0, (batch + 1) * seqlen, seqlen, device="cuda", dtype=torch.int32)
    qb, kb, vb = (t.view(batch, seqlen, heads, dim).transpose(1, 2) for t in (q, k, v))

    def sdpa_flash():
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qb, kb, vb, is_causal=True)

    return Case(f"attention causal bf16 {batch}x{seqlen} H{heads} D{dim}",
                lambda: kernels.attention(q, k, v, cu, cu, seqlen, seqlen, causal=True), sdpa_flash,
                "SDPA flash", flops=4 * batch * heads * seqlen * seqlen * dim / 2)


def _paged_inputs(dtype, batch, ctx, hq, hkv, dim, block):
    """A full paged cache of ``batch`` sequences of ``ctx`` tokens in shuffled blocks, and one query each."""
    blocks_per_seq = ctx // block
    num_blocks = batch * blocks_per_seq
    k_cache = torch.randn(num_blocks, block, hkv, dim, device="cuda", dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(num_blocks, device="cuda", dtype=torch.int32).view(batch, blocks_per_seq)
    lens = torch.full((batch,), ctx, device="cuda", dtype=torch.int32)
    q = torch.randn(batch, hq, dim, device="cuda", dtype=dtype)
    return q, k_cache, v_cache, tables, lens


def window_cases(dtype=torch.bfloat16, batch=4, seqlen=8192, heads=16, dim=128, window=1024) -> list[Case]:
    """Mistral / Gemma sliding windows and Gemma 2's soft-capping: the window reads window/seqlen of the keys (its
    flops counted as such); the baseline is SDPA with the same mask as a boolean tensor (soft-capping: eager)."""
    q, k, v = (torch.randn(batch * seqlen, heads, dim, device="cuda", dtype=dtype) for _ in range(3))
    cu = torch.arange(0, (batch + 1) * seqlen, seqlen, device="cuda", dtype=torch.int32)
    qb, kb, vb = (t.view(batch, seqlen, heads, dim).transpose(1, 2) for t in (q, k, v))
    pos = torch.arange(seqlen, device="cuda")
    band = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - window)

    def eager_softcap():
        s = (qb @ kb.transpose(-1, -2)).float() * dim ** -0.5
        s = (50.0 * torch.tanh(s / 50.0)).masked_fill(~band, float("-inf"))
        return s.softmax(-1).to(dtype) @ vb

    visible = batch * heads * seqlen * min(window, seqlen) * dim * 4  # ~ one window of keys per query
    return [Case(f"attention sliding window {window} bf16 {batch}x{seqlen} H{heads} D{dim}",
                 lambda: kernels.attention(q, k, v, cu, cu, seqlen, seqlen, causal=True, window=(window - 1, 0)),
                 lambda: F.scaled_dot_product_attention(qb, kb, vb, attn_mask=band), "SDPA + band mask",
                 flops=visible),
            Case(f"attention window {window} + softcap 50 bf16 {batch}x{seqlen} H{heads} D{dim}",
                 lambda: kernels.attention(q, k, v, cu, cu, seqlen, seqlen, causal=True, window=(window - 1, 0),
                                           softcap=50.0),
                 eager_softcap, "eager softcap + mask", flops=visible)]


def paged_window_case(dtype=torch.bfloat16, batch=64, ctx=8192, hq=32, hkv=8, dim=128, block=16,
                      window=1024) -> Case:
    """Decode with a window: the kernel skips the tiles behind it, so it moves window/ctx of the cache."""
    q, k_cache, v_cache, tables, lens = _paged_inputs(dtype, batch, ctx, hq, hkv, dim, block)
    return Case(f"paged_attention window {window} + softcap bf16 B{batch} ctx{ctx} {hq}:{hkv} D{dim}",
                lambda: kernels.paged_attention(q, k_cache, v_cache, tables, lens, window=(window - 1, 0),
                                                softcap=50.0),
                lambda: paged_attention_ref(q, k_cache, v_cache, tables, lens, window=(window - 1, 0), softcap=50.0),
                "torch gather + mask", bytes=2 * k_cache.numel() * k_cache.element_size() * window / ctx)


def moe_cases(dtype=torch.bfloat16, hidden=2048, inter=768, experts=128, top_k=8) -> list[Case]:
    """Qwen3-30B-A3B's expert shapes: decode (16 tokens: few per expert) and prefill (4096 tokens)."""
    from kernels.moe import fused_moe_ref

    w13 = torch.randn(experts, 2 * inter, hidden, device="cuda", dtype=dtype) * hidden ** -0.5
    w2 = torch.randn(experts, hidden, inter, device="cuda", dtype=dtype) * inter ** -0.5
    cases = []
    for tokens in (16, 4096):
        x = torch.randn(tokens, hidden, device="cuda", dtype=dtype)
        weights, ids = kernels.moe_route(torch.randn(tokens, experts, device="cuda"), top_k, True)
        used = min(experts, tokens * top_k)  # experts whose weights a call must read at least
        cases.append(Case(f"fused_moe bf16 T{tokens} E{experts} top{top_k} H{hidden} I{inter}",
                          lambda x=x, w=weights, i=ids: kernels.fused_moe(x, w13, w2, w, i, "silu"),
                          lambda x=x, w=weights, i=ids: fused_moe_ref(x, w13, w2, w, i, "silu"),
                          "torch per-expert GEMMs", flops=2 * tokens * top_k * 3 * hidden * inter,
                          bytes=used * 3 * hidden * inter * w13.element_size()))
    return cases


def paged_case(dtype=torch.bfloat16, batch=64, ctx=4096, hq=32, hkv=8, dim=128, block=16) -> Case:
    q, k_cache, v_cache, tables, lens = _paged_inputs(dtype, batch, ctx, hq, hkv, dim, block)
    return Case(f"paged_attention bf16 B{batch} ctx{ctx} {hq}:{hkv} D{dim}",
                lambda: kernels.paged_attention(q, k_cache, v_cache, tables, lens),
                lambda: paged_attention_ref(q, k_cache, v_cache, tables, lens), "torch gather+SDPA",
                bytes=2 * k_cache.numel() * k_cache.element_size())


def norm_cases(dtype=torch.bfloat16, rows=4096, cols=8192) -> list[Case]:
    x = torch.randn(rows, cols, device="cuda", dtype=dtype)
    r = torch.randn_like(x)
    w = torch.randn(cols, device="cuda", dtype=dtype)
    b = torch.randn(cols, device="cuda", dtype=dtype)
    moved = 4 * x.numel() * x.element_size()  # read x, residual; write y, new residual

    def eager_layer():
        h = x + r
        return F.layer_norm(h, (cols,), w, b, 1e-5), h

    def eager_rms():
        h = x + r
        hf = h.float()
        return (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype) * w, h

    return [
        Case(f"layer_norm+residual bf16 {rows}x{cols}", lambda: kernels.layer_norm(x, w, b, 1e-5, residual=r),
             eager_layer, "eager torch", bytes=moved),
        Case(f"rms_norm+residual bf16 {rows}x{cols}", lambda: kernels.rms_norm(x, w, 1e-6, residual=r),
             eager_rms, "eager torch", bytes=moved),
    ]


def gemm_cases(dtype=torch.bfloat16, m=4096, k=4096, n=16384) -> list[Case]:
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w = torch.randn(n, k, device="cuda", dtype=dtype) / math.sqrt(k)
    bias = torch.randn(n, device="cuda", dtype=dtype)
    wgu = torch.randn(2 * 4096, k, device="cuda", dtype=dtype) / math.sqrt(k)
    wd = torch.randn(k, 4096, device="cuda", dtype=dtype) / 64

    def torch_gated():
        g, u = F.linear(x, wgu).chunk(2, -1)
        return F.linear(F.silu(g) * u, wd)

    return [
        Case(f"linear+gelu bf16 {m}x{k}x{n}", lambda: kernels.linear(x, w, bias, "gelu"),
             lambda: F.gelu(F.linear(x, w, bias)), "F.linear+F.gelu", flops=2 * m * k * n),
        Case(f"gated_ffn silu bf16 {m}x{k}x4096", lambda: kernels.gated_ffn(x, wgu, wd), torch_gated,
             "torch SwiGLU", flops=2 * m * k * 2 * 4096 + 2 * m * 4096 * k),
    ]


def quant_gemm_cases(dtype=torch.bfloat16) -> list[Case]:
    """Decode-shaped weight-only GEMMs (M = 1, 8, 32) on Llama-3.2-1B's MLP down projection: the
    rate is the packed weight read (codes + scales + offsets) per call against copy bandwidth."""
    cases = []
    n, k = 2048, 8192
    dense = torch.randn(n, k, device="cuda", dtype=dtype) / math.sqrt(k)
    for bits in (4, 8):
        qw = kernels.quantize_rtn(dense, bits, 32 if bits == 4 else 128)
        for m in (1, 8, 32):
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            cases.append(Case(f"w{bits}a16 linear M={m} {n}x{k}", lambda x=x, qw=qw: kernels.linear(x, qw),
                              lambda x=x: F.linear(x, dense), "F.linear bf16 (dense)",
                              bytes=qw.nbytes + x.numel() * x.element_size() + m * n * x.element_size()))
    return cases


# (name, N, K) of the projections a decode step reads: Llama-3.2-1B and SmolLM2-135M (fused QKV, gate+up)
DECODE_SHAPES = [("1B qkv", 3072, 2048), ("1B o", 2048, 2048), ("1B gate_up", 16384, 2048), ("1B down", 2048, 8192),
                 ("SmolLM2 qkv", 960, 576), ("SmolLM2 gate_up", 3072, 576), ("SmolLM2 down", 576, 1536)]


def decode_gemm_cases(dtype=torch.bfloat16) -> list[Case]:
    """Decode-shaped dense GEMMs (M = 1, 8, 32): kernels.linear takes the split-K kernel or cuBLAS, whichever
    its tuner timed faster for the shape (listed under the table); the rate is the weight read against
    copy bandwidth (issue 13 asks for >= 80% at these shapes)."""
    cases = []
    for name, n, k in DECODE_SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=dtype) / math.sqrt(k)
        for m in (1, 8, 32):
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            cases.append(Case(f"decode linear {name} M={m} {n}x{k}", lambda x=x, w=w: kernels.linear(x, w),
                              lambda x=x, w=w: F.linear(x, w), "F.linear (cuBLAS)",
                              bytes=(w.numel() + x.numel() + m * n) * w.element_size()))
    return cases


def decode_choices() -> str:
    """What the decode GEMM's tuner chose per shape (split-K tile or cuBLAS)."""
    from kernels.decode_gemm import DECODE_TUNER

    lines = [f"- `{key}`: {'cuBLAS' if c.kwargs.get('CUBLAS') else c}" for key, c in sorted(DECODE_TUNER._memo.items())]
    return "Decode GEMM choices (tuned at first use):\n\n" + "\n".join(lines) if lines else ""


def rotary_case(dtype=torch.bfloat16, tokens=16384, hq=32, hkv=8, dim=128) -> Case:
    q = torch.randn(tokens, hq, dim, device="cuda", dtype=dtype)
    k = torch.randn(tokens, hkv, dim, device="cuda", dtype=dtype)
    cache = kernels.rotary_cos_sin_cache(dim, 8192).cuda()
    pos = torch.randint(0, 8192, (tokens,), device="cuda")
    return Case(f"rotary neox bf16 T{tokens} {hq}:{hkv} D{dim}", lambda: kernels.rotary(q, k, pos, cache),
                lambda: kernels.rope.rotary_ref(q, k, pos, cache), "torch (vectorised)",
                bytes=2 * (q.numel() + k.numel()) * q.element_size())


def run_case(case: Case, quick: bool) -> Row:
    case.ours()  # compile / autotune outside the timing
    return Row(case, bench(case.ours, quick), bench(case.baseline, quick))


def format_table(rows: list[Row], copy_gbs: float, mm_tflops: float) -> str:
    lines = ["| kernel | ours ms | rate | of ceiling | baseline | baseline ms | speedup |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        c = r.case
        if c.flops:
            rate, frac = f"{c.flops / r.ms / 1e9:.0f} TFLOP/s", c.flops / r.ms / 1e9 / mm_tflops
        else:
            rate, frac = f"{c.bytes / r.ms / 1e6:.0f} GB/s", c.bytes / r.ms / 1e6 / copy_gbs
        lines.append(f"| {c.name} | {r.ms:.3f} | {rate} | {frac:.0%} | {c.baseline_name} | {r.base_ms:.3f} | {r.base_ms / r.ms:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--output", help="markdown file (default benchmarks/results/kernels-<gpu>.md)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py: no CUDA device here; the kernels are timed on a GPU only. Nothing to do.")
        return 0
    import triton
    from tqdm import tqdm

    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name()
    copy_gbs, mm_tflops = ceilings(args.quick)
    factories = [attention_case, window_cases, paged_case, paged_window_case, norm_cases, gemm_cases,
                 decode_gemm_cases, quant_gemm_cases, moe_cases, rotary_case]
    rows = []
    for make in tqdm(factories, desc="kernels"):
        made = make()
        for case in made if isinstance(made, list) else [made]:
            rows.append(run_case(case, args.quick))
        torch.cuda.empty_cache()
    header = (f"# Kernel benchmarks on {gpu}\n\n{datetime.date.today()} · torch {torch.__version__} · triton "
              f"{triton.__version__} · CUDA {torch.version.cuda} · {platform.node()}\n\n"
              f"Measured ceilings: copy {copy_gbs:.0f} GB/s (read + write), bf16 matmul {mm_tflops:.0f} TFLOP/s.\n"
              f"Times are `triton.testing.do_bench` medians.\n\n")
    slug = "".join(ch if ch.isalnum() else "-" for ch in gpu.lower()).strip("-")
    path = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"kernels-{slug}.md")
    publish(header + format_table(rows, copy_gbs, mm_tflops) + "\n\n" + decode_choices(), path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
