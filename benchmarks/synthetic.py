"""Random models with real architectures' shapes, saved as Hugging Face folders, with a synthetic word-level
tokenizer — everything the GPU check needs, built from transformers and tokenizers alone (the GPU image
has no gguf and no model packages, and no internet).

    SHAPES: smollm2-135m (SmolLM2-135M), llama-1b (Llama-3.2-1B with SmolLM2's 49,152-token vocabulary),
            t5 / bart / bert (shrunk, head dim 64 kept, as the CPU tests use), tiny-llama (smoke runs)
"""
from __future__ import annotations

import os

import torch

VOCAB = 49152  # SmolLM2's vocabulary size


def word_tokenizer(vocab_size: int):
    """A whitespace word-level tokenizer over ``<unk> <s> </s> w3 w4 ...``: real detokenisation work, no
    files to download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tok


def config(shape: str):
    from transformers import BartConfig, BertConfig, LlamaConfig, T5Config

    if shape == "smollm2-135m":
        return LlamaConfig(vocab_size=VOCAB, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                           num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                           rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1,
                           eos_token_id=2)
    if shape == "llama-1b":
        return LlamaConfig(vocab_size=VOCAB, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                           num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                           rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1,
                           eos_token_id=2, rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                         "original_max_position_embeddings": 8192})
    if shape == "tiny-llama":  # smoke runs
        return LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    if shape == "t5":
        return T5Config(vocab_size=1024, d_model=256, d_kv=64, d_ff=512, num_layers=2, num_decoder_layers=2,
                        num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                        decoder_start_token_id=0, eos_token_id=2, pad_token_id=0)
    if shape == "bart":
        return BartConfig(vocab_size=1024, d_model=256, encoder_layers=2, decoder_layers=2,
                          encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=512,
                          decoder_ffn_dim=512, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                          pad_token_id=0, decoder_start_token_id=2, forced_eos_token_id=None)
    if shape == "bert":
        return BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                          intermediate_size=1536, max_position_embeddings=512)
    raise ValueError(f"unknown shape {shape!r}")


def save_random(shape: str, folder: str, seed: int = 0):
    """Save a random ``shape`` model and the word tokenizer in ``folder``; returns the transformers model
    (float32, CPU)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cfg = config(shape)
    torch.manual_seed(seed)
    cls = {"t5": AutoModelForSeq2SeqLM, "bart": AutoModelForSeq2SeqLM, "bert": AutoModel}.get(shape,
                                                                                           AutoModelForCausalLM)
    model = cls.from_config(cfg).eval()
    model.save_pretrained(folder)
    word_tokenizer(cfg.vocab_size).save(os.path.join(folder, "tokenizer.json"))
    return model


def weight_bytes(model) -> int:
    """Bytes one decode step reads: every parameter once (tied embeddings counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total
