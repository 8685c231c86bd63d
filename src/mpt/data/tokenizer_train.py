"""`mpt tokenizer train`: a byte-level BPE tokenizer trained with `tokenizers`, saved in Hugging Face format.

The pipeline matches GPT-NeoX-20B's (NFC normaliser, byte-level pre-tokenizer and decoder without a
prefix space), so a small tokenizer behaves like MPT's own. Special tokens: ``<|endoftext|>``
(EOS, BOS and UNK, id 0), ``<|padding|>`` (PAD, id 1), ``<|im_start|>`` and ``<|im_end|>`` (ChatML);
the saved tokenizer carries the ChatML chat template, so ``apply_chat_template`` works offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..chatml import CHATML_TEMPLATE
from ..config import option
from .readers import ReadStats, expand_inputs, read_documents

SPECIAL_TOKENS = ["<|endoftext|>", "<|padding|>", "<|im_start|>", "<|im_end|>"]


@dataclass
class TokenizerTrainConfig:
    inputs: list[str] = option(help="files, folders or globs (quote globs)", positional=True, metavar="INPUT")
    out: str = option(help="folder to save the tokenizer in")
    vocab_size: int = option(8192, "vocabulary size incl. special tokens")
    min_frequency: int = option(2, "minimum count of a merge")
    text_field: str = option("text", "JSON field / parquet column holding the text")
    skip_bad: bool = option(False, "skip (and count) malformed records instead of stopping")
    special_tokens: list[str] = field(default_factory=lambda: list(SPECIAL_TOKENS))
    progress: bool = option(True, "no progress bar")

    def validate(self) -> None:
        if not self.inputs:
            raise ValueError("tokenizer train needs at least one INPUT (file, folder or glob)")
        floor = 256 + len(self.special_tokens)
        if self.vocab_size < floor:
            raise ValueError(f"vocab_size={self.vocab_size} is below {floor} (256 bytes + special tokens)")
        if self.min_frequency < 1:
            raise ValueError(f"min_frequency={self.min_frequency} must be >= 1")
        if self.special_tokens[:2] != SPECIAL_TOKENS[:2]:
            raise ValueError(f"special_tokens must start with {SPECIAL_TOKENS[:2]} (EOS, PAD)")


def train_tokenizer(cfg: TokenizerTrainConfig):
    """Train, save to ``cfg.out`` and return the transformers tokenizer; ``.stats`` holds what was read."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast


    cfg.validate()
    files = expand_inputs(cfg.inputs)
    stats = ReadStats()
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                  special_tokens=cfg.special_tokens, show_progress=cfg.progress and _terminal(),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = (d.text for d in read_documents(files, cfg.text_field, skip_bad=cfg.skip_bad, stats=stats))
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                 unk_token="<|endoftext|>", pad_token="<|padding|>",
                                 chat_template=CHATML_TEMPLATE, model_max_length=2048)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(cfg.out)
    hf.stats = stats
    return hf


def train_and_describe(cfg: TokenizerTrainConfig) -> None:
    """`mpt tokenizer train`: train, save, and say what was made."""
    hf = train_tokenizer(cfg)
    st = hf.stats
    print(f"trained a byte-level BPE tokenizer with {len(hf):,} tokens on {st.records:,} records from {st.files} "
          f"files ({st.skipped:,} bad records or files skipped); saved to {cfg.out} "
          f"(EOS <|endoftext|>={hf.eos_token_id}, PAD <|padding|>={hf.pad_token_id}, ChatML chat template)")


def _terminal() -> bool:
    """The tokenizers trainer's bars draw on a terminal; into a pipe or file they leave only blank lines."""
    import sys

    return sys.stdout.isatty() and sys.stderr.isatty()
