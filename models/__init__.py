"""Model definitions and loading. Model code calls the kernels only through ``kernels``' public API."""
from .chat_template import RenderLimits, TemplateLimitError, TemplateSecurityError
from .config import DecoderConfig, EncoderConfig, ModelError
from .loader import LoadedModel, default_model_sources, load_model
from .metadata import AttentionMetadata
from .tokenizer import ChatTemplateError, IncrementalDetokenizer, Tokenizer

__all__ = ["AttentionMetadata", "ChatTemplateError", "DecoderConfig", "EncoderConfig", "IncrementalDetokenizer",
           "LoadedModel", "ModelError", "RenderLimits", "TemplateLimitError", "TemplateSecurityError", "Tokenizer",
           "default_model_sources", "load_model"]
