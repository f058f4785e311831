"""Load SmolLM2-135M-Instruct from its GGUF: kernelserve (dequantised to fp32, and kept quantized) vs transformers.

    python benchmarks/model_load.py [--repeats 3]

Each load runs in a fresh subprocess (so neither warms the other's caches of
Python modules or pages) and reports wall time of the load call and the peak
RSS it added over the process after imports, against the fp32 weight size.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r"""
import json, os, resource, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
which, path = sys.argv[1], sys.argv[2]
if which == "transformers":
    from transformers import AutoModelForCausalLM
else:
    from models import load_model
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if which == "transformers":
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())
elif which == "kernelserve":
    model = load_model(path, dtype="float32", quantization="none").model
    params = sum(p.numel() for p in model.parameters())
else:  # the GGUF's blocks kept, bf16 for the rest: what the model holds is its parameters and packed buffers
    model = load_model(path, dtype="bfloat16").model
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if which == "kernelserve-quantized":
    held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
else:
    held = params * 4 / 2**20
print(json.dumps({"seconds": seconds, "added_rss_mb": (peak - base) / 1024, "weights_mb": held}))
"""


def measure(which: str, path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, which, path], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": ROOT})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "model-load.md"))
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    from benchmarks.report import publish
    from models import default_model_sources

    path = default_model_sources()["HuggingFaceTB/SmolLM2-135M-Instruct"]
    rows = {}
    for which in ("transformers", "kernelserve", "kernelserve-quantized"):  # order noted
        runs = [measure(which, path) for _ in range(args.repeats)]
        rows[which] = {"seconds": statistics.median(r["seconds"] for r in runs),
                       "added_rss_mb": statistics.median(r["added_rss_mb"] for r in runs),
                       "weights_mb": runs[0]["weights_mb"]}
    t, k = rows["transformers"], rows["kernelserve"]
    q = rows["kernelserve-quantized"]
    lines = ["# Loading SmolLM2-135M-Instruct (GGUF Q4_1)", "",
             f"{platform.node()} · {os.cpu_count()} cores · median of {args.repeats} fresh processes each", "",
             "| loader | weights held | load s | weights MiB | added peak RSS MiB | RSS / weights |",
             "|---|---|---:|---:|---:|---:|"]
    held = {"transformers": "fp32, dequantised", "kernelserve": "fp32, dequantised",
            "kernelserve-quantized": "Q4_1 projections kept + bf16 rest"}
    for name, r in rows.items():
        lines.append(f"| {name} | {held[name]} | {r['seconds']:.2f} | {r['weights_mb']:.0f} | {r['added_rss_mb']:.0f} | "
                     f"{r['added_rss_mb'] / r['weights_mb']:.2f}x |")
    lines += ["", f"kernelserve / transformers load time: {k['seconds'] / t['seconds']:.2f}x (target < 2x); "
              f"fp32 weights {k['weights_mb']:.0f} MiB; kernelserve peak RSS added {k['added_rss_mb'] / k['weights_mb']:.2f}x "
              f"the weights (target < 1.5x); kept quantized: {q['added_rss_mb'] / q['weights_mb']:.2f}x what the model "
              f"holds ({q['weights_mb']:.0f} MiB), load {q['seconds']:.2f} s"]
    publish("\n".join(lines), args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
