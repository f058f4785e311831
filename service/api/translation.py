"""Translation requests: the source and target languages of a multilingual encoder-decoder (NLLB, M2M100).

``target_lang`` becomes the decoder's forced first token (transformers' ``forced_bos_token_id``);
``source_lang`` replaces the language code the tokenizer wrote into the encoder input (NLLB writes its
default, ``eng_Latn``). A model without language codes refuses both; a model with them needs ``target_lang``.
"""
from __future__ import annotations

from dataclasses import replace

from models.translation import with_source_language
from service.engine import SamplingParams

from .errors import bad_request
from .registry import ServedModel


def _code(served: ServedModel, lang: str, param: str) -> int:
    codes = served.loaded.languages
    if lang not in codes:
        sample = ", ".join(sorted(c for c in codes if not c.startswith("__"))[:6])
        raise bad_request(f"{param} {lang!r} is not a language of the model `{served.name}` (its codes look like "
                          f"{sample}, ...)", param)
    return codes[lang]


def forced_languages(served: ServedModel, req) -> tuple[int, ...]:
    """The tokens forced after the decoder's start token: the target language's code, or none."""
    if not served.loaded.languages:
        for param in ("source_lang", "target_lang"):
            if getattr(req, param) is not None:
                raise bad_request(f"the model `{served.name}` is not a multilingual translation model: it takes no "
                                  f"{param}", param)
        return ()
    if req.target_lang is None:
        raise bad_request(f"the model `{served.name}` translates into the language named by target_lang (an extra "
                          "field, e.g. \"fra_Latn\"); give one", "target_lang")
    return (_code(served, req.target_lang, "target_lang"),)


def source_ids(served: ServedModel, req, ids: list[int]) -> list[int]:
    """The encoder input with the request's source language in place of the tokenizer's default."""
    if req.source_lang is None or not served.loaded.languages:
        return ids
    swapped = with_source_language(ids, served.loaded.languages, _code(served, req.source_lang, "source_lang"))
    if swapped is None:
        raise bad_request("this input holds no language code to replace (token-id prompts must carry their own)",
                          "source_lang")
    return swapped


def with_forced(params: SamplingParams, forced: tuple[int, ...]) -> SamplingParams:
    return replace(params, forced_token_ids=forced) if forced else params
