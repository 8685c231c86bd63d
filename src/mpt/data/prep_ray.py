"""`mpt prep --engine ray`: partitions prepared as Ray tasks, on one machine or a cluster.

The tasks run the same stage functions as the local engine; the driver (prep.py) decides
duplicates, packs and writes, so the output is byte for byte the local engine's. Without an
address Ray starts on this machine; ``auto`` or HOST:PORT joins a cluster made with ``ray start``. The
driver's AWS_* variables go with every task, so each node reads s3:// inputs with the driver's settings.
A task whose worker or node dies is retried by Ray; one that keeps dying is a PrepWorkerError
naming the partition's files, and bad input is the same typed error, same words, as in-process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from .prep_engine import PrepWorkerError

RETRIES = 3          # a task whose worker or node died runs again this many times


class RayEngine:
    def __init__(self, address: str | None, workers: int | None):
        try:
            import ray
        except ImportError as err:
            raise ImportError("--engine ray needs Ray: pip install 'mpt[ray]' (on every machine of the cluster)"
                              ) from err
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            extra = {} if address else {"include_dashboard": False}   # options for a Ray this call starts
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, **extra)
        self.slots = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.tasks: dict[Callable, object] = {}
        self.options = dict(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)
        # the driver's object-storage settings, so a task on any node reads s3:// inputs as the driver would
        if env := {k: v for k, v in os.environ.items() if k.startswith("AWS_")}:
            self.options["runtime_env"] = {"env_vars": env}

    def submit(self, fn: Callable, *args):
        if fn not in self.tasks:
            self.tasks[fn] = self.ray.remote(fn).options(**self.options)
        return self.tasks[fn].remote(*args)

    def ready(self, handle) -> bool:
        return bool(self.ray.wait([handle], timeout=0, fetch_local=False)[0])

    def wait(self, handles: list) -> None:
        self.ray.wait(handles, num_returns=1, fetch_local=False)

    def get(self, handle, where: str):
        ray = self.ray
        try:
            return ray.get(handle)
        except ray.exceptions.RayTaskError as err:
            # an error of the task's own code (bad input is returned, not raised): the original, typed
            cause = getattr(err, "cause", None)
            raise (cause if isinstance(cause, Exception) else err) from None
        except ray.exceptions.RayError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise PrepWorkerError(f"{where}: the Ray worker preparing it died, {RETRIES + 1} times "
                                  f"(killed, its node lost, or out of memory on a huge record: a smaller "
                                  f"--max-record-bytes bounds what one record may take); Ray said "
                                  f"{type(err).__name__}: {first}") from None

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
