"""Fixtures: the real SmolLM2 / MiniLM weights and small random models built from real configs."""
from __future__ import annotations

import os

import pytest
import torch

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


@pytest.fixture(scope="session")
def smollm_hf(smollm_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = os.path.dirname(smollm_path), os.path.basename(smollm_path)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=file)


@pytest.fixture(scope="session")
def byte_bpe_tokenizer(smollm):
    """A real byte-level BPE tokenizer (SmolLM2's) to save beside random decoder models."""
    return smollm.tokenizer
