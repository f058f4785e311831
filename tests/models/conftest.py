"""Model-test fixtures: transformers' view of the same weights, and a real tokenizer for random models."""
from __future__ import annotations

import os

import pytest
import torch

from ..conftest import MINILM, SMOLLM  # noqa: F401  (re-exported for the tests)


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
