"""The README's kernel example runs as written."""
from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md should carry a runnable python example"
    for block in blocks:
        if "client." in block:  # a client example: tests/service/test_readme_examples.py runs those
            continue
        exec(compile(block, "README.md", "exec"), {})
    assert "torch.Size([8, 8, 64])" in capsys.readouterr().out
