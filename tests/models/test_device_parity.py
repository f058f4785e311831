"""Model parity on the serving device (CUDA when there is one, else the CPU) in bfloat16, against
transformers on the same device and weights: random SmolLM2-shaped Llama, T5, BART and BERT built by
benchmarks/synthetic.py (no downloads, no model packages: this runs in ``make gpu-check`` on a bare GPU image).

Tolerances: each bf16 rounding has relative error up to 2^-8; a layer adds a few roundings whose errors add
like a random walk across layers, so the relative L2 error of the outputs is bounded by
``4 * 2^-8 * sqrt(layers + 1)`` (four standard deviations). Greedy tokens follow the top-5 rule: each of our
tokens is among transformers' five most likely at that position (teacher-forced on our tokens), since two
bf16 implementations may break near-ties differently.
"""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks.synthetic import save_random
from models import load_model
from models.metadata import AttentionMetadata
from service.engine import EngineConfig, LLMEngine, SamplingParams

pytestmark = pytest.mark.slow
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BF16_UNIT = 2.0 ** -8


def bound(layers: int) -> float:
    return 4 * BF16_UNIT * math.sqrt(layers + 1)


def rel_l2(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.fixture(scope="module", params=["smollm2-135m", "t5", "bart"])
def generator_pair(request, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp(request.param))
    hf = save_random(request.param, folder, seed=1)
    hf = hf.to(DEVICE, torch.bfloat16)
    return request.param, load_model(folder, dtype="bfloat16", device=DEVICE), hf


def prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (5, 37, 120)]


@torch.no_grad()
def hf_logits(hf, prompt: list[int], continuation: list[int], seq2seq: bool, start: int | None) -> torch.Tensor:
    """transformers' logits predicting each continuation token (and the one after)."""
    if seq2seq:
        src = torch.tensor([prompt], device=DEVICE)
        dec = torch.tensor([[start] + continuation], device=DEVICE)
        return hf(input_ids=src, decoder_input_ids=dec).logits[0].float()
    ids = torch.tensor([prompt + continuation], device=DEVICE)
    return hf(input_ids=ids).logits[0, len(prompt) - 1:].float()


def test_generators_match_transformers_on_the_device(generator_pair):
    shape, ours, hf = generator_pair
    seq2seq = ours.is_encoder_decoder
    engine = LLMEngine(ours, EngineConfig(max_model_len=512, kv_cache_memory=256 * 2**20))
    batch = prompts(ours.config.vocab_size)
    outs = engine.generate(batch, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=20,
                                                 skip_special_tokens=False))
    layers = hf.config.num_hidden_layers if not seq2seq else 2 * hf.config.num_layers if shape == "t5" else 4
    start = hf.config.decoder_start_token_id if seq2seq else None
    for prompt, out in zip(batch, outs):
        tokens = out[0].token_ids
        ref = hf_logits(hf, prompt, tokens, seq2seq, start)
        for i, token in enumerate(tokens):  # the top-5 rule, teacher-forced on our tokens
            assert token in ref[i].topk(5).indices.tolist(), f"{shape}: token {i} ({token}) not in transformers' top 5"
    if seq2seq:  # the engine's top-20 first-step log-probabilities against transformers', centred: values
        # near log(1/V) would hide any error in their spread, which is what the model computes
        first = dict(outs[0][0].logprobs[0].top)
        ref = hf_logits(hf, batch[0], [], True, start)[0].log_softmax(-1)
        ref_vec = ref[torch.tensor(list(first.keys()), device=DEVICE)].cpu()
        mine = torch.tensor(list(first.values()))
        assert rel_l2(mine - mine.mean(), ref_vec - ref_vec.mean()) <= bound(layers), shape
        return
    with torch.no_grad():  # every position's logits over the whole vocabulary, centred per position
        for prompt in batch:
            ids = torch.tensor(prompt, device=DEVICE)
            hidden = ours.model(ids, torch.arange(len(prompt), device=DEVICE),
                                AttentionMetadata.for_sequences([len(prompt)], DEVICE))
            mine = ours.model.logits(hidden).float()
            ref = hf(input_ids=ids[None]).logits[0].float()
            err = rel_l2(mine - mine.mean(-1, keepdim=True), ref - ref.mean(-1, keepdim=True))
            assert err <= bound(layers), (shape, err)


@torch.no_grad()
def test_bert_embeddings_match_transformers_on_the_device(tmp_path):
    hf = save_random("bert", str(tmp_path), seed=2).to(DEVICE, torch.bfloat16)
    ours = load_model(str(tmp_path), dtype="bfloat16", device=DEVICE)

    lengths = [7, 30, 64]
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, 30522, (n,), generator=g) for n in lengths]
    flat = torch.cat(seqs).to(DEVICE)
    positions = torch.cat([torch.arange(n) for n in lengths]).to(DEVICE)
    hidden = ours.model(flat, positions, AttentionMetadata.for_sequences(lengths, DEVICE))
    start = 0
    for s, n in zip(seqs, lengths):
        ref = hf(input_ids=s[None].to(DEVICE)).last_hidden_state[0]
        assert rel_l2(hidden[start:start + n].float(), ref.float()) <= bound(hf.config.num_hidden_layers)
        start += n
