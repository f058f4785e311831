"""Fused MoE (routing, alignment, the two grouped GEMMs) vs a float64 loop over tokens and their experts."""
from __future__ import annotations

import pytest
import torch

from kernels.moe import all_moe_configs, fused_moe_ref, fused_moe_triton, moe_align, moe_route

from .conftest import DTYPES, assert_close, rand

MOE = {"triton": fused_moe_triton, "torch": fused_moe_ref}


def moe_f64(x, w13, w2, weights, ids, activation):
    """out[t] = sum_k w[t,k] * W2[e] (act(W1[e] x) * W3[e] x), token by token, in float64."""
    x, w13, w2 = x.double().cpu(), w13.double().cpu(), w2.double().cpu()
    acts = {"silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu,
            "gelu_tanh": lambda v: torch.nn.functional.gelu(v, approximate="tanh")}
    inter = w13.shape[1] // 2
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            h = acts[activation](w13[e, :inter] @ x[t]) * (w13[e, inter:] @ x[t])
            out[t] += float(weights[t, k]) * (w2[e] @ h)
    return out


def expert_weights(experts, inter, hidden, dtype, device, g):
    w13 = rand(experts, 2 * inter, hidden, dtype=dtype, device=device, generator=g, scale=hidden ** -0.5)
    w2 = rand(experts, hidden, inter, dtype=dtype, device=device, generator=g, scale=inter ** -0.5)
    return w13, w2


# (tokens, experts, top_k, hidden, intermediate): decode-shaped (few tokens, many experts), prefill-shaped, odd
# widths that no tile divides, every token on one expert, top-1
SHAPES = [(1, 8, 2, 64, 96), (5, 16, 2, 80, 40), (70, 8, 2, 64, 128), (33, 4, 1, 48, 72), (9, 6, 3, 32, 16)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_fused_moe_matches_float64(impl, device, dtype, shape, activation):
    tokens, experts, top_k, hidden, inter = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = rand(tokens, hidden, dtype=dtype, device=device, generator=g)
    w13, w2 = expert_weights(experts, inter, hidden, dtype, device, g)
    logits = rand(tokens, experts, dtype=torch.float32, device=device, generator=g)
    weights, ids = moe_route(logits, top_k, renormalize=True)
    out = MOE[impl](x, w13, w2, weights, ids, activation)
    assert out.shape == x.shape
    assert_close(out, moe_f64(x, w13, w2, weights, ids, activation), dtype)


def test_every_token_on_one_expert_and_unused_experts(impl, device):
    g = torch.Generator().manual_seed(1)
    x = rand(21, 64, dtype=torch.float32, device=device, generator=g)
    w13, w2 = expert_weights(8, 32, 64, torch.float32, device, g)
    ids = torch.full((21, 2), 5, dtype=torch.int32, device=device)
    ids[:, 1] = 2
    weights = torch.full((21, 2), 0.5, device=device)
    assert_close(MOE[impl](x, w13, w2, weights, ids, "silu"), moe_f64(x, w13, w2, weights, ids, "silu"),
                 torch.float32)


@pytest.mark.parametrize("config", all_moe_configs(), ids=str)
def test_every_tile_config(impl, device, config):
    if impl != "triton":
        pytest.skip("tile configs are a Triton concept")
    g = torch.Generator().manual_seed(3)
    x = rand(37, 64, dtype=torch.float32, device=device, generator=g)
    w13, w2 = expert_weights(8, 96, 64, torch.float32, device, g)
    weights, ids = moe_route(rand(37, 8, dtype=torch.float32, device=device, generator=g), 2, renormalize=False)
    assert_close(fused_moe_triton(x, w13, w2, weights, ids, "silu", config=config),
                 moe_f64(x, w13, w2, weights, ids, "silu"), torch.float32)


def test_routing_matches_transformers_rule():
    """Softmax in float32, top-k, renormalised or not; ties broken as torch.topk breaks them (transformers' call)."""
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    weights, ids = moe_route(logits, 2, renormalize=False)
    probs = logits.softmax(-1)
    assert ids.tolist() == probs.topk(2, dim=-1).indices.tolist() and ids[0].tolist() == [1, 2]
    torch.testing.assert_close(weights, probs.gather(1, ids.long()))
    renormed, _ = moe_route(logits, 2, renormalize=True)
    torch.testing.assert_close(renormed.sum(-1), torch.ones(2))


@pytest.mark.parametrize("block_m", [16, 64])
def test_align_groups_slots_by_expert(block_m):
    ids = torch.tensor([[3, 1], [1, 0], [3, 3], [2, 1]], dtype=torch.int32)  # expert 3 twice for token 2
    slots, tile_experts, capacity = moe_align(ids, 5, block_m)
    flat = ids.flatten()
    assert capacity % block_m == 0 and capacity >= flat.numel()
    for tile, expert in enumerate(tile_experts.tolist()):
        rows = slots[tile * block_m:(tile + 1) * block_m]
        real = rows[rows < flat.numel()]
        assert all(int(flat[r]) == expert for r in real)
    real = slots[slots < flat.numel()]
    assert sorted(real.tolist()) == list(range(flat.numel()))  # every slot exactly once


def test_tuner_times_every_candidate_and_runs_the_fastest(impl, device):
    """The tuner (a fake timer here) times each candidate as a whole fused MoE (alignment depends on the row
    tile), keeps the fastest and its output is right."""
    if impl != "triton":
        pytest.skip("tile configs are a Triton concept")
    from dataclasses import replace

    from kernels.moe import MOE_CONFIGS, MOE_TUNER
    from kernels.tuning import TuningCache

    timed = []

    def timer(launch):
        launch()
        timed.append(len(timed))
        return 10.0 - len(timed)  # each later candidate "faster": the last one wins

    tuner = replace(MOE_TUNER, cache=TuningCache(), timer=timer, _memo={})
    g = torch.Generator().manual_seed(4)
    x = rand(9, 64, dtype=torch.float32, device=device, generator=g)
    w13, w2 = expert_weights(4, 48, 64, torch.float32, device, g)
    weights, ids = moe_route(rand(9, 4, dtype=torch.float32, device=device, generator=g), 2, renormalize=True)
    out = torch.empty_like(x)
    tuner.launch(("float32", 32, 4, 64, 48, 2, "silu"), None, (x, w13, w2, weights, ids, "silu", out), {},
                 (torch.float32,))
    assert len(timed) == len(MOE_CONFIGS[32])
    assert tuner.cache.choices  # the choice is kept
    assert_close(out, moe_f64(x, w13, w2, weights, ids, "silu"), torch.float32)
