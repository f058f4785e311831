"""The models this process serves, by name, with the engine each one runs on."""
from __future__ import annotations

from dataclasses import dataclass, field

from models import LoadedModel
from service.engine import AsyncEngine, EmbeddingEngine, EngineDead, QueueFull

from .errors import APIError


@dataclass
class ServedModel:
    name: str
    loaded: LoadedModel
    engine: AsyncEngine | None = None  # decoders: chat and completions
    embedder: EmbeddingEngine | None = None  # encoders: embeddings, or scores for cross-encoders
    reasoning: object | None = None  # a reasoning.ReasoningFormat: chat answers split off their <think> block

    @property
    def capabilities(self) -> list[str]:
        if self.embedder is None:
            return ["chat.completions", "completions"]
        return ["rerank", "score"] if self.embedder.scores else ["embeddings", "rerank", "score"]

    @property
    def max_model_len(self) -> int:
        return self.engine.engine.max_model_len if self.engine else self.loaded.max_model_len

    def default_max_tokens(self, prompt_len: int, width: int = 1, forced: int = 0) -> int:
        """max_tokens when a request gives none: the room its context and the KV cache leave."""
        return self.engine.engine.max_tokens_room(prompt_len, width, forced)

    @property
    def dead(self) -> bool:
        """The engine stopped on an unrecoverable error: the process must be restarted."""
        return self.engine is not None and self.engine.dead

    def shutdown(self) -> None:
        for runner in (self.engine, self.embedder):
            if runner is not None:
                runner.shutdown()


@dataclass
class ModelRegistry:
    models: dict[str, ServedModel] = field(default_factory=dict)

    def add(self, served: ServedModel) -> None:
        self.models[served.name] = served

    def get(self, name: str | None) -> ServedModel:
        if name is None and len(self.models) == 1:
            return next(iter(self.models.values()))
        if name not in self.models:
            raise APIError(404, f"The model `{name}` does not exist. Available: {', '.join(self.models)}.",
                           code="model_not_found", param="model")
        return self.models[name]

    def for_generation(self, name: str) -> ServedModel:
        served = self.get(name)
        if served.engine is None:
            raise APIError(400, f"The model `{name}` is an embedding model: it serves /v1/embeddings, "
                                "not chat or completions.", code="model_not_supported", param="model")
        return served

    def for_embeddings(self, name: str) -> ServedModel:
        served = self.get(name)
        if served.embedder is None:
            raise APIError(400, f"The model `{name}` is a generative model: it serves /v1/chat/completions "
                                "and /v1/completions, not embeddings.", code="model_not_supported", param="model")
        if served.embedder.scores:
            raise APIError(400, f"The model `{name}` is a cross-encoder: it serves /v1/rerank and /v1/score, "
                                "not embeddings.", code="model_not_supported", param="model")
        return served

    def for_scoring(self, name: str | None) -> ServedModel:
        """A cross-encoder, or an embedding model (scores by cosine similarity); one served model may go unnamed."""
        served = self.get(name) if name is not None else self._only_scorer()
        if served.embedder is None:
            raise APIError(400, f"The model `{served.name}` is a generative model: it serves /v1/chat/completions "
                                "and /v1/completions, not rerank or score.", code="model_not_supported", param="model")
        return served

    def _only_scorer(self) -> ServedModel:
        scorers = [m for m in self.models.values() if m.embedder is not None]
        cross = [m for m in scorers if m.embedder.scores]
        if len(cross) == 1 or len(scorers) == 1:
            return (cross or scorers)[0]
        raise APIError(400, "model is required: this server has "
                            f"{len(scorers)} models that can score ({', '.join(m.name for m in scorers)})",
                       param="model")

    def all_generation_full(self) -> QueueFull | None:
        """The refusal when every generation engine's queue is full (a 429 owed before parsing the body)."""
        errors = []
        for served in self.models.values():
            if served.engine is None:
                continue
            try:
                served.engine.check_admission()
                return None
            except (QueueFull, EngineDead) as err:
                errors.append(err)
        full = [e for e in errors if isinstance(e, QueueFull)]
        return full[0] if full and len(full) == len(errors) else None

    @property
    def dead(self) -> list[str]:
        return [name for name, served in self.models.items() if served.dead]

    def shutdown(self) -> None:
        for served in self.models.values():
            served.shutdown()
