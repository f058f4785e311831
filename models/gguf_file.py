"""Read a GGUF file as a complete model: config, dequantised tensors with HF names, tokenizer.

Tensors are dequantised with the ``gguf`` package. llama.cpp's converter
permutes the rows of Q and K in Llama checkpoints (to interleave rotary
pairs); :func:`_unpermute` restores Hugging Face's NeoX ordering.
"""
from __future__ import annotations

import re
from typing import Iterator

import numpy as np
import torch

from .config import ModelError
from .tokenizer import Tokenizer
from .weights import NamedTensor

SUPPORTED_ARCHS = ("llama", "qwen2", "mistral")

_CONFIG_KEYS = {  # GGUF key (after "<arch>.") -> HF config key
    "context_length": "max_position_embeddings", "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size", "embedding_length": "hidden_size",
    "rope.dimension_count": "head_dim", "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps", "vocab_size": "vocab_size",
}
_TENSOR_NAMES = [  # GGUF regex -> HF name
    (r"^token_embd\.weight$", "model.embed_tokens.weight"),
    (r"^output_norm\.weight$", "model.norm.weight"),
    (r"^output\.weight$", "lm_head.weight"),
    (r"^blk\.(\d+)\.attn_norm\.weight$", r"model.layers.\1.input_layernorm.weight"),
    (r"^blk\.(\d+)\.ffn_norm\.weight$", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"^blk\.(\d+)\.attn_q\.(weight|bias)$", r"model.layers.\1.self_attn.q_proj.\2"),
    (r"^blk\.(\d+)\.attn_k\.(weight|bias)$", r"model.layers.\1.self_attn.k_proj.\2"),
    (r"^blk\.(\d+)\.attn_v\.(weight|bias)$", r"model.layers.\1.self_attn.v_proj.\2"),
    (r"^blk\.(\d+)\.attn_output\.weight$", r"model.layers.\1.self_attn.o_proj.weight"),
    (r"^blk\.(\d+)\.ffn_gate\.weight$", r"model.layers.\1.mlp.gate_proj.weight"),
    (r"^blk\.(\d+)\.ffn_up\.weight$", r"model.layers.\1.mlp.up_proj.weight"),
    (r"^blk\.(\d+)\.ffn_down\.weight$", r"model.layers.\1.mlp.down_proj.weight"),
]
_IGNORED = (r"^rope_freqs\.weight$",)  # llama3 scaling factors; recomputed from the config


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    import gguf

    kind = f.types[0]
    if kind == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    if kind == gguf.GGUFValueType.ARRAY:
        if f.types[1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    return f.parts[f.data[0]].tolist()[0]


def open_gguf(path: str):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as err:
        raise ModelError(f"{path}: not a readable GGUF file ({err})") from None


def gguf_config(reader, path: str) -> dict:
    """The HF-style config.json equivalent of the GGUF metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ModelError(f"{path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})")
    cfg = {"model_type": arch, "hidden_act": "silu"}
    for key, hf_key in _CONFIG_KEYS.items():
        value = _field(reader, f"{arch}.{key}")
        if value is not None:
            cfg[hf_key] = value
    if "vocab_size" not in cfg:
        cfg["vocab_size"] = len(_field(reader, "tokenizer.ggml.tokens", []))
    names = {t.name for t in reader.tensors}
    cfg["tie_word_embeddings"] = "output.weight" not in names
    return cfg


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation: [h, d/2, 2, ...] -> [h, 2, d/2, ...]."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _hf_name(name: str, path: str) -> str | None:
    if any(re.search(p, name) for p in _IGNORED):
        return None
    for pattern, repl in _TENSOR_NAMES:
        if re.search(pattern, name):
            return re.sub(pattern, repl, name)
    raise ModelError(f"{path}: GGUF tensor {name!r} is not one kernelserve knows how to map")


def iter_gguf_tensors(reader, path: str, cfg: dict, dtype: torch.dtype) -> Iterator[NamedTensor]:
    import gguf

    permute = cfg["model_type"] in ("llama", "mistral")
    for t in reader.tensors:
        hf = _hf_name(t.name, path)
        if hf is None:
            continue
        try:
            data = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as err:
            raise ModelError(f"{path}: cannot dequantise {t.name} ({t.tensor_type.name}): {err}") from None
        data = np.ascontiguousarray(data)
        if not data.flags.writeable:  # unquantised tensors are views of the read-only memory map
            data = data.copy()
        w = torch.from_numpy(data.reshape(*reversed(t.shape.tolist())))
        if permute and hf.endswith("q_proj.weight"):
            w = _unpermute(w, cfg["num_attention_heads"])
        elif permute and hf.endswith("k_proj.weight"):
            w = _unpermute(w, cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
        yield path, hf, w.to(dtype)


def gguf_tokenizer(reader, path: str) -> Tokenizer:
    """A byte-level BPE tokenizer (llama.cpp's ``gpt2`` type) from the GGUF vocabulary and merges."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ModelError(f"{path}: GGUF tokenizer type {kind!r} is not supported (only byte-level BPE, 'gpt2')")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", [])]
    backend = HFTokenizer(models.BPE(vocab={tok: i for i, tok in enumerate(tokens)}, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    types = _field(reader, "tokenizer.ggml.token_type", [])
    # token types 3 (control) and 4 (user defined) are special tokens, matched before BPE
    backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i, kind in enumerate(types) if kind in (3, 4)])

    def token(key):
        idx = _field(reader, key)
        return tokens[idx] if idx is not None and 0 <= idx < len(tokens) else None

    bos = token("tokenizer.ggml.bos_token_id")
    if gguf_adds_bos(reader) and bos is not None:
        from tokenizers import processors

        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokens.index(bos))])

    specials = {"unk_token": token("tokenizer.ggml.unknown_token_id"), "pad_token": token("tokenizer.ggml.padding_token_id")}
    return Tokenizer(backend, bos, token("tokenizer.ggml.eos_token_id"),
                     _field(reader, "tokenizer.chat_template"), {k: v for k, v in specials.items() if v})


def gguf_eos_ids(reader) -> list[int]:
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    return [eos] if eos is not None else []


def gguf_adds_bos(reader) -> bool:
    return bool(_field(reader, "tokenizer.ggml.add_bos_token", False))
