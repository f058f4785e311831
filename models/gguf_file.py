"""Read a GGUF file as a complete model: config, dequantised tensors with HF names, tokenizer.

Tensors are dequantised with the ``gguf`` package. llama.cpp's converter
permutes the rows of Q and K in Llama checkpoints (to interleave rotary
pairs); :func:`_unpermute` restores Hugging Face's NeoX ordering.
"""
from __future__ import annotations

import logging
import re
from typing import Iterator

import numpy as np
import torch

from .config import ModelError
from .tokenizer import Tokenizer
from .weights import NamedTensor, QuantParts

log = logging.getLogger("kernelserve.models")

SUPPORTED_ARCHS = ("llama", "qwen2", "mistral", "qwen3", "qwen3moe", "phi3", "gemma2", "gemma3")
# llama.cpp's architecture name -> config.json's model_type
_MODEL_TYPES = {"qwen3moe": "qwen3_moe", "gemma3": "gemma3_text"}

_CONFIG_KEYS = {  # GGUF key (after "<arch>.") -> HF config key
    "context_length": "max_position_embeddings", "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size", "embedding_length": "hidden_size",
    "rope.dimension_count": "head_dim", "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps", "vocab_size": "vocab_size",
    "attention.key_length": "head_dim",
    "expert_count": "num_experts", "expert_used_count": "num_experts_per_tok",
    "expert_feed_forward_length": "moe_intermediate_size", "expert_weights_norm": "norm_topk_prob",
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
    (r"^blk\.(\d+)\.attn_q_norm\.weight$", r"model.layers.\1.self_attn.q_norm.weight"),  # Qwen3
    (r"^blk\.(\d+)\.attn_k_norm\.weight$", r"model.layers.\1.self_attn.k_norm.weight"),
    (r"^blk\.(\d+)\.ffn_gate_inp\.weight$", r"model.layers.\1.mlp.gate.weight"),  # MoE router
    (r"^blk\.(\d+)\.attn_qkv\.weight$", r"model.layers.\1.self_attn.qkv_proj.weight"),  # Phi-3: stored fused
    # MoE experts, one [E, out, in] tensor per projection: split into per-expert tensors ("{e}")
    (r"^blk\.(\d+)\.ffn_gate_exps\.weight$", r"model.layers.\1.mlp.experts.{e}.gate_proj.weight"),
    (r"^blk\.(\d+)\.ffn_up_exps\.weight$", r"model.layers.\1.mlp.experts.{e}.up_proj.weight"),
    (r"^blk\.(\d+)\.ffn_down_exps\.weight$", r"model.layers.\1.mlp.experts.{e}.down_proj.weight"),
]
# Gemma 2/3: four norms a layer; llama.cpp's "ffn_norm" is the pre-feedforward norm there
_GEMMA_NAMES = [
    (r"^blk\.(\d+)\.post_attention_norm\.weight$", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"^blk\.(\d+)\.ffn_norm\.weight$", r"model.layers.\1.pre_feedforward_layernorm.weight"),
    (r"^blk\.(\d+)\.post_ffw_norm\.weight$", r"model.layers.\1.post_feedforward_layernorm.weight"),
]
# llama3 scaling factors (recomputed from the config); Phi-3's LongRoPE factors (read into the config)
_IGNORED = (r"^rope_freqs\.weight$", r"^rope_factors_(long|short)\.weight$")


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
    cfg = {"model_type": _MODEL_TYPES.get(arch, arch), "hidden_act": "silu"}
    for key, hf_key in _CONFIG_KEYS.items():
        value = _field(reader, f"{arch}.{key}")
        if value is not None:
            cfg[hf_key] = value
    if "vocab_size" not in cfg:
        cfg["vocab_size"] = len(_field(reader, "tokenizer.ggml.tokens", []))
    names = {t.name for t in reader.tensors}
    cfg["tie_word_embeddings"] = "output.weight" not in names
    if arch == "phi3":
        _phi3_config(reader, cfg, names)
    if arch == "llama" and "num_experts" in cfg:  # llama.cpp writes Mixtral as llama with experts
        cfg["model_type"], cfg["num_local_experts"] = "mixtral", cfg.pop("num_experts")
    if arch == "qwen3moe":  # layers with a dense FFN instead of experts (Qwen3-MoE's mlp_only_layers)
        cfg["mlp_only_layers"] = sorted(int(n.split(".")[1]) for n in names if re.match(r"^blk\.\d+\.ffn_gate\.", n))
    if arch in ("gemma2", "gemma3"):
        _gemma_config(reader, arch, cfg)
    return cfg


# layer counts of the 27B checkpoints, whose queries llama.cpp scales by hidden / heads, not head_dim
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def _gemma_config(reader, arch: str, cfg: dict) -> None:
    """Gemma 2 / 3 as llama.cpp's converter writes them and its loader reads them back. Its norms are stored as the
    factor 1 + w, the form GemmaForCausalLM.after_load folds a checkpoint into (load_gguf does not call it). The
    window on every layer of the pattern (every 2nd layer global for Gemma 2, every 6th for Gemma 3, unless the
    file says otherwise),
    soft-capping, the sliding layers' own rotary base (Gemma 3: 10000 unless stored), the global layers' linear
    scaling, and the query scale llama.cpp derives from the depth (no query_pre_attn_scalar in the file)."""
    cfg["hidden_activation"] = "gelu_pytorch_tanh"
    cfg["head_dim"] = _field(reader, f"{arch}.attention.key_length") or cfg["hidden_size"] // cfg["num_attention_heads"]
    window = _field(reader, f"{arch}.attention.sliding_window", 4096 if arch == "gemma2" else 0)
    cfg["sliding_window"] = window or None
    pattern = _field(reader, f"{arch}.attention.sliding_window_pattern", 2 if arch == "gemma2" else 6)
    layers = cfg["num_hidden_layers"]
    swa = pattern if isinstance(pattern, list) else [bool(pattern == 0 or i % pattern < pattern - 1)
                                                     for i in range(layers)]
    cfg["layer_types"] = ["sliding_attention" if window and s else "full_attention" for s in swa]
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        value = _field(reader, f"{arch}.{key}")
        if value:
            cfg[key] = float(value)
    theta = float(cfg.pop("rope_theta", 10000.0))
    full = {"rope_type": "default", "rope_theta": theta}
    if _field(reader, f"{arch}.rope.scaling.type") == "linear":
        full.update(rope_type="linear", factor=float(_field(reader, f"{arch}.rope.scaling.factor")))
    local = float(_field(reader, f"{arch}.rope.freq_base_swa", 10000.0 if arch == "gemma3" else theta))
    cfg["rope_parameters"] = {"full_attention": full, "sliding_attention": {"rope_type": "default", "rope_theta": local}}
    deep = layers == _GEMMA_27B_LAYERS[arch]
    cfg["query_pre_attn_scalar"] = cfg["hidden_size"] / cfg["num_attention_heads"] if deep else cfg["head_dim"]


def _phi3_config(reader, cfg: dict, names: set[str]) -> None:
    """Phi-3 / Phi-4-mini: head_dim from the width (rope.dimension_count is the rotated part), the sliding window,
    and LongRoPE from the rope_factors_{short,long} tensors and the original context."""
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    rotated = _field(reader, "phi3.rope.dimension_count") or head_dim
    cfg["head_dim"] = head_dim
    window = _field(reader, "phi3.attention.sliding_window")
    if window:
        cfg["sliding_window"] = window
    rope = {"rope_type": "default", "rope_theta": cfg.get("rope_theta", 10000.0),
            "partial_rotary_factor": rotated / head_dim}
    if "rope_factors_short.weight" in names:
        factors = {t.name: t for t in reader.tensors}
        original = _field(reader, "phi3.rope.scaling.original_context_length")
        rope.update(rope_type="longrope", original_max_position_embeddings=original,
                    short_factor=_dense(factors["rope_factors_short.weight"], "", torch.float32).tolist(),
                    long_factor=_dense(factors["rope_factors_long.weight"], "", torch.float32).tolist())
        attn_factor = _field(reader, "phi3.rope.scaling.attn_factor")
        if attn_factor is not None:
            rope["attention_factor"] = float(attn_factor)
        cfg["original_max_position_embeddings"] = original
    cfg["rope_parameters"] = rope


def _unpermute_rows(rows: int, heads: int) -> torch.Tensor:
    """The row order :func:`_unpermute` produces, as an index (for weights kept quantized)."""
    return _unpermute(torch.arange(rows)[:, None], heads)[:, 0]


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation: [h, d/2, 2, ...] -> [h, 2, d/2, ...]."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _hf_name(name: str, path: str, arch: str = "") -> str | None:
    if any(re.search(p, name) for p in _IGNORED):
        return None
    if arch == "phi3" and re.match(r"^blk\.\d+\.ffn_up\.weight$", name):  # Phi-3's gate and up rows, fused
        return re.sub(r"^blk\.(\d+)\.ffn_up\.weight$", r"model.layers.\1.mlp.gate_up_proj.weight", name)
    if arch.startswith("gemma"):
        for pattern, repl in _GEMMA_NAMES:
            if re.search(pattern, name):
                return re.sub(pattern, repl, name)
    for pattern, repl in _TENSOR_NAMES:
        if re.search(pattern, name):
            return re.sub(pattern, repl, name)
    raise ModelError(f"{path}: GGUF tensor {name!r} is not one kernelserve knows how to map")


# GGUF block types served without dequantising: elements and bytes per block
KEPT_TYPES = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q8_0": (32, 34), "Q4_K": (256, 144), "Q6_K": (256, 210)}
# Q6_K's groups of 16 are below what torch's CPU int4 kernel takes: kept on CUDA (the Triton kernel), dense on CPU
CPU_KEPT_TYPES = ("Q4_0", "Q4_1", "Q8_0", "Q4_K")
# weights that may stay quantized: Linear weights, the token embedding (often tied to the LM head) and the LM head;
# norms, biases and position tables are read dense
_PROJECTIONS = ("_proj.weight", "embed_tokens.weight", "wte.weight", "lm_head.weight")


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The fp16 at byte ``start`` of every block, as float32 [B]."""
    return np.ascontiguousarray(blocks[:, start:start + 2]).view(np.float16)[:, 0].astype(np.float32)


def _low_high(qs: np.ndarray) -> np.ndarray:
    """ggml's 4-bit order: byte j holds element j (low nibble) and element j + len(qs) (high nibble)."""
    return np.concatenate([qs & 0xF, qs >> 4], axis=1)


def _q4_k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's eight 6-bit (scale, min) pairs per super-block, unpacked from 12 bytes (ggml's get_scale_min_k4)."""
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _decode_blocks(kind: str, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(codes [B, elems], scales [B, groups], offsets [B, groups], bits) of one type's blocks, such that
    ``scales * codes + offsets`` is exactly what ggml's dequantiser computes in float32."""
    d = _f16(blocks, 0)[:, None]
    if kind == "Q4_0":  # d * (q - 8)
        return _low_high(blocks[:, 2:]), d, -8 * d, 4
    if kind == "Q4_1":  # d * q + m
        return _low_high(blocks[:, 4:]), d, _f16(blocks, 2)[:, None], 4
    if kind == "Q8_0":  # d * q, q signed: code = q + 128
        codes = (blocks[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return codes, d, -128 * d, 8
    if kind == "Q6_K":
        return _q6_k(blocks)
    # Q4_K: 8 sub-blocks of 32, scale d * sc and min dmin * m; bytes 32c..32c+31 of qs hold sub-blocks 2c, 2c+1
    sc, mn = _q4_k_scales(blocks[:, 4:16])
    qs = blocks[:, 16:144].reshape(-1, 4, 32)
    codes = np.concatenate([qs & 0xF, qs >> 4], axis=2).reshape(-1, 256)
    return codes, d * sc, -(_f16(blocks, 2)[:, None] * mn), 4


def _q6_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Q6_K: 256 6-bit values q - 32 in 16 groups of 16 with int8 scales, w = d * sc * (q - 32).

    Layout (ggml's block_q6_K): ql[128] low nibbles, qh[64] high 2-bit pairs, scales[16] int8, d fp16.
    Each 128-value half h uses ql[64h:64h+64] and qh[32h:32h+32]: value 32j + l (j = 0..3, l = 0..31)
    takes the low (j < 2) or high (j >= 2) nibble of ql[64h + l + 32 (j % 2)] and bits 2j..2j+1 of qh[32h + l].
    Codes are q (0..63, an 8-bit container), scale d * sc, offset -32 d * sc.
    """
    ql, qh = blocks[:, 0:128].reshape(-1, 2, 2, 32), blocks[:, 128:192].reshape(-1, 2, 1, 32)
    low = np.concatenate([ql & 0xF, ql >> 4], axis=2)  # [B, half, j, l]: nibble j // 2 of ql byte (j % 2)
    high = (qh >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
    codes = (low | (high << 4)).reshape(-1, 256)
    scale = _f16(blocks, 208)[:, None] * blocks[:, 192:208].view(np.int8).astype(np.float32)
    return codes, scale, -32 * scale, 8


def gguf_quant_parts(t, path: str) -> QuantParts:
    """A quantized GGUF tensor's blocks as :class:`QuantParts` ``[N, K]``, without a dense copy.

    The block count is checked against the tensor's shape before anything is read, so a truncated or
    inconsistent file fails here rather than reading past its data.
    """
    kind = t.tensor_type.name
    elems, nbytes = KEPT_TYPES[kind]
    k, n = (int(x) for x in t.shape[:2])
    raw = np.asarray(t.data).reshape(-1)
    if k % elems or raw.size != n * (k // elems) * nbytes:
        raise ModelError(f"{path}: tensor {t.name} ({kind}, shape [{n}, {k}]) has {raw.size} bytes of blocks, "
                         f"expected {n * (k // max(elems, 1)) * nbytes}: the file is truncated or corrupt")
    codes, scales, offsets, bits = _decode_blocks(kind, raw.view(np.uint8).reshape(-1, nbytes))
    group = elems // scales.shape[1]
    as_rows = lambda a, width, dt: torch.from_numpy(np.ascontiguousarray(a.reshape(n, width), dtype=dt))  # noqa: E731
    return QuantParts(as_rows(codes, k, np.uint8), as_rows(scales, k // group, np.float32),
                      as_rows(offsets, k // group, np.float32), bits, group, kind)


def _dense(t, path: str, dtype: torch.dtype) -> torch.Tensor:
    import gguf

    try:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
    except Exception as err:
        raise ModelError(f"{path}: cannot dequantise {t.name} ({t.tensor_type.name}): {err}") from None
    data = np.ascontiguousarray(data)
    if not data.flags.writeable:  # unquantised tensors are views of the read-only memory map
        data = data.copy()
    return torch.from_numpy(data.reshape(*reversed(t.shape.tolist()))).to(dtype)


def iter_gguf_tensors(reader, path: str, cfg: dict, dtype: torch.dtype,
                      keep_types: tuple[str, ...] = ()) -> Iterator[NamedTensor]:
    """(file, HF name, tensor) for every GGUF tensor. Projection weights of a type in ``keep_types``
    come as :class:`QuantParts`; every other tensor is dequantised to ``dtype``."""
    permute = cfg["model_type"] in ("llama", "mistral", "mixtral")
    dense_types = set()
    for t in reader.tensors:
        hf = _hf_name(t.name, path, cfg["model_type"])
        if hf is None:
            continue
        if "{e}" in hf:  # stacked experts: dense, one tensor per expert (the loader stacks them its own way)
            for expert, w in enumerate(_dense(t, path, dtype)):
                yield path, hf.format(e=expert), w
            continue
        quantized = t.tensor_type.name not in ("F32", "F16", "BF16", "F64")
        if hf.endswith(_PROJECTIONS) and t.tensor_type.name in keep_types:
            w = gguf_quant_parts(t, path)
        else:
            if keep_types and quantized:
                dense_types.add(f"{t.tensor_type.name} ({'embeddings' if 'embed' in hf or 'lm_head' in hf else hf})")
            w = _dense(t, path, dtype)
        if permute and hf.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg["num_attention_heads"] if hf.endswith("q_proj.weight") else \
                cfg.get("num_key_value_heads", cfg["num_attention_heads"])
            w = _unpermute(w, heads) if isinstance(w, torch.Tensor) else w.rows(_unpermute_rows(w.shape[0], heads))
        yield path, hf, w
    if dense_types:
        log.info("%s: dequantised at load (not kept quantized): %s", path, ", ".join(sorted(dense_types)[:6]))


# llama.cpp's token types (gguf.TokenType)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6


def gguf_tokenizer(reader, path: str) -> Tokenizer:
    """The GGUF's tokenizer: byte-level BPE (llama.cpp's ``gpt2`` type: vocabulary and merges) or SentencePiece BPE
    (``llama``: Llama 2, Mistral, Mixtral, Phi-3, Gemma; vocabulary and scores)."""
    from tokenizers import AddedToken

    kind = _field(reader, "tokenizer.ggml.model")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type", [])
    if kind == "gpt2":
        backend = _byte_level_bpe(reader, tokens)
    elif kind == "llama":
        backend = _sentencepiece_bpe(reader, tokens, types)
    else:
        raise ModelError(f"{path}: GGUF tokenizer type {kind!r} is not supported (byte-level BPE 'gpt2' and "
                         "SentencePiece BPE 'llama' are)")
    # control and user-defined tokens are special tokens, matched before BPE
    backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i, kind in enumerate(types) if kind in (_CONTROL, _USER_DEFINED)])

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


def _byte_level_bpe(reader, tokens: list[str]):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", [])]
    backend = HFTokenizer(models.BPE(vocab={tok: i for i, tok in enumerate(tokens)}, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return backend




def _sentencepiece_merges(vocab: dict[str, int], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """SentencePiece BPE keeps no merge list: it joins the adjacent pair whose joined piece scores highest. As
    ranked merges: every split of a normal piece into two pieces of the vocabulary, ordered by that piece's score
    (ties by id), which is the order SentencePiece would join them in."""
    ranked = []
    for piece, i in vocab.items():
        if types and types[i] != _NORMAL:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[i], i, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _sentencepiece_bpe(reader, tokens: list[str], types: list[int]):
    """SentencePiece BPE as llama.cpp runs it: spaces as U+2581 (with one prepended unless the file says
    ``add_space_prefix`` false, as Gemma's do), pieces joined by score, bytes of unknown characters as <0xNN>."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers

    scores = _field(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
    unk = _field(reader, "tokenizer.ggml.unknown_token_id")
    unk = tokens[unk] if unk is not None and 0 <= unk < len(tokens) else next(
        (t for t, k in zip(tokens, types) if k == _UNKNOWN), None)
    prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix", True))
    vocab = {t: i for i, t in enumerate(tokens)}
    model = models.BPE(vocab=vocab, merges=_sentencepiece_merges(vocab, scores, types), unk_token=unk,
                       byte_fallback=_BYTE in types, fuse_unk=True)
    backend = HFTokenizer(model)
    steps = [normalizers.Prepend("\u2581")] if prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "\u2581")])
    decode = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(decode + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return backend


def gguf_eos_ids(reader) -> list[int]:
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    return [eos] if eos is not None else []


def gguf_adds_bos(reader) -> bool:
    return bool(_field(reader, "tokenizer.ggml.add_bos_token", False))
