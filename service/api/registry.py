"""The models this process serves, by name, with the engine each one runs on."""
from __future__ import annotations

from dataclasses import dataclass, field

from models import LoadedModel
from service.engine import AsyncEngine, EmbeddingEngine

from .errors import APIError


@dataclass
class ServedModel:
    name: str
    loaded: LoadedModel
    engine: AsyncEngine | None = None  # decoders: chat and completions
    embedder: EmbeddingEngine | None = None  # encoders: embeddings

    @property
    def capabilities(self) -> list[str]:
        return ["embeddings"] if self.embedder else ["chat.completions", "completions"]

    @property
    def max_model_len(self) -> int:
        return self.engine.engine.max_model_len if self.engine else self.loaded.max_model_len

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
        return served

    def shutdown(self) -> None:
        for served in self.models.values():
            served.shutdown()
