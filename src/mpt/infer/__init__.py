"""Inference: generation loops, chat templates, the HTTP server."""

from .generate import generate_ids

__all__ = ["generate_ids"]
