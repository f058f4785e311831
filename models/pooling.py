"""Sentence-embedding pooling over a packed batch (sentence-transformers' Pooling + Normalize)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Pooling:
    mode: str = "mean"  # mean | cls | max | last (decoder embedders: the last token has seen every other)
    normalize: bool = True

    def __post_init__(self):
        if self.mode not in ("mean", "cls", "max", "last"):
            raise ValueError(f"pooling mode must be mean, cls, max or last, got {self.mode!r}")

    def __call__(self, hidden: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """hidden [T, H] packed by ``lengths`` -> one float32 vector per sequence [B, H]."""
        h = hidden.float()
        lens = torch.tensor(lengths, device=h.device)
        if self.mode == "cls":
            starts = torch.cumsum(lens, 0) - lens
            pooled = h[starts]
        elif self.mode == "last":
            pooled = h[torch.cumsum(lens, 0) - 1]
        elif self.mode == "mean":
            pooled = torch.segment_reduce(h, "sum", lengths=lens, axis=0) / lens[:, None].clamp_min(1)
        else:
            pooled = torch.segment_reduce(h, "max", lengths=lens, axis=0)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    @staticmethod
    def declared(folder: str) -> bool:
        """Whether the folder is a sentence-transformers model (how a decoder says it is an embedder)."""
        return os.path.exists(os.path.join(folder, "modules.json"))

    @staticmethod
    def from_sentence_transformers(folder: str) -> "Pooling":
        """Read ``modules.json`` and the Pooling module's config; mean pooling without them."""
        modules_path = os.path.join(folder, "modules.json")
        if not os.path.exists(modules_path):
            return Pooling("mean", normalize=False)
        with open(modules_path) as f:
            modules = json.load(f)
        mode, normalize = "mean", False
        for m in modules:
            kind = m.get("type", "")
            if kind.endswith("Pooling"):
                with open(os.path.join(folder, m.get("path", ""), "config.json")) as f:
                    cfg = json.load(f)
                mode = ("cls" if cfg.get("pooling_mode_cls_token") else "max" if cfg.get("pooling_mode_max_tokens")
                        else "last" if cfg.get("pooling_mode_lasttoken") else "mean")
            elif kind.endswith("Normalize"):
                normalize = True
        return Pooling(mode, normalize)
