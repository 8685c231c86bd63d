"""Read documents from jsonl / json / txt / parquet files, folders, globs and Hugging Face datasets.

Every document carries the file and line (or row) it came from, so that any later error can name them,
and the values of the fields asked for (``fields``: what ``--keep-values`` selects by). A ``.txt`` file (or
another plain-text file: ``.md``, ``.py``, ... see TEXT_SUFFIXES) is one document, read as Python's text mode
reads it (a UTF-8 byte-order mark removed, CRLF line ends turned into LF). Bad input is an error that says
where and what to do, unless the caller asks to skip bad records, each skip then counted in ``ReadStats``.
Hostile input costs bounded time and memory: a record is read a piece at a time up to ``max_record_bytes``
(a gzip bomb, a sparse file of NULs), a damaged ``.gz`` / ``.parquet`` is named where met, a link loop walked once.
"""

from __future__ import annotations

import fnmatch
import glob
import gzip
import itertools
import json
import os
import reprlib
import sys
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .remote_files import RemoteFile, is_remote, list_remote

# Plain-text files read whole, one document each: prose and source code (MPT's mix had ~10 % code).
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".tex", ".py", ".c", ".h", ".cc", ".cpp", ".js", ".ts", ".java", ".go",
                 ".rs", ".sh")
SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz", *TEXT_SUFFIXES,
            *(s + ".gz" for s in TEXT_SUFFIXES))

# The most bytes one record (a jsonl line, a whole text file, a JSON array file) may hold once
# decompressed. A record is held whole, then decoded and tokenized (a few copies of it), so without a
# bound a 1.5 MB gzip that expands to 1 GiB takes GBs of memory.
MAX_RECORD_BYTES = 256 << 20
_CHUNK = 1 << 20         # bytes read at once where a record is gathered piece by piece

# what a damaged gzip stream raises: cut short (EOFError), bad deflate data (zlib.error), bad header or CRC
_GZIP_DAMAGE = (EOFError, zlib.error, gzip.BadGzipFile)


class DataInputError(ValueError):
    """Bad input data: the message names the file, the line, the field and what to do."""


@dataclass
class Document:
    text: str
    source: str      # file path
    line: int        # 1-based line (jsonl), row (parquet, json array) or 1 (txt)
    fields: dict[str, str] = field(default_factory=dict)   # the requested fields' values, as text (see _values)


# the ReadStats counter a skipped bad record or file is counted under
BadKind = Literal["bad_json", "missing_field", "binary", "too_large", "corrupt"]


@dataclass
class ReadStats:
    files: int = 0
    records: int = 0
    bad_json: int = 0              # malformed, or nested too deeply to parse
    missing_field: int = 0
    invalid_utf8: int = 0          # decoded with U+FFFD replacements and kept
    binary: int = 0                # text-suffix files with NUL bytes, skipped (skip_bad) instead of an error
    too_large: int = 0             # records over max_record_bytes, skipped (skip_bad) instead of an error
    corrupt: int = 0               # files cut short or corrupt: the rest of each, from the damage on, skipped
    bad_examples: list[str] = field(default_factory=list)   # the first few skipped records, for the summary

    @property
    def skipped(self) -> int:
        return self.bad_json + self.missing_field + self.binary + self.too_large + self.corrupt

    def note_bad(self, where: str) -> None:
        if len(self.bad_examples) < 10:
            self.bad_examples.append(where)

    def skip_or_raise(self, skip_bad: bool, kind: BadKind, note: str, error: str) -> None:
        """A bad record or file: DataInputError(``error``), or with ``skip_bad`` counted under ``kind`` and
        noted as ``note`` (the caller then skips it)."""
        if not skip_bad:
            raise DataInputError(error)
        setattr(self, kind, getattr(self, kind) + 1)
        self.note_bad(note)


def expand_inputs(inputs: list[str]) -> list[Path | str]:
    """Files, folders (searched recursively for known suffixes) and globs, in a stable sorted order.

    Each file is listed once, however many paths reach it (two globs, a link beside its target): the
    first path in the order. Links to folders are followed, except back into a folder already
    walked, so a link loop (``sub/up -> ..``) neither repeats files nor walks without end.

    An ``s3://`` (any fsspec) URL is one object, a prefix or a glob (:mod:`.remote_files`).
    ``hf:NAME`` or ``hf:NAME:CONFIG`` is a Hugging Face dataset (a hub name, or a local folder of
    data files), read by ``datasets.load_dataset`` in streaming mode; it is passed through as is.
    """
    files: list[Path | str | RemoteFile] = []
    for item in inputs:
        path = Path(item)
        if is_remote(item):
            found, single = list_remote(item)
            if single and not item.endswith(SUFFIXES):
                raise DataInputError(f"{item}: unknown file type; expected one of {', '.join(SUFFIXES)}")
            found = [f for f in found if f.name.endswith(SUFFIXES)]
            if not found:
                raise DataInputError(f"{item}: no {', '.join(SUFFIXES)} files there (an object, a prefix holding "
                                     "some, or a glob)")
            files.extend(found)
        elif item.startswith("hf:"):
            if len(item) <= 3:
                raise DataInputError(f"{item!r}: expected hf:NAME or hf:NAME:CONFIG")
            files.append(item)
        elif path.is_file():
            if not item.endswith(SUFFIXES):
                raise DataInputError(f"{item}: unknown file type; expected one of {', '.join(SUFFIXES)}")
            files.append(path)
        elif path.is_dir():
            found = sorted(Path(p) for p in _walk_files(item, lambda _: True) if p.endswith(SUFFIXES))
            if not found:
                raise DataInputError(f"{item}: folder holds no {', '.join(SUFFIXES)} files")
            files.extend(found)
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in _glob_files(item) if p.endswith(SUFFIXES))
            if not found:
                raise DataInputError(f"{item}: the glob matches no {', '.join(SUFFIXES)} files")
            files.extend(found)
        else:
            raise FileNotFoundError(f"{item}: no such file, folder or glob match (a Hugging Face dataset is "
                                    f"written hf:{item})")
    return _once_each(files)


def _identity(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _once_each(files: list[Path | str]) -> list[Path | str]:
    seen, kept = set(), []
    for f in files:
        key = str(f) if isinstance(f, str | RemoteFile) else _identity(f)
        if key not in seen:
            seen.add(key)
            kept.append(f)
    return kept


def _walk_files(root: str, descend: Callable[[tuple[str, ...]], bool]) -> list[str]:
    """Paths of the files under ``root`` (``root`` joined with the names on the way), entering the folders
    whose names from ``root`` ``descend`` accepts.

    Each real folder is entered once, and never one that holds ``root``: glob's ``**`` follows a link
    back up (``sub/up -> ..``) until the path is too long for the system, listing every file again each
    time round (41 times for one loop, without end for two). Links to folders are followed only after
    every real folder, so a folder reached both ways is listed under its own path."""
    seen = {_identity(root or os.curdir)}
    seen.update(_identity(p) for p in Path(root or os.curdir).resolve().parents)
    found: list[str] = []
    stack: list[tuple[str, tuple[str, ...]]] = [(root, ())]
    links: deque[tuple[str, tuple[str, ...]]] = deque()
    while stack or links:
        if not stack:
            path, names = links.popleft()
            try:
                key = _identity(path)
            except OSError:
                continue   # a dangling link
            if key not in seen:
                seen.add(key)
                stack.append((path, names))
            continue
        folder, names = stack.pop()
        try:
            entries = sorted(os.scandir(folder or os.curdir), key=lambda e: e.name)
        except OSError:
            continue   # unreadable folders are passed over, as glob and rglob do
        below = []
        for entry in entries:
            path = os.path.join(folder, entry.name) if folder else entry.name
            try:
                if entry.is_dir() and descend((*names, entry.name)):    # is_dir follows links
                    if entry.is_symlink():
                        links.append((path, (*names, entry.name)))
                    elif (key := _identity(path)) not in seen:
                        seen.add(key)
                        below.append((path, (*names, entry.name)))
                elif entry.is_file():
                    found.append(path)
            except OSError:
                continue   # a file gone since the listing
        stack.extend(reversed(below))
    return found


def _glob_files(pattern: str) -> list[str]:
    """Files matching a glob pattern with glob's rules (``**`` is any number of folders, wildcards skip
    names starting with a dot), found by :func:`_walk_files`, so link loops are walked once."""
    parts = pattern.split("/")
    first = next(i for i, p in enumerate(parts) if glob.has_magic(p))
    root = "/".join(parts[:first]) or ("/" if pattern.startswith("/") else "")
    rest = [p for p in parts[first:] if p]
    if not os.path.isdir(root or os.curdir):
        return []
    files = _walk_files(root, lambda names: _glob_match(rest, names, prefix=True))
    return [f for f in files if _glob_match(rest, f[len(root):].lstrip("/").split("/") if root else f.split("/"))]


def _glob_match(pats: list[str], names: list[str] | tuple[str, ...], prefix: bool = False) -> bool:
    """Whether the path ``names`` matches the pattern components ``pats``; with ``prefix``, whether the
    folder ``names`` could hold a file that matches."""
    if not names:
        return bool(pats) if prefix else not pats
    if not pats:
        return False
    if pats[0] == "**":
        for k in range(len(names) + 1):
            if k == len(names) and prefix:
                return True      # ** takes in these folders and whatever lies below them
            if _glob_match(pats[1:], names[k:], prefix):
                return True
            if k < len(names) and names[k].startswith("."):
                return False     # ** crosses no hidden folder
        return False
    name = names[0]
    if name.startswith(".") and not pats[0].startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pats[0]) and _glob_match(pats[1:], names[1:], prefix)


def _decode(raw: bytes, where: str, stats: ReadStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.invalid_utf8 += 1
        stats.note_bad(f"{where}: invalid UTF-8 (kept with U+FFFD replacement characters)")
        return raw.decode("utf-8", errors="replace")


def _open_bytes(path: Path | RemoteFile):
    if isinstance(path, RemoteFile):
        return path.open_bytes()
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _unpacked(path: Path) -> str:
    return " once decompressed" if path.name.endswith(".gz") else ""


def _short(value: object) -> str:
    # reprlib stops at a few levels and characters: a value nested 900 deep or 1 GB long is shown in a line
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 2, 60, 60
    return short.repr(value)


def _corrupt(where: str, path: Path, what: str, before: int, unit: str, stats: ReadStats, skip_bad: bool) -> None:
    """A file unreadable from ``where`` on, after ``before`` good records: an error, or (skip_bad) the
    rest of it skipped and counted; the records before the damage were read and are kept."""
    kept = f"the {before:,} {unit} before the damage are kept" if before else "nothing of it is kept"
    stats.skip_or_raise(skip_bad, "corrupt", f"{where}: {what} (skipped from there; {kept})",
                        f"{where}: {what}. Copy or download {path.name} again, remove it from the inputs, or pass "
                        f"--skip-bad to skip and count damaged files (with it, {kept})")


def _gzip_damage(err: Exception) -> str:
    if isinstance(err, EOFError):
        return "the gzip data ends before its end-of-stream marker: the file is cut short"
    return f"the gzip data is corrupt ({err})"


def _too_large(where: str, record: str, limit: int, path: Path, stats: ReadStats, skip_bad: bool) -> None:
    stats.skip_or_raise(skip_bad, "too_large", f"{where}: {record} over --max-record-bytes {limit:,}{_unpacked(path)}",
                        f"{where}: {record} holds more than --max-record-bytes {limit:,} bytes{_unpacked(path)}; "
                        "pass a larger --max-record-bytes if the machine has the memory for it (a record is held "
                        "whole, a few times over), split the record, or pass --skip-bad to skip and count such "
                        "records")


def _field_text(record: object, text_field: str, where: str, stats: ReadStats, skip_bad: bool) -> str | None:
    if not isinstance(record, dict) or text_field not in record:
        if isinstance(record, dict):
            keys = list(record)
            available = ", ".join(map(_short, keys[:10])) + (f" and {len(keys) - 10:,} more" if len(keys) > 10 else "")
        else:
            available = f"a JSON {type(record).__name__}"
        stats.skip_or_raise(skip_bad, "missing_field", f"{where}: no field {text_field!r}",
                            f"{where}: no field {text_field!r}; the record has {available or 'no fields'}. "
                            f"Pass --text-field NAME to pick the field (or --skip-bad to skip such records)")
        return None
    value = record[text_field]
    if not isinstance(value, str):
        stats.skip_or_raise(skip_bad, "missing_field", f"{where}: field {text_field!r} is {type(value).__name__}",
                            f"{where}: field {text_field!r} is a {type(value).__name__} ({_short(value)}), "
                            "not a string; pick another --text-field (or --skip-bad to skip such records)")
        return None
    return value


def _values(record: dict, fields: tuple[str, ...], where: str, stats: ReadStats, skip_bad: bool,
            noun: str = "field") -> dict[str, str] | None:
    """The values of ``fields`` in ``record`` (a string as it is, an integer or boolean as JSON writes it:
    5, true), or None when one is missing or holds anything else: a bad record, like one without its text."""
    values = {}
    for name in fields:
        value = record.get(name)
        if isinstance(value, str):
            values[name] = value
            continue
        if isinstance(value, int):     # bool included
            values[name] = json.dumps(value)
            continue
        if name in record:
            note = f"{noun} {name!r} is {_short(value)}"
            error = f"{note}, not a string or an integer"
        else:
            keys = list(record)
            more = f" and {len(keys) - 10:,} more" if len(keys) > 10 else ""
            note = f"no {noun} {name!r}"
            error = f"{note} (the record has {', '.join(map(_short, keys[:10])) or 'no fields'}{more})"
        stats.skip_or_raise(skip_bad, "missing_field", f"{where}: {note}",
                            f"{where}: {error}, so --keep-values cannot select it; fix the {noun} name, or pass "
                            "--skip-bad to skip and count such records")
        return None
    return values


def _json_problem(line: str) -> tuple[object, str | None]:
    """(the parsed record, None), or (None, why it cannot be parsed)."""
    try:
        return json.loads(line), None
    except json.JSONDecodeError as err:
        return None, f"malformed JSON ({err.msg} at column {err.colno})"
    except RecursionError:
        # the parser recurses once per level; no document anyone wrote is nested that deep
        return None, f"JSON nested more deeply than the parser follows (about {sys.getrecursionlimit():,} levels)"


def read_json_lines(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a small JSON-lines file (finetuning data, ICL tasks).

    A line that is not one JSON object is a DataInputError naming the file and line. Lines end at
    "\n" only: str.splitlines() would also split on U+2028, which occurs inside strings (triviaqa).
    ``mpt prep``'s corpus reader (``read_documents``) streams instead, bounds a record's bytes and can
    skip bad lines; it shares the parsing rules (``_json_problem``).
    """
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record, problem = _json_problem(line)
            if problem is not None:
                raise DataInputError(f"{path}:{lineno}: {problem}; each line must be one JSON object")
            if not isinstance(record, dict):
                raise DataInputError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def _lines(f, limit: int) -> Iterator[bytearray | bytes | None]:
    """The lines of binary file ``f`` without their newlines; None for a line of more than ``limit``
    bytes, as soon as that is known. Such a line is never held: the reading goes on past its rest
    a piece at a time, only if the caller asks for the next line (a gzip bomb can be one line of a GiB).

    Not ``for line in f`` nor ``readline(limit)``: those gather a long line in a list of pieces and then
    join it, holding it twice, and readline over gzip is slow for long lines. ``read1``, not ``read``: in
    a gzip file cut short, read(n) loses all it had decompressed towards its n bytes, read1 only the
    last piece, so the lines before the damage come out."""
    tail, over = bytearray(), False
    while chunk := f.read1(_CHUNK):
        pieces = chunk.split(b"\n")
        for piece in itertools.islice(pieces, len(pieces) - 1):    # each ends a line
            if over:
                over = False      # the end of the line already reported
            elif len(tail) + len(piece) > limit:
                tail = bytearray()
                yield None
            elif tail:
                tail += piece
                yield tail
                tail = bytearray()
            else:
                yield piece
        if not over:
            if len(tail) + len(pieces[-1]) > limit:
                over, tail = True, bytearray()
                yield None
            else:
                tail += pieces[-1]
    if tail:
        yield tail


class _Span:
    """Bytes ``start`` to ``end`` of an open file, for ``_lines`` (read1 only)."""

    def __init__(self, f, start: int, end: int):
        f.seek(start)
        self.f, self.left = f, end - start

    def read1(self, n: int) -> bytes:
        data = self.f.read1(min(n, self.left)) if self.left > 0 else b""
        self.left -= len(data)
        return data


def _read_jsonl(path: Path, text_field: str, fields: tuple[str, ...], stats: ReadStats, skip_bad: bool, limit: int,
                span: tuple[int, int, int] | None = None) -> Iterator[Document]:
    lineno = span[2] - 1 if span else 0
    with _open_bytes(path) as f:
        try:
            for raw in _lines(_Span(f, span[0], span[1]) if span else f, limit):
                lineno += 1
                where = f"{path}:{lineno}"
                if raw is None:
                    stats.records += 1
                    _too_large(where, "the line", limit, path, stats, skip_bad)
                    continue
                if not raw or raw.isspace():
                    continue  # blank lines separate nothing in jsonl; not a record
                stats.records += 1
                record, problem = _json_problem(_decode(raw, where, stats))
                if problem:
                    stats.skip_or_raise(skip_bad, "bad_json", f"{where}: {problem}",
                                        f"{where}: {problem}; fix or remove the line, or pass --skip-bad to "
                                        "skip and count such lines")
                    continue
                text = _field_text(record, text_field, where, stats, skip_bad)
                if text is not None and (values := _values(record, fields, where, stats, skip_bad)) is not None:
                    yield Document(text, str(path), lineno, values)
        except _GZIP_DAMAGE as err:
            _corrupt(f"{path}:{lineno + 1}", path, _gzip_damage(err), lineno, "lines", stats, skip_bad)


def _read_whole(path: Path, limit: int, stats: ReadStats, skip_bad: bool, *, binary_check: bool,
                record: str) -> bytearray | None:
    """A file's bytes (decompressed), read a piece at a time so that a NUL byte or the size limit
    stops the reading where it is met; None when skipped (counted) with skip_bad."""
    raw = bytearray()
    with _open_bytes(path) as f:
        try:
            while chunk := f.read1(_CHUNK):    # read1: the offset of damage is where it is met
                nul = chunk.find(b"\0") if binary_check else -1
                if nul >= 0:
                    # text never holds NUL; an image or archive with a text suffix would become tokens of noise
                    offset = f"offset {len(raw) + nul:,}{' of the decompressed data' if _unpacked(path) else ''}"
                    stats.skip_or_raise(skip_bad, "binary", f"{path}: binary (NUL byte at {offset})",
                                        f"{path}: a NUL byte at {offset}: this is a binary file, not text; "
                                        "remove it from the inputs (or pass --skip-bad to skip and count such files)")
                    return None
                if len(raw) + len(chunk) > limit:
                    _too_large(f"{path}", record, limit, path, stats, skip_bad)
                    return None
                raw += chunk
        except _GZIP_DAMAGE as err:
            _corrupt(f"{path} (offset {len(raw):,} of the decompressed data)", path, _gzip_damage(err), 0, "",
                     stats, skip_bad)
            return None
    return raw


def _read_json(path: Path, text_field: str, fields: tuple[str, ...], stats: ReadStats, skip_bad: bool,
               limit: int) -> Iterator[Document]:
    try:
        with _open_bytes(path) as f:
            head = f.read(4096).lstrip()
    except _GZIP_DAMAGE as err:
        _corrupt(f"{path}", path, _gzip_damage(err), 0, "", stats, skip_bad)
        return
    if not head.startswith(b"["):
        yield from _read_jsonl(path, text_field, fields, stats, skip_bad, limit)  # a .json file of one object per line
        return
    raw = _read_whole(path, limit, stats, skip_bad, binary_check=False,
                      record="this JSON array file (parsed whole; JSON Lines is read a line at a time)")
    if raw is None:
        return
    try:
        records, what, where = json.loads(_decode(raw, str(path), stats)), None, str(path)
    except json.JSONDecodeError as err:
        records, what, where = None, f"malformed JSON ({err.msg} at column {err.colno})", f"{path}:{err.lineno}"
    except RecursionError:
        records, what, where = None, "JSON nested more deeply than the parser follows", str(path)
    if what:
        stats.skip_or_raise(skip_bad, "bad_json", f"{where}: {what} (the whole file skipped)",
                            f"{where}: {what}; fix the file, or pass --skip-bad to skip and count it")
        return
    for i, record in enumerate(records, start=1):
        stats.records += 1
        where = f"{path} (array element {i})"
        text = _field_text(record, text_field, where, stats, skip_bad)
        if text is not None and (values := _values(record, fields, where, stats, skip_bad)) is not None:
            yield Document(text, str(path), i, values)


def _read_txt(path: Path, fields: tuple[str, ...], stats: ReadStats, skip_bad: bool, limit: int) -> Iterator[Document]:
    stats.records += 1
    if fields:
        stats.skip_or_raise(skip_bad, "missing_field", f"{path}: a text file has no field {fields[0]!r}",
                            f"{path}: a text file has no field {fields[0]!r}, so --keep-values cannot select it; "
                            "give only JSON / Parquet inputs, or pass --skip-bad to skip and count such files")
        return
    raw = _read_whole(path, limit, stats, skip_bad, binary_check=True,
                      record="this text file (one document, read whole)")
    if raw is None:
        return
    if raw.startswith(b"\xef\xbb\xbf"):
        del raw[:3]  # a UTF-8 byte-order mark is an encoding marker, not text
    # universal newlines, as Python's text mode reads files: CRLF costs extra tokens and means nothing more
    yield Document(_decode(raw, str(path), stats).replace("\r\n", "\n"), str(path), 1)


def _read_parquet(path: Path, text_field: str, fields: tuple[str, ...], stats: ReadStats, skip_bad: bool,
                  limit: int) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    row = 0
    try:
        pf = pq.ParquetFile(path.open_raw() if isinstance(path, RemoteFile) else path)
        names = pf.schema_arrow.names
        if text_field not in names:
            raise DataInputError(f"{path}: no column {text_field!r}; the file has {', '.join(map(repr, names))}. "
                                 "Pass --text-field NAME to pick the column")
        for name in fields:
            if name not in names:
                raise DataInputError(f"{path}: no column {name!r} to select by (--keep-values); the file has "
                                     f"{', '.join(map(repr, names))}")
        for batch in pf.iter_batches(columns=list(dict.fromkeys([text_field, *fields])), batch_size=4096):
            column = batch.column(text_field)
            selected = {name: batch.column(name).to_pylist() for name in fields}
            sizes = (pc.binary_length(column).to_pylist() if pa.types.is_string(column.type)
                     or pa.types.is_large_string(column.type) else [0] * len(column))
            for k, (value, size) in enumerate(zip(column.to_pylist(), sizes, strict=True)):
                row += 1
                stats.records += 1
                if size and size > limit:
                    _too_large(f"{path} row {row}", f"column {text_field!r}", limit, path, stats, skip_bad)
                    continue
                if not isinstance(value, str):
                    if skip_bad:
                        stats.missing_field += 1
                        stats.note_bad(f"{path} row {row}: column {text_field!r} is {type(value).__name__}")
                        continue
                    raise DataInputError(f"{path} row {row}: column {text_field!r} is {_short(value)}, not a "
                                         "string; pass --skip-bad to skip and count such rows")
                values = _values({name: selected[name][k] for name in fields}, fields, f"{path} row {row}", stats,
                                 skip_bad, noun="column")
                if values is not None:
                    yield Document(value, str(path), row, values)
    except (pa.ArrowException, OSError) as err:
        # pyarrow's words for a truncated, corrupt or non-Parquet file, without the file's name
        where = f"{path} row {row + 1}" if row else str(path)
        _corrupt(where, path, f"not a readable Parquet file ({err})", row, "rows", stats, skip_bad)


def _read_hf(spec: str, text_field: str, fields: tuple[str, ...], split: str, stats: ReadStats,
             skip_bad: bool) -> Iterator[Document]:
    try:
        import datasets
    except ImportError as err:
        raise DataInputError(f"{spec}: reading Hugging Face datasets needs the `datasets` package; "
                             "pip install 'mpt[hub]'") from err
    name, _, config = spec[3:].partition(":")
    ds = datasets.load_dataset(name, config or None, split=split, streaming=True)
    where = f"{spec} (split {split})"
    columns = list(ds.column_names or [])
    if columns and text_field not in columns:
        raise DataInputError(f"{where}: no column {text_field!r}; the dataset has {', '.join(map(repr, columns))}. "
                             "Pass --text-field NAME to pick the column")
    if columns and (absent := [name for name in fields if name not in columns]):
        raise DataInputError(f"{where}: no column {absent[0]!r} to select by (--keep-values); the dataset has "
                             f"{', '.join(map(repr, columns))}")
    for row, record in enumerate(ds, start=1):
        stats.records += 1
        text = _field_text(record, text_field, f"{where} row {row}", stats, skip_bad)
        if text is not None and (values := _values(record, fields, f"{where} row {row}", stats, skip_bad)) is not None:
            yield Document(text, spec, row, values)


def read_jsonl_span(path: Path, start: int, end: int, line: int, text_field: str = "text", *,
                    fields: tuple[str, ...] = (), skip_bad: bool = False, stats: ReadStats,
                    max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[Document]:
    """The documents of an uncompressed JSON-lines file from byte ``start`` (where line number ``line``
    begins) to byte ``end`` (a line's end), as :func:`read_documents` reads them in the whole file."""
    yield from _read_jsonl(path, text_field, fields, stats, skip_bad, max_record_bytes, span=(start, end, line))


def read_documents(files: list[Path | str], text_field: str = "text", *, fields: tuple[str, ...] = (),
                   skip_bad: bool = False, stats: ReadStats | None = None, hf_split: str = "train",
                   max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[Document]:
    """Yield every document of ``files`` in order; counts go to ``stats``. A record (jsonl line, text
    file, JSON array file, Parquet value) of more than ``max_record_bytes`` decompressed bytes is an
    error, or with ``skip_bad`` skipped and counted, found before more than that is read. Each document
    carries the values of ``fields`` (JSON fields / Parquet columns); a record without one of them, or
    any text file, is a bad record as one without ``text_field`` is."""
    stats = stats if stats is not None else ReadStats()
    for path in files:
        stats.files += 1
        if isinstance(path, str) and path.startswith("hf:"):
            yield from _read_hf(path, text_field, fields, hf_split, stats, skip_bad)
            continue
        path = path if isinstance(path, RemoteFile) else Path(path)
        name = path.name.removesuffix(".gz")
        if name.endswith(".jsonl"):
            yield from _read_jsonl(path, text_field, fields, stats, skip_bad, max_record_bytes)
        elif name.endswith(".json"):
            yield from _read_json(path, text_field, fields, stats, skip_bad, max_record_bytes)
        elif name.endswith(TEXT_SUFFIXES):
            yield from _read_txt(path, fields, stats, skip_bad, max_record_bytes)
        elif name.endswith(".parquet"):
            yield from _read_parquet(path, text_field, fields, stats, skip_bad, max_record_bytes)
        else:
            raise DataInputError(f"{path}: unknown file type; expected one of {', '.join(SUFFIXES)}")
