"""T5 (ReLU and gated-GELU), BART, M2M100/NLLB and Marian: random small models from real configs against
transformers."""
from __future__ import annotations

import pytest
import torch

from models import load_model
from models.encoder_decoder import CrossAttention
from models.metadata import AttentionMetadata

from .helpers import encdec_greedy, encode_packed

PROMPTS = [[13, 200, 7, 99, 5, 1], [42, 1], list(range(300, 341)) + [1]]


def t5(ffn):
    from transformers import T5Config

    # t5-small / t5-v1_1-small shapes, shrunk in depth and width; head_dim (d_kv) 64 kept
    return T5Config(vocab_size=1024, d_model=256, d_kv=64, d_ff=512, num_layers=2, num_decoder_layers=2,
                    num_heads=4, feed_forward_proj=ffn, relative_attention_num_buckets=32,
                    relative_attention_max_distance=20, tie_word_embeddings=ffn == "relu",
                    decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)


def bart():
    from transformers import BartConfig

    # facebook/bart-base shapes shrunk; head_dim 64 kept
    return BartConfig(vocab_size=1024, d_model=256, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                      decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512,
                      max_position_embeddings=128, scale_embedding=True, decoder_start_token_id=2,
                      eos_token_id=2, bos_token_id=0, pad_token_id=1, forced_bos_token_id=None,
                      forced_eos_token_id=None)


def nllb():
    from transformers import M2M100Config

    # facebook/nllb-200-distilled-600M's config shrunk (1024 wide, 12 + 12 layers, 16 heads); head_dim 64 kept
    return M2M100Config(vocab_size=1024, d_model=256, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512,
                        max_position_embeddings=128, scale_embedding=True, activation_function="relu",
                        decoder_start_token_id=2, eos_token_id=2, bos_token_id=0, pad_token_id=1)


def marian():
    from transformers import MarianConfig

    # Helsinki-NLP/opus-mt-en-fr's config shrunk (512 wide, 6 + 6 layers, 8 heads); head_dim 64 kept; the decoder
    # starts from the padding token, as Marian's does
    return MarianConfig(vocab_size=1024, d_model=256, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512,
                        max_position_embeddings=128, scale_embedding=True, activation_function="swish",
                        pad_token_id=1023, decoder_start_token_id=1023, eos_token_id=0,
                        share_encoder_decoder_embeddings=True, forced_eos_token_id=None)


def noisy_norms_and_biases(hf) -> None:
    """Fresh norms are 1 and biases 0: randomise them (and T5's bias table) so they are exercised."""
    for name, p in hf.named_parameters():
        if p.dim() == 1 or "relative_attention_bias" in name:
            p.add_(torch.randn_like(p) * 0.5)
    if hasattr(hf, "final_logits_bias"):
        hf.final_logits_bias.normal_(0, 0.5)


def random_seq2seq(kind: str, folder, tokenizer, seed: int, perturb=None):
    """A random "t5-relu" / "t5-gated-gelu" / "bart" / "nllb" / "marian" saved in ``folder`` with ``tokenizer``:
    (kernelserve's load of it, the transformers model)."""
    from transformers import AutoModelForSeq2SeqLM

    configs = {"bart": bart, "nllb": nllb, "marian": marian}
    cfg = configs[kind]() if kind in configs else t5(kind.removeprefix("t5-"))
    torch.manual_seed(seed)
    hf = AutoModelForSeq2SeqLM.from_config(cfg).eval()
    if perturb is not None:
        with torch.no_grad():
            perturb(hf)
    hf.save_pretrained(folder)
    tokenizer.backend.save(str(folder / "tokenizer.json"))
    return load_model(str(folder)), hf


@pytest.fixture(scope="module", params=["t5-relu", "t5-gated-gelu", "bart", "nllb", "marian"])
def pair(request, tmp_path_factory, byte_bpe_tokenizer):
    ours, hf = random_seq2seq(request.param, tmp_path_factory.mktemp(request.param), byte_bpe_tokenizer, 0,
                              noisy_norms_and_biases)
    assert ours.is_encoder_decoder and ours.kind == "generate"
    return ours, hf


def test_encoder_matches(pair):
    ours, hf = pair
    _, outputs = encode_packed(ours.model, PROMPTS)
    for ids, out in zip(PROMPTS, outputs):
        with torch.no_grad():
            ref = hf.get_encoder()(torch.tensor([ids])).last_hidden_state[0]
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_teacher_forced_decoder_logits_match(pair):
    ours, hf = pair
    model = ours.model
    decoder_ids = [model.cfg.decoder_start_token_id, 17, 3, 250, 9]
    cross_kv, _ = encode_packed(model, PROMPTS[:1])
    n = len(decoder_ids)
    with torch.no_grad():
        hidden = model(torch.tensor(decoder_ids), torch.arange(n), AttentionMetadata.for_sequences([n]), None,
                       CrossAttention.pack(cross_kv, [n]))
        ref = hf(input_ids=torch.tensor([PROMPTS[0]]), decoder_input_ids=torch.tensor([decoder_ids])).logits[0]
    torch.testing.assert_close(model.logits(hidden), ref, atol=2e-4, rtol=1e-4)


def test_greedy_generation_matches_transformers(pair):
    ours, hf = pair
    eos = ours.model.cfg.eos_token_id
    mine = encdec_greedy(ours.model, PROMPTS, 12, eos)
    for ids, got in zip(PROMPTS, mine):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, num_beams=1)[0, 1:].tolist()
        assert got == ref
