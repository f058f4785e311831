"""Shared fixtures: the real default models, loaded once per session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from models import default_model_sources, load_model  # noqa: E402

SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _require(name: str) -> str:
    sources = default_model_sources()
    if name not in sources:
        pytest.fail(f"{name} is not installed: `make test` installs it (see Makefile MODEL_PACKAGES)")
    return sources[name]


@pytest.fixture(scope="session")
def smollm_path():
    return _require(SMOLLM)


@pytest.fixture(scope="session")
def minilm_path():
    return _require(MINILM)


@pytest.fixture(scope="session")
def smollm(smollm_path):
    return load_model(SMOLLM)
