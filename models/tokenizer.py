"""Tokenizer wrapper over the ``tokenizers`` library, chat templates and incremental detokenisation."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from tokenizers import Tokenizer as HFTokenizer

from .chat_template import ChatTemplateError, CompiledTemplate, compile_template, render
from .config import ModelError


def _token_str(value) -> str | None:
    """tokenizer_config.json writes special tokens as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value


_OVERRIDES: dict[str, CompiledTemplate] = {}  # templates passed to apply_chat_template, compiled once each


def _compiled_override(source: str) -> CompiledTemplate:
    if source not in _OVERRIDES:
        if len(_OVERRIDES) >= 64:
            _OVERRIDES.pop(next(iter(_OVERRIDES)))
        _OVERRIDES[source] = compile_template(source)
    return _OVERRIDES[source]


@dataclass
class Tokenizer:
    backend: HFTokenizer
    bos_token: str | None = None
    eos_token: str | None = None
    chat_template: str | None = None
    special_tokens: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self._template = compile_template(self.chat_template) if self.chat_template else None
        # tokenizer.json files may pad or truncate (MiniLM's pads to 128): lengths are the engine's job
        self.backend.no_padding()
        self.backend.no_truncation()

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def encode_pairs(self, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """(ids, token type ids) of text pairs as the tokenizer's post-processor joins them (BERT:
        ``[CLS] a [SEP] b [SEP]`` with types 0 then 1; XLM-R: ``<s> a </s></s> b </s>``, all 0)."""
        return [(e.ids, e.type_ids) for e in self.backend.encode_batch(list(pairs), add_special_tokens=True)]

    def truncate(self, text: str, max_tokens: int) -> str:
        """``text`` cut after its first ``max_tokens`` tokens (no special tokens counted), at a token's end."""
        offsets = self.backend.encode(text, add_special_tokens=False).offsets
        return text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]] if max_tokens else ""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def template_context(self, messages: list[dict], add_generation_prompt: bool = True, **extra) -> dict:
        """What a chat template renders from: the messages, the special tokens and ``extra`` (``tools``, ...)."""
        return {**self.special_tokens, "bos_token": self.bos_token or "", "eos_token": self.eos_token or "",
                **extra, "messages": messages, "add_generation_prompt": add_generation_prompt}

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            template: str | None = None, **extra) -> str:
        """Render ``messages`` in this process, bounded by ``RenderLimits()`` (the server renders in a worker
        process instead: service/api/templates.py); ``template`` replaces the tokenizer's own (a Jinja source,
        as vLLM's ``chat_template``); ``extra`` becomes template variables (``tools``, ``documents``, ...)."""
        compiled = self._template if template is None else _compiled_override(template)
        if compiled is None:
            raise ChatTemplateError("this model's tokenizer has no chat template")
        return render(compiled, self.template_context(messages, add_generation_prompt, **extra))

    @staticmethod
    def from_folder(folder: str) -> "Tokenizer":
        path = os.path.join(folder, "tokenizer.json")
        if not os.path.exists(path) and os.path.exists(os.path.join(folder, "source.spm")):
            from .marian_tokenizer import marian_backend  # opus-mt folders: SentencePiece files only

            backend = marian_backend(folder)
        elif not os.path.exists(path):
            raise ModelError(f"{folder}: no tokenizer.json (kernelserve needs a fast tokenizer file, or Marian's "
                             "source.spm and vocab.json)")
        else:
            try:
                backend = HFTokenizer.from_file(path)
            except Exception as err:
                raise ModelError(f"{path}: not a readable tokenizer ({err})") from None
        cfg = {}
        cfg_path = os.path.join(folder, "tokenizer_config.json")
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                cfg = json.load(f)
        template = cfg.get("chat_template")
        jinja_path = os.path.join(folder, "chat_template.jinja")
        if os.path.exists(jinja_path):
            with open(jinja_path) as f:
                template = f.read()
        if isinstance(template, list):  # named templates: use "default"
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        specials = {k: _token_str(v) for k, v in cfg.items() if k.endswith("_token") and _token_str(v)}
        return Tokenizer(backend, _token_str(cfg.get("bos_token")), _token_str(cfg.get("eos_token")),
                         template, specials)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas, never emitting half a character.

    Each step decodes a short window of recent tokens twice — up to the last
    emitted token and through the new one — and emits the difference, unless
    the new text ends in U+FFFD (an incomplete UTF-8 sequence, such as a
    byte-fallback or byte-level token that is only part of a character);
    those tokens wait for the next ones. Windowing keeps each step O(1).
    """

    CONTEXT = 5  # prompt tokens kept as left context (leading-space handling)

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int] = (), skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids = list(prompt_ids[-self.CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, start: int, end: int | None = None) -> str:
        return self.tokenizer.decode(self.ids[start:end], skip_special_tokens=self.skip_special_tokens)

    def step(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.prefix_offset, self.read_offset)
        text = self._decode(self.prefix_offset)
        if len(text) <= len(prefix) or text.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(prefix):]

    def flush(self) -> str:
        """Whatever is still held back (a sequence that ended mid-character)."""
        prefix = self._decode(self.prefix_offset, self.read_offset)
        text = self._decode(self.prefix_offset)
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix):] if len(text) > len(prefix) else ""
