"""Inference: generation loops, continuous batching, chat templates, the HTTP server."""

from .api import LLM, Completion, StreamChunk, load
from .generate import generate_ids
from .sampling import SamplingParams

__all__ = ["LLM", "Completion", "SamplingParams", "StreamChunk", "generate_ids", "load"]
