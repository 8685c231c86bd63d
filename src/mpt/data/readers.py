"""Read documents from jsonl / json / txt / parquet files, folders, globs and Hugging Face datasets.

Every document carries the file and line (or row) it came from, so that any later error can
name them. A ``.txt`` file (or another plain-text file: ``.md``, ``.py``, ... see TEXT_SUFFIXES) is one document, read as Python's text mode reads it (a UTF-8
byte-order mark removed, CRLF line ends turned into LF). Bad input is an error that says where
and what to do, unless the caller asks to skip bad records, in which case each skip is counted
in ``ReadStats``.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Plain-text files read whole, one document each: prose and source code (MPT's mix had ~10 % code).
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".tex", ".py", ".c", ".h", ".cc", ".cpp", ".js", ".ts", ".java", ".go",
                 ".rs", ".sh")
SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz", *TEXT_SUFFIXES,
            *(s + ".gz" for s in TEXT_SUFFIXES))


class DataInputError(ValueError):
    """Bad input data: the message names the file, the line, the field and what to do."""


@dataclass
class Document:
    text: str
    source: str      # file path
    line: int        # 1-based line (jsonl), row (parquet, json array) or 1 (txt)


@dataclass
class ReadStats:
    files: int = 0
    records: int = 0
    bad_json: int = 0
    missing_field: int = 0
    invalid_utf8: int = 0          # decoded with U+FFFD replacements and kept
    binary: int = 0                # text-suffix files with NUL bytes, skipped (skip_bad) instead of an error
    bad_examples: list[str] = field(default_factory=list)   # the first few skipped records, for the summary

    def note_bad(self, where: str) -> None:
        if len(self.bad_examples) < 10:
            self.bad_examples.append(where)


def expand_inputs(inputs: list[str]) -> list[Path | str]:
    """Files, folders (searched recursively for known suffixes) and globs, in a stable sorted order.

    ``hf:NAME`` or ``hf:NAME:CONFIG`` is a Hugging Face dataset (a hub name, or a local folder of
    data files), read by ``datasets.load_dataset`` in streaming mode; it is passed through as is.
    """
    files: list[Path | str] = []
    for item in inputs:
        path = Path(item)
        if item.startswith("hf:"):
            if len(item) <= 3:
                raise DataInputError(f"{item!r}: expected hf:NAME or hf:NAME:CONFIG")
            files.append(item)
        elif path.is_file():
            if not item.endswith(SUFFIXES):
                raise DataInputError(f"{item}: unknown file type; expected one of {', '.join(SUFFIXES)}")
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
            if not found:
                raise DataInputError(f"{item}: folder holds no {', '.join(SUFFIXES)} files")
            files.extend(found)
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True)
                           if os.path.isfile(p) and p.endswith(SUFFIXES))
            if not found:
                raise DataInputError(f"{item}: the glob matches no {', '.join(SUFFIXES)} files")
            files.extend(found)
        else:
            raise FileNotFoundError(f"{item}: no such file, folder or glob match (a Hugging Face dataset is "
                                    f"written hf:{item})")
    return files


def _decode(raw: bytes, where: str, stats: ReadStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.invalid_utf8 += 1
        stats.note_bad(f"{where}: invalid UTF-8 (kept with U+FFFD replacement characters)")
        return raw.decode("utf-8", errors="replace")


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _field_text(record: object, text_field: str, where: str, stats: ReadStats, skip_bad: bool) -> str | None:
    if not isinstance(record, dict) or text_field not in record:
        available = ", ".join(map(repr, record)) if isinstance(record, dict) else f"a JSON {type(record).__name__}"
        if skip_bad:
            stats.missing_field += 1
            stats.note_bad(f"{where}: no field {text_field!r}")
            return None
        raise DataInputError(f"{where}: no field {text_field!r}; the record has {available or 'no fields'}. "
                             f"Pass --text-field NAME to pick the field (or --skip-bad to skip such records)")
    value = record[text_field]
    if not isinstance(value, str):
        if skip_bad:
            stats.missing_field += 1
            stats.note_bad(f"{where}: field {text_field!r} is {type(value).__name__}")
            return None
        raise DataInputError(f"{where}: field {text_field!r} is a {type(value).__name__} ({str(value)[:60]!r}), "
                             "not a string; pick another --text-field (or --skip-bad to skip such records)")
    return value


def _read_jsonl(path: Path, text_field: str, stats: ReadStats, skip_bad: bool) -> Iterator[Document]:
    with _open_bytes(path) as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue  # blank lines separate nothing in jsonl; not a record
            stats.records += 1
            where = f"{path}:{lineno}"
            line = _decode(raw, where, stats)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                if skip_bad:
                    stats.bad_json += 1
                    stats.note_bad(f"{where}: malformed JSON ({err.msg})")
                    continue
                raise DataInputError(f"{where}: malformed JSON ({err.msg} at column {err.colno}); fix or remove "
                                     "the line, or pass --skip-bad to skip and count such lines") from err
            text = _field_text(record, text_field, where, stats, skip_bad)
            if text is not None:
                yield Document(text, str(path), lineno)


def _read_json(path: Path, text_field: str, stats: ReadStats, skip_bad: bool) -> Iterator[Document]:
    with _open_bytes(path) as f:
        head = f.read(4096).lstrip()
    if not head.startswith(b"["):
        yield from _read_jsonl(path, text_field, stats, skip_bad)  # a .json file of one object per line
        return
    with _open_bytes(path) as f:
        raw = f.read()
    try:
        records = json.loads(_decode(raw, str(path), stats))
    except json.JSONDecodeError as err:
        raise DataInputError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno}); "
                             "fix the file") from err
    for i, record in enumerate(records, start=1):
        stats.records += 1
        text = _field_text(record, text_field, f"{path} (array element {i})", stats, skip_bad)
        if text is not None:
            yield Document(text, str(path), i)


def _read_txt(path: Path, stats: ReadStats, skip_bad: bool) -> Iterator[Document]:
    with _open_bytes(path) as f:
        raw = f.read()
    stats.records += 1
    nul = raw.find(b"\0")
    if nul >= 0:
        # text never holds NUL; an image or archive with a text suffix would become tokens of noise
        if skip_bad:
            stats.binary += 1
            stats.note_bad(f"{path}: binary (NUL byte at offset {nul})")
            return
        raise DataInputError(f"{path}: a NUL byte at offset {nul}: this is a binary file, not text; remove it "
                             "from the inputs (or pass --skip-bad to skip and count such files)")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark is an encoding marker, not text
    # universal newlines, as Python's text mode reads files: CRLF costs extra tokens and means nothing more
    yield Document(_decode(raw, str(path), stats).replace("\r\n", "\n"), str(path), 1)


def _read_parquet(path: Path, text_field: str, stats: ReadStats, skip_bad: bool) -> Iterator[Document]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataInputError(f"{path}: no column {text_field!r}; the file has {', '.join(map(repr, names))}. "
                             "Pass --text-field NAME to pick the column")
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
        for value in batch.column(0).to_pylist():
            row += 1
            stats.records += 1
            if not isinstance(value, str):
                if skip_bad:
                    stats.missing_field += 1
                    stats.note_bad(f"{path} row {row}: column {text_field!r} is {type(value).__name__}")
                    continue
                raise DataInputError(f"{path} row {row}: column {text_field!r} is {value!r}, not a string; "
                                     "pass --skip-bad to skip and count such rows")
            yield Document(value, str(path), row)


def _read_hf(spec: str, text_field: str, split: str, stats: ReadStats, skip_bad: bool) -> Iterator[Document]:
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
    for row, record in enumerate(ds, start=1):
        stats.records += 1
        text = _field_text(record, text_field, f"{where} row {row}", stats, skip_bad)
        if text is not None:
            yield Document(text, spec, row)


def read_documents(files: list[Path | str], text_field: str = "text", *, skip_bad: bool = False,
                   stats: ReadStats | None = None, hf_split: str = "train") -> Iterator[Document]:
    """Yield every document of ``files`` in order; counts go to ``stats``."""
    stats = stats if stats is not None else ReadStats()
    for path in files:
        stats.files += 1
        if isinstance(path, str) and path.startswith("hf:"):
            yield from _read_hf(path, text_field, hf_split, stats, skip_bad)
            continue
        path = Path(path)
        name = path.name.removesuffix(".gz")
        if name.endswith(".jsonl"):
            yield from _read_jsonl(path, text_field, stats, skip_bad)
        elif name.endswith(".json"):
            yield from _read_json(path, text_field, stats, skip_bad)
        elif name.endswith(TEXT_SUFFIXES):
            yield from _read_txt(path, stats, skip_bad)
        elif name.endswith(".parquet"):
            yield from _read_parquet(path, text_field, stats, skip_bad)
        else:
            raise DataInputError(f"{path}: unknown file type; expected one of {', '.join(SUFFIXES)}")
