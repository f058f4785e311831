"""``make gpu-check``: everything a GPU slot should prove, as one command that prints one table.

    python benchmarks/gpu_check.py [--out DIR] [--dry-run]

Steps (each a subprocess, so one failing does not hide the others; the exit status is non-zero if any did):
1. the CUDA kernel tests (pytest ``-m triton`` on CUDA; with pytest-xdist, one worker per core). Every tile
   config is proven by the AOT compile test on CPU, so here the GEMM tests skip their every-config cases and
   run each kernel's first candidate without timing the others (``KERNELSERVE_TUNING=off``);
2. model parity on the device (tests/models/test_device_parity.py), CUDA graphs vs eager
   (tests/engine/test_cuda_graphs.py) and the sampler on the device (tests/engine/test_sampler.py: no
   implicit synchronisation, the CPU's tokens, the distribution);
3. the serving benchmark (benchmarks/gpu_serving.py);
4. the kernel benchmark (benchmarks/kernels.py).
Results (markdown tables, pytest logs) go to ``--out`` (default ``$OUT`` when set, else
benchmarks/results/gpu/), the summary table to stdout and ``summary.md``. Needs only what a bare GPU image
has: torch, Triton, transformers, tokenizers, pytest (no model downloads, no gguf, no web framework).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def steps(out: str) -> list[tuple[str, list[str]]]:
    py = sys.executable
    xdist = ["-n", str(min(16, os.cpu_count() or 1))] if importlib.util.find_spec("xdist") else []
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    return [
        ("CUDA kernel tests", ["env", "KERNELSERVE_TUNING=off", *pytest, "-m", "triton", *xdist, "tests/kernels"]),
        ("model parity, CUDA graphs, sampler", pytest + ["tests/models/test_device_parity.py",
                                                         "tests/engine/test_cuda_graphs.py",
                                                         "tests/engine/test_sampler.py"]),
        ("serving benchmark", [py, "benchmarks/gpu_serving.py", "--output", os.path.join(out, "gpu-serving.md")]),
        ("kernel benchmark", [py, "benchmarks/kernels.py", "--quick", "--output", os.path.join(out, "kernels.md")]),
    ]


def run(name: str, command: list[str], out: str) -> tuple[str, float, int]:
    log_path = os.path.join(out, name.replace(" ", "-").replace("+", "and") + ".log")
    env = {**os.environ, "KERNELSERVE_GPU_CHECK": "1", "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - start
    tail = open(log_path).read().strip().splitlines()[-1:] or [""]
    print(f"[{name}] exit {code} in {elapsed:.0f} s: {tail[0][:160]}", flush=True)
    return tail[0][:120], elapsed, code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "benchmarks", "results", "gpu"))
    parser.add_argument("--dry-run", action="store_true", help="print the steps and exit")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    plan = steps(args.out)
    if args.dry_run:
        for name, command in plan:
            print(f"{name}: {' '.join(command)}")
        return 0
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    rows, failed = [], 0
    for name, command in plan:
        last, elapsed, code = run(name, command, args.out)
        failed += code != 0
        rows.append(f"| {name} | {'ok' if code == 0 else f'FAILED ({code})'} | {elapsed:.0f} | {last} |")
    summary = "\n".join([f"# make gpu-check on {device}", "",
                         f"{datetime.datetime.now():%Y-%m-%d %H:%M} · torch {torch.__version__}", "",
                         "| step | result | seconds | last line |", "|---|---|---:|---|", *rows])
    for name in ("gpu-serving.md", "kernels.md"):
        path = os.path.join(args.out, name)
        if os.path.exists(path):
            summary += "\n\n" + open(path).read()
    print(summary)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
