"""The inference engine: continuous batching over a paged KV cache. Never imports the HTTP layer."""
from .async_engine import AsyncEngine, EngineDead, QueueFull
from .config import EngineConfig
from .embedding import EmbeddingEngine, EncoderInput
from .engine import LLMEngine, RequestError
from .faults import RequestFailed
from .outputs import CompletionOutput, RequestOutput, TokenLogprob
from .sampling_params import SamplingParams

__all__ = ["AsyncEngine", "CompletionOutput", "EmbeddingEngine", "EncoderInput", "EngineConfig", "EngineDead", "LLMEngine",
           "QueueFull", "RequestError", "RequestFailed", "RequestOutput", "SamplingParams", "TokenLogprob"]
