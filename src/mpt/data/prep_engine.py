"""Where `mpt prep`'s stages run: in this process, in a pool of processes, or on Ray.

An engine runs plain functions of plain data (``submit(fn, *args)``): a partition's preparation, a
bucket shard's near-dedup grouping. ``ordered_results`` hands the results back in input order with a bounded number of partitions in
flight (at most ``slots`` computing, twice that held), whatever the engine. Each finished result is
kept in the output folder (``prep-parts/``, named by the run's settings and the partition), so a
rerun after the driver was killed reuses it instead of preparing it again. A worker that dies is a
:class:`PrepWorkerError` naming the partition's files, never a hang.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Protocol

import numpy as np

from ..storage import write_atomic
from .prep_folder import PARTS_DIR
from .prep_stages import Partition, PartitionResult, StageSettings, partition_key, prepare_partition


class PrepWorkerError(RuntimeError):
    """The process running a stage (a partition's preparation) died (killed, out of memory) and was not
    brought back."""


class Engine(Protocol):
    slots: int         # calls computed at once

    def submit(self, fn: Callable, *args): ...
    def ready(self, handle) -> bool: ...
    def wait(self, handles: list) -> None: ...
    def get(self, handle, where: str): ...   # ``where``: what the call was working on, for a worker's death
    def close(self) -> None: ...


def _done(result) -> Future:
    f: Future = Future()
    f.set_result(result)
    return f


def _one_thread() -> None:
    # a pool process per core: the tokenizer's own thread pool in each would only compete for them
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


class LocalEngine:
    """Partitions prepared in this process (one slot), or in a pool of forked processes."""

    def __init__(self, workers: int):
        self.slots = workers
        self.pool = None
        if workers > 1:
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            self.pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_one_thread)
            # the processes start now, before the driver loads its tokenizer, so forking copies no tokenizer
            # threads; each loads its own
            self.pool.submit(int).result()

    def submit(self, fn: Callable, *args) -> Future:
        if self.pool is None:
            return _done(fn(*args))
        return self.pool.submit(fn, *args)

    def ready(self, handle: Future) -> bool:
        return handle.done()

    def wait(self, handles: list[Future]) -> None:
        wait(handles, return_when=FIRST_COMPLETED)

    def get(self, handle: Future, where: str):
        try:
            return handle.result()
        except BrokenProcessPool:
            raise PrepWorkerError(f"{where}: the process preparing it died (killed, or out of memory on a "
                                  "huge record: a smaller --max-record-bytes bounds what one record may take)"
                                  ) from None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


class PartStore:
    """Finished partitions' results in ``out/prep-parts``, named by the run (``claim``) and the partition."""

    def __init__(self, out: Path, claim: dict):
        self.folder, self.claim = out / PARTS_DIR, claim
        self.reused = self.computed = 0

    def _path(self, part: Partition) -> Path:
        return self.folder / f"part-{part.number:06d}-{partition_key(self.claim, part)}.npz"

    def load(self, part: Partition) -> PartitionResult | None:
        path = self._path(part)
        if not path.is_file():
            return None
        try:
            result = PartitionResult.from_bytes(path.read_bytes())
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None                # damaged since: prepared again
        self.reused += 1
        return result

    def arrays(self, part: Partition, *names: str) -> list[np.ndarray]:
        """Some arrays of a stored partition's result only (an npz member is read on its own)."""
        with np.load(self._path(part), allow_pickle=False) as z:
            return [z[name] for name in names]

    def save(self, part: Partition, result: PartitionResult) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path(part), result.to_bytes())
        self.computed += 1

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def ordered_results(engine: Engine, parts: list[Partition], settings: StageSettings,
                    store: PartStore) -> Iterator[PartitionResult]:
    """Each partition's result in input order: stored ones loaded, the others prepared by ``engine``,
    at most ``engine.slots`` at once and ``2 * slots`` held, so memory does not grow with the corpus."""
    pending: deque[tuple[Partition, object, PartitionResult | None]] = deque()   # (partition, handle, stored)

    def running() -> list:
        return [h for _, h, stored in pending if stored is None and not engine.ready(h)]

    todo = iter(parts)
    while True:
        while len(pending) < 2 * engine.slots and len(running()) < engine.slots:
            part = next(todo, None)
            if part is None:
                break
            stored = store.load(part)
            pending.append((part, None if stored else engine.submit(prepare_partition, part, settings), stored))
        if not pending:
            return
        part, handle, stored = pending[0]
        if stored is None and not engine.ready(handle):
            engine.wait(running())
            continue
        pending.popleft()
        if stored is not None:
            yield stored
            continue
        result = engine.get(handle, part.where())
        if result.error is None:
            store.save(part, result)
        yield result


def ordered_calls(engine: Engine, fn: Callable, calls: Iterable[tuple[str, tuple]]) -> Iterator:
    """``fn(*args)`` for each (where, args) of ``calls``, on ``engine``, results in order; at most
    ``engine.slots`` in flight, so the arguments made lazily by ``calls`` are not all held at once."""
    pending: deque[tuple[str, object]] = deque()
    todo = iter(calls)
    while True:
        while len(pending) < engine.slots and (call := next(todo, None)) is not None:
            pending.append((call[0], engine.submit(fn, *call[1])))
        if not pending:
            return
        where, handle = pending.popleft()
        yield engine.get(handle, where)
