"""Inference: generation loops, continuous batching, chat templates, the HTTP server."""

from mpt._lazy import lazy_exports

_EXPORTS = {"LLM": ".api", "Completion": ".api", "StreamChunk": ".api", "load": ".api",
            "generate_ids": ".generate", "SamplingParams": ".sampling"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
