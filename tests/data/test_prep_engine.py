"""`mpt prep`'s partitions and engines without Ray: a big file cut at line ends reads as the whole file
does (same documents, same line numbers), results come back in input order with bounded work in
flight, and a pool process that dies is an error naming the partition's file, not a hang."""

import json
import os

import pytest

from mpt.data import prep_engine
from mpt.data.prep import PrepConfig, prep
from mpt.data.prep_engine import PartStore, PrepWorkerError, ordered_results
from mpt.data.prep_stages import PartitionResult, plan_partitions
from mpt.data.readers import ReadStats, read_documents, read_jsonl_span


def test_a_file_cut_at_line_ends_reads_as_the_whole(tmp_path):
    lines = [json.dumps({"text": f"document {i} " + "word " * (i % 37)}) for i in range(400)]
    lines[17] = ""                                         # a blank line: counted, not a record
    lines[90] = json.dumps({"text": "x" * 5000})           # longer than a partition
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines))                      # the last line without its newline
    parts = plan_partitions([path], 1000)
    pieces = [p for part in parts for p in part.pieces]
    assert len(pieces) > 10 and pieces[0].start == 0 and pieces[-1].end == path.stat().st_size
    assert all(a.end == b.start for a, b in zip(pieces[:-1], pieces[1:], strict=True))
    raw = path.read_bytes()
    assert all(raw[p.start - 1:p.start] == b"\n" and raw[:p.start].count(b"\n") + 1 == p.line for p in pieces[1:])
    whole = [(d.text, d.source, d.line) for d in read_documents([path])]
    stats = ReadStats()
    cut = [(d.text, d.source, d.line) for p in pieces
           for d in read_jsonl_span(path, p.start, p.end, p.line, stats=stats)]
    assert cut == whole and stats.records == 399


def test_small_files_are_grouped_and_kept_in_order(tmp_path):
    files = []
    for i in range(7):
        (tmp_path / f"{i}.txt").write_text("a few words " * 10)   # 120 bytes each
        files.append(tmp_path / f"{i}.txt")
    parts = plan_partitions(files, 300)
    assert [len(p.pieces) for p in parts] == [3, 3, 1]
    assert [p.path for part in parts for p in part.pieces] == [str(f) for f in files]


class CountingEngine:
    """Finishes a partition only when asked (``wait``), and records how many ran at once."""

    def __init__(self, slots: int):
        self.slots, self.running, self.most = slots, [], 0

    def submit(self, fn, part, settings):
        handle = {"part": part, "done": False}
        self.running.append(handle)
        self.most = max(self.most, len(self.running))
        return handle

    def ready(self, handle) -> bool:
        return handle["done"]

    def wait(self, handles) -> None:
        handles[-1]["done"] = True           # the last submitted first: results still come back in order
        self.running.remove(handles[-1])

    def get(self, handle, where):
        return PartitionResult(text_chars=handle["part"].number)


def test_results_come_back_in_order_with_bounded_work_in_flight(tmp_path):
    for n in range(3):
        (tmp_path / f"{n}.txt").write_text("x")
    parts = plan_partitions([tmp_path / f"{n % 3}.txt" for n in range(40)], 1)
    engine = CountingEngine(slots=3)
    got = [r.text_chars for r in ordered_results(engine, parts, None, PartStore(tmp_path / "out", {}))]
    assert got == list(range(40)) and engine.most == 3


def dies(part, settings):
    if any(p.path.endswith("dies.jsonl") for p in part.pieces):
        os._exit(1)
    return PartitionResult()


def test_a_pool_process_that_dies_is_an_error_naming_the_file(neox, tmp_path, monkeypatch):
    for name in ("a.jsonl", "dies.jsonl"):
        (tmp_path / name).write_text(json.dumps({"text": "words"}) + "\n")
    monkeypatch.setattr(prep_engine, "prepare_partition", dies)   # the forked processes see it too
    with pytest.raises(PrepWorkerError, match=rf"partition 1 \({tmp_path}/dies.jsonl.*\): the process preparing "
                                              r"it died"):
        prep(PrepConfig(inputs=[str(tmp_path / "a.jsonl"), str(tmp_path / "dies.jsonl")], out=str(tmp_path / "o"),
                        tokenizer=str(neox), workers=2, partition_bytes=10, progress=False))
