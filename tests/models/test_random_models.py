"""Small random models built from real configs (shrunk in depth and width, head_dim 64 kept),
saved as Hugging Face folders and loaded through kernelserve's loader, against transformers."""
from __future__ import annotations

import pytest
import torch

from models import load_model

from .helpers import first_divergence_ok, full_logits, greedy_generate

PROMPTS = [[5, 17, 912, 4, 4, 87], [300], list(range(100, 129)), [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 42]]


def llama_family(kind):
    from transformers import LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, Qwen3Config, SmolLM3Config

    common = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5)
    if kind == "llama-gqa":
        return LlamaConfig(num_key_value_heads=2, tie_word_embeddings=False, **common)
    if kind == "llama3-scaled":
        return LlamaConfig(num_key_value_heads=1, rope_theta=500000.0, tie_word_embeddings=True,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64}, **common)
    if kind == "qwen2-bias":
        return Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **common)
    if kind == "qwen3":  # Qwen3-0.6B's layout: head_dim 128 decoupled from hidden / heads, q/k norms, GQA
        return Qwen3Config(num_key_value_heads=2, head_dim=128, tie_word_embeddings=True, rope_theta=1000000.0,
                           **{**common, "rms_norm_eps": 1e-6})
    if kind == "smollm3":  # SmolLM3-3B: no rotary in every fourth layer
        return SmolLM3Config(num_key_value_heads=2, no_rope_layer_interval=4, rope_theta=5000000.0, pad_token_id=0,
                             **common)
    if kind == "phi4-mini":  # Phi-4-mini: LongRoPE over three quarters of each head, fused qkv / gate_up, tied
        factors = [1.0 + 0.05 * i for i in range(24)]  # rot_dim 48 -> 24 frequencies
        return Phi3Config(num_key_value_heads=2, partial_rotary_factor=0.75, tie_word_embeddings=True,
                          original_max_position_embeddings=128, pad_token_id=0,
                          rope_parameters={"rope_type": "longrope", "short_factor": factors, "rope_theta": 10000.0,
                                           "long_factor": [2 * f for f in factors], "partial_rotary_factor": 0.75,
                                           "original_max_position_embeddings": 128},
                          **{**common, "max_position_embeddings": 2048})
    if kind == "mistral-window":  # Mistral-7B-v0.1's sliding window (4096), shrunk to 8 tokens
        return MistralConfig(num_key_value_heads=2, sliding_window=8, **common)
    return MistralConfig(num_key_value_heads=2, sliding_window=None, **common)


def gemma_family(kind):
    """google/gemma-2-2b and gemma-3-1b-pt configs shrunk (width 256, head_dim 64) with 8-token sliding windows, so
    prompts and generations cross them in prefill and in decode; query_pre_attn_scalar 256 as the real ones."""
    from transformers import Gemma2Config, Gemma3TextConfig

    common = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_attention_heads=4, head_dim=64,
                  max_position_embeddings=512, query_pre_attn_scalar=256, sliding_window=8, rms_norm_eps=1e-6,
                  hidden_activation="gelu_pytorch_tanh")
    if kind == "gemma2":
        return Gemma2Config(num_hidden_layers=4, num_key_value_heads=2, attn_logit_softcapping=50.0,
                            final_logit_softcapping=30.0, **common)
    return Gemma3TextConfig(num_hidden_layers=6, num_key_value_heads=1, sliding_window_pattern=6,
                            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0,
                                                                "rope_theta": 1000000.0},
                                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                            **common)


def moe_family(kind):
    """Mixtral-8x7B and Qwen3-30B-A3B configs shrunk: 8 experts, top-2, head_dim 64; Qwen3-MoE with one dense
    layer (mlp_only_layers) and norm_topk_prob false so both routing rules and both layer kinds are exercised."""
    from transformers import MixtralConfig, Qwen3MoeConfig

    common = dict(vocab_size=1024, hidden_size=256, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5)
    if kind == "mixtral":
        return MixtralConfig(intermediate_size=192, num_local_experts=8, num_experts_per_tok=2, sliding_window=None,
                             **common)
    return Qwen3MoeConfig(intermediate_size=384, moe_intermediate_size=96, num_experts=8, num_experts_per_tok=2,
                          head_dim=64, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[1], **common)


def gpt2_config():
    from transformers import GPT2Config

    return GPT2Config(vocab_size=1024, n_embd=256, n_layer=2, n_head=4, n_positions=512)


def save_random(cfg, folder, tokenizer):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    # biases and norms start at 0/1: randomise them so they are exercised
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    tokenizer.backend.save(str(folder / "tokenizer.json"))
    return model


@pytest.fixture(scope="module", params=["llama-gqa", "llama3-scaled", "qwen2-bias", "qwen3", "mistral", "gpt2",
                                        "gemma2", "gemma3", "smollm3", "phi4-mini", "mistral-window", "mixtral",
                                        "qwen3-moe"])
def random_decoder(request, tmp_path_factory, byte_bpe_tokenizer):
    folder = tmp_path_factory.mktemp(request.param)
    kind = request.param
    cfg = (gpt2_config() if kind == "gpt2" else gemma_family(kind) if kind.startswith("gemma")
           else moe_family(kind) if kind in ("mixtral", "qwen3-moe") else llama_family(kind))
    hf = save_random(cfg, folder, byte_bpe_tokenizer)
    return load_model(str(folder)), hf


def test_logits_match(random_decoder):
    ours, hf = random_decoder
    for ids in PROMPTS:
        with torch.no_grad():
            theirs = hf(torch.tensor([ids])).logits[0]
        torch.testing.assert_close(full_logits(ours.model, ids), theirs, atol=2e-4, rtol=1e-4)


def test_greedy_generation_matches(random_decoder):
    ours, hf = random_decoder
    outputs = greedy_generate(ours.model, PROMPTS, 20)
    for ids, mine in zip(PROMPTS, outputs):
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, min_new_tokens=20,
                              return_dict_in_generate=True, output_logits=True, pad_token_id=0)
        theirs = out.sequences[0, len(ids):].tolist()
        if mine != theirs:
            assert first_divergence_ok(mine, theirs, full_logits(ours.model, ids + mine)[len(ids) - 1:],
                                       torch.cat(out.logits))


def test_batched_equals_single(random_decoder):
    ours, _ = random_decoder
    together = greedy_generate(ours.model, PROMPTS, 10)
    alone = [greedy_generate(ours.model, [p], 10)[0] for p in PROMPTS]
    assert together == alone


def test_bfloat16_load_tracks_float32(random_decoder):
    ours, _ = random_decoder
    bf16 = load_model(ours.source, dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    ref = full_logits(ours.model, PROMPTS[0])
    got = full_logits(bf16.model, PROMPTS[0])
    # bf16 weights and activations: logits within a few percent of their spread
    # (MoE: a router near a tie picks another expert for a token in bf16, a jump of its whole contribution; measured
    # 8.8% of the spread on Mixtral's shape, where float32 matches transformers exactly)
    bound = (0.12 if ours.config.num_experts else 0.05) * ref.abs().max()
    assert (got - ref).abs().max() <= bound


def test_random_bert_matches_transformers(tmp_path, minilm_path):
    from transformers import BertConfig, BertModel
    from tokenizers import Tokenizer as HFTok

    cfg = BertConfig(vocab_size=30522, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=512, max_position_embeddings=128)
    torch.manual_seed(0)
    hf = BertModel(cfg, add_pooling_layer=True).eval()
    hf.save_pretrained(tmp_path)
    HFTok.from_file(f"{minilm_path}/tokenizer.json").save(str(tmp_path / "tokenizer.json"))
    ours = load_model(str(tmp_path))
    from models import AttentionMetadata

    ids = [[101, 2023, 2003, 1037, 3231, 102], [101, 2460, 102], list(range(1000, 1040))]
    lengths = [len(i) for i in ids]
    with torch.no_grad():
        hidden = ours.model(torch.tensor(sum(ids, [])), torch.cat([torch.arange(n) for n in lengths]),
                            AttentionMetadata.for_sequences(lengths))
    start = 0
    for seq in ids:
        with torch.no_grad():
            ref = hf(torch.tensor([seq])).last_hidden_state[0]
        torch.testing.assert_close(hidden[start:start + len(seq)], ref, atol=1e-4, rtol=1e-4)
        start += len(seq)


@pytest.mark.parametrize("kind", ["phi4-mini", "yarn"])
def test_scaled_rotary_tables_match_transformers(kind):
    """LongRoPE: transformers' short factors inside the original context and long ones past it (per position
    here: transformers switches a whole sequence once it is longer), cos and sin times the attention factor.
    YaRN (Qwen3's long-context setting): frequencies and mscale."""
    from transformers import Qwen3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from models.config import config_from_hf

    if kind == "yarn":
        cfg = Qwen3Config(vocab_size=1024, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                          num_hidden_layers=2,
                          max_position_embeddings=512, rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                                                        "rope_theta": 1000000.0,
                                                                        "original_max_position_embeddings": 128})
    else:
        cfg = llama_family(kind)
    ours = config_from_hf(cfg.to_dict())
    table = ours.cos_sin_cache()
    rot = ours.rot_dim
    assert table.shape == (ours.max_position, rot)
    original = ours.rope_scaling.original_max_position
    inside, factor = ROPE_INIT_FUNCTIONS[kind if kind == "yarn" else "longrope"](cfg, "cpu", seq_len=None)
    beyond, _ = ROPE_INIT_FUNCTIONS[kind if kind == "yarn" else "longrope"](cfg, "cpu", seq_len=original + 1)
    assert factor != 1.0
    for positions, inv in ((torch.arange(0, original), inside), (torch.arange(original, ours.max_position), beyond)):
        angles = positions[:, None].float() * inv[None, :]
        expected = torch.cat([angles.cos(), angles.sin()], -1) * factor
        torch.testing.assert_close(table[positions], expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["mixtral", "qwen3-moe"])
def test_moe_routing_matches_transformers_token_by_token(kind, tmp_path, byte_bpe_tokenizer, monkeypatch):
    """Every MoE layer picks the same experts with the same weights for every token as transformers' router."""
    import kernels
    import models.moe

    hf = save_random(moe_family(kind), tmp_path, byte_bpe_tokenizer)
    ours = load_model(str(tmp_path))
    theirs, mine = [], []
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, i, out: theirs.append((out[1], out[2])))
             for layer in hf.model.layers if hasattr(layer.mlp, "gate")]
    real_route = kernels.moe_route
    monkeypatch.setattr(models.moe.kernels, "moe_route", lambda *a: mine.append(real_route(*a)) or mine[-1])
    ids = PROMPTS[2] + PROMPTS[0]
    with torch.no_grad():
        hf(torch.tensor([ids]))
    full_logits(ours.model, ids)
    for hook in hooks:
        hook.remove()
    assert len(mine) == len(theirs) == sum(ours.model.is_moe(i) for i in range(ours.config.num_layers))
    for (w_ours, e_ours), (w_theirs, e_theirs) in zip(mine, theirs):
        assert e_ours.tolist() == e_theirs.tolist()
        torch.testing.assert_close(w_ours, w_theirs.float(), atol=1e-6, rtol=1e-5)


GGUF_ARCHS = {"qwen3": ("qwen3", "qwen3"), "qwen3-moe": ("qwen3moe", "qwen3_moe"), "mixtral": ("llama", "mixtral"),
              "phi4-mini": ("phi3", "phi3"), "gemma2": ("gemma2", "gemma2"), "gemma3": ("gemma3", "gemma3_text")}


@pytest.mark.parametrize("kind", list(GGUF_ARCHS))
def test_gguf_in_llama_cpp_layout_loads_back(kind, tmp_path, byte_bpe_tokenizer):
    """Qwen3, Qwen3-MoE, Mixtral, Phi-4-mini, Gemma 2 and Gemma 3 written as llama.cpp's converter writes them
    (q/k norms, the router, experts stacked in ffn_*_exps, Mixtral as "llama" with experts and its Q/K rows
    permuted, Phi-3's fused qkv and gate/up, LongRoPE factors as tensors, partial rotary; Gemma's four norms stored
    as 1 + w, its window on llama.cpp's default layer pattern, soft-capping, Gemma 3's linear scaling on the global
    layers only): the same logits as transformers, prompts crossing the 8-token windows."""
    from .gguf_writer import write_gguf

    if kind.startswith("gemma"):  # llama.cpp scales queries by head_dim below 27B: the real 2B/1B ratio
        cfg = gemma_family(kind)
        cfg.query_pre_attn_scalar = cfg.head_dim
    else:
        cfg = moe_family(kind) if kind in ("qwen3-moe", "mixtral") else llama_family(kind)
    cfg.vocab_size = byte_bpe_tokenizer.vocab_size
    hf = save_random(cfg, tmp_path, byte_bpe_tokenizer)
    path = str(tmp_path / "model.gguf")
    gguf_arch, model_type = GGUF_ARCHS[kind]
    write_gguf(path, gguf_arch, cfg, hf.state_dict(), byte_bpe_tokenizer)
    ours = load_model(path, dtype="float32", quantization="none")
    assert ours.config.arch == model_type and ours.config.qk_norm == kind.startswith(("qwen3", "gemma3"))
    assert ours.tokenizer.encode("Hello there") == byte_bpe_tokenizer.encode("Hello there")
    for ids in PROMPTS:
        with torch.no_grad():
            theirs = hf(torch.tensor([ids])).logits[0]
        torch.testing.assert_close(full_logits(ours.model, ids), theirs, atol=2e-4, rtol=1e-4)


def test_window_blocks_go_back_to_the_pool_without_changing_tokens(tmp_path, byte_bpe_tokenizer):
    """A window on every layer (Mistral-7B-v0.1, shrunk to 8 tokens): KV blocks every window has passed are
    returned while sequences run, in decode and between the chunks of a long prompt (whose later chunks read the
    earlier ones' keys back from the cache); greedy tokens equal an engine that keeps every block."""
    from service.engine import EngineConfig, LLMEngine, SamplingParams

    cfg = llama_family("mistral-window")
    cfg.vocab_size = byte_bpe_tokenizer.vocab_size
    save_random(cfg, tmp_path, byte_bpe_tokenizer)
    loaded = load_model(str(tmp_path), dtype="float32")
    prompts = [list(range(100, 170)), [5, 17, 912], list(range(300, 340))]  # 70 tokens: three chunks of 32
    params = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)
    config = EngineConfig(max_num_seqs=3, max_num_batched_tokens=32, enable_prefix_caching=True)

    def peak(release: bool) -> tuple[int, int]:
        """(blocks released at once, fewest free blocks) over a run of the same requests."""
        engine = LLMEngine(loaded, config)
        if not release:
            engine.block_manager.window_left = None
        for i, p in enumerate(prompts):
            engine.add_request(str(i), p, params)
        released, low_water = 0, engine.block_manager.num_free_blocks
        while engine.has_unfinished():
            assert all(out.error is None for out in engine.step())
            released = max(released, sum(s.num_released_blocks for s in engine.scheduler.running))
            low_water = min(low_water, engine.block_manager.num_free_blocks)
        return released, low_water

    # greedy tokens with and without releasing
    keep = LLMEngine(loaded, config)
    keep.block_manager.window_left = None
    reference = [o[0].token_ids for o in keep.generate(prompts, params)]
    freeing = LLMEngine(loaded, config)
    assert freeing.block_manager.window_left == 7
    tokens = [o[0].token_ids for o in freeing.generate(prompts, params)]
    assert tokens == reference
    released, low_water = peak(True)
    kept, low_water_keep = peak(False)
    assert kept == 0
    assert released >= 4  # 130 tokens a sequence: ~7 blocks of 16 behind an 8-token window
    assert low_water > low_water_keep  # fewer blocks held at the peak
