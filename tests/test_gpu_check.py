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
