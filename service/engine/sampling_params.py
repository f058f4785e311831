"""What a request asks of generation: the engine-side twin of the OpenAI request fields."""
from __future__ import annotations

from dataclasses import dataclass

from .grammar import GrammarSpec

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no limit
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top alternatives per token (0: only the chosen token)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    # beam search (vLLM's extras): beam_width beams, the best n returned
    use_beam_search: bool = False
    beam_width: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False  # True, False (heuristic) or "never", as transformers
    # structured outputs: the output must match this grammar (see grammar.py)
    grammar: GrammarSpec | None = None
    # vLLM's extras: no EOS / stop token before min_tokens; token sequences never generated
    min_tokens: int = 0
    bad_words_token_ids: tuple[tuple[int, ...], ...] = ()
    # vLLM's extras: logprobs of the prompt tokens (top alternatives per position); scheduling priority
    # (lower runs first)
    prompt_logprobs: int | None = None
    priority: int = 0
    # encoder-decoders: tokens the decoder is given after its start token, as transformers' forced_bos_token_id
    # forces them (a translation model's target language); not returned, counted in beam lengths as transformers does
    forced_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        checks = [
            (self.n >= 1, "n must be at least 1"),
            (self.max_tokens >= 1, "max_tokens must be at least 1"),
            (self.temperature >= 0, "temperature must be non-negative"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (-1 <= self.top_k <= INT64_MAX, "top_k must be -1, 0 (no limit) or a positive 64-bit integer"),
            (self.seed is None or INT64_MIN <= self.seed <= INT64_MAX, "seed must be a 64-bit signed integer"),
            (self.beam_width >= 1, "best_of must be at least 1"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (self.repetition_penalty > 0, "repetition_penalty must be positive"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be in [0, 20]"),
            (not self.use_beam_search or self.beam_width >= self.n, "best_of (beam width) must be at least n"),
            (not self.use_beam_search or not self.stop, "stop strings are not supported with beam search"),
            (not self.use_beam_search or self.logprobs is None, "logprobs are not supported with beam search"),
            (0 <= self.min_tokens <= self.max_tokens, "min_tokens must be in [0, max_tokens]"),
            (not self.use_beam_search or self.grammar is None, "structured outputs are not supported with beam search"),
            (self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20, "prompt_logprobs must be in [0, 20]"),
            (all(self.bad_words_token_ids), "bad_words must not be empty"),
            (self.early_stopping in (True, False, "never"), "early_stopping must be true, false or 'never'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def max_stop_len(self) -> int:
        return max((len(s) for s in self.stop), default=0)
