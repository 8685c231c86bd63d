"""The short Python API: ``llm = mpt.load(path)``, ``llm.generate(prompts)``, ``llm.stream(prompt)``.

Both run on the continuous-batching engine the server uses (batching.py): prompts of different
lengths share decode steps, each with its own sampling settings, stop strings and seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..chatml import END_OF_TURN
from .batching import BatchEngine, Row, run
from .sampling import SamplingParams


@dataclass
class Completion:
    text: str  # stop strings and the EOS token are not part of it
    token_ids: list[int]  # every generated id, a final EOS included
    prompt_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


@dataclass
class StreamChunk:
    index: int  # which prompt
    text: str  # new final text (may be "" while a multi-byte character or a possible stop string is pending)
    token_id: int
    finish_reason: str | None


def stop_token_ids(tokenizer) -> list[int]:
    """EOS, and ChatML's end-of-turn token when the vocabulary has it as one token."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    im_end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end not in ids:
        ids.append(im_end)
    return ids


class LLM:
    """A model and its tokenizer. ``model, tokenizer = mpt.load(path)`` unpacks too."""

    def __init__(self, model, tokenizer) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # The Rust tokenizer's own decode is read-only, so the server's engine thread can use it
        # while request handlers encode on another thread.
        self.decode = ((lambda ids: backend.decode(list(ids), skip_special_tokens=True)) if backend is not None
                       else (lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True)))
        self.stop_token_ids = stop_token_ids(tokenizer)

    def __iter__(self):
        return iter((self.model, self.tokenizer))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, text: str) -> list[int]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return backend.encode(text, add_special_tokens=False).ids
        return self.tokenizer.encode(text, add_special_tokens=False)

    def engine(self, compile: bool | None = None) -> BatchEngine:
        """``compile``: decode through torch.compile over a static cache (default: on CUDA only)."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return BatchEngine(self.model, self.decode, self.stop_token_ids, pad_token_id=pad, compile=compile)

    def requests(self, prompts: Sequence[str | list[int]], params: SamplingParams) -> list[Row]:
        """One engine request per prompt; prompt ``i`` samples with seed ``seed + i``."""
        params.validate()
        out = []
        for i, p in enumerate(prompts):
            ids = list(p) if not isinstance(p, str) else self.encode(p)
            gen = None
            if params.seed is not None:
                gen = torch.Generator(self.device).manual_seed(params.seed + i)
            out.append(Row(i, ids, params, gen))
        return out

    def stream(self, prompts: str | Sequence[str | list[int]], max_new_tokens: int = 128,
               temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0,
               stop: str | list[str] | None = None, seed: int | None = None,
               batch_size: int = 16, compile: bool | None = None,
               prefill_chunk: int | None = None) -> Iterator[StreamChunk]:
        """Yield text as it is generated, for one prompt or a batch (``chunk.index`` says which)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        params = SamplingParams(max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                                [stop] if isinstance(stop, str) else list(stop or []), seed)
        for u in run(self.engine(compile), self.requests(prompts, params), batch_size, prefill_chunk=prefill_chunk):
            yield StreamChunk(u.key, u.text, u.token_id, u.finish_reason)

    def generate(self, prompts: str | Sequence[str | list[int]], max_new_tokens: int = 128,
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0,
                 stop: str | list[str] | None = None, seed: int | None = None,
                 batch_size: int = 16, compile: bool | None = None,
                 prefill_chunk: int | None = None) -> Completion | list[Completion]:
        """Continue each prompt; a single string gives one :class:`Completion`, a list gives a list.

        ``compile``: see :meth:`engine`; ``prefill_chunk``: read long prompts at most this many tokens per
        forward (a 76k-token book into a 7B model's memory).
        """
        single = isinstance(prompts, str)
        prompts = [prompts] if single else list(prompts)
        params = SamplingParams(max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                                [stop] if isinstance(stop, str) else list(stop or []), seed)
        reqs = self.requests(prompts, params)
        for _ in run(self.engine(compile), reqs, batch_size, prefill_chunk=prefill_chunk):
            pass
        out = [Completion(r.text.text, r.out_ids, len(r.prompt_ids), r.finish_reason) for r in reqs]
        return out[0] if single else out


def load(path: str | Path, tokenizer: str | Path | None = None, device: str | None = None,
         dtype: str | torch.dtype | None = None, attn_impl: str | None = None, quantize: str | None = None,
         prepack: bool = True) -> LLM:
    """Load a Hugging Face-format MPT checkpoint (a folder or, when online, a hub name) and its tokenizer.

    Defaults and fallbacks are :func:`mpt.model.load.load_model`'s: CUDA when available, bfloat16 on
    GPU and float32 on CPU. ``quantize="int8"``: int8 weights for the linear layers
    (:mod:`mpt.model.quantize`). ``prepack`` (CPU): linear weights, float or int8, packed once for oneDNN
    (:mod:`mpt.model.prepack`), 2x faster decoding; the model is then for inference only.
    """
    from ..data.tokenize import load_tokenizer
    from ..model import MPTForCausalLM
    from ..model.load import load_model

    model = load_model(path, device=device, dtype=dtype, attn_impl=attn_impl, quantize=quantize)
    if not isinstance(model, MPTForCausalLM):
        raise ValueError(f"{path} is a {model.config.model_type!r} model; generation runs MPT checkpoints "
                         "(`mpt eval` takes any causal LM)")
    if prepack:
        from ..model.prepack import prepack_model

        prepack_model(model)
    return LLM(model, load_tokenizer(tokenizer or path))
