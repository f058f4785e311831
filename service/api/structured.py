"""Structured-output request fields -> one :class:`GrammarSpec` for the engine.

Sources, at most one per request (two are a 400, as vLLM answers):
- OpenAI's ``response_format``: ``text``, ``json_object``, ``json_schema`` (``{"json_schema": {"name",
  "schema", "strict"}}``; the schema is always enforced, ``strict`` or not);
- vLLM's ``structured_outputs``: exactly one of ``json``, ``regex``, ``choice``, ``grammar``, ``json_object``;
- vLLM's older ``guided_json``, ``guided_regex``, ``guided_choice``, ``guided_grammar``.
Forced tool calls add theirs in :mod:`.tools`.
"""
from __future__ import annotations

from typing import Any

from service.engine.grammar import GrammarSpec

from .errors import bad_request

STRUCTURED_KEYS = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar",
                   "json_object": "json_object"}
# accepted and not acted on: they tune a backend's behaviour, not what the output must match
IGNORED_STRUCTURED_KEYS = {"disable_fallback", "disable_any_whitespace", "disable_additional_properties",
                           "whitespace_pattern", "backend"}


def response_format_grammar(fmt: dict[str, Any] | None, param: str = "response_format") -> GrammarSpec | None:
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return GrammarSpec("json_object", param=param)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise bad_request("response_format json_schema needs a 'json_schema' object with a 'schema'",
                              f"{param}.json_schema")
        schema = spec.get("schema", {"type": "object"})
        if not isinstance(schema, dict):
            raise bad_request("response_format.json_schema.schema must be a JSON schema object",
                              f"{param}.json_schema.schema")
        return GrammarSpec.json_schema(schema, f"{param}.json_schema.schema")
    raise bad_request(f"response_format type {kind!r} is not supported (text, json_object, json_schema)",
                      f"{param}.type")


def _one(kind: str, value: Any, param: str) -> GrammarSpec:
    if kind == "json_schema":
        if isinstance(value, (dict, str)):
            return GrammarSpec.json_schema(value, param)
        raise bad_request(f"{param} must be a JSON schema (an object or its JSON text)", param)
    if kind == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise bad_request(f"{param} must be a non-empty list of non-empty strings", param)
        return GrammarSpec.choice(value, param)
    if kind == "json_object":
        return GrammarSpec("json_object", param=param)
    if not isinstance(value, str) or not value:
        raise bad_request(f"{param} must be a non-empty string", param)
    return GrammarSpec(kind, value, param)


def structured_outputs_grammar(so: dict[str, Any] | None) -> GrammarSpec | None:
    if so is None:
        return None
    unknown = set(so) - set(STRUCTURED_KEYS) - IGNORED_STRUCTURED_KEYS
    if unknown:
        raise bad_request(f"structured_outputs has unknown or unsupported keys {sorted(unknown)} "
                          f"(supported: {sorted(STRUCTURED_KEYS)})", "structured_outputs")
    given = [k for k in STRUCTURED_KEYS if so.get(k) not in (None, False)]
    if len(given) != 1:
        raise bad_request(f"structured_outputs needs exactly one of {sorted(STRUCTURED_KEYS)}, got {given}",
                          "structured_outputs")
    key = given[0]
    return _one(STRUCTURED_KEYS[key], so[key], f"structured_outputs.{key}")


def request_grammar(req) -> GrammarSpec | None:
    """The grammar a chat or completions request asks for, or None; a 400 if it asks twice."""
    specs = [s for s in (
        response_format_grammar(getattr(req, "response_format", None)),
        structured_outputs_grammar(req.structured_outputs),
        req.guided_json is not None and _one("json_schema", req.guided_json, "guided_json"),
        req.guided_regex is not None and _one("regex", req.guided_regex, "guided_regex"),
        req.guided_choice is not None and _one("choice", req.guided_choice, "guided_choice"),
        req.guided_grammar is not None and _one("grammar", req.guided_grammar, "guided_grammar"),
    ) if s]
    if len(specs) > 1:
        raise bad_request(f"only one structured-output constraint per request; got {[s.param for s in specs]}",
                          specs[1].param)
    return specs[0] if specs else None
