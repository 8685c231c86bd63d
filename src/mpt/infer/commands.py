"""The ``generate`` and ``chat`` commands: a typed config and one function each.

The configs import nothing heavy, so ``mpt generate --help`` is instant; the model loads inside.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Literal

from ..config import option
from . import options as opts
from .chat_repl import ChatConfig
from .serve_config import CompileMode, compile_flag

Quantize = Literal["int8"]


@dataclass(kw_only=True)
class ModelSource:
    model: str = option(help=opts.MODEL, positional=True)
    tokenizer: str | None = option(None, opts.TOKENIZER)
    device: str | None = option(None, opts.DEVICE)
    dtype: opts.Dtype | None = option(None, opts.DTYPE)
    quantize: Quantize | None = option(None, opts.QUANTIZE)  # mpt.model.quantize

    def load(self, prepack: bool = True):
        from ..paths import check_model_name

        check_model_name(self.model)  # in a fraction of a second, before torch and transformers load
        from ..model.load import inference_dtype
        from .api import load

        return load(self.model, tokenizer=self.tokenizer, device=self.device,
                    dtype=inference_dtype(self.dtype, self.device), quantize=self.quantize, prepack=prepack)


@dataclass(kw_only=True)
class GenerateConfig(ModelSource):
    prompt: str | None = option(None, "the prompt (default: --file, else stdin)", positional=True)
    file: str | None = option(None, "read the prompt from this file ('-' for stdin)")
    each_line: bool = option(False, "every non-empty line is a separate prompt")
    json: bool = option(False, "print JSON lines (text, finish_reason, token counts)")
    stop: list[str] = option(help="stop before this string (repeatable)", repeat=True, factory=list)
    batch_size: int = option(16, "prompts decoded together")
    max_new_tokens: int = option(128, "tokens to generate")
    temperature: float = option(0.0, opts.TEMPERATURE)
    top_p: float = option(1.0, opts.TOP_P)
    top_k: int = option(0, opts.TOP_K)
    repetition_penalty: float = option(1.0, opts.REPETITION_PENALTY)
    seed: int | None = option(None, opts.SEED)
    compile: CompileMode = option("auto", opts.COMPILE)

    def prompts(self) -> list[str]:
        if self.prompt is not None and self.file is not None:
            raise ValueError("give the prompt as an argument or with --file, not both")
        if self.prompt is not None:
            text = self.prompt
        elif self.file not in (None, "-"):
            with open(self.file, encoding="utf-8") as f:
                text = f.read()
        else:
            if sys.stdin.isatty():
                print("reading the prompt from stdin (end with Ctrl-D)", file=sys.stderr)
            text = sys.stdin.read()
        prompts = [line for line in text.splitlines() if line.strip()] if self.each_line else [text]
        if not any(prompts):
            raise ValueError("the prompt is empty")
        return prompts


def generate(cfg: GenerateConfig) -> None:
    """Stream one continuation to stdout, or print JSON lines for several prompts; the speed on stderr."""
    prompts = cfg.prompts()
    llm = cfg.load()
    kw = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
              repetition_penalty=cfg.repetition_penalty, stop=cfg.stop or None, seed=cfg.seed,
              batch_size=cfg.batch_size, compile=compile_flag(cfg.compile))
    start = time.perf_counter()
    if len(prompts) == 1 and not cfg.json:
        n = 0
        for chunk in llm.stream(prompts[0], **kw):
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            n += 1
        sys.stdout.write("\n")
    else:
        outs = llm.generate(prompts, **kw)
        for p, c in zip(prompts, outs, strict=True):
            print(json.dumps({"prompt": p, "text": c.text, "finish_reason": c.finish_reason,
                              "prompt_tokens": c.prompt_tokens, "completion_tokens": len(c.token_ids)}))
        n = sum(len(c.token_ids) for c in outs)
    took = time.perf_counter() - start
    print(f"[{n} tokens in {took:.2f} s, {n / took:.1f} tokens/s]", file=sys.stderr)


@dataclass(kw_only=True)
class ChatCommandConfig(ModelSource, ChatConfig):
    pass


def chat(cfg: ChatCommandConfig) -> None:
    from .chat_repl import run_chat

    run_chat(cfg.load(), cfg)
