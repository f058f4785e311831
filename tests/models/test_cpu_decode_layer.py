"""The fused C++ decode layer (kernels/cpu/decoder_layer.cpp) against the layer's Python forward.

A decode-only CPU step runs each Llama-family layer as one C++ call; a step that also prefills runs the
Python layer. Both must give the same bits, or a sequence's tokens would depend on what else its step held
(batch invariance): hidden states and the written K/V cache are compared with torch.equal, over every
Llama-family quirk the fused layer reads (GQA, qkv bias, Qwen3's q/k norms, SmolLM3's layers without rotary,
Phi-4-mini's partial LongRoPE, Mistral's sliding window crossed), float32 and bfloat16, dense, RTN int4/int8
and the shipped Q4_1/Q8_0 GGUF.
"""
from __future__ import annotations

import pytest
import torch

import kernels
from models import load_model
from models.llama import LlamaForCausalLM

from .helpers import PagedCache, step_metadata
from .test_random_models import llama_family, save_random

pytestmark = pytest.mark.skipif(not kernels.cpu_kernels_available(), reason="the C++ CPU kernels are not built")

KINDS = ["llama-gqa", "qwen2-bias", "qwen3", "smollm3", "phi4-mini", "mistral-window"]
PROMPTS = [list(range(3, 24)), [9, 8, 7], list(range(40, 52))]


@pytest.fixture(scope="module", params=KINDS)
def folder(request, tmp_path_factory, byte_bpe_tokenizer):
    path = tmp_path_factory.mktemp(request.param)
    save_random(llama_family(request.param), path, byte_bpe_tokenizer)
    return str(path)


@torch.no_grad()
def decode_steps(model, fused: bool, steps: int = 4):
    """Prefill the prompts, then ``steps`` decode-only steps of all three; the hidden states of each decode
    step and the final caches. ``fused=False`` makes every layer run its Python forward."""
    if not fused:
        model._fused_decode_packs = lambda h, meta, caches: [None] * len(model.model.layers)
    dtype = next(model.parameters()).dtype
    cache = PagedCache(model.cfg, len(PROMPTS), 64, dtype=dtype)
    meta = step_metadata(cache, [(i, 0, len(p)) for i, p in enumerate(PROMPTS)], [])
    model(torch.tensor([t for p in PROMPTS for t in p]), torch.cat([torch.arange(len(p)) for p in PROMPTS]), meta,
          cache.layers)
    outputs = []
    for step in range(steps):
        pos = [len(p) + step for p in PROMPTS]
        meta = step_metadata(cache, [], list(enumerate(pos)))
        outputs.append(model(torch.tensor([11 + step, 500, 77]), torch.tensor(pos), meta, cache.layers))
    if not fused:
        del model._fused_decode_packs
    return outputs, cache.layers


def assert_fused_equals_python(model):
    with kernels.trusted_calls():  # as the engine serves (checked calls run the Python layers)
        packs = model._fused_decode_packs(torch.zeros(1, dtype=next(model.parameters()).dtype),
                                          step_metadata(PagedCache(model.cfg, 1, 16), [], [(0, 0)]), [None])
        assert all(p is not None for p in packs)  # every layer runs fused
        fused, fused_cache = decode_steps(model, True)
        python, python_cache = decode_steps(model, False)
    for a, b in zip(fused, python):
        assert torch.equal(a, b)
    for (ka, va), (kb, vb) in zip(fused_cache, python_cache):
        assert torch.equal(ka, kb) and torch.equal(va, vb)


@pytest.mark.parametrize("dtype, quantization", [("float32", "none"), ("bfloat16", "none"), ("bfloat16", "int4"),
                                                 ("float32", "int8")])
def test_fused_decode_layer_equals_the_python_layer(folder, dtype, quantization):
    assert_fused_equals_python(load_model(folder, dtype=dtype, quantization=quantization).model)


def test_fused_decode_layer_on_the_shipped_gguf(smollm_path):
    """SmolLM2's Q4_1 projections and tied Q8_0 embedding / LM head, bf16 activations (the CPU default)."""
    model = load_model("HuggingFaceTB/SmolLM2-135M-Instruct", dtype="auto").model
    assert isinstance(model, LlamaForCausalLM)
    assert_fused_equals_python(model)


def test_checked_calls_run_the_python_layers(folder):
    """Outside trusted calls (warm-up, direct use) the launchers check their arguments: no fused layer then."""
    model = load_model(folder, dtype="float32").model
    meta = step_metadata(PagedCache(model.cfg, 1, 16), [], [(0, 0)])
    assert model._fused_decode_packs(torch.zeros(1), meta, [None]) == [None] * len(model.model.layers)


def test_layers_the_fused_path_cannot_run_fall_back_one_by_one(folder):
    """A layer whose MLP is not the Llama MLP (MoE) or whose weights are in another dtype runs in Python."""
    model = load_model(folder, dtype="float32").model
    assert model.model.layers[0].cpu_decode_pack(torch.bfloat16) is None  # fp32 weights, bf16 activations
    assert model.model.layers[0].cpu_decode_pack(torch.float32) is not None
