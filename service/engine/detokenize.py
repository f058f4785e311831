"""Per-sequence text state: incremental detokenisation and stop strings across token boundaries."""
from __future__ import annotations

from dataclasses import dataclass

from models import IncrementalDetokenizer, Tokenizer

from .sampling_params import SamplingParams


@dataclass
class TextState:
    detokenizer: IncrementalDetokenizer
    params: SamplingParams
    text: str = ""  # everything decoded so far (may hold back a possible stop-string prefix)
    emitted: int = 0  # characters already handed out
    stop_reason: str | None = None

    @staticmethod
    def create(tokenizer: Tokenizer, prompt_ids: list[int], params: SamplingParams) -> "TextState":
        return TextState(IncrementalDetokenizer(tokenizer, prompt_ids, params.skip_special_tokens), params)

    def add_token(self, token_id: int) -> bool:
        """Decode one token; True when a stop string now ends the text (it is cut off)."""
        return self._add_text(self.detokenizer.step(token_id))

    def finish(self) -> None:
        self._add_text(self.detokenizer.flush())

    def _add_text(self, delta: str) -> bool:
        if not delta or self.stop_reason is not None:
            return self.stop_reason is not None
        start = max(0, len(self.text) - self.params.max_stop_len + 1)
        self.text += delta
        hits = [(self.text.find(s, start), s) for s in self.params.stop]
        hits = [(i, s) for i, s in hits if i >= 0]
        if not hits:
            return False
        index, stop = min(hits)
        self.text = self.text[: index + (len(stop) if self.params.include_stop_str_in_output else 0)]
        self.stop_reason = stop
        return True

    def take(self, final: bool) -> str:
        """Text safe to hand out: while running, hold back what could still start a stop string."""
        end = len(self.text) if final else max(self.emitted, len(self.text) - max(0, self.params.max_stop_len - 1))
        out = self.text[self.emitted:end]
        self.emitted = end
        return out
