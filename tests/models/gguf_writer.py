"""Write a Hugging Face model as llama.cpp's converter lays it out (names, metadata, byte-level BPE tokenizer), so
GGUF loading is tested for architectures whose real GGUF files are not installable here."""
from __future__ import annotations

import json
import re

import numpy as np

# HF name -> llama.cpp name (the inverse of models/gguf_file.py's table, for the parts these tests write)
NAMES = [
    (r"^model\.embed_tokens\.weight$", "token_embd.weight"),
    (r"^model\.norm\.weight$", "output_norm.weight"),
    (r"^lm_head\.weight$", "output.weight"),
    (r"^model\.layers\.(\d+)\.input_layernorm\.weight$", r"blk.\1.attn_norm.weight"),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$", r"blk.\1.ffn_norm.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", r"blk.\1.attn_\2.\3"),
    (r"^model\.layers\.(\d+)\.self_attn\.o_proj\.weight$", r"blk.\1.attn_output.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.([qk])_norm\.weight$", r"blk.\1.attn_\2_norm.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight$", r"blk.\1.ffn_\2.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.gate\.weight$", r"blk.\1.ffn_gate_inp.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.qkv_proj\.weight$", r"blk.\1.attn_qkv.weight"),  # Phi-3
    (r"^model\.layers\.(\d+)\.mlp\.gate_up_proj\.weight$", r"blk.\1.ffn_up.weight"),
]
# Gemma 2/3's four norms a layer (llama.cpp's ffn_norm is their pre-feedforward norm), checked before NAMES
GEMMA_NAMES = [
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$", r"blk.\1.post_attention_norm.weight"),
    (r"^model\.layers\.(\d+)\.pre_feedforward_layernorm\.weight$", r"blk.\1.ffn_norm.weight"),
    (r"^model\.layers\.(\d+)\.post_feedforward_layernorm\.weight$", r"blk.\1.post_ffw_norm.weight"),
]


def _gemma_meta(writer, arch: str, cfg) -> None:
    """What llama.cpp's Gemma 2/3 converters write beyond the common keys: the window, soft-capping and (Gemma 3)
    the global layers' linear rotary scaling; the layer pattern and query scale are left to the reader's defaults."""
    writer.add_uint32(f"{arch}.attention.sliding_window", cfg.sliding_window)
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(cfg, key, None):
            writer.add_float32(f"{arch}.{key}", float(getattr(cfg, key)))
    full = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)
    if full.get("rope_type") == "linear":
        writer.add_string(f"{arch}.rope.scaling.type", "linear")
        writer.add_float32(f"{arch}.rope.scaling.factor", float(full["factor"]))


def write_gguf(path: str, arch: str, cfg, state: dict, tokenizer) -> None:
    """``state``: HF names -> tensors; per-expert MoE tensors are stacked into llama.cpp's ffn_*_exps."""
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    meta = {"context_length": cfg.max_position_embeddings, "block_count": cfg.num_hidden_layers,
            "feed_forward_length": cfg.intermediate_size, "embedding_length": cfg.hidden_size,
            "attention.head_count": cfg.num_attention_heads, "attention.head_count_kv": cfg.num_key_value_heads,
            "attention.key_length": head_dim}
    if arch != "phi3":
        meta["rope.dimension_count"] = head_dim
    for key, value in meta.items():
        writer.add_uint32(f"{arch}.{key}", int(value))
    rope = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)  # Gemma 3: the global layers' base
    writer.add_float32(f"{arch}.rope.freq_base", float(rope["rope_theta"]))
    if arch.startswith("gemma"):
        _gemma_meta(writer, arch, cfg)
    if arch == "phi3":  # the rotated part, the window, LongRoPE's factors as tensors and its original context
        writer.add_uint32(f"{arch}.rope.dimension_count", int(head_dim * rope.get("partial_rotary_factor", 1.0)))
        if cfg.sliding_window:
            writer.add_uint32(f"{arch}.attention.sliding_window", cfg.sliding_window)
        if rope.get("rope_type") == "longrope":
            writer.add_uint32(f"{arch}.rope.scaling.original_context_length", rope["original_max_position_embeddings"])
            writer.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32))
            writer.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32))
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", float(cfg.rms_norm_eps))
    experts = getattr(cfg, "num_experts", None) or getattr(cfg, "num_local_experts", None)
    if experts:
        writer.add_uint32(f"{arch}.expert_count", experts)
        writer.add_uint32(f"{arch}.expert_used_count", cfg.num_experts_per_tok)
    if getattr(cfg, "moe_intermediate_size", None):  # Qwen3-MoE (Mixtral's experts are feed_forward_length wide)
        writer.add_uint32(f"{arch}.expert_feed_forward_length", cfg.moe_intermediate_size)
        writer.add_bool(f"{arch}.expert_weights_norm", bool(cfg.norm_topk_prob))
    model = json.loads(tokenizer.backend.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in model["merges"]])
    writer.add_token_types([3 if t.startswith("<|") and t.endswith("|>") else 1 for t in tokens])
    writer.add_eos_token_id(tokens.index(tokenizer.eos_token))
    experts: dict[str, dict[int, np.ndarray]] = {}
    for name, tensor in state.items():
        fused = re.match(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up|down)_proj$", name)  # transformers 5
        if fused:
            layer, w = fused.group(1), tensor.float().numpy()  # [E, 2I, H] (gate rows, then up) / [E, H, I]
            if fused.group(2) == "down":
                writer.add_tensor(f"blk.{layer}.ffn_down_exps.weight", np.ascontiguousarray(w))
            else:
                half = w.shape[1] // 2
                writer.add_tensor(f"blk.{layer}.ffn_gate_exps.weight", np.ascontiguousarray(w[:, :half]))
                writer.add_tensor(f"blk.{layer}.ffn_up_exps.weight", np.ascontiguousarray(w[:, half:]))
            continue
        found = re.match(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$", name)
        if found:
            experts.setdefault(f"blk.{found.group(1)}.ffn_{found.group(3)}_exps.weight", {})[int(found.group(2))] = \
                tensor.float().numpy()
            continue
        if arch.startswith("gemma") and name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # the converter drops Gemma's (tied) lm_head
        table = GEMMA_NAMES + NAMES if arch.startswith("gemma") else NAMES
        target = next((re.sub(p, r, name) for p, r in table if re.match(p, name)), None)
        if target is None:
            raise KeyError(name)
        w = tensor.float().numpy()
        if arch.startswith("gemma") and name.endswith("norm.weight"):  # llama.cpp bakes Gemma's 1 + w into the file
            w = w + 1
        if arch == "llama" and re.search(r"attn_[qk]\.weight$", target):  # llama.cpp interleaves rotary pairs
            heads = cfg.num_attention_heads if "attn_q" in target else cfg.num_key_value_heads
            w = w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        writer.add_tensor(target, np.ascontiguousarray(w))
    for target, parts in experts.items():
        writer.add_tensor(target, np.stack([parts[e] for e in sorted(parts)]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
