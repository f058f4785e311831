"""The issue's reproduction, through the server as `make serve` starts it (SmolLM2 Q4_1, bf16 on this CPU):
12 chat prompts sent one at a time and then all at once get the same text, greedy and seeded."""
from __future__ import annotations

import concurrent.futures

import pytest

from ..conftest import SMOLLM

pytestmark = pytest.mark.slow

TOPICS = ["the sea", "Paris", "a cat", "prime numbers", "rain", "bread", "the moon", "chess", "music", "trees",
          "rivers", "coffee"]


def body(topic: str, **sampling) -> dict:
    return {"model": SMOLLM, "messages": [{"role": "user", "content": f"Tell me about {topic} in two sentences."}],
            "max_tokens": 24, **sampling}


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.8, "top_p": 0.95, "seed": 1234}],
                         ids=["greedy", "seeded"])
def test_text_is_the_same_alone_and_batched(http, sampling):
    def ask(topic):
        return http.post("/v1/chat/completions", json=body(topic, **sampling)).json()["choices"][0]["message"]["content"]

    alone = [ask(t) for t in TOPICS]
    with concurrent.futures.ThreadPoolExecutor(len(TOPICS)) as pool:
        together = list(pool.map(ask, TOPICS))
    assert together == alone
