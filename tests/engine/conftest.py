"""Engine fixtures shared by the engine tests."""
from __future__ import annotations

import pytest

from service.engine import EngineConfig, LLMEngine


@pytest.fixture(scope="module")
def engine(smollm):
    """An engine on SmolLM2's dense weights with the default config (one per test module)."""
    return LLMEngine(smollm, EngineConfig())


def chat_ids(loaded, text: str) -> list[int]:
    """Token ids of a one-turn chat prompt for ``loaded``."""
    tok = loaded.tokenizer
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]), add_special_tokens=False)
