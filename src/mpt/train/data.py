"""Batches for the loop: each call gives this rank's share of one global batch, deterministically.

For a global batch of G samples over W ranks, step t's global batch is the same G samples for any
W (the streaming dataset's positions ``[t*G, (t+1)*G)``; for finetuning, the same slice of a seeded
permutation), so a run resumed on a different number of ranks sees the same data.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.finetune import IGNORE, FinetuneConfig, collate_packed, load_finetune, pad_collate, plan_packing
from ..data.streaming import Source, StreamConfig, StreamingDataLoader, StreamingDataset
from ..data.tokenize import load_token_encoder
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
    """Prompt/response or chat examples; loss on responses only.

    Unpacked, a sample is one example and a micro-batch is padded to its longest. Packed
    (``packing=True``), the examples are grouped once into rows of ``max_seq_len`` tokens and a
    sample is one row, carrying ``sequence_id`` so the model keeps the examples apart; an epoch
    still covers every example once. Rows are fixed for the run (the grouping only depends on
    example lengths) and shuffled per epoch like examples are.
    """

    def __init__(self, path: str, tokenizer: str, max_seq_len: int, rank_batch: int, seed: int, rank: int,
                 world: int, log=print, packing: bool = False, truncation: str | None = None) -> None:
        tok = load_token_encoder(tokenizer)
        self.vocab_size = tok.vocab_size
        self.pad_id = tok.eos_id
        # Packing exists to train on whole examples; cutting one silently would change its target,
        # so an over-long example stops a packed run unless truncation is chosen explicitly.
        truncation = truncation or ("error" if packing else "truncate")
        self.examples, stats = load_finetune(path, tok.tokenizer, tok.eos_id, FinetuneConfig(max_seq_len, truncation))
        if not self.examples:
            raise ValueError(f"{path}: no usable finetuning examples ({stats})")
        log(f"finetuning data {path}: {stats.kept} examples kept of {stats.examples} "
            f"({stats.truncated} truncated to {max_seq_len} tokens, {stats.dropped_too_long} dropped as too long)")
        self.packing = packing
        if packing:
            lengths = [len(e.input_ids) for e in self.examples]
            self.rows = plan_packing(lengths, max_seq_len)
            log(f"packing: {len(self.examples)} examples into {len(self.rows)} rows of {max_seq_len} tokens "
                f"({sum(lengths) / (len(self.rows) * max_seq_len):.1%} real tokens)")
        else:
            self.rows = [[i] for i in range(len(self.examples))]
        self.rank_batch, self.seed, self.rank, self.world = rank_batch, seed, rank, world
        self.epoch, self.position = 0, 0

    def samples_per_epoch(self) -> int:
        return len(self.rows)

    def next(self) -> dict[str, torch.Tensor]:
        g = self.rank_batch * self.world
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.rows))
        picked = [order[(self.position + self.rank * self.rank_batch + i) % len(order)] for i in range(self.rank_batch)]
        self.position += g
        if self.position >= len(order):
            self.epoch, self.position = self.epoch + 1, 0
        if self.packing:
            return collate_packed([[self.examples[i] for i in self.rows[r]] for r in picked], self.pad_id)
        return pad_collate([self.examples[self.rows[r][0]] for r in picked], self.pad_id)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "examples": len(self.examples),
                "rows": len(self.rows), "packing": self.packing}

    def load_state_dict(self, state: dict) -> None:
        if state["examples"] != len(self.examples):
            raise ValueError(f"cannot resume: the checkpoint's finetuning data had {state['examples']} examples, "
                             f"this data has {len(self.examples)}; resume with the same file and settings")
        # positions count rows, so they only mean the same thing with the same packing
        saved = (state.get("packing", False), state.get("rows", state["examples"]))
        if saved != (self.packing, len(self.rows)):
            raise ValueError(f"cannot resume: the checkpoint has data.packing={saved[0]} ({saved[1]} rows), this run "
                             f"has data.packing={self.packing} ({len(self.rows)} rows); resume with the same setting")
        self.epoch, self.position = state["epoch"], state["position"]


def build_batches(cfg: DataSection, rank_batch: int, seed: int, rank: int, world: int, max_seq_len: int, log=print):
    if cfg.kind == "pretrain":
        return PretrainBatches(cfg.sources, rank_batch, seed, rank, world, cfg.num_workers)
    return FinetuneBatches(cfg.finetune_path, cfg.tokenizer, max_seq_len, rank_batch, seed, rank, world, log,
                           packing=cfg.packing, truncation=cfg.truncation)


def count_targets(labels: torch.Tensor) -> int:
    """Positions that contribute to the loss (the model predicts labels[:, 1:])."""
    return int((labels[:, 1:] != IGNORE).sum())
