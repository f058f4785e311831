"""Engine fixtures shared by the engine tests."""
from __future__ import annotations

import os

import pytest
import torch

from service.engine import EngineConfig, LLMEngine


@pytest.fixture(scope="module")
def engine(smollm):
    """An engine on SmolLM2's dense weights with the default config (one per test module)."""
    return LLMEngine(smollm, EngineConfig())


def chat_ids(loaded, text: str) -> list[int]:
    """Token ids of a one-turn chat prompt for ``loaded``."""
    tok = loaded.tokenizer
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]), add_special_tokens=False)


@pytest.fixture(scope="session")
def shrunk_smollm2_path(tmp_path_factory) -> str:
    """SmolLM2-135M's layer shapes (hidden 576, 9:3 heads of 64, FFN 1536) in 2 layers, a 1,024-word vocabulary
    and random weights: built from transformers and tokenizers alone, as the GPU image can."""
    from transformers import AutoModelForCausalLM

    from benchmarks.synthetic import config, word_tokenizer

    folder = tmp_path_factory.mktemp("smollm2-2-layers")
    cfg = config("smollm2-135m")
    cfg.num_hidden_layers, cfg.vocab_size, cfg.max_position_embeddings = 2, 1024, 512
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    word_tokenizer(cfg.vocab_size).save(os.path.join(folder, "tokenizer.json"))
    return str(folder)
