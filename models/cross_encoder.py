"""Cross-encoders (rerankers): a BERT / XLM-RoBERTa encoder over a (query, document) pair and a
sequence-classification head that turns the first token's hidden state into one relevance logit.

Heads as Hugging Face writes them:
- ``BertForSequenceClassification``: ``pooler.dense`` + tanh, then ``classifier`` ([1, H]);
- ``XLMRobertaForSequenceClassification`` / ``RobertaForSequenceClassification``: ``classifier.dense``
  + tanh, then ``classifier.out_proj`` (dropout is the identity at inference).
The score is the logit through sentence-transformers' CrossEncoder activation (sigmoid by default).
"""
from __future__ import annotations

import torch
from torch import nn

from .bert import RULES as ENCODER_RULES
from .bert import BertModel
from .config import EncoderConfig
from .layers import Linear
from .weights import CheckpointRules

RULES = CheckpointRules(
    stacked=ENCODER_RULES.stacked,
    renames=ENCODER_RULES.renames,
    # the pooler is part of BERT's classification head here, not ignored
    ignored=(r"position_ids$", r"token_type_ids$", r"^cls\."),
)


class ForSequenceClassification(BertModel):
    rules = RULES

    def __init__(self, cfg: EncoderConfig, dtype: torch.dtype = torch.float32):
        super().__init__(cfg, dtype)
        h = cfg.hidden_size
        if cfg.classifier == "bert":
            self.pooler = nn.Module()
            self.pooler.dense = Linear(h, h, True, dtype)
            self.classifier = Linear(h, cfg.num_labels, True, dtype)
        elif cfg.classifier == "roberta":
            self.classifier = nn.Module()
            self.classifier.dense = Linear(h, h, True, dtype)
            self.classifier.out_proj = Linear(h, cfg.num_labels, True, dtype)
        else:
            raise ValueError(f"unknown classifier head {cfg.classifier!r}")

    def scores(self, hidden: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """hidden [T, H] packed by ``lengths`` -> float32 relevance scores [B] (first token of each sequence)."""
        starts = torch.tensor([0, *lengths[:-1]], device=hidden.device).cumsum(0)
        first = hidden[starts]
        if self.cfg.classifier == "bert":
            logits = self.classifier(torch.tanh(self.pooler.dense(first)))
        else:
            logits = self.classifier.out_proj(torch.tanh(self.classifier.dense(first)))
        logits = logits.float()[:, 0]
        return torch.sigmoid(logits) if self.cfg.score_activation == "sigmoid" else logits


class TokenPairScorer:
    """A decoder used as a reranker by two of its tokens (Qwen3-Reranker): the score of a pair is P(yes) over
    {no, yes} at the last token, sigmoid(logit_yes - logit_no), the probability the model card computes with a
    log-softmax over the two logits. config.json (or ``--hf-overrides``, as vLLM's) names the tokens:
    ``"classifier_from_token": ["no", "yes"]``."""

    def __init__(self, model: nn.Module, token_ids: tuple[int, int]):
        self.model, self.token_ids = model, token_ids

    def __call__(self, hidden: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        last = hidden[torch.tensor(lengths, device=hidden.device).cumsum(0) - 1]
        logits = self.model.logits(last)[:, list(self.token_ids)]  # float32 [B, 2]: (no, yes)
        return torch.sigmoid(logits[:, 1] - logits[:, 0])
