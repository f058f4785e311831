"""Engine configuration."""
from __future__ import annotations

from dataclasses import dataclass

GiB = 1 << 30


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 64  # sequences decoded together in one step
    max_num_batched_tokens: int = 2048  # tokens (prefill chunks + decodes) in one step
    block_size: int = 16  # tokens per KV-cache block
    kv_cache_memory: int | None = None  # bytes for the KV cache; None: 1 GiB on CPU, 90% of free memory on CUDA
    max_model_len: int | None = None  # cap on prompt + output tokens; None: the model's own
    max_waiting_requests: int = 1024  # queue bound; more is refused (HTTP 429)
    enable_prefix_caching: bool = True
    max_n: int = 16  # largest n / best_of one request may ask for (vLLM-like); bounds a request's sequences
    # "fcfs": arrival order; "priority": lowest request priority first (then arrival), and the highest is
    # preempted first (vLLM's --scheduling-policy)
    scheduling_policy: str = "fcfs"
    # decode steps through CUDA graphs (cuda_graphs.py): "auto" on CUDA for decoder-only models, "off"
    # (--enforce-eager), or "padded": the graphs' padded static buffers without capture (tests on CPU)
    cuda_graphs: str = "auto"
    # compile, tune and capture everything before serving (warmup.py): "auto" on CUDA, "on", "off"
    warmup: str = "auto"

    def __post_init__(self):
        if self.block_size not in (16, 32):
            raise ValueError(f"block_size must be 16 or 32, got {self.block_size}")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduling_policy must be 'fcfs' or 'priority', got {self.scheduling_policy!r}")
        if self.cuda_graphs not in ("auto", "off", "padded"):
            raise ValueError(f"cuda_graphs must be 'auto', 'off' or 'padded', got {self.cuda_graphs!r}")
        if self.warmup not in ("auto", "on", "off"):
            raise ValueError(f"warmup must be 'auto', 'on' or 'off', got {self.warmup!r}")
        if self.max_n < 1:
            raise ValueError("max_n must be at least 1")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError("kv_cache_memory must be positive")
