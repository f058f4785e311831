"""OpenAI request and response shapes (pydantic lives only here, at the API edge)."""
from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from service.engine.sampling_params import INT64_MAX, INT64_MIN

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on inputs per embeddings request

# integers the engine hands to torch (seeds, top-k) must fit int64
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


class OpenAIModel(BaseModel):
    # unknown fields are refused with a 400, as the OpenAI API does; types are strict as OpenAI's are
    # ("stream": "yes" or "max_tokens": "5" is a 400, not coerced)
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(OpenAIModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class TextPart(OpenAIModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    # name, tool_calls, tool_call_id, refusal... travel to the template
    model_config = ConfigDict(extra="allow", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Optional[Union[str, list[dict[str, Any]]]] = None
    name: Optional[str] = None


class SamplingFields(OpenAIModel):
    """Fields shared by chat and completions, including vLLM's extras."""
    model: str
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: Optional[dict[str, float]] = None
    max_tokens: Optional[int] = None
    n: int = Field(1, ge=1)
    seed: Optional[Int64] = None
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    user: Optional[str] = None
    # vLLM extras
    top_k: Optional[Int64] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    ignore_eos: bool = False
    stop_token_ids: Optional[list[int]] = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    use_beam_search: bool = False
    best_of: Optional[int] = Field(None, ge=1)
    length_penalty: float = 1.0
    early_stopping: Union[bool, Literal["never"]] = False
    min_tokens: int = Field(0, ge=0)
    bad_words: Optional[list[str]] = None
    prompt_logprobs: Optional[int] = None
    priority: int = 0
    request_id: Optional[str] = Field(None, min_length=1, max_length=256)
    # translation models (NLLB, M2M100): language codes such as "fra_Latn" (see translation.py)
    source_lang: Optional[str] = None
    target_lang: Optional[str] = None
    # structured outputs: OpenAI's response_format, vLLM's structured_outputs and guided_* (see structured.py)
    response_format: Optional[dict[str, Any]] = None
    structured_outputs: Optional[dict[str, Any]] = None
    guided_json: Optional[Union[dict[str, Any], str]] = None
    guided_regex: Optional[str] = None
    guided_choice: Optional[list[str]] = None
    guided_grammar: Optional[str] = None
    guided_decoding_backend: Optional[str] = None  # accepted; xgrammar is the one backend
    # OpenAI fields accepted and not acted on (they do not change the output)
    service_tier: Optional[str] = None
    store: Optional[bool] = None
    metadata: Optional[dict[str, Any]] = None
    prompt_cache_key: Optional[str] = None
    safety_identifier: Optional[str] = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: Optional[int] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None
    functions: Optional[list[dict[str, Any]]] = None
    function_call: Optional[Union[str, dict[str, Any]]] = None
    modalities: Optional[list[str]] = None
    audio: Optional[dict[str, Any]] = None
    prediction: Optional[dict[str, Any]] = None
    reasoning_effort: Optional[str] = None
    verbosity: Optional[str] = None
    web_search_options: Optional[dict[str, Any]] = None
    # vLLM extras
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: Optional[str] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False
    logprobs: Optional[int] = None
    suffix: Optional[str] = None


class ResponsesRequest(OpenAIModel):
    """``POST /v1/responses`` (OpenAI's Responses API); converted to a chat request in responses.py."""
    model: str
    input: Union[str, list[dict[str, Any]]]
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    text: Optional[dict[str, Any]] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None
    stream: bool = False
    store: Optional[bool] = None  # accepted; responses are not kept (previous_response_id is refused)
    previous_response_id: Optional[str] = None
    metadata: Optional[dict[str, str]] = None
    user: Optional[str] = None
    reasoning: Optional[dict[str, Any]] = None
    truncation: Optional[Literal["auto", "disabled"]] = None
    include: Optional[list[str]] = None
    background: Optional[bool] = None
    service_tier: Optional[str] = None
    prompt_cache_key: Optional[str] = None
    safety_identifier: Optional[str] = None
    max_tool_calls: Optional[int] = None
    # vLLM's extras that make sense here
    seed: Optional[Int64] = None
    top_k: Optional[Int64] = None
    request_id: Optional[str] = Field(None, min_length=1, max_length=256)
    chat_template: Optional[str] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None


class EmbeddingRequest(OpenAIModel):
    model: str
    input: Union[str, list[str], list[int], list[list[int]]]  # at most MAX_EMBEDDING_INPUTS items (checked)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = None
    user: Optional[str] = None


class RerankDocument(OpenAIModel):
    text: str


class RerankRequest(OpenAIModel):
    """``POST /v1/rerank`` (also ``/rerank``, ``/v2/rerank``): the Jina / Cohere shape vLLM and TEI accept."""
    model: Optional[str] = None
    query: str
    documents: list[Union[str, RerankDocument]]  # at most MAX_EMBEDDING_INPUTS (checked)
    top_n: Optional[int] = None  # None or 0: every document
    return_documents: bool = True
    max_tokens_per_doc: Optional[int] = None  # Cohere v2: each document cut to this many tokens first
    user: Optional[str] = None


class ScoreRequest(OpenAIModel):
    """``POST /v1/score`` (also ``/score``), vLLM's shape: one text_1 against each text_2, or pairs."""
    model: Optional[str] = None
    text_1: Union[str, list[str]]
    text_2: Union[str, list[str]]
    user: Optional[str] = None


class TokenizeRequest(OpenAIModel):
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: Optional[list[dict[str, Any]]] = None  # shown in the prompt as a chat request would show them
    chat_template: Optional[str] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None


class DetokenizeRequest(OpenAIModel):
    model: Optional[str] = None
    tokens: list[int]


# -- responses ------------------------------------------------------------------------------------

def make_id(prefix: str, request_id: str | None = None) -> str:
    """``prefix-<random>``, or ``prefix-<request_id>`` for a client-chosen id (vLLM's ``request_id``)."""
    return f"{prefix}-{request_id or uuid.uuid4().hex}"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    prompt_tokens_details: Optional[dict[str, int]] = None


class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "kernelserve"
    max_model_len: Optional[int] = None
    capabilities: list[str] = []
    quantization: str = "none"  # what the weights run as: none, int8, int4, gguf:Q4_1, ...


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
