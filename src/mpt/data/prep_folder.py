"""The output folder of `mpt prep`: who owns it, whether it is finished, and where to continue.

A run first writes ``prep.json`` (its arguments, each input's size and time) into an empty folder,
then ``prep-parts/`` (prepared partitions, until the end) and after each finished shard
``prep-progress.json``: the shards so far and the point in the document stream where the next shard
starts. ``summary.json`` and then ``index.json`` are written last: a folder with ``index.json`` is complete.

A rerun with the same arguments continues an unfinished folder from its last finished shard; a
folder that holds anything else (another command's output, a run with other arguments, a file of
someone else's) is refused before any work, naming the folder and what to do.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import file_sha256
from ..storage import TMP_SUFFIX, write_atomic
from .shards import INDEX_FILE, ShardInfo

RUN_FILE = "prep.json"
PROGRESS_FILE = "prep-progress.json"
SUMMARY_FILE = "summary.json"
PARTS_DIR = "prep-parts"      # prepared partitions (prep_engine.PartStore), removed before index.json is written
_SHARD = re.compile(r"shard-\d{5}\.bin")
_OURS = (RUN_FILE, PROGRESS_FILE, SUMMARY_FILE, INDEX_FILE, PARTS_DIR)


class OutputFolderError(ValueError):
    """The --out folder holds something this run must not touch."""


@dataclass
class Progress:
    """Where an unfinished run continues: the finished shards, then document ``doc`` (counting the
    documents kept after filters and dedup) from its token ``token`` (EOS counted)."""
    shards: list[ShardInfo] = field(default_factory=list)
    doc: int = 0
    token: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def is_ours(name: str) -> bool:
    """Files a prep run writes: its records, shards, and their temporary names (a run cut short leaves those)."""
    base = name.split(".bin.", 1)[0] + ".bin" if ".bin." in name else name
    if name.endswith(TMP_SUFFIX) and (_SHARD.fullmatch(base) or any(name.startswith(f + ".") for f in _OURS)):
        return True
    return name in _OURS or bool(_SHARD.fullmatch(name))


def check_claim(where: str, names: list[str], recorded: str | None, claim: dict) -> None:
    """Refuse a folder holding files of others or a run with other arguments (``recorded``: its prep.json)."""
    if names and recorded is None:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise OutputFolderError(f"{where} is not empty and holds no `mpt prep` run ({shown}); choose an empty or "
                                "new --out folder (prep writes only into a folder it started)")
    if recorded is not None:
        try:
            old = json.loads(recorded)
        except json.JSONDecodeError as err:
            raise OutputFolderError(f"{where}/{RUN_FILE} is not valid JSON ({err}); delete {where} and rerun") from err
        changed = [k for k in sorted(set(old) | set(claim)) if old.get(k) != claim.get(k)]
        if changed == ["input_files"]:
            was, now = old.get("input_files") or [], claim["input_files"]
            diff = next((a, b) for a, b in itertools.zip_longest(was, now) if a != b)
            raise OutputFolderError(
                f"{where} holds a `mpt prep` run of these inputs as they were before ({diff[0]} there, {diff[1]} now: "
                f"[file, size, modification time]); delete {where} to prep them again, or choose another --out")
        if changed:
            k = changed[0]
            raise OutputFolderError(
                f"{where} holds a `mpt prep` run made with other arguments or inputs ({k}: {old.get(k)!r} there, "
                f"{claim.get(k)!r} now); rerun with the same arguments to finish it, or choose another --out "
                f"folder (or delete {where})")
    strangers = [n for n in names if not is_ours(n)]
    if strangers:
        raise OutputFolderError(f"{where} holds files that `mpt prep` did not write ({', '.join(strangers[:5])}); "
                                "move them out or choose another --out folder")


def open_folder(out: Path, claim: dict) -> Progress | None:
    """Claim ``out`` for this run; None when it already holds this run, finished; else where to continue."""
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in out.iterdir())
    run = out / RUN_FILE
    check_claim(str(out), names, run.read_text() if run.is_file() else None, claim)
    if (out / INDEX_FILE).is_file():
        return None
    if not run.is_file():
        write_atomic(run, json.dumps(claim, indent=2))
        return Progress()
    progress = Progress()
    if (out / PROGRESS_FILE).is_file():
        raw = json.loads((out / PROGRESS_FILE).read_text())
        progress = Progress([ShardInfo(**s) for s in raw["shards"]], raw["doc"], raw["token"])
    keep = {s.file for s in progress.shards}
    for s in progress.shards:
        path = out / s.file
        found = (path.stat().st_size, file_sha256(path)) if path.is_file() else None
        if found != (s.bytes, s.sha256):
            what = "is missing" if found is None else f"has {found[0]:,} bytes, SHA-256 {found[1][:16]}..."
            raise OutputFolderError(f"{path} {what} but the interrupted run wrote {s.bytes:,} bytes, SHA-256 "
                                    f"{s.sha256[:16]}...: it was changed since, so {out} cannot be continued; "
                                    f"delete the folder {out} and rerun the command")
    for name in names:
        if name not in _OURS and name not in keep:
            (out / name).unlink()   # half-written files and shards after the last recorded one: made again
    return progress


def remove_run(out: Path) -> None:
    """Delete a run's files (a staging folder once uploaded), and the folder if nothing else is in it."""
    for p in out.iterdir():
        if p.name == PARTS_DIR:
            shutil.rmtree(p, ignore_errors=True)
        elif is_ours(p.name):
            p.unlink()
    try:
        out.rmdir()
    except OSError:
        pass


def save_progress(out: Path, progress: Progress) -> None:
    write_atomic(out / PROGRESS_FILE, progress.to_json())
