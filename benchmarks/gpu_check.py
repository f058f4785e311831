"""``make gpu-check``: everything a GPU slot should prove, in steps that each fit one device command.

    python benchmarks/gpu_check.py [--steps 1,2] [--out DIR] [--dry-run]

Steps (each a subprocess with its own time limit, so one failing or hanging does not hide the others; the
exit status is non-zero if any did; ``summary.md`` is rewritten after every step, so a lease that ends early
still returns the steps done):
1. the CUDA kernel tests (pytest ``-m triton`` on CUDA; with pytest-xdist, one worker per core and one torch
   thread per worker). Every tile config is proven by the AOT compile test on CPU, so here the GEMM tests skip
   their every-config cases and run each kernel's first candidate without timing the others
   (``KERNELSERVE_TUNING=off``), except the bf16 split-K configs (more than one split, summed by the second
   kernel), which run here against a float64 reference;
2. model parity on the device (tests/models/test_device_parity.py), CUDA graphs vs the same padded buffers
   run eagerly (tests/engine/test_cuda_graphs.py) and the sampler on the device (tests/engine/test_sampler.py:
   no implicit synchronisation, the CPU's tokens, the distribution);
3. the serving benchmark (benchmarks/gpu_serving.py: compilations and tunings after ready on every row);
4. the kernel benchmark (benchmarks/kernels.py).
A 10-minute device command runs ``--steps 1,2`` or ``--steps 3,4`` (each pair under 5 minutes expected on a
16-core H100/H200 with cold caches). Results (markdown tables, pytest logs) go to ``--out`` (default ``$OUT``
when set, else benchmarks/results/gpu/), the summary table to stdout and ``summary.md``. Needs only what a
bare GPU image has: torch, Triton, transformers, tokenizers, pytest (no model downloads, no gguf, no web
framework); tests/test_gpu_check.py runs what of it the CPU can with those packages blocked.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Step:
    number: int
    name: str
    command: tuple[str, ...]
    timeout_s: int  # killed past this: the summary says TIMEOUT and the next step runs
    env: tuple[tuple[str, str], ...] = ()

    @property
    def log_name(self) -> str:  # the device tool returns only names of letters, digits, '.', '_' and '-'
        return f"step{self.number}-" + re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-") + ".log"


def steps(out: str) -> list[Step]:
    py = sys.executable
    workers = min(16, os.cpu_count() or 1)
    xdist = ("-n", str(workers)) if importlib.util.find_spec("xdist") else ()
    pytest = (py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=")
    one_thread = (("OMP_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1")) if xdist else ()
    return [
        Step(1, "CUDA kernel tests", (*pytest, "-m", "triton", *xdist, "tests/kernels"), 270,
             (("KERNELSERVE_TUNING", "off"), *one_thread)),
        Step(2, "model parity, CUDA graphs, sampler", (*pytest, "tests/models/test_device_parity.py",
                                                       "tests/engine/test_cuda_graphs.py",
                                                       "tests/engine/test_sampler.py"), 240),
        Step(3, "serving benchmark", (py, "benchmarks/gpu_serving.py", "--output",
                                      os.path.join(out, "gpu-serving.md")), 280),
        Step(4, "kernel benchmark", (py, "benchmarks/kernels.py", "--quick", "--output",
                                     os.path.join(out, "kernels.md")), 200),
    ]


def step_env(step: Step) -> dict:
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)  # prepended, not replaced
    return {**os.environ, "KERNELSERVE_GPU_CHECK": "1", "PYTHONPATH": path, "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", **dict(step.env)}


def run(step: Step, out: str) -> tuple[str, float, str]:
    """(last line of its log, seconds, result: ok / FAILED (code) / TIMEOUT)."""
    log_path = os.path.join(out, step.log_name)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(step.command, cwd=ROOT, env=step_env(step), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=step.timeout_s)
            result = "ok" if code == 0 else f"FAILED ({code})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the step and whatever it started (xdist workers)
            proc.wait()
            result = f"TIMEOUT ({step.timeout_s} s)"
    elapsed = time.perf_counter() - start
    lines = open(log_path, errors="replace").read().strip().splitlines()
    last = lines[-1][:120] if lines else ""
    print(f"[step {step.number}: {step.name}] {result} in {elapsed:.0f} s: {last}", flush=True)
    return last, elapsed, result


def summary(device: str, torch_version: str, rows: list[str], out: str) -> str:
    text = "\n".join([f"# make gpu-check on {device}", "",
                      f"{datetime.datetime.now():%Y-%m-%d %H:%M} · torch {torch_version}", "",
                      "| step | result | seconds | last line |", "|---|---|---:|---|", *rows])
    for name in ("gpu-serving.md", "kernels.md"):
        path = os.path.join(out, name)
        if os.path.exists(path):
            text += "\n\n" + open(path).read()
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text + "\n")
    return text


def parse_steps(text: str, known: list[Step]) -> list[Step]:
    wanted = {int(n) for n in text.split(",") if n.strip()}
    unknown = wanted - {s.number for s in known}
    if unknown:
        raise SystemExit(f"--steps: no step {sorted(unknown)} (there are {len(known)})")
    return [s for s in known if s.number in wanted]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="1,2,3,4", help="which steps, e.g. 1,2 (default: all)")
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "benchmarks", "results", "gpu"))
    parser.add_argument("--dry-run", action="store_true", help="print the steps and exit")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    plan = parse_steps(args.steps, steps(args.out))
    if args.dry_run:
        for step in plan:
            print(f"{step.number}. {step.name} (at most {step.timeout_s} s, log {step.log_name}): "
                  f"{' '.join(step.command)}")
        return 0
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    rows, failed = [], 0
    for step in plan:
        last, elapsed, result = run(step, args.out)
        failed += result != "ok"
        rows.append(f"| {step.number}. {step.name} | {result} | {elapsed:.0f} | {last} |")
        text = summary(device, torch.__version__, rows, args.out)  # after every step
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
