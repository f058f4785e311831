"""Mixture-of-Experts decoders: Mixtral and Qwen3-MoE, the Llama-family layers with a sparse MoE block in place of
the MLP (on every layer, or those Qwen3-MoE's ``decoder_sparse_step`` / ``mlp_only_layers`` pick).

The block: a router (``gate``, ``[E, H]``) scores the experts, ``kernels.moe_route`` keeps the top k (softmax in
float32, renormalised as the config says) and ``kernels.fused_moe`` runs the chosen experts' SwiGLU FFNs as
grouped GEMMs. The experts' weights are stacked at load: ``experts.w13`` ``[E * 2I, H]`` (each expert's gate rows,
then its up rows) and ``experts.w2`` ``[E * H, I]``, from the checkpoints' per-expert tensors (Mixtral's
``w1``/``w3``/``w2``, Qwen3-MoE's ``gate_proj``/``up_proj``/``down_proj``).
"""
from __future__ import annotations

import torch
from torch import nn

import kernels

from .config import DecoderConfig
from .layers import Linear
from .llama import LlamaForCausalLM, checkpoint_rules
from .weights import CheckpointRules

EXPERT_RULES = (
    (r"experts\.(\d+)\.(?:w1|gate_proj)\.weight$", "experts.w13", 2, 0),
    (r"experts\.(\d+)\.(?:w3|up_proj)\.weight$", "experts.w13", 2, 1),
    (r"experts\.(\d+)\.(?:w2|down_proj)\.weight$", "experts.w2", 1, 0),
)


class SparseMoeBlock(nn.Module):
    def __init__(self, cfg: DecoderConfig, dtype: torch.dtype):
        super().__init__()
        self.cfg = cfg
        e, h, i = cfg.num_experts, cfg.hidden_size, cfg.expert_intermediate_size
        self.gate = Linear(h, e, False, dtype)
        self.experts = nn.Module()
        self.experts.w13 = nn.Parameter(torch.empty(e * 2 * i, h, dtype=dtype), requires_grad=False)
        self.experts.w2 = nn.Parameter(torch.empty(e * h, i, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        weights, ids = kernels.moe_route(self.gate(x), c.experts_per_token, c.norm_topk_prob)
        w13 = self.experts.w13.view(c.num_experts, 2 * c.expert_intermediate_size, c.hidden_size)
        w2 = self.experts.w2.view(c.num_experts, c.hidden_size, c.expert_intermediate_size)
        return kernels.fused_moe(x, w13, w2, weights, ids, c.activation)


class MoeForCausalLM(LlamaForCausalLM):
    def __init__(self, cfg: DecoderConfig, dtype: torch.dtype = torch.float32):
        super().__init__(cfg, dtype)
        for i, layer in enumerate(self.model.layers):
            if self.is_moe(i):
                layer.mlp = SparseMoeBlock(cfg, dtype)
        base = checkpoint_rules(cfg)
        self.rules = CheckpointRules(base.stacked, ((r"\.block_sparse_moe\.", ".mlp."), *base.renames),
                                     base.transposed, base.ignored, EXPERT_RULES)

    def is_moe(self, index: int) -> bool:
        return not self.cfg.moe_layers or self.cfg.moe_layers[index]

    def shard_sizes(self) -> dict[str, tuple[int, ...]]:
        c = self.cfg
        sizes = super().shard_sizes()
        for i in range(c.num_layers):
            p = f"model.layers.{i}.mlp."
            if self.is_moe(i):
                sizes.pop(p + "gate_up_proj.weight", None)
                sizes[p + "experts.w13"] = (c.expert_intermediate_size,) * (2 * c.num_experts)
                sizes[p + "experts.w2"] = (c.hidden_size,) * c.num_experts
        return sizes
