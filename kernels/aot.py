"""Ahead-of-time compilation of every kernel variant for NVIDIA GPUs, without a GPU.

``python -m kernels.aot [--arch 90 80]`` compiles each kernel in every block
configuration its launcher or autotuner can pick, the way the JIT would
(16-byte divisibility hints on pointers and on strides), and prints shared
memory, registers and spills per variant (registers and spills come from
``ptxas -v``, Triton's bundled assembler). The interpreter cannot catch what
only the compiler rejects — dot sizes under 16, non-power-of-2 blocks, shared
memory overflow — so tests/kernels/test_aot_compile.py runs this on every CI run.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Iterator

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import decode_gemm, flash_attention, gemm, moe, norms, paged, quant_gemm, rope

# usable shared memory per block (opt-in maximum)
SHARED_LIMIT = {90: 232_448, 80: 166_912}
DTYPES = ("fp32", "fp16", "bf16")
DTYPE_OF = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class Variant:
    """One compilable specialisation: kernel, argument types/values and launch options."""
    name: str
    fn: object  # triton.JITFunction
    args: dict  # name -> "*dtype" (pointer), "i32"/"i64"/"fp32" (runtime scalar) or a constexpr value
    num_warps: int = 4
    num_stages: int = 3


@dataclass(frozen=True)
class Compiled:
    variant: Variant
    arch: int
    shared: int
    registers: int
    spills: int


def _source(v: Variant) -> ASTSource:
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(v.fn.arg_names):
        value = v.args[name]
        if i in v.fn.constexprs:
            signature[name] = "constexpr"
            constexprs[name] = value
            continue
        signature[name] = value
        # as the JIT specialises: 16-byte aligned pointers, strides divisible by 16
        if value.startswith("*") or name.startswith("stride"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(fn=v.fn, signature=signature, constexprs=constexprs, attrs=attrs)


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill bytes) as ``ptxas -v`` reports them for the kernel."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path  # the assembler Triton itself uses for this arch
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        log = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", path, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    registers = max((int(r) for r in re.findall(r"Used (\d+) registers", log)), default=0)
    spills = sum(int(a) + int(b) for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log))
    return registers, spills


def compile_variant(v: Variant, arch: int) -> Compiled:
    kernel = triton.compile(_source(v), target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": v.num_warps, "num_stages": v.num_stages})
    registers, spills = _ptxas_usage(kernel.asm["ptx"], arch)
    return Compiled(v, arch, kernel.metadata.shared, registers, spills)


def _attention_variants() -> Iterator[Variant]:
    fn = flash_attention._attention_kernel
    for (block_d, torch_dtype, bias), cfg in flash_attention.all_attention_configs().items():
        dt = next(k for k, v in DTYPE_OF.items() if v == str(torch_dtype).split(".")[-1])
        for head_dim in sorted({block_d, 80 if block_d == 128 else block_d}):
            for causal, window, softcap in ((True, False, False), (False, False, False), (True, True, False),
                                            (False, True, False), (True, True, True), (True, False, True)):
                if bias and (not causal or window or softcap):
                    continue  # bias variants: the causal kernel (the others differ only in masks)
                args = {n: "i32" for n in fn.arg_names if n.startswith("stride")}
                args.update(Q=f"*{dt}", K=f"*{dt}", V=f"*{dt}", O=f"*{dt}", cu_seqlens_q="*i32",
                            cu_seqlens_k="*i32", total_q="i32", total_k="i32", Bias="*fp32", qk_scale="fp32",
                            bias_radius="i32", window_left="i32", window_right="i32", softcap="fp32", GROUP=4,
                            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                            CAUSAL=causal, HAS_BIAS=bias, WINDOW=window, SOFTCAP=softcap)
                yield Variant(f"attention d={head_dim} {dt} causal={causal} bias={bias} window={window} "
                              f"softcap={softcap}", fn, args, cfg.num_warps, cfg.num_stages)


def _paged_variants() -> Iterator[Variant]:
    fn, reduce_fn = paged._paged_attention_kernel, paged._paged_attention_reduce_kernel
    for dt in DTYPES:
        for head_dim in (64, 80, 128, 256):
            block_d = triton.next_power_of_2(head_dim)
            for block_size in paged.BLOCK_SIZES:
                # GROUP_PAD 16 (any group <= 16) with the relative bias, 32, and Gemma's window + soft-capping
                for group, masks in ((4, "bias"), (32, ""), (4, "window+softcap")):
                    args = {n: "i32" for n in fn.arg_names if n.startswith("stride")}
                    args.update(Q=f"*{dt}", K_cache=f"*{dt}", V_cache=f"*{dt}", block_tables="*i32",
                                seq_lens="*i32", O=f"*{dt}", O_part="*fp32", M_part="*fp32", L_part="*fp32",
                                Bias="*fp32", bias_radius="i32", num_blocks="i32", table_width="i32",
                                window_left="i32", softcap="fp32", HAS_BIAS=masks == "bias",
                                WINDOW="window" in masks, SOFTCAP="softcap" in masks,
                                qk_scale="fp32", GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)),
                                HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_SIZE=block_size,
                                BLOCK_N=paged.paged_block_n(head_dim, getattr(torch, DTYPE_OF[dt])),
                                PARTITION=paged.PARTITION, NUM_SPLITS=8)
                    warps = paged.paged_num_warps(args["GROUP_PAD"], block_d)
                    yield Variant(f"paged_attention d={head_dim} {dt} bs={block_size} group={group} {masks}".rstrip(),
                                  fn, args, warps, 2)
            args = dict(O=f"*{dt}", O_part="*fp32", M_part="*fp32", L_part="*fp32", stride_ob="i32",
                        stride_oh="i32", HEAD_DIM=head_dim, BLOCK_D=block_d, NUM_SPLITS=8, SPLITS_PAD=8)
            yield Variant(f"paged_attention_reduce {dt}", reduce_fn, args, 4, 2)
            store = paged._store_kv_kernel
            args = {n: "i32" for n in store.arg_names if n.startswith("stride")}
            args.update(K=f"*{dt}", V=f"*{dt}", K_cache=f"*{dt}", V_cache=f"*{dt}", slot_mapping="*i64", num_slots="i32",
                        NUM_HEADS=8, HEADS_PAD=8, HEAD_DIM=80, BLOCK_D=128, BLOCK_SIZE=16)
            yield Variant(f"store_kv {dt}", store, args, 4, 3)


def _norm_variants() -> Iterator[Variant]:
    fn = norms._norm_kernel
    for dt in DTYPES:
        for log2 in range(0, 15):  # every row width bucket up to MAX_ROW
            block_n = 2 ** log2
            for rms in (True, False):
                args = dict(X=f"*{dt}", R=f"*{dt}", W=f"*{dt}", B=f"*{dt}", Y=f"*{dt}", H=f"*{dt}",
                            stride_x="i32", stride_r="i32", stride_y="i32", stride_h="i32", N="i32", eps="fp32",
                            BLOCK_N=block_n, RMS=rms, HAS_RESIDUAL=True, HAS_BIAS=not rms)
                yield Variant(f"{'rms' if rms else 'layer'}_norm n={block_n} {dt}", fn, args, norms.norm_num_warps(block_n), 3)


def _gemm_variants() -> Iterator[Variant]:
    for fn, table, gated in ((gemm._linear_kernel, gemm.LINEAR_CONFIGS, False), (gemm._gated_kernel, gemm.GATED_CONFIGS, True)):
        for dt in DTYPES:
            for cfg in gemm.configs_for(table, getattr(torch, DTYPE_OF[dt])):
                args = dict(X=f"*{dt}", W=f"*{dt}", Y=f"*{dt}", M="i32", N="i32", K="i32", M_BUCKET="i32",
                            stride_xm="i32", stride_wn="i32", stride_ym="i32", ACT=3, **cfg.kwargs)
                if not gated:
                    args.update(Bias=f"*{dt}", HAS_BIAS=True)
                name = "gated" if gated else "linear"
                tiles = "x".join(str(cfg.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                yield Variant(f"{name} {tiles} w{cfg.num_warps} s{cfg.num_stages} {dt}", fn, args, cfg.num_warps, cfg.num_stages)


def _decode_gemm_variants() -> Iterator[Variant]:
    for dt in DTYPES:
        for cfg in decode_gemm.decode_configs(getattr(torch, DTYPE_OF[dt])):
            for block_m in (16, 32, 64):  # rows padded: 1-16, 17-32, 33-64
                args = dict(X=f"*{dt}", W=f"*{dt}", P="*fp32", M="i32", N="i32", K="i32", K_PER_SPLIT="i32",
                            stride_xm="i32", stride_wn="i32", BLOCK_M=block_m, BLOCK_N=cfg.kwargs["BLOCK_N"],
                            BLOCK_K=cfg.kwargs["BLOCK_K"])
                tiles = f"{block_m}x{cfg.kwargs['BLOCK_N']}x{cfg.kwargs['BLOCK_K']}"
                yield Variant(f"linear_decode {tiles} w{cfg.num_warps} s{cfg.num_stages} {dt}",
                              decode_gemm._splitk_kernel, args, cfg.num_warps, cfg.num_stages)
        for splits_pad in (2, 4, 8, 16):
            args = dict(P="*fp32", Bias=f"*{dt}", Y=f"*{dt}", M="i32", N="i32", SPLITS="i32", stride_ym="i32",
                        HAS_BIAS=True, ACT=4, BLOCK_N=128, SPLITS_PAD=splits_pad)
            yield Variant(f"linear_decode reduce {splits_pad} {dt}", decode_gemm._splitk_reduce_kernel, args, 4, 1)


def _quant_gemm_variants() -> Iterator[Variant]:
    fn = quant_gemm._quant_linear_kernel
    for dt in DTYPES:
        for bits, group in ((4, 32), (4, 128), (8, 32), (8, 16)):  # GGUF Q4_*, RTN int4, Q8_0, Q6_K-like
            for cfg in quant_gemm.quant_configs(getattr(torch, DTYPE_OF[dt]), bits, group):
                args = dict(X=f"*{dt}", Q="*u8", S="*fp32", O="*fp32", Bias=f"*{dt}", Y=f"*{dt}", M="i32", N="i32",
                            K="i32", M_BUCKET="i32", stride_xm="i32", stride_qn="i32", stride_sn="i32",
                            stride_ym="i32", BITS=bits, GROUP=group, HAS_BIAS=True, ACT=4, **cfg.kwargs)
                tiles = "x".join(str(cfg.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
                yield Variant(f"quant_linear w{bits} g{group} {tiles} w{cfg.num_warps} s{cfg.num_stages} {dt}", fn,
                              args, cfg.num_warps, cfg.num_stages)


def _rotary_variants() -> Iterator[Variant]:
    fn = rope._rotary_kernel
    for dt in DTYPES:
        for half in (16, 32, 40, 64):
            for neox in (True, False):
                args = dict(Q=f"*{dt}", K=f"*{dt}", positions="*i64", cos_sin_cache="*fp32", stride_qt="i32",
                            stride_qh="i32", stride_kt="i32", stride_kh="i32", stride_cache="i32", max_position="i32",
                            HQ=32, HQ_PAD=32, HKV=8, HKV_PAD=8, HALF=half, HALF_PAD=triton.next_power_of_2(half),
                            IS_NEOX=neox)
                yield Variant(f"rotary half={half} {dt} neox={neox}", fn, args, 4, 3)


def _moe_variants() -> Iterator[Variant]:
    fn = moe._moe_gemm_kernel
    for dt in DTYPES:
        torch_dtype = getattr(torch, DTYPE_OF[dt])
        untuned = {moe.moe_config(slots, 8, torch_dtype) for slots in (8, 4096)}  # decode- and prefill-shaped
        tuned = {moe._moe_config_of(c) for c in gemm.configs_for(moe.MOE_CONFIGS, torch_dtype)}
        for cfg in sorted(untuned | tuned, key=lambda c: (c.block_m, c.block_n, c.block_k)):
            for gated in (True, False):  # gate/up with the activation; down with the routing weight
                args = dict(A=f"*{dt}", W=f"*{dt}", C=f"*{dt}", sorted_slots="*i32", tile_experts="*i32",
                            routing_weights="*fp32", num_slots="i32", N="i32", Kdim="i32", stride_am="i32",
                            stride_we="i32", stride_wn="i32", stride_cm="i32", TOP_K=2, GATED=gated,
                            ACT=4 if gated else 0, SLOT_ROWS=not gated, MUL_WEIGHT=not gated, BLOCK_M=cfg.block_m,
                            BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
                name = "gate_up" if gated else "down"
                yield Variant(f"moe {name} {cfg.block_m}x{cfg.block_n}x{cfg.block_k} w{cfg.num_warps} {dt}", fn, args,
                              cfg.num_warps, cfg.num_stages)


def all_variants() -> list[Variant]:
    """Every kernel specialisation the launchers can produce (dtype x config)."""
    return [*_attention_variants(), *_paged_variants(), *_norm_variants(), *_gemm_variants(), *_decode_gemm_variants(),
            *_quant_gemm_variants(), *_moe_variants(),
            *_rotary_variants()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile every kernelserve kernel for sm_90 / sm_80 and report resources.")
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(SHARED_LIMIT))
    parser.add_argument("--filter", default="", help="only variants whose name contains this text")
    parser.add_argument("--markdown", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    failures = 0
    rows = ["| variant | arch | shared B | registers | spill B |", "|---|---:|---:|---:|---:|"]
    print(f"{'variant':60s} {'arch':>4s} {'shared B':>9s} {'regs':>5s} {'spill B':>7s}")
    for v in (v for v in all_variants() if args.filter in v.name):
        for arch in args.arch:
            c = compile_variant(v, arch)
            fits = c.shared <= SHARED_LIMIT[arch]
            failures += not fits
            print(f"{v.name:60s} {arch:4d} {c.shared:9d} {c.registers:5d} {c.spills:7d}{'' if fits else '  OVER'}")
            rows.append(f"| {v.name} | sm_{arch} | {c.shared} | {c.registers} | {c.spills} |")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"# Ahead-of-time compile report (triton {triton.__version__})\n\n"
                    "Made by `python -m kernels.aot --markdown ...` on a machine without a GPU.\n\n"
                    + "\n".join(rows) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
