"""Batches for the loop: each call gives this rank's share of one global batch, deterministically.

For a global batch of G samples over W ranks, step t's global batch is the same G samples for any
W (the streaming dataset's positions ``[t*G, (t+1)*G)``; for finetuning, the same slice of a seeded
permutation), so a run resumed on a different number of ranks sees the same data.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.finetune import IGNORE, FinetuneConfig, load_finetune, pad_collate
from ..data.streaming import Source, StreamConfig, StreamingDataLoader, StreamingDataset
from ..data.tokenize import load_tokenizer
from .recipe import DataSection


class PretrainBatches:
    def __init__(self, sources, rank_batch: int, seed: int, rank: int, world: int, num_workers: int) -> None:
        cfg = StreamConfig([Source(s.path, s.proportion) for s in sources], batch_size=rank_batch, seed=seed,
                           rank=rank, world_size=world)
        self.dataset = StreamingDataset(cfg)
        self.loader = StreamingDataLoader(self.dataset, num_workers=num_workers)
        self.seq_len = self.dataset.seq_len
        self._it = None

    def samples_per_epoch(self) -> int:
        return self.dataset.epoch_length()

    def next(self) -> dict[str, torch.Tensor]:
        if self._it is None:
            self._it = iter(self.loader)
        try:
            ids = next(self._it)
        except StopIteration:  # the epoch ended: the loader has moved on to the next one
            self._it = iter(self.loader)
            ids = next(self._it)
        return {"input_ids": ids, "labels": ids}

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self._it = None


class FinetuneBatches:
    """Prompt/response or chat examples, padded per micro-batch; loss on responses only."""

    def __init__(self, path: str, tokenizer: str, max_seq_len: int, rank_batch: int, seed: int, rank: int,
                 world: int, log=print) -> None:
        tok = load_tokenizer(tokenizer)
        self.vocab_size = tok.vocab_size
        self.pad_id = tok.eos_id
        self.examples, stats = load_finetune(path, tok.tokenizer, tok.eos_id, FinetuneConfig(max_seq_len))
        if not self.examples:
            raise ValueError(f"{path}: no usable finetuning examples ({stats})")
        log(f"finetuning data {path}: {stats.kept} examples kept of {stats.examples} "
            f"({stats.truncated} truncated to {max_seq_len} tokens, {stats.dropped_too_long} dropped as too long)")
        self.rank_batch, self.seed, self.rank, self.world = rank_batch, seed, rank, world
        self.epoch, self.position = 0, 0

    def samples_per_epoch(self) -> int:
        return len(self.examples)

    def next(self) -> dict[str, torch.Tensor]:
        g = self.rank_batch * self.world
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.examples))
        picked = [order[(self.position + self.rank * self.rank_batch + i) % len(order)] for i in range(self.rank_batch)]
        self.position += g
        if self.position >= len(order):
            self.epoch, self.position = self.epoch + 1, 0
        batch = pad_collate([self.examples[i] for i in picked], self.pad_id)
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "examples": len(self.examples)}

    def load_state_dict(self, state: dict) -> None:
        if state["examples"] != len(self.examples):
            raise ValueError(f"cannot resume: the checkpoint's finetuning data had {state['examples']} examples, "
                             f"this data has {len(self.examples)}; resume with the same file and settings")
        self.epoch, self.position = state["epoch"], state["position"]


def build_batches(cfg: DataSection, rank_batch: int, seed: int, rank: int, world: int, max_seq_len: int, log=print):
    if cfg.kind == "pretrain":
        return PretrainBatches(cfg.sources, rank_batch, seed, rank, world, cfg.num_workers)
    return FinetuneBatches(cfg.finetune_path, cfg.tokenizer, max_seq_len, rank_batch, seed, rank, world, log)


def count_targets(labels: torch.Tensor) -> int:
    """Positions that contribute to the loss (the model predicts labels[:, 1:])."""
    return int((labels[:, 1:] != IGNORE).sum())
