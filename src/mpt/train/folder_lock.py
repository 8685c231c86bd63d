"""One training run at a time in a checkpoint folder: :func:`hold_folder`.

Two runs saving into one folder destroy each other's work: the second removes the first's
``step-N.tmp`` in the middle of its save, and replaces or prunes checkpoints it takes for its own. So a
run holds its ``checkpoint.folder`` from before it reads a checkpoint until its export is written, and
a second run is refused with one line naming the holder. A local folder is held with an OS lock
(:class:`_LocalLock`), object storage with a lease object that a heartbeat renews (:class:`_Lease`).
Rank 0 takes the lock alone; every rank learns the outcome through one collective, so all ranks
refuse or all proceed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from ..ranks import agreed_problem, rank_world
from ..storage import is_local_path, location
from .checkpoint import CheckpointError

LOCK_NAME, HOLDER_NAME, LEASE_NAME = ".lock", ".lock-holder.json", ".lease.json"


def _identity(run_name: str) -> dict:
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    if job == "none":  # torchrun's default id: the agent (rank 0's parent) stands for the job instead
        job = f"{socket.gethostname()}:{os.getppid()}"
    return {"token": uuid.uuid4().hex, "run_name": run_name, "host": socket.gethostname(), "pid": os.getpid(),
            "since": time.time(), "job": job, "attempt": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))}


def describe(holder: dict | None) -> str:
    """``run 'a' (pid 12 on host h, since 2026-11-02 10:00:01 UTC)``, from a holder record."""
    if not holder:
        return "another run (it left no readable description)"
    since = holder.get("since")
    when = time.strftime(", since %Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if isinstance(since, (int, float)) else ""
    return f"run {holder.get('run_name')!r} (pid {holder.get('pid')} on host {holder.get('host')}{when})"


class FolderLock:
    """What a run holds; ranks other than 0 hold this no-op."""

    def problem(self) -> str | None:
        """Why this run may no longer write into the folder (None: it may)."""
        return None

    def release(self) -> None:
        pass


class _LocalLock(FolderLock):
    """An OS lock (``flock``, through ``filelock``) on ``folder/.lock``. The kernel drops it when the holding
    process ends, however it ends (``kill -9`` included), so a killed run's folder can be resumed at once.
    The holder describes itself in ``.lock-holder.json`` for the refusal."""

    def __init__(self, root, me: dict) -> None:
        from filelock import FileLock, Timeout

        made = [p for p in (root, *root.parents) if not p.exists()]
        self._made = made[-1] if made else None  # the outermost folder this run creates
        root.mkdir(parents=True, exist_ok=True)
        self._root, self._holder = root, root / HOLDER_NAME
        self._lock = FileLock(str(root / LOCK_NAME), timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            try:
                holder = json.loads(self._holder.read_text())
            except (OSError, ValueError):  # the holder is still writing it, or was killed before it could
                holder = None
            raise CheckpointError(f"checkpoint.folder {root} is in use by {describe(holder)}; wait for that run to "
                                  "end (or stop it), or use another checkpoint.folder") from None
        # Written in place: only a description for a refusal, which reads a torn one as unknown. (A
        # temporary *.tmp beside it would look like a save in progress; a full disk must not stop the run.)
        with contextlib.suppress(OSError):
            self._holder.write_text(json.dumps(me))

    def release(self) -> None:
        self._holder.unlink(missing_ok=True)
        if self._made is None or any(p.name != LOCK_NAME for p in self._root.iterdir()):
            self._lock.release()
            return
        # This run made the folder and ended before writing anything into it (a recipe or data error):
        # it leaves none behind. The lock file goes while still held: filelock (4.x) refuses a lock won on
        # an unlinked file, so a run that opened it meanwhile cannot hold it beside a newer one.
        (self._root / LOCK_NAME).unlink(missing_ok=True)
        self._lock.release()
        for folder in (self._root, *self._root.parents):
            try:
                folder.rmdir()
            except OSError:  # not empty (another run's now), or gone
                break
            if folder == self._made:
                break


class _Lease(FolderLock):
    """Object storage (``s3://...``) has no locks: a lease object ``folder/.lease.json`` names the holder and a
    heartbeat thread renews it every ``lease_seconds / 4``.

    It is created only where none exists and replaced only if unchanged since it was read (S3's conditional
    writes), so of two runs racing for it exactly one wins (other fsspec stores lack conditional writes:
    there a replace checks, then writes). A lease not renewed for ``checkpoint.lease_seconds`` belongs to a
    run that died and is taken over; a run that stalled that long and lost its lease stops before its next
    save. A group that ``torchrun --max-restarts`` restarts (the same job, a later attempt) takes its
    earlier lease at once.
    """

    def __init__(self, root, me: dict, seconds: float, log) -> None:
        self._root, self._fs, self._me, self._seconds = root, root.fs, me, seconds
        self._path = f"{root.path.rstrip('/')}/{LEASE_NAME}"
        protocols = root.fs.protocol if isinstance(root.fs.protocol, (tuple, list)) else (root.fs.protocol,)
        self._s3 = bool({"s3", "s3a"} & set(protocols))
        self._lost: str | None = None
        self._etag = self._take(log)
        self._stop = threading.Event()
        self._beating = threading.Thread(target=self._beat, name="checkpoint-lease", daemon=True)
        self._beating.start()

    # ---- the object ----

    def _read(self) -> tuple[str | None, dict | None]:
        """(ETag, holder) of the lease as stored now; (None, None) if there is none, ({} holder) if unreadable.

        The ETag is read first: a replace conditioned on it fails if the object changed after it, even
        if the content read here is already the newer one.
        """
        self._fs.invalidate_cache(self._path)
        try:
            etag = self._fs.info(self._path).get("ETag")
            raw = self._fs.cat_file(self._path)
        except FileNotFoundError:
            return None, None
        try:
            holder = json.loads(raw)
        except ValueError:
            holder = {}
        return etag, holder if isinstance(holder, dict) else {}

    def _put(self, create: bool = False, if_match: str | None = None) -> str | None:
        """Write our record with a fresh heartbeat: only where none exists (``create``), or only over the
        version ``if_match``; OSError (FileExistsError for ``create``) when that condition fails."""
        body = json.dumps(dict(self._me, heartbeat=time.time())).encode()
        extra = {"IfMatch": if_match} if self._s3 and if_match else {}
        if if_match and not self._s3:  # no conditional writes here: check, then write (a narrow race)
            if self._read()[0] != if_match:
                raise OSError(f"{self._path} changed")
        out = self._fs.pipe_file(self._path, body, mode="create" if create else "overwrite", **extra)
        self._fs.invalidate_cache(self._path)
        etag = out.get("ETag") if isinstance(out, dict) else None
        return etag or self._read()[0]

    def _take(self, log) -> str | None:
        for _ in range(3):  # a lease released between our two requests: try creating it again
            try:
                return self._put(create=True)
            except FileExistsError:
                pass
            etag, holder = self._read()
            if etag is not None:
                break
        else:
            raise OSError(f"{self._path} can neither be created nor read")
        beat = holder.get("heartbeat")
        age = time.time() - beat if isinstance(beat, (int, float)) else float("inf")
        ours = (holder.get("job") is not None and holder.get("job") == self._me["job"]
                and isinstance(holder.get("attempt"), int) and holder["attempt"] < self._me["attempt"])
        if age < self._seconds and not ours:
            raise self._refusal(holder, age)
        try:
            etag = self._put(if_match=etag)
        except OSError:  # another run took it over first
            _, holder = self._read()
            raise self._refusal(holder, 0.0) from None
        why = "an earlier attempt of this torchrun job" if ours else f"last heartbeat {age:.0f} s ago: it has stopped"
        log(f"checkpoint.folder {self._root}: took over the lease of {describe(holder)} ({why})")
        return etag

    def _refusal(self, holder: dict | None, age: float) -> CheckpointError:
        return CheckpointError(
            f"checkpoint.folder {self._root} is in use by {describe(holder)}, last heartbeat {age:.0f} s ago; wait "
            f"for that run to end (or stop it), or use another checkpoint.folder (a lease without a heartbeat for "
            f"checkpoint.lease_seconds={self._seconds:g} is taken over; if that run is gone, that is soon, or delete "
            f"{self._root}/{LEASE_NAME})")

    # ---- the heartbeat ----

    def _beat(self) -> None:
        while not self._stop.wait(self._seconds / 4):
            try:
                self._etag = self._put(if_match=self._etag)
            except Exception:  # a refused condition, or a network error: which one, the lease itself says
                try:
                    _, holder = self._read()
                except Exception:
                    continue  # unreachable now: the next beat tries again
                if self._taken(holder):
                    return

    def _taken(self, holder: dict | None) -> bool:
        if holder is not None and holder.get("token") == self._me["token"]:
            return False
        what = f"was taken over by {describe(holder)}" if holder is not None else \
            "is gone (taken over by another run, which has released it, or deleted)"
        self._lost = (f"checkpoint.folder {self._root}: this run's lease {what}; a lease is taken over after "
                      f"checkpoint.lease_seconds={self._seconds:g} without a heartbeat, so this run stalled that long. "
                      "Stopping without saving, as another run may write here now")
        return True

    def problem(self) -> str | None:
        """Asked before each save: the lease as stored decides (the heartbeat thread may not have run since
        this process was stopped and continued)."""
        if self._lost is None:
            try:
                self._taken(self._read()[1])
            except Exception:  # unreachable: the save finds out for itself
                pass
        return self._lost

    def release(self) -> None:
        self._stop.set()
        self._beating.join()
        if self._lost is not None:
            return
        with contextlib.suppress(Exception):  # gone already, or another run's by now: not ours to delete
            if self._s3:
                bucket, key, _ = self._fs.split_path(self._path)
                self._fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=self._etag)
            elif self._read()[1].get("token") == self._me["token"]:
                self._fs.rm_file(self._path)
            self._fs.invalidate_cache(self._path)


@contextlib.contextmanager
def hold_folder(folder, run_name: str, lease_seconds: float, log=print):
    """Hold ``folder`` for one run (every rank enters; rank 0 takes it), or raise CheckpointError on every rank."""
    root = location(folder)
    lock, problem = None, None
    if rank_world()[0] == 0:
        try:
            me = _identity(run_name)
            lock = _LocalLock(root, me) if is_local_path(root) else _Lease(root, me, lease_seconds, log)
        except CheckpointError as err:
            problem = str(err)
        except OSError as err:
            problem = f"checkpoint.folder {folder}: cannot take the folder's lock ({type(err).__name__}: {err})"
    message = agreed_problem(problem)
    if message is not None:
        if lock is not None:
            lock.release()
        raise CheckpointError(message)
    try:
        yield lock or FolderLock()
    finally:
        if lock is not None:
            lock.release()
