"""A short, bounded headless Locust run against the live server finishes with zero failures."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from ..conftest import API_KEY, ROOT

pytestmark = pytest.mark.slow


def test_locust_smoke_run_has_no_failures(server, tmp_path):
    env = {**os.environ, "KERNELSERVE_API_KEY": API_KEY, "LOCUST_MAX_TOKENS": "16"}
    prefix = tmp_path / "locust"
    subprocess.run([sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "benchmarks", "locustfile.py"),
                    "--host", server.url, "--headless", "-u", "4", "-r", "4", "-t", "15s", "--stop-timeout", "20",
                    "--csv", str(prefix), "--html", str(tmp_path / "report.html"), "--only-summary"],
                   env=env, check=True, capture_output=True, timeout=120)
    rows = {r["Name"]: r for r in csv.DictReader(open(f"{prefix}_stats.csv"))}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 0 and int(total["Failure Count"]) == 0, total
    assert "TTFT" in rows and "/v1/chat/completions (stream)" in rows, sorted(rows)
    assert (tmp_path / "report.html").exists()


def test_serving_benchmark_reports_and_plots(server, tmp_path):
    out = tmp_path / "result.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.serve", "--base-url", server.url, "--num-prompts", "6",
                          "--max-concurrency", "3", "--max-tokens", "8", "--ignore-eos", "--api-key", API_KEY,
                          "--label", "kernelserve", "--save-result", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    import json

    result = json.loads(out.read_text())
    assert result["successful_requests"] == 6 and result["failed_requests"] == 0
    assert result["total_output_tokens"] == 6 * 8
    assert result["ttft"]["median_ms"] > 0 and result["output_throughput"] > 0
    assert "Output token throughput" in run.stdout
    png = tmp_path / "plot.png"
    subprocess.run([sys.executable, "-m", "benchmarks.serve", "--plot", str(png), str(out)], cwd=ROOT, check=True,
                   capture_output=True)
    assert png.stat().st_size > 1000
    refused = subprocess.run([sys.executable, "-m", "benchmarks.serve", "--base-url", "http://192.0.2.1:8000",
                              "--num-prompts", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "only servers on this machine" in refused.stderr
