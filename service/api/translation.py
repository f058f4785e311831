"""Translation requests: the source and target languages of a multilingual encoder-decoder (NLLB, M2M100,
multilingual Marian).

NLLB / M2M100: ``target_lang`` becomes the decoder's forced first token (transformers' ``forced_bos_token_id``);
``source_lang`` replaces the language code the tokenizer wrote into the encoder input (NLLB writes its default,
``eng_Latn``). Marian: ``target_lang`` is written at the start of the input (``>>fra<<``), unless the input
already starts with a code; it has no ``source_lang``. A model without language codes refuses both; a model with
them needs ``target_lang``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import NoReturn

from models.translation import target_in_source, with_source_language
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
    if target_in_source(served.loaded.config.arch):  # Marian: see source_ids
        if req.source_lang is not None:
            raise bad_request(f"the model `{served.name}` (Marian) takes no source_lang: it reads the language of "
                              "its input", "source_lang")
        return ()
    if req.target_lang is None:
        _missing_target(served)
    return (_code(served, req.target_lang, "target_lang"),)


def _missing_target(served: ServedModel) -> NoReturn:
    example = min(served.loaded.languages, key=len)
    raise bad_request(f"the model `{served.name}` translates into the language named by target_lang (an extra "
                      f"field, e.g. \"{example}\"); give one", "target_lang")


def source_ids(served: ServedModel, req, ids: list[int]) -> list[int]:
    """The encoder input with the request's source language in place of the tokenizer's default (NLLB), or the
    target language's code in front of it (Marian, unless the text already starts with one: ``>>fra<< ...``)."""
    if not served.loaded.languages:
        return ids
    if target_in_source(served.loaded.config.arch):
        written = bool(ids) and ids[0] in set(served.loaded.languages.values())
        if written and req.target_lang is not None:
            raise bad_request("the input starts with a language code and target_lang names one too: give one",
                              "target_lang")
        if written:
            return ids
        if req.target_lang is None:
            _missing_target(served)
        return [_code(served, req.target_lang, "target_lang"), *ids]
    if req.source_lang is None:
        return ids
    swapped = with_source_language(ids, served.loaded.languages, _code(served, req.source_lang, "source_lang"))
    if swapped is None:
        raise bad_request("this input holds no language code to replace (token-id prompts must carry their own)",
                          "source_lang")
    return swapped


def with_forced(params: SamplingParams, forced: tuple[int, ...]) -> SamplingParams:
    return replace(params, forced_token_ids=forced) if forced else params
