"""A streaming dataset over token shards: deterministic order, any number of ranks and workers,
exact mid-epoch resumption, several sources mixed by proportion.

:class:`StreamingDataset` yields this rank's samples of an epoch; :class:`StreamingDataLoader` counts
what it delivered, so its ``state_dict()`` is exact. The order is a pure function of ``seed``, ``epoch``
and a position (mixing: ``_mix_block``; within a source: ``_draw``; over ranks and workers:
``rank_positions`` and ``__iter__``), so each process computes it itself: no shared memory, no lock files.
We write this instead of using mosaicml-streaming (whose releases pin ``transformers<5``,
``numpy<2.2`` and pull ``torchvision``); the ideas are the same, the code is ours.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..ranks import rank_world
from .cache import ShardStore, read_index_url


@dataclass
class Source:
    url: str                        # local folder, file://, memory://, s3://, gs://, https://, ...
    proportion: float = 1.0         # relative share of the mixture (normalised over sources)
    on_exhausted: str = "repeat"    # "repeat": start a new reshuffled pass; "stop": end the epoch


@dataclass
class StreamConfig:
    sources: list[Source]
    batch_size: int                 # per rank; the DataLoader's batch size
    seed: int = 0
    shuffle: bool = True
    shuffle_block: int = 1 << 18    # samples shuffled together (across the shards they span)
    mix_block: int = 10_000         # positions per mixing block; proportions are exact per block
    epoch_size: int | None = None   # positions per epoch; default: all samples once (or until a "stop" source ends)
    rank: int | None = None         # default: torch.distributed, else $RANK, else 0
    world_size: int | None = None   # default: torch.distributed, else $WORLD_SIZE, else 1
    cache_dir: str | None = None    # for remote sources; default $MPT_CACHE or ~/.cache/mpt/shards
    cache_limit_bytes: int | None = 20 << 30
    verify: bool = True             # check each shard's size and SHA-256 before first use in a process

    def validate(self) -> None:
        if not self.sources:
            raise ValueError("StreamConfig.sources is empty; give at least one shard folder or URL")
        for i, s in enumerate(self.sources):
            if not s.proportion > 0:
                raise ValueError(f"sources[{i}] ({s.url}): proportion={s.proportion} must be > 0")
            if s.on_exhausted not in ("repeat", "stop"):
                raise ValueError(f"sources[{i}] ({s.url}): on_exhausted={s.on_exhausted!r}; expected 'repeat' or 'stop'")
        for name in ("batch_size", "shuffle_block", "mix_block"):
            if getattr(self, name) < 1:
                raise ValueError(f"StreamConfig.{name}={getattr(self, name)} must be >= 1")
        if self.epoch_size is not None and self.epoch_size < 1:
            raise ValueError(f"StreamConfig.epoch_size={self.epoch_size} must be >= 1")
        if self.cache_limit_bytes is not None and self.cache_limit_bytes < 1:
            raise ValueError(f"StreamConfig.cache_limit_bytes={self.cache_limit_bytes} must be >= 1 (or None)")


def _largest_remainder(weights: list[float], total: int) -> np.ndarray:
    exact = np.asarray(weights, dtype=np.float64) / sum(weights) * total
    counts = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts


@dataclass
class _SourceState:
    store: ShardStore
    num_samples: int
    shard_starts: list[int]          # first global sample id of each shard
    # caches of the last computed pieces of the order (the order itself is never materialised)
    shard_perm_key: tuple = ()
    shard_perm: list[int] | None = None
    perm_starts: list[int] | None = None
    block_key: tuple = ()
    block_perm: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


class StreamingDataset(IterableDataset):
    """Iterate one epoch of token samples (``torch.int64`` tensors) for this rank.

    Use it with :class:`StreamingDataLoader` (or a DataLoader with the same ``batch_size`` and
    no ``persistent_workers``), and save/restore ``loader.state_dict()`` to resume.
    """

    def __init__(self, cfg: StreamConfig):
        cfg.validate()
        self.cfg = cfg
        rank, world = rank_world(from_env=True)
        self.rank = cfg.rank if cfg.rank is not None else rank
        self.world_size = cfg.world_size if cfg.world_size is not None else world
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} is outside world_size={self.world_size}")
        self.batch_size = cfg.batch_size
        self.indexes = [read_index_url(s.url) for s in cfg.sources]
        for s, idx in zip(cfg.sources, self.indexes, strict=True):
            if idx.num_samples == 0:
                raise ValueError(f"{s.url} holds no samples; re-run `mpt prep` on non-empty input")
        seq_lens = {idx.seq_len for idx in self.indexes}
        if len(seq_lens) > 1:
            raise ValueError("sources have different sample lengths "
                             + ", ".join(f"{s.url}: {i.seq_len or 'whole documents'}"
                                         for s, i in zip(cfg.sources, self.indexes, strict=True))
                             + "; prep them with the same --seq-len")
        self.seq_len = seq_lens.pop()
        self.sizes = [idx.num_samples for idx in self.indexes]
        self.mix_counts = _largest_remainder([s.proportion for s in cfg.sources], cfg.mix_block)
        for s, n in zip(cfg.sources, self.mix_counts, strict=True):
            if n == 0:
                raise ValueError(f"source {s.url} gets 0 of every {cfg.mix_block} samples at proportion "
                                 f"{s.proportion}; raise StreamConfig.mix_block")
        self.epoch = 0
        self.sample_in_epoch = 0
        self._sources: list[_SourceState] | None = None   # opened lazily, in each worker process

    # ---- the order -------------------------------------------------------------------------
    @property
    def proportions(self) -> list[float]:
        """The realised proportions (exact in every block of ``mix_block`` positions)."""
        return [n / self.cfg.mix_block for n in self.mix_counts]

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, *key])

    def _mix_block(self, epoch: int, block: int) -> tuple[np.ndarray, np.ndarray]:
        """Source label of each position in a mixing block, and its draw number within the block.

        The epoch is cut into blocks of ``mix_block`` positions. Each block holds exactly ``n_s`` positions
        of source ``s`` (the proportions, rounded by largest remainder), in a shuffled order seeded by
        (seed, epoch, block). So the k-th position of source ``s`` is found without scanning, and the
        proportions hold exactly in every block.
        """
        key = (epoch, block)
        cached = getattr(self, "_mix_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        labels = np.repeat(np.arange(len(self.mix_counts)), self.mix_counts)
        if len(self.mix_counts) > 1:
            labels = self._rng(1, epoch, block).permutation(labels)
        within = np.empty_like(labels)
        for s, n in enumerate(self.mix_counts):
            within[labels == s] = np.arange(n)
        self._mix_cache = (key, labels, within)
        return labels, within

    def epoch_length(self) -> int:
        """Positions in one epoch: ``epoch_size``, else all samples once; shortened where a "stop" source ends."""
        mb = self.cfg.mix_block
        length = self.cfg.epoch_size or sum(self.sizes)
        for s, (src, n_s) in enumerate(zip(self.cfg.sources, self.mix_counts, strict=True)):
            if src.on_exhausted != "stop":
                continue
            block, r = divmod(self.sizes[s], int(n_s))
            labels, within = self._mix_block(self.epoch, block)
            # the position that would need draw number sizes[s] of source s, i.e. one past its last sample
            stop_at = block * mb + int(np.flatnonzero((labels == s) & (within == r))[0])
            length = min(length, stop_at)
        return length

    def _draw(self, st: _SourceState, s: int, epoch: int, k: int) -> int:
        """Global sample id of source ``s``'s k-th draw in ``epoch``: sample ``order[k % N_s]`` of pass ``k // N_s``.

        The order shuffles the shard sequence, then shuffles samples inside consecutive blocks of
        ``shuffle_block`` samples: so across shards, while a reader's working set stays about one block of
        shards, which is what keeps a bounded cache useful. When a source runs out it either repeats (a new
        pass, reshuffled) or, with ``on_exhausted="stop"``, ends the epoch (:meth:`epoch_length`).
        """
        n = st.num_samples
        pass_, k = divmod(k, n)
        if not self.cfg.shuffle:
            return k
        key = (epoch, pass_)
        if st.shard_perm_key != key:
            counts = np.array([sh.samples for sh in self.indexes[s].shards])
            perm = self._rng(2, s, epoch, pass_).permutation(len(counts))
            st.shard_perm = perm.tolist()
            st.perm_starts = np.concatenate([[0], np.cumsum(counts[perm])]).tolist()
            st.shard_perm_key = key
        sb = self.cfg.shuffle_block
        block, j = divmod(k, sb)
        bkey = (epoch, pass_, block)
        if st.block_key != bkey:
            size = min(sb, n - block * sb)
            st.block_perm = self._rng(3, s, epoch, pass_, block).permutation(size)
            st.block_key = bkey
        q = block * sb + int(st.block_perm[j])          # position in the shard-permuted sequence
        p = bisect.bisect_right(st.perm_starts, q) - 1
        return st.shard_starts[st.shard_perm[p]] + (q - st.perm_starts[p])

    def locate(self, epoch: int, position: int) -> tuple[int, int]:
        """(source, global sample id in that source) at ``position`` of ``epoch``: the whole order, one entry."""
        sources = self._open_sources()
        block, j = divmod(position, self.cfg.mix_block)
        labels, within = self._mix_block(epoch, block)
        s = int(labels[j])
        k = block * int(self.mix_counts[s]) + int(within[j])
        return s, self._draw(sources[s], s, epoch, k)

    # ---- reading ---------------------------------------------------------------------------
    def _open_sources(self) -> list[_SourceState]:
        if self._sources is None:
            self._sources = []
            for src, idx in zip(self.cfg.sources, self.indexes, strict=True):
                store = ShardStore(src.url, idx, cache_dir=self.cfg.cache_dir,
                                   limit_bytes=self.cfg.cache_limit_bytes, verify=self.cfg.verify)
                starts = np.concatenate([[0], np.cumsum([sh.samples for sh in idx.shards])])[:-1].tolist()
                self._sources.append(_SourceState(store, idx.num_samples, starts))
        return self._sources

    def sample(self, s: int, sample_id: int) -> np.ndarray:
        st = self._open_sources()[s]
        shard = bisect.bisect_right(st.shard_starts, sample_id) - 1
        return st.store.shard(shard)[sample_id - st.shard_starts[shard]]

    def rank_positions(self) -> np.ndarray:
        """The epoch positions this rank reads from ``sample_in_epoch`` on (before splitting over workers).

        Rank ``r`` of ``W`` takes positions ``start + r, start + r + W, ...``. If the samples left in the epoch
        do not divide by W, the last ones are padded with samples from the start of the epoch, so every rank
        takes the same number of steps (:attr:`padded_samples`).
        """
        length = self.epoch_length()
        start = min(self.sample_in_epoch, length)
        per_rank = math.ceil((length - start) / self.world_size)
        pos = start + self.rank + self.world_size * np.arange(per_rank, dtype=np.int64)
        return np.where(pos < length, pos, (pos - length) % length)  # pad from the epoch's start

    @property
    def padded_samples(self) -> int:
        length = self.epoch_length()
        left = length - min(self.sample_in_epoch, length)
        return math.ceil(left / self.world_size) * self.world_size - left

    def __len__(self) -> int:
        return len(self.rank_positions())

    def __iter__(self):
        positions = self.rank_positions()
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        b = self.batch_size
        epoch = self.epoch
        # Consecutive chunks of batch_size go to the workers in turn, the order in which torch's DataLoader
        # hands out their batches. So the samples of training step t over all ranks are positions
        # [t*W*B, (t+1)*W*B) whatever W and the worker count, and the resumption state is one number in
        # global samples (sample_in_epoch), valid for any new W.
        for chunk in range(worker, math.ceil(len(positions) / b), workers):
            for pos in positions[chunk * b:(chunk + 1) * b]:
                s, sample_id = self.locate(epoch, int(pos))
                yield torch.from_numpy(self.sample(s, sample_id).astype(np.int64))

    # ---- resumption ------------------------------------------------------------------------
    def state_dict(self, samples_consumed_this_rank: int = 0) -> dict:
        """Where to resume, in global samples; every rank consumed the same number of samples."""
        pos = self.sample_in_epoch + samples_consumed_this_rank * self.world_size
        epoch, pos = (self.epoch + 1, 0) if pos >= self.epoch_length() else (self.epoch, pos)
        return {"epoch": epoch, "sample_in_epoch": pos, "seed": self.cfg.seed, "sizes": list(self.sizes),
                "mix_counts": [int(n) for n in self.mix_counts]}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "sizes", "mix_counts"):
            if state.get(key) != mine[key]:
                raise ValueError(f"cannot resume: the saved data state has {key}={state.get(key)} but this dataset "
                                 f"has {mine[key]}; resume with the same sources, proportions and seed")
        self.epoch, self.sample_in_epoch = int(state["epoch"]), int(state["sample_in_epoch"])


class StreamingDataLoader(DataLoader):
    """A DataLoader that counts what it delivered, so ``state_dict()`` is exact mid-epoch.

    Each ``iter()`` is the rest of the current epoch; when it runs to the end the next ``iter()``
    starts the next epoch. Batches are ``[batch_size, seq_len]`` tensors, or lists of tensors for
    shards of whole documents (``mpt prep --mode docs``) unless you pass a ``collate_fn``.
    """

    def __init__(self, dataset: StreamingDataset, **kwargs):
        if kwargs.get("persistent_workers"):
            raise ValueError("persistent_workers=True would keep workers on a stale epoch and resume point; "
                             "leave it off")
        if kwargs.setdefault("batch_size", dataset.batch_size) != dataset.batch_size:
            raise ValueError(f"batch_size={kwargs['batch_size']} differs from the dataset's "
                             f"batch_size={dataset.batch_size}; workers hand out whole batches of the latter")
        if dataset.seq_len is None:
            kwargs.setdefault("collate_fn", list)   # whole documents differ in length: a list of tensors per batch
        super().__init__(dataset, **kwargs)
        self._consumed = 0

    def __iter__(self):
        ds: StreamingDataset = self.dataset
        self._consumed = 0
        for batch in super().__iter__():
            self._consumed += len(batch)
            yield batch
        state = ds.state_dict(self._consumed)
        ds.epoch, ds.sample_in_epoch = state["epoch"], state["sample_in_epoch"]
        self._consumed = 0

    def state_dict(self) -> dict:
        return self.dataset.state_dict(self._consumed)

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)
        self._consumed = 0
