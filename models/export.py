"""Write a loaded Llama-family model as a Hugging Face folder (config, safetensors, tokenizer).

Used to hand the same weights to other servers (benchmarks/peers): a GGUF
dequantised by our loader becomes a folder any transformers-compatible server
reads. ``python -m models.export SOURCE OUT_DIR``.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from .config import DecoderConfig
from .loader import LoadedModel, load_model


def llama_state_dict(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    """Our parameters under Hugging Face names, stacked projections split back apart."""
    cfg: DecoderConfig = loaded.config
    out = {}
    for name, p in loaded.model.named_parameters():
        t = p.detach().contiguous()
        if name.endswith("qkv_proj.weight") or name.endswith("qkv_proj.bias"):
            kind = name.rsplit(".", 1)[1]
            base = name[: -len(f"qkv_proj.{kind}")]
            for part, tensor in zip(("q_proj", "k_proj", "v_proj"), t.split([cfg.q_size, cfg.kv_size, cfg.kv_size])):
                out[f"{base}{part}.{kind}"] = tensor.contiguous()
        elif name.endswith("gate_up_proj.weight"):
            base = name[: -len("gate_up_proj.weight")]
            gate, up = t.chunk(2)
            out[base + "gate_proj.weight"], out[base + "up_proj.weight"] = gate.contiguous(), up.contiguous()
        else:
            out[name] = t
    return out


def llama_config_json(loaded: LoadedModel) -> dict:
    c: DecoderConfig = loaded.config
    return {"architectures": ["LlamaForCausalLM" if c.arch != "qwen2" else "Qwen2ForCausalLM"],
            "model_type": c.arch, "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_layers,
            "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim,
            "max_position_embeddings": c.max_position, "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
            "hidden_act": "silu", "tie_word_embeddings": c.tie_word_embeddings, "attention_bias": c.qkv_bias,
            "torch_dtype": str(loaded.dtype).removeprefix("torch."),
            "eos_token_id": list(loaded.eos_token_ids)[0] if loaded.eos_token_ids else None,
            "bos_token_id": loaded.tokenizer.token_id(loaded.tokenizer.bos_token)}


def export_hf_folder(loaded: LoadedModel, out_dir: str) -> str:
    from safetensors.torch import save_file

    if loaded.config.arch not in ("llama", "mistral", "qwen2"):
        raise ValueError(f"export supports Llama-family models, not {loaded.config.arch}")
    os.makedirs(out_dir, exist_ok=True)
    state = llama_state_dict(loaded)
    if loaded.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(llama_config_json(loaded), f, indent=2)
    write_tokenizer_files(loaded, out_dir)
    return out_dir


def write_tokenizer_files(loaded: LoadedModel, out_dir: str) -> None:
    """tokenizer.json, tokenizer_config.json (with the chat template) and generation_config.json."""
    tok = loaded.tokenizer
    tok.backend.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tok.bos_token, "eos_token": tok.eos_token,
                   "chat_template": tok.chat_template, "model_max_length": loaded.max_model_len,
                   **{k: v for k, v in tok.special_tokens.items() if k not in ("bos_token", "eos_token")}}, f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": list(loaded.eos_token_ids), "bos_token_id": tok.token_id(tok.bos_token)}, f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    print(export_hf_folder(load_model(args.source, dtype=args.dtype, quantization="none"), args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
