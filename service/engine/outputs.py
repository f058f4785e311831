"""What the engine reports back: incremental outputs per request."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class CompletionOutput:
    """New text and tokens of one sequence since its previous output."""
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_reason: str | int | None = None  # the stop string or token that ended it

    @staticmethod
    def empty(index: int, with_logprobs: bool) -> "CompletionOutput":
        return CompletionOutput(index, "", [], [] if with_logprobs else None)


@dataclass
class RequestTimes:
    """Monotonic timestamps of a request's life, for latency metrics."""
    arrival: float
    scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    times: RequestTimes | None = None
    num_generated_tokens: int = 0  # across the request's sequences, so far
    error: str | None = None  # set when the engine failed this request (it is then finished)
    client_error: bool = False  # the failure follows from what the request asked (HTTP 400), not a fault
    error_param: str | None = None  # with client_error: the request field responsible
    # prompt_logprobs, in the first output after the prompt is computed (once): per prompt token after the first,
    # (logprob, rank, top alternatives)
    prompt_logprobs: list | None = None


@dataclass
class EmbeddingOutput:
    request_id: str
    embeddings: list[list[float]]
    prompt_tokens: int
