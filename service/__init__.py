"""kernelserve's service: the engine (``service.engine``) and the OpenAI-compatible HTTP API (``service.api``)."""
__version__ = "0.1.0"
