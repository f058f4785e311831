"""Request -> engine inputs: prompts, chat messages and ``to_sampling_params``."""
from __future__ import annotations

from models import ChatTemplateError, TemplateLimitError, Tokenizer
from service.engine import SamplingParams
from service.engine.grammar import GrammarSpec

from .errors import bad_request
from .protocol import ChatCompletionRequest, ChatMessage, SamplingFields
from .templates import LIMIT_HINTS, TemplateRendering
from .tools import Tool, hermes_history, template_supports_tools, with_default_tool_block

MAX_LOGPROBS = 20
MAX_PROMPTS = 2048  # prompts in one completions request (OpenAI's bound on batched inputs)


def reject_unsupported_chat(req: ChatCompletionRequest) -> None:
    """Fields we accept but cannot honour fail loudly instead of being ignored."""
    if req.functions or req.function_call not in (None, "none"):
        raise bad_request("functions / function_call (deprecated by OpenAI) are not supported: use tools and "
                          "tool_choice", "functions", "unsupported_parameter")
    if req.continue_final_message and req.add_generation_prompt:
        raise bad_request("continue_final_message and add_generation_prompt cannot both be true (set "
                          "add_generation_prompt to false to continue the last message)", "continue_final_message")
    if req.audio or (req.modalities and set(req.modalities) - {"text"}):
        raise bad_request("audio output is not supported", "modalities", "unsupported_parameter")
    if req.prediction:
        raise bad_request("predicted outputs are not supported yet", "prediction", "unsupported_parameter")
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= MAX_LOGPROBS:
        raise bad_request(f"top_logprobs must be between 0 and {MAX_LOGPROBS}", "top_logprobs")
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs requires logprobs to be true", "top_logprobs")


def reject_unsupported_common(req: SamplingFields) -> None:
    reject_bad_stream_options(req)
    if req.best_of is not None and req.best_of != req.n and not req.use_beam_search:
        raise bad_request("best_of other than n is supported with use_beam_search only (sampled ranking is not "
                          "implemented)", "best_of", "unsupported_parameter")
    if req.use_beam_search and req.stream:
        raise bad_request("streaming is not supported with beam search: the best beams are known only at the end",
                          "stream", "unsupported_parameter")
    if req.prompt_logprobs is not None and not 0 <= req.prompt_logprobs <= MAX_LOGPROBS:
        raise bad_request(f"prompt_logprobs must be between 0 and {MAX_LOGPROBS}", "prompt_logprobs")
    if req.prompt_logprobs is not None and req.stream:
        raise bad_request("prompt_logprobs is not available when streaming", "prompt_logprobs")


# roles whose messages must carry content (OpenAI: only an assistant turn may leave it out)
CONTENT_REQUIRED = ("system", "developer", "user", "tool", "function")


def message_dicts(messages: list[ChatMessage]) -> list[dict]:
    """Messages as the chat template sees them: content always a string (parts joined, "" when absent)."""
    out = []
    for i, m in enumerate(messages):
        if m.content is None and m.role in CONTENT_REQUIRED:
            raise bad_request(f"messages[{i}]: a '{m.role}' message needs content", f"messages.{i}.content")
        d = m.model_dump(exclude_none=True)
        d["content"] = _content_text(m.content, i)
        out.append(d)
    if not out:
        raise bad_request("messages must not be empty", "messages")
    return out


def _content_text(content, i: int) -> str:
    if content is None:  # an assistant turn with tool_calls and null content
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise bad_request(f"content part type {part.get('type')!r} is not supported (only text)",
                              f"messages.{i}.content")
        texts.append(part["text"])
    return "".join(texts)


def reject_invalid_unicode(value, path: str = "") -> None:
    """A string that is not valid Unicode (a lone surrogate such as ``"\\ud800"``) is a 400 naming where it is."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request(f"{path or 'body'} is not valid Unicode (it holds a lone surrogate)", path or None) \
                from None
    elif isinstance(value, dict):
        for key, item in value.items():
            reject_invalid_unicode(key, path)
            reject_invalid_unicode(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            reject_invalid_unicode(item, f"{path}.{i}" if path else str(i))


def reject_bad_stream_options(req) -> None:
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options can only be set when stream is true", "stream_options")


# names a request's chat_template_kwargs may not set: the request sets them through its own fields
RESERVED_TEMPLATE_KWARGS = ("messages", "tools", "add_generation_prompt", "continue_final_message", "template")


def request_template(req) -> tuple[str | None, str]:
    """The chat template a request supplies, if any (``chat_template``, or vLLM's
    ``chat_template_kwargs.chat_template``), and the field that carried it (``messages`` when none)."""
    kwargs = req.chat_template_kwargs or {}
    where = "chat_template" if req.chat_template is not None else "chat_template_kwargs.chat_template"
    template = req.chat_template if req.chat_template is not None else kwargs.get("chat_template")
    if template is None:
        return None, "messages"
    if not isinstance(template, str):
        raise bad_request(f"{where} must be a string (a Jinja template)", where)
    return template, where


def template_kwargs(req) -> dict:
    kwargs = {k: v for k, v in (req.chat_template_kwargs or {}).items() if k != "chat_template"}
    reserved = sorted(set(RESERVED_TEMPLATE_KWARGS) & set(kwargs))
    if reserved:
        raise bad_request(f"chat_template_kwargs may not set {reserved}: the request sets them itself",
                          "chat_template_kwargs")
    return kwargs


async def chat_prompt(tokenizer: Tokenizer, req, rendering: TemplateRendering, encoder_decoder: bool = False,
                      tools: list[Tool] = ()) -> tuple[str, list[int]]:
    """The prompt text and ids of a chat request (or a /tokenize request with messages), offering ``tools``.

    The template renders in a worker process under ``rendering.limits``; a template sent in the request
    is a 400 unless the server trusts them (``--trust-request-chat-template``). Encoder-decoders (T5,
    BART) whose tokenizer has no chat template take the last user message as their encoder input,
    encoded with the tokenizer's own special tokens (T5 appends ``</s>``).
    """
    messages = message_dicts(req.messages)
    supplied, where = request_template(req)
    if supplied is not None and not rendering.trust_request_templates:
        raise bad_request(f"{where}: chat templates sent in requests are refused (a template is code the server "
                          "would run); the operator can allow them with --trust-request-chat-template", where,
                          "chat_template_not_allowed")
    kwargs = template_kwargs(req)
    template = supplied if supplied is not None else tokenizer.chat_template
    extra = {}
    if template_supports_tools(template):
        if tools:
            extra["tools"] = [t.as_openai() for t in tools]
    else:  # the template knows only text turns: earlier calls and results as text, tools in a system block
        messages = hermes_history(messages)
        if tools:
            messages = with_default_tool_block(messages, list(tools))
    if encoder_decoder and not tokenizer.chat_template:
        users = [m for m in messages if m["role"] == "user"]
        if not users:
            raise bad_request("an encoder-decoder model needs a user message as its input", "messages")
        text = users[-1].get("content") or ""
        return text, tokenizer.encode(text)
    if template is None:
        raise bad_request("chat template: this model's tokenizer has no chat template (send a prompt to "
                          "/v1/completions instead)", "messages")
    context = tokenizer.template_context(messages, req.add_generation_prompt, **extra)
    try:
        text = await rendering.render(template, context, kwargs, from_request=supplied is not None)
    except TemplateLimitError as err:
        raise bad_request(f"chat template: {err} (limit: {LIMIT_HINTS.get(err.limit, err.limit)})", where,
                          "chat_template_limit") from None
    except ChatTemplateError as err:
        raise bad_request(f"chat template: {err}", where) from None
    if req.continue_final_message:
        text = _cut_after_final_message(text, messages[-1]["content"])
    # the template writes the special tokens itself (transformers' apply_chat_template does the same)
    return text, tokenizer.encode(text, add_special_tokens=False)


def _cut_after_final_message(text: str, final: str) -> str:
    """The rendered chat up to the end of the last message's content, so the model continues it
    (transformers' ``continue_final_message``: whatever the template closes the turn with is dropped)."""
    at = text.rfind(final.strip()) if final.strip() else -1
    if at < 0:
        raise bad_request("continue_final_message: the last message's content is not in the rendered prompt "
                          "(it must be non-empty text)", "continue_final_message")
    return text[:at + len(final.strip())]


def completion_prompts(tokenizer: Tokenizer, prompt) -> list[tuple[str | None, list[int]]]:
    """(text or None, token ids) for each prompt of a completions request."""
    if isinstance(prompt, str):
        return [(prompt, tokenizer.encode(prompt))]
    if not prompt:
        raise bad_request("prompt must not be empty", "prompt")
    if len(prompt) > MAX_PROMPTS and not all(isinstance(p, int) for p in prompt):
        raise bad_request(f"prompt has {len(prompt)} prompts; at most {MAX_PROMPTS} are allowed per request", "prompt")
    if all(isinstance(p, int) for p in prompt):
        return [(None, list(prompt))]
    if all(isinstance(p, str) for p in prompt):
        return [(p, ids) for p, ids in zip(prompt, tokenizer.encode_batch(list(prompt)))]
    if all(isinstance(p, list) for p in prompt):
        return [(None, list(p)) for p in prompt]
    raise bad_request("prompt must be a string, a list of strings, a list of token ids or a list of those", "prompt")


def _logit_bias(bias: dict[str, float] | None, vocab: int) -> tuple[tuple[int, float], ...]:
    out = []
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise bad_request(f"logit_bias keys must be token ids, got {key!r}", "logit_bias") from None
        if not 0 <= token < vocab:
            raise bad_request(f"logit_bias token {token} is outside the vocabulary [0, {vocab})", "logit_bias")
        if not -100 <= value <= 100:
            raise bad_request("logit_bias values must be in [-100, 100]", "logit_bias")
        out.append((token, float(value)))
    return tuple(out)


def _bad_words(words: list[str] | None, tokenizer: Tokenizer | None) -> tuple[tuple[int, ...], ...]:
    """Each bad word as token sequences, with and without a leading space (vLLM's rule: a word is
    tokenised both ways, since mid-text it usually follows a space)."""
    if not words:
        return ()
    if any(not w.strip() for w in words):
        raise bad_request("bad_words must not hold empty strings", "bad_words")
    seqs = []
    for word in words:
        for variant in dict.fromkeys([word, " " + word.lstrip()]):
            ids = tuple(tokenizer.encode(variant, add_special_tokens=False))
            if ids and ids not in seqs:
                seqs.append(ids)
    return tuple(seqs)


def to_sampling_params(req: SamplingFields, *, max_tokens: int | None, default_max: int, logprobs: int | None,
                       vocab: int, grammar: GrammarSpec | None = None,
                       tokenizer: Tokenizer | None = None) -> SamplingParams:
    """The one place a request becomes engine parameters."""
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if any(not s for s in stop):
        raise bad_request("stop strings must not be empty", "stop")
    if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
        raise bad_request(f"logprobs must be between 0 and {MAX_LOGPROBS}", "logprobs")
    try:
        return SamplingParams(
            n=req.n, max_tokens=max_tokens if max_tokens is not None else default_max,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0,
            min_p=req.min_p or 0.0, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            logit_bias=_logit_bias(req.logit_bias, vocab), seed=req.seed, stop=tuple(stop),
            stop_token_ids=tuple(req.stop_token_ids or ()), ignore_eos=req.ignore_eos, logprobs=logprobs,
            skip_special_tokens=req.skip_special_tokens, include_stop_str_in_output=req.include_stop_str_in_output,
            use_beam_search=req.use_beam_search, beam_width=req.best_of or req.n,
            length_penalty=req.length_penalty, early_stopping=req.early_stopping, grammar=grammar,
            min_tokens=req.min_tokens, bad_words_token_ids=_bad_words(req.bad_words, tokenizer),
            prompt_logprobs=req.prompt_logprobs, priority=req.priority,
        )
    except ValueError as err:
        param = str(err).split()[0]
        raise bad_request(str(err), param) from None
