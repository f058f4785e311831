"""Language codes of multilingual translation models (NLLB's ``fra_Latn``, M2M100's ``__fr__``, multilingual
Marian's ``>>fra<<``).

NLLB / M2M100: the source language is a special token the tokenizer's post-processor writes around the text
(``eng_Latn text </s>``); the target language is the decoder's first token after its start token
(transformers' ``forced_bos_token_id``). Marian: the target language is a token at the start of the source text
(``>>fra<< Hello``), and the source language is implied.
"""
from __future__ import annotations

import re

from .tokenizer import Tokenizer

# NLLB / FLORES-200 codes (``fra_Latn``, ``zho_Hans``) and M2M100's (``__fr__``)
_CODE = re.compile(r"^(?:[a-z]{3}_[A-Z][a-z]{3}|__[a-z]{2,3}__|>>[a-zA-Z_]{2,12}<<)$")


def language_codes(tokenizer: Tokenizer) -> dict[str, int]:
    """Language code -> token id, from the tokenizer's special tokens; {} for a model without them. Requests may
    name a language by its code with or without M2M100's underscores (``__fr__`` or ``fr``)."""
    codes = {}
    for token_id, token in tokenizer.backend.get_added_tokens_decoder().items():
        if token.special and _CODE.match(token.content):
            codes[token.content] = token_id
            if token.content.startswith(("__", ">>")):
                codes.setdefault(token.content.strip("_<>"), token_id)
    return codes


def target_in_source(arch: str) -> bool:
    """Whether the target language is written at the start of the source (Marian) rather than forced as the
    decoder's first token (NLLB, M2M100)."""
    return arch == "marian"


def with_source_language(ids: list[int], codes: dict[str, int], source: int) -> list[int] | None:
    """``ids`` (encoded with the tokenizer's special tokens) with their language code replaced by ``source``;
    None when the encoding holds no language code to replace."""
    known = set(codes.values())
    where = [i for i, t in enumerate(ids) if t in known]
    if not where:
        return None
    out = list(ids)
    out[where[0]] = source
    return out
