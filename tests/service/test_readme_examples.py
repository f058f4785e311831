"""The README's client examples (tools and structured outputs) run as written against a live server."""
from __future__ import annotations

import pathlib
import re

import pytest

from ..conftest import API_KEY

pytestmark = pytest.mark.slow
ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_readme_client_examples_run(server, capsys):
    text = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "client." in b]
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:  # one namespace: later examples use the first one's client
        code = block.replace("http://127.0.0.1:8000/v1", server.url + "/v1").replace('"unused"', repr(API_KEY))
        exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "get_weather {" in out and re.search(r"^(yes|no)$", out, re.M), out
