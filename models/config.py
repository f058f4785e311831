"""Model configuration: one frozen dataclass per architecture family, read from HF ``config.json``."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from kernels import rotary_cos_sin_cache


class ModelError(ValueError):
    """A checkpoint or config kernelserve cannot load; the message names the file and the problem."""


@dataclass(frozen=True)
class RopeScaling:
    """Rotary scaling as Hugging Face's ``_compute_*_parameters`` define it: ``default``, ``linear``, ``llama3``,
    ``yarn`` (Qwen3 / DeepSeek long context) and ``longrope`` (Phi-3 / Phi-4-mini)."""
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192
    # yarn
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 0.0
    mscale_all_dim: float = 0.0
    truncate: bool = True
    attention_factor: float | None = None  # cos and sin are multiplied by it (yarn, longrope)
    # longrope: per-frequency divisors within the original context and beyond it
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()

    def inv_freq(self, rot_dim: int, theta: float, long: bool = False) -> torch.Tensor:
        """Rotary frequencies after scaling (``long``: longrope's factors for positions past the original context)."""
        exponents = torch.arange(0, rot_dim, 2, dtype=torch.int64).float() / rot_dim
        inv_freq = 1.0 / (theta ** exponents)
        if self.kind == "linear":
            return inv_freq / self.factor
        if self.kind == "longrope":
            factors = torch.tensor(self.long_factor if long else self.short_factor, dtype=torch.float32)
            return 1.0 / (factors * theta ** exponents)
        if self.kind == "yarn":
            return self._yarn(rot_dim, theta)
        if self.kind != "llama3":
            return inv_freq
        # llama3: long wavelengths divided by factor, short ones kept, a smooth blend between
        low_wavelen = self.original_max_position / self.low_freq_factor
        high_wavelen = self.original_max_position / self.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / self.factor, inv_freq)
        smooth = (self.original_max_position / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        blended = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, blended, scaled)

    def _yarn(self, dim: int, theta: float) -> torch.Tensor:
        """YaRN (Peng et al., 2023): frequencies above beta_fast rotations over the original context kept,
        below beta_slow divided by ``factor``, a linear ramp between."""
        def correction_dim(rotations: float) -> float:
            return dim * math.log(self.original_max_position / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        high = high + 0.001 if low == high else high
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        pos_freqs = theta ** (torch.arange(0, dim, 2).float() / dim)
        keep = 1 - ramp  # 1: extrapolate (the original frequency), 0: interpolate (divided by factor)
        return 1.0 / (self.factor * pos_freqs) * (1 - keep) + 1.0 / pos_freqs * keep

    def scaling(self, max_position: int) -> float:
        """What cos and sin are multiplied by: YaRN's mscale, LongRoPE's sqrt(1 + ln s / ln L), else 1."""
        if self.attention_factor is not None:
            return self.attention_factor
        if self.kind == "yarn":
            def mscale(scale: float, m: float = 1.0) -> float:
                return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
            if self.mscale and self.mscale_all_dim:
                return mscale(self.factor, self.mscale) / mscale(self.factor, self.mscale_all_dim)
            return mscale(self.factor)
        if self.kind == "longrope":
            factor = self.factor
            return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(self.original_max_position))
        return 1.0

    def cos_sin_cache(self, rot_dim: int, theta: float, max_position: int) -> torch.Tensor:
        """``[max_position, rot_dim]`` cos | sin table. LongRoPE: short factors for positions inside the original
        context, long ones past it, by position (so a row never depends on the batch; transformers switches the
        whole sequence once it grows past the original context)."""
        table = rotary_cos_sin_cache(rot_dim, max_position, inv_freq=self.inv_freq(rot_dim, theta))
        if self.kind == "longrope" and max_position > self.original_max_position:
            long = rotary_cos_sin_cache(rot_dim, max_position, inv_freq=self.inv_freq(rot_dim, theta, long=True))
            table[self.original_max_position:] = long[self.original_max_position:]
        factor = self.scaling(max_position)
        return table if factor == 1.0 else table * factor

    @staticmethod
    def from_hf(cfg: dict) -> "RopeScaling":
        params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        kind = params.get("rope_type", params.get("type", "default")) or "default"
        if kind not in ("default", "linear", "llama3", "yarn", "longrope"):
            raise ModelError(f"config.json: rope scaling {kind!r} is not supported (default, linear, llama3, yarn, "
                             "longrope)")
        original = params.get("original_max_position_embeddings") or cfg.get("original_max_position_embeddings")
        if kind in ("yarn", "longrope") and not original:
            original = cfg.get("max_position_embeddings", 8192) if kind == "yarn" else None
            if original is None:
                raise ModelError("config.json: longrope scaling needs original_max_position_embeddings")
        factor = params.get("factor")
        if factor is None and kind in ("yarn", "longrope"):  # the ratio of the context to the original one
            factor = cfg.get("max_position_embeddings", original) / original
        return RopeScaling(
            kind, float(factor if factor is not None else 1.0), float(params.get("low_freq_factor", 1.0)),
            float(params.get("high_freq_factor", 4.0)), int(original or 8192),
            beta_fast=float(params.get("beta_fast") or 32), beta_slow=float(params.get("beta_slow") or 1),
            mscale=float(params.get("mscale") or 0), mscale_all_dim=float(params.get("mscale_all_dim") or 0),
            truncate=bool(params.get("truncate", True)), attention_factor=params.get("attention_factor"),
            short_factor=tuple(params.get("short_factor") or ()), long_factor=tuple(params.get("long_factor") or ()))


def rope_theta(cfg: dict) -> float:
    params = cfg.get("rope_parameters") or {}
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


@dataclass(frozen=True)
class DecoderConfig:
    """Llama family (llama, mistral, qwen2, qwen3) and GPT-2."""
    arch: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position: int
    norm_eps: float
    activation: str
    qkv_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over each head's q and k (weights [head_dim]) before rotary
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    # Gemma 2 / 3: each layer's sliding window in tokens (0: global), the sliding layers' rotary theta, scores
    # scaled by query_scale, attention and final-logit soft-capping
    layer_windows: tuple[int, ...] = ()
    partial_rotary_factor: float = 1.0
    # Mixture of Experts (Mixtral, Qwen3-MoE): experts per MoE layer, experts a token uses, each expert's FFN
    # width, whether the top-k weights are renormalised, which layers are MoE (() with experts: all)
    num_experts: int = 0
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    norm_topk_prob: bool = True
    moe_layers: tuple[bool, ...] = ()
    # SmolLM3: False for the layers without rotary positions (every fourth); () means every layer has them
    rope_layers: tuple[bool, ...] = ()
    local_rope_theta: float = 0.0
    query_scale: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ModelError(f"config.json: {self.num_heads} attention heads are not a multiple of {self.num_kv_heads} KV heads")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def rot_dim(self) -> int:
        """Features each head rotates (Phi-4-mini's partial_rotary_factor 0.75: three quarters)."""
        return int(self.head_dim * self.partial_rotary_factor)

    def cos_sin_cache(self) -> torch.Tensor:
        return self.rope_scaling.cos_sin_cache(self.rot_dim, self.rope_theta, self.max_position)


@dataclass(frozen=True)
class EncoderConfig:
    """BERT-style encoder (BERT, RoBERTa, XLM-RoBERTa) for embeddings or, with a classification head, for
    scoring text pairs (cross-encoder rerankers)."""
    arch: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position: int
    type_vocab_size: int
    norm_eps: float
    activation: str
    # RoBERTa / XLM-R number positions from padding_idx + 1 (position ids are offset by it)
    position_offset: int = 0
    # a *ForSequenceClassification checkpoint: its head ("bert": pooler + classifier, "roberta":
    # classifier.dense + out_proj) and how many logits; "" and 0 for plain encoders
    classifier: str = ""
    num_labels: int = 0
    # sentence-transformers' CrossEncoder default for one logit: a sigmoid (config may say Identity)
    score_activation: str = "sigmoid"
    # ModernBERT: rotary positions (theta of the global layers, of the local ones), each layer "full" or
    # "sliding" (the local layers see keys within local_window tokens either side), LayerNorms with or without bias
    rope_theta: float = 0.0
    local_rope_theta: float = 0.0
    layer_types: tuple[str, ...] = ()
    local_window: int = 0
    norm_bias: bool = True

    @property
    def max_tokens(self) -> int:
        """Longest input: the position table minus the offset RoBERTa-style models start from."""
        return self.max_position - self.position_offset

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


_HF_ACT = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
           "gelu_fast": "gelu_tanh", "relu": "relu"}


def activation_from_hf(name: str) -> str:
    if name not in _HF_ACT:
        raise ModelError(f"config.json: activation {name!r} is not supported ({', '.join(_HF_ACT)})")
    return _HF_ACT[name]


def _windows(cfg: dict, layers: int) -> tuple[int, ...]:
    """Mistral / Phi-3: ``sliding_window`` on every layer; Qwen2/3 only with ``use_sliding_window`` (refused)."""
    window = cfg.get("sliding_window")
    if not window or cfg["model_type"].startswith("gemma"):
        return ()
    if cfg["model_type"] in ("qwen2", "qwen3", "smollm3", "qwen3_moe"):
        if cfg.get("use_sliding_window"):
            raise ModelError(f"config.json: {cfg['model_type']}'s use_sliding_window (layers from max_window_layers "
                             "on) is not supported")
        return ()
    return (int(window),) * layers


def llama_config(cfg: dict) -> DecoderConfig:
    heads = cfg["num_attention_heads"]
    hidden = cfg["hidden_size"]
    return DecoderConfig(
        arch=cfg["model_type"], vocab_size=cfg["vocab_size"], hidden_size=hidden,
        num_layers=cfg["num_hidden_layers"], num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or hidden // heads, intermediate_size=cfg["intermediate_size"],
        max_position=cfg.get("max_position_embeddings", 4096), norm_eps=cfg.get("rms_norm_eps", 1e-6),
        activation=activation_from_hf(cfg.get("hidden_act", "silu")),
        qkv_bias=cfg["model_type"] == "qwen2" or bool(cfg.get("attention_bias", False)),
        qk_norm=cfg["model_type"] == "qwen3",
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", cfg["model_type"] != "llama")),
        rope_theta=rope_theta(cfg), rope_scaling=RopeScaling.from_hf(cfg),
        layer_windows=_windows(cfg, cfg["num_hidden_layers"]),
        partial_rotary_factor=float((cfg.get("rope_parameters") or {}).get(
            "partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))),
        rope_layers=tuple(bool(x) for x in cfg.get("no_rope_layers") or ()),
    )


def moe_config(cfg: dict) -> DecoderConfig:
    """Mixtral (every layer MoE, top-k renormalised) and Qwen3-MoE (decoder_sparse_step, mlp_only_layers,
    norm_topk_prob, moe_intermediate_size; q/k norms as Qwen3)."""
    base = llama_config(cfg)
    layers = cfg["num_hidden_layers"]
    if cfg["model_type"] == "mixtral":
        return dataclasses.replace(base, num_experts=cfg["num_local_experts"],
                                   experts_per_token=cfg["num_experts_per_tok"],
                                   expert_intermediate_size=cfg["intermediate_size"], norm_topk_prob=True)
    if cfg.get("shared_expert_intermediate_size"):
        raise ModelError("config.json: MoE models with shared experts (Qwen2-MoE) are not supported")
    step, dense = cfg.get("decoder_sparse_step", 1) or 1, set(cfg.get("mlp_only_layers") or ())
    return dataclasses.replace(
        base, qk_norm=True, num_experts=cfg.get("num_experts") or cfg["num_local_experts"],
        experts_per_token=cfg["num_experts_per_tok"],
        expert_intermediate_size=cfg["moe_intermediate_size"], norm_topk_prob=bool(cfg.get("norm_topk_prob", True)),
        moe_layers=tuple(i not in dense and (i + 1) % step == 0 for i in range(layers)))


def gemma_config(cfg: dict) -> DecoderConfig:
    """Gemma 2 and Gemma 3 (text): layer_types (transformers 5) or the older sliding_window_pattern; the global
    layers' rotary (with its scaling) and the sliding ones' (Gemma 3's rope_local_base_freq)."""
    if "text_config" in cfg:
        raise ModelError("config.json: multimodal Gemma 3 checkpoints are not supported; serve a text-only one "
                         "(gemma3_text)")
    layers = cfg["num_hidden_layers"]
    pattern = cfg.get("sliding_window_pattern", 2 if cfg["model_type"] == "gemma2" else 6)
    types = cfg.get("layer_types") or ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                       for i in range(layers)]
    window = cfg.get("sliding_window") or 0
    rope = cfg.get("rope_parameters") or {}
    full = rope.get("full_attention", rope) if isinstance(rope.get("full_attention"), dict) else rope
    local = rope.get("sliding_attention") if isinstance(rope.get("sliding_attention"), dict) else {}
    base = llama_config({**cfg, "rope_parameters": full or None})
    return dataclasses.replace(
        base, qkv_bias=bool(cfg.get("attention_bias", False)), qk_norm=cfg["model_type"] == "gemma3_text",
        activation=activation_from_hf(cfg.get("hidden_activation") or cfg.get("hidden_act", "gelu_pytorch_tanh")),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        layer_windows=tuple(window if t == "sliding_attention" else 0 for t in types),
        local_rope_theta=float(local.get("rope_theta", cfg.get("rope_local_base_freq", base.rope_theta))),
        query_scale=float(cfg.get("query_pre_attn_scalar", base.head_dim)) ** -0.5,
        attn_softcap=cfg.get("attn_logit_softcapping"), final_softcap=cfg.get("final_logit_softcapping"))


def gpt2_config(cfg: dict) -> DecoderConfig:
    hidden, heads = cfg["n_embd"], cfg["n_head"]
    return DecoderConfig(
        arch="gpt2", vocab_size=cfg["vocab_size"], hidden_size=hidden, num_layers=cfg["n_layer"],
        num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads,
        intermediate_size=cfg.get("n_inner") or 4 * hidden, max_position=cfg["n_positions"],
        norm_eps=cfg.get("layer_norm_epsilon", 1e-5), activation=activation_from_hf(cfg.get("activation_function", "gelu_new")),
        qkv_bias=True, tie_word_embeddings=True,
    )


def _classifier_head(cfg: dict, family: str) -> dict:
    """A sequence-classification checkpoint's head: which kind, how many logits, the score activation."""
    if not any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures") or ()):
        return {}
    labels = cfg.get("num_labels") or len(cfg.get("id2label") or {}) or 2
    if labels != 1:
        raise ModelError(f"config.json: a sequence classifier with {labels} labels; kernelserve serves "
                         "cross-encoders with one relevance logit (rerankers)")
    act = ((cfg.get("sentence_transformers") or {}).get("activation_fn") or "Sigmoid").rsplit(".", 1)[-1]
    if act not in ("Sigmoid", "Identity"):
        raise ModelError(f"config.json: cross-encoder activation {act!r} is not supported (Sigmoid, Identity)")
    return {"classifier": family, "num_labels": 1, "score_activation": act.lower()}


def bert_config(cfg: dict) -> EncoderConfig:
    """BERT, RoBERTa and XLM-RoBERTa: the same layers; RoBERTa's positions start after the padding index."""
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ModelError("config.json: only absolute position embeddings are supported for BERT")
    roberta = cfg["model_type"] in ("roberta", "xlm-roberta")
    return EncoderConfig(
        arch=cfg["model_type"], vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
        intermediate_size=cfg["intermediate_size"], max_position=cfg["max_position_embeddings"],
        type_vocab_size=cfg.get("type_vocab_size", 2), norm_eps=cfg.get("layer_norm_eps", 1e-12),
        activation=activation_from_hf(cfg.get("hidden_act", "gelu")),
        position_offset=cfg.get("pad_token_id", 1) + 1 if roberta else 0,
        **_classifier_head(cfg, "roberta" if roberta else "bert"),
    )


def modernbert_config(cfg: dict) -> EncoderConfig:
    """ModernBERT in transformers 4's config (global_attn_every_n_layers, global/local_rope_theta) or 5's
    (layer_types, rope_parameters per layer type)."""
    if any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures") or ()):
        raise ModelError("config.json: ModernBERT cross-encoders are not supported yet (ModernBERT embedders are)")
    if cfg.get("mlp_bias") or cfg.get("attention_bias"):
        raise ModelError("config.json: ModernBERT with MLP or attention biases is not supported")
    layers = cfg["num_hidden_layers"]
    every = cfg.get("global_attn_every_n_layers", 3)
    types = cfg.get("layer_types") or ["full_attention" if i % every == 0 else "sliding_attention" for i in range(layers)]
    rope = cfg.get("rope_parameters") or {}
    theta = (rope.get("full_attention") or {}).get("rope_theta", cfg.get("global_rope_theta", 160000.0))
    local_theta = (rope.get("sliding_attention") or {}).get("rope_theta", cfg.get("local_rope_theta") or 10000.0)
    return EncoderConfig(
        arch="modernbert", vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], num_layers=layers,
        num_heads=cfg["num_attention_heads"], intermediate_size=cfg["intermediate_size"],
        max_position=cfg.get("max_position_embeddings", 8192), type_vocab_size=0,
        norm_eps=cfg.get("norm_eps", 1e-5), activation=activation_from_hf(cfg.get("hidden_activation", "gelu")),
        rope_theta=float(theta), local_rope_theta=float(local_theta),
        layer_types=tuple("sliding" if t == "sliding_attention" else "full" for t in types),
        local_window=cfg.get("local_attention", 128) // 2, norm_bias=bool(cfg.get("norm_bias", False)),
    )


CONFIG_READERS = {"llama": llama_config, "mistral": llama_config, "qwen2": llama_config, "qwen3": llama_config,
                  "smollm3": llama_config, "phi3": llama_config, "mixtral": moe_config, "qwen3_moe": moe_config,
                  "gemma2": gemma_config, "gemma3_text": gemma_config,
                  "gpt2": gpt2_config, "bert": bert_config, "roberta": bert_config, "xlm-roberta": bert_config,
                  "modernbert": modernbert_config}


def config_from_hf(cfg: dict, source: str = "config.json"):
    model_type = cfg.get("model_type")
    if model_type not in CONFIG_READERS:
        raise ModelError(f"{source}: model_type {model_type!r} is not supported "
                         f"(supported: {', '.join(sorted(CONFIG_READERS))})")
    try:
        return CONFIG_READERS[model_type](cfg)
    except KeyError as missing:
        raise ModelError(f"{source}: missing field {missing} for model_type {model_type!r}") from None


@dataclass(frozen=True)
class EncoderDecoderConfig:
    """T5, BART and M2M100 / NLLB."""
    arch: str
    vocab_size: int
    hidden_size: int
    num_encoder_layers: int
    num_layers: int  # decoder layers (the paged KV cache is per decoder layer)
    num_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float
    activation: str
    gated_ffn: bool = False  # T5 v1.1 "gated-gelu"
    max_position: int = 512
    tie_word_embeddings: bool = True
    relative_buckets: int = 32  # T5
    relative_max_distance: int = 128  # T5
    scale_decoder_outputs: bool = False  # T5 (original): hidden * d_model^-1/2 before the head
    scale_embedding: bool = False  # BART
    # Marian: fixed sinusoidal positions from 0 and no LayerNorm on the embeddings (BART learns both)
    sinusoidal_positions: bool = False
    decoder_start_token_id: int = 0
    eos_token_id: int = 1
    pad_token_id: int = 1  # M2M100: its sinusoidal positions start after the padding index

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    @property
    def inner_size(self) -> int:
        return self.num_heads * self.head_dim


def t5_config(cfg: dict) -> EncoderDecoderConfig:
    proj = cfg.get("feed_forward_proj", "relu")
    gated = proj.startswith("gated-")
    act = proj.removeprefix("gated-")
    return EncoderDecoderConfig(
        arch="t5", vocab_size=cfg["vocab_size"], hidden_size=cfg["d_model"], num_encoder_layers=cfg["num_layers"],
        num_layers=cfg.get("num_decoder_layers") or cfg["num_layers"], num_heads=cfg["num_heads"],
        head_dim=cfg["d_kv"], intermediate_size=cfg["d_ff"], norm_eps=cfg.get("layer_norm_epsilon", 1e-6),
        activation="gelu_tanh" if act == "gelu" else activation_from_hf(act), gated_ffn=gated,
        max_position=cfg.get("n_positions", 512) or 512, tie_word_embeddings=cfg.get("tie_word_embeddings", True),
        # transformers >= 5 writes scale_decoder_outputs; older configs said it through tie_word_embeddings
        scale_decoder_outputs=cfg.get("scale_decoder_outputs", cfg.get("tie_word_embeddings", True)),
        relative_buckets=cfg.get("relative_attention_num_buckets", 32),
        relative_max_distance=cfg.get("relative_attention_max_distance", 128),
        decoder_start_token_id=cfg.get("decoder_start_token_id", 0) or 0, eos_token_id=cfg.get("eos_token_id", 1),
    )


def _fairseq_layout(cfg: dict, family: str, arch: str, activation: str, scale_embedding: bool) -> EncoderDecoderConfig:
    """BART, Marian and M2M100 configs share fairseq's field names; the families' defaults differ."""
    heads = cfg["decoder_attention_heads"]
    if cfg["encoder_attention_heads"] != heads or cfg["encoder_ffn_dim"] != cfg["decoder_ffn_dim"]:
        raise ModelError(f"config.json: {family} with different encoder and decoder widths is not supported")
    return EncoderDecoderConfig(
        arch=arch, vocab_size=cfg["vocab_size"], hidden_size=cfg["d_model"],
        num_encoder_layers=cfg["encoder_layers"], num_layers=cfg["decoder_layers"], num_heads=heads,
        head_dim=cfg["d_model"] // heads, intermediate_size=cfg["decoder_ffn_dim"], norm_eps=1e-5,
        activation=activation_from_hf(cfg.get("activation_function", activation)),
        max_position=cfg["max_position_embeddings"], tie_word_embeddings=cfg.get("tie_word_embeddings", True),
        scale_embedding=bool(cfg.get("scale_embedding", scale_embedding)),
        decoder_start_token_id=cfg.get("decoder_start_token_id", 2), eos_token_id=cfg.get("eos_token_id", 2),
        pad_token_id=cfg.get("pad_token_id", 1),
    )


def bart_config(cfg: dict) -> EncoderDecoderConfig:
    if cfg.get("normalize_before") or cfg.get("add_final_layer_norm"):
        raise ModelError("config.json: pre-norm BART variants (mBART) are not supported")
    return _fairseq_layout(cfg, "BART", "bart", "gelu", False)


def marian_config(cfg: dict) -> EncoderDecoderConfig:
    """MarianMT (opus-mt-*): BART's post-LN layers with sinusoidal positions, scaled embeddings, SiLU."""
    if not cfg.get("share_encoder_decoder_embeddings", True) or cfg.get("decoder_vocab_size") not in (None, cfg["vocab_size"]):
        raise ModelError("config.json: Marian with separate source and target vocabularies is not supported")
    if cfg.get("normalize_before") or cfg.get("normalize_embedding"):
        raise ModelError("config.json: pre-norm Marian variants are not supported")
    return dataclasses.replace(_fairseq_layout(cfg, "Marian", "marian", "swish", True), sinusoidal_positions=True,
                               decoder_start_token_id=cfg.get("decoder_start_token_id", cfg.get("pad_token_id")),
                               eos_token_id=cfg.get("eos_token_id", 0))


def m2m100_config(cfg: dict) -> EncoderDecoderConfig:
    return _fairseq_layout(cfg, "M2M100", "m2m_100", "relu", True)


CONFIG_READERS.update({"t5": t5_config, "bart": bart_config, "marian": marian_config, "m2m_100": m2m100_config})
