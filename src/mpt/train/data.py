"""Batches for the loop: each call gives this rank's share of one global batch, deterministically.

For a global batch of G samples over W ranks, step t's global batch is the same G samples for any
W (the streaming dataset's positions ``[t*G, (t+1)*G)``; for finetuning, the same slice of a seeded
permutation; for packed pretraining, rows ``[t*G, (t+1)*G)`` of one packing of the documents), so a
run resumed on a different number of ranks sees the same data.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.finetune import IGNORE, FinetuneConfig, collate_packed, load_finetune, pad_collate, plan_packing
from ..data.streaming import Source, StreamConfig, StreamingDataLoader, StreamingDataset
from ..data.tokenize import load_token_encoder
from .recipe import DataSection


def _stream(sources, rank_batch: int, seed: int, rank: int, world: int) -> StreamingDataset:
    cfg = StreamConfig([Source(s.path, s.proportion) for s in sources], batch_size=rank_batch, seed=seed,
                       rank=rank, world_size=world)
    return StreamingDataset(cfg)


class PretrainBatches:
    """Fixed-length samples of ``concat`` shards (``mpt prep --seq-len N``), streamed by the dataset."""

    def __init__(self, sources, rank_batch: int, seed: int, rank: int, world: int, num_workers: int) -> None:
        self.dataset = _stream(sources, rank_batch, seed, rank, world)
        for s, index in zip(sources, self.dataset.indexes, strict=True):
            if index.mode == "docs":
                raise ValueError(f"{s.path} holds whole documents (`mpt prep --mode docs`); set data.packing: true "
                                 "(and model attn_config.attn_uses_sequence_id: true) to train on them packed into "
                                 "max_seq_len rows with document masks, or prep it again in concat mode (--seq-len)")
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
        if state.get("packing"):
            raise ValueError("cannot resume: the checkpoint was trained with data.packing=true on document shards, "
                             "this run reads concat shards unpacked; resume with the same data settings")
        self.loader.load_state_dict(state)
        self._it = None


class PackedPretrainBatches:
    """Rows of ``seq_len`` tokens packed from whole documents of ``docs`` shards, with ``sequence_id``.

    The documents come in the streaming dataset's order (the same seeded shuffle and mixing as
    unpacked samples). Rows are filled in that order (next-fit): a document that fits in the row's
    free space goes in whole; one that does not but fits an empty row starts the next row (the rest
    of this one is padding); one longer than ``seq_len`` fills the free space and continues at the
    start of the following rows, so only documents longer than a row are ever cut. The last row of
    an epoch is closed at the epoch's end. The first token of every piece is not a target (it
    would be predicted from another document), so the loss of a packed row is exactly that of its
    documents alone, and the model's ``attn_uses_sequence_id`` keeps their attention apart.

    Every rank packs the same global stream of rows (from document lengths only, which the shard
    offsets give) and loads the tokens of its own share: step t's rows are the same for any number of
    ranks. The resume point is a cursor (epoch, document position, token offset in that document),
    so resuming needs no replay. Rows are built in this process (no loader workers: a row is a few
    slices of memory-mapped shards).
    """

    def __init__(self, sources, seq_len: int, rank_batch: int, seed: int, rank: int, world: int,
                 log=print) -> None:
        if seq_len < 2:
            raise ValueError(f"packed rows need seq_len >= 2, got {seq_len}")
        self.dataset = _stream(sources, rank_batch, seed, rank, world)
        for s, index in zip(sources, self.dataset.indexes, strict=True):
            if index.mode != "docs":
                raise ValueError(f"data.packing packs whole documents, but {s.path} holds {index.mode} samples of "
                                 f"{index.seq_len} tokens; prep it with `mpt prep --mode docs` (or set "
                                 "data.packing: false)")
        self.seq_len, self.rank_batch, self.rank, self.world = seq_len, rank_batch, rank, world
        self.pad_id = self.dataset.indexes[0].eos_id or 0     # never a target: labels are IGNORE there
        self.cursor = (0, 0, 0)        # (epoch, position in the epoch's document order, token offset)
        self.rows_done = 0
        self._epoch_rows: dict[int, tuple[int, int, int]] = {}
        self._lengths: dict[int, int] = {}
        rows, docs, tokens = self._epoch_stats(0)
        log(f"packing: {docs:,} documents ({tokens:,} tokens) into {rows:,} rows of {seq_len} tokens per epoch "
            f"({tokens / max(rows * seq_len, 1):.1%} real tokens)")

    # ---- the packing: a pure function of the cursor -------------------------------------------
    def _epoch_length(self, epoch: int) -> int:
        if epoch in self._lengths:
            return self._lengths[epoch]
        saved = self.dataset.epoch
        self.dataset.epoch = epoch            # an epoch's length can depend on it ("stop" sources)
        try:
            self._lengths[epoch] = self.dataset.epoch_length()
        finally:
            self.dataset.epoch = saved
        return self._lengths[epoch]

    def _doc(self, epoch: int, position: int) -> np.ndarray:
        return self.dataset.sample(*self.dataset.locate(epoch, position))

    def _row(self, cursor: tuple[int, int, int], length: int) -> tuple[list[tuple[int, int, int, int]], tuple]:
        """One row from ``cursor``: its pieces (epoch, position, start, end) and the cursor after it."""
        epoch, pos, off = cursor
        pieces, free = [], self.seq_len
        while free and pos < length:
            n = len(self._doc(epoch, pos)) - off
            if n <= free:
                pieces.append((epoch, pos, off, off + n))
                free -= n
                pos, off = pos + 1, 0
            elif n > self.seq_len:
                pieces.append((epoch, pos, off, off + free))   # only a document longer than a row is cut
                off += free
                free = 0
            else:
                break                                          # whole in the next row
        if pos >= length:
            epoch, pos, off = epoch + 1, 0, 0                  # the epoch ends with this row
        return pieces, (epoch, pos, off)

    def _epoch_stats(self, epoch: int) -> tuple[int, int, int]:
        """(rows, documents, tokens) of one epoch, by packing its document lengths once (then cached)."""
        if epoch not in self._epoch_rows:
            length, cursor, rows, tokens = self._epoch_length(epoch), (epoch, 0, 0), 0, 0
            while cursor[0] == epoch:
                pieces, cursor = self._row(cursor, length)
                rows += 1
                tokens += sum(end - start for _, _, start, end in pieces)
            self._epoch_rows[epoch] = (rows, length, tokens)
        return self._epoch_rows[epoch]

    def samples_per_epoch(self) -> int:
        return self._epoch_stats(self.cursor[0])[0]

    def next(self) -> dict[str, torch.Tensor]:
        """This rank's rows of the next global batch: input_ids, labels (IGNORE where no target), sequence_id."""
        rows, cursor = [], self.cursor
        for _ in range(self.rank_batch * self.world):
            pieces, cursor = self._row(cursor, self._epoch_length(cursor[0]))
            rows.append(pieces)
        self.cursor, self.rows_done = cursor, self.rows_done + len(rows)
        mine = rows[self.rank * self.rank_batch:(self.rank + 1) * self.rank_batch]
        return self.collate(mine)

    def collate(self, rows: list[list[tuple[int, int, int, int]]]) -> dict[str, torch.Tensor]:
        shape = (len(rows), self.seq_len)
        ids = np.full(shape, self.pad_id, dtype=np.int64)
        labels = np.full(shape, IGNORE, dtype=np.int64)
        seq_id = np.full(shape, -1, dtype=np.int64)
        for r, pieces in enumerate(rows):
            at = 0
            for k, (epoch, pos, start, end) in enumerate(pieces):
                n = end - start
                ids[r, at:at + n] = self._doc(epoch, pos)[start:end]
                labels[r, at + 1:at + n] = ids[r, at + 1:at + n]   # its first token follows another document
                seq_id[r, at:at + n] = k
                at += n
        return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
                "sequence_id": torch.from_numpy(seq_id)}

    # ---- resumption ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        epoch, pos, off = self.cursor
        self.dataset.epoch, self.dataset.sample_in_epoch = epoch, pos
        return {**self.dataset.state_dict(), "packing": True, "seq_len": self.seq_len, "offset": off,
                "rows": self.rows_done}

    def load_state_dict(self, state: dict) -> None:
        if not state.get("packing"):
            raise ValueError("cannot resume: the checkpoint read its shards unpacked, this run has data.packing=true; "
                             "resume with the same data settings")
        if state["seq_len"] != self.seq_len:
            raise ValueError(f"cannot resume: the checkpoint packed rows of {state['seq_len']} tokens, this run packs "
                             f"{self.seq_len} (model max_seq_len); resume with the same max_seq_len")
        self.dataset.load_state_dict(state)       # checks seed, sources and proportions
        self.cursor = (self.dataset.epoch, self.dataset.sample_in_epoch, int(state["offset"]))
        self.rows_done = int(state["rows"])


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


Batches = PretrainBatches | PackedPretrainBatches | FinetuneBatches  # what the training loop draws from


def build_batches(cfg: DataSection, rank_batch: int, seed: int, rank: int, world: int, max_seq_len: int,
                  log=print) -> Batches:
    if cfg.kind == "pretrain" and cfg.packing:
        if cfg.num_workers:
            log(f"data.num_workers={cfg.num_workers} is not used with packing: rows are built in the training "
                "process (slices of memory-mapped shards)")
        return PackedPretrainBatches(cfg.sources, max_seq_len, rank_batch, seed, rank, world, log)
    if cfg.kind == "pretrain":
        return PretrainBatches(cfg.sources, rank_batch, seed, rank, world, cfg.num_workers)
    return FinetuneBatches(cfg.finetune_path, cfg.tokenizer, max_seq_len, rank_batch, seed, rank, world, log,
                           packing=cfg.packing, truncation=cfg.truncation)


def count_targets(labels: torch.Tensor) -> int:
    """Positions that contribute to the loss (the model predicts labels[:, 1:])."""
    return int((labels[:, 1:] != IGNORE).sum())
