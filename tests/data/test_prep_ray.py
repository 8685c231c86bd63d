"""`mpt prep --engine ray`: byte for byte the local engine's output with 1, 2 and 4 workers, after its
driver was killed (finished partitions reused, not prepared again; output on S3) and with a node killed
mid-run; bad input named as in-process; a worker that keeps dying is an error naming the partition's
file. Ray starts once for the module, on loopback."""

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mpt.data import DataInputError, DedupConfig, FilterConfig, prep_dedup, prep_engine, prep_ray
from mpt.data.prep import PrepConfig, prep
from mpt.data.prep_engine import PrepWorkerError
from mpt.data.prep_folder import PARTS_DIR
from tests.conftest import SHARED
from tests.data.conftest import semantic_corpus

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def neox() -> Path:
    """The GPT-NeoX-20B tokenizer.json in the shared data (module scope: the runs below share it)."""
    path = SHARED / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"GPT-NeoX tokenizer not found at {path} (set MPT_SHARED to the shared data)")
    return path


@pytest.fixture(scope="module")
def cluster():
    """One Ray for the module; its address lets a driver in another process join it."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])   # dying_partition runs in the workers
    # no token: the second node (`ray start`, below) and the drivers in other processes join without one
    os.environ["RAY_AUTH_MODE"] = "disabled"
    # a node that misses 3 health checks 1 s apart is dead (Ray's default: 5 at 3 s, 15 s a killed node's tasks
    # wait before they run again elsewhere); a live node's check only fails after its 10 s timeout
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="mpt-ray-"), configure_logging=False,
             _system_config={"health_check_period_ms": 1000, "health_check_failure_threshold": 3})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    os.environ.pop("RAY_AUTH_MODE", None)


@pytest.fixture(scope="module")
def corpus(neox, tmp_path_factory) -> Path:
    """Two JSON-lines files cut into partitions, text files, exact and near copies, bad lines, a binary file."""
    texts = [json.loads(line)["text"] for line in (SHARED / "data" / "pretrain" / "arxiv_sample.jsonl").open()]
    paras = [p for t in texts for p in t.split("\n\n") if len(p.split()) > 3][:700]
    lines = []
    for i, p in enumerate(paras):
        lines.append(json.dumps({"text": p}))
        if i % 40 == 7:
            lines.append(json.dumps({"text": p.upper()}))          # an exact copy (after normalising)
        if i % 60 == 9 and len(p.split()) > 60:
            lines.append(json.dumps({"text": p + " and so on"}))   # a near copy
        if i % 97 == 3:
            lines.append("{not json")
        if i % 131 == 5:
            lines.append(json.dumps({"body": "no text field"}))
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "a.jsonl").write_text("\n".join(lines[:450]) + "\n")
    (folder / "b.jsonl").write_text("\n".join(lines[450:]) + "\n")
    for k in range(4):
        (folder / f"t{k}.txt").write_text(paras[k] + "\n" + paras[k + 10])
    (folder / "z.txt").write_bytes(b"a text suffix, \x00 binary inside")
    return folder


def settings(corpus: Path, out: Path, neox: Path, **kw) -> PrepConfig:
    base = dict(inputs=[str(corpus)], out=str(out), tokenizer=str(neox), seq_len=64, shard_bytes=20_000,
                skip_bad=True, filters=FilterConfig(min_words=5), dedup=DedupConfig(near=True),
                partition_bytes=30_000, progress=False)
    return PrepConfig(**{**base, **kw})


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def reference(cluster, corpus, neox, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("local") / "out"
    s = prep(settings(corpus, out, neox, workers=1))
    assert s.exact_duplicates and s.near_duplicates and s.bad_json_skipped and s.missing_field_skipped
    assert s.binary_skipped == 1 and s.filtered and s.shards > 3
    return files_of(out)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_ray_output_is_the_local_engines_byte_for_byte(cluster, corpus, neox, reference, tmp_path, workers):
    prep(settings(corpus, tmp_path / "out", neox, engine="ray", workers=workers))
    got = files_of(tmp_path / "out")
    assert sorted(got) == sorted(reference)          # no prep-parts/ left behind
    assert {"index.json", "summary.json", "shard-00000.bin", "prep.json"} <= set(got)
    assert got == reference


def test_driver_killed_then_rerun_reuses_finished_partitions(cluster, corpus, neox, reference, tmp_path, capsys,
                                                            s3_server):
    """The driver (a real `mpt prep` process) writing to S3 is SIGKILLed after a few partitions: the same
    command again reuses those from its staging folder and uploads the bytes of an uninterrupted run."""
    import fsspec

    url, staging = f"s3://{s3_server.bucket}/ray-killed", tmp_path / "staging"
    cmd = [sys.executable, "-m", "mpt.cli", "prep", str(corpus), "--out", url, "--staging", str(staging),
           "--tokenizer", str(neox), "--seq-len", "64", "--shard-mb", str(20_000 / (1 << 20)), "--skip-bad",
           "--min-words", "5", "--near-dedup", "--partition-bytes", "30000", "--engine", "ray",
           "--ray-address", cluster, "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **s3_server.env})
    parts = staging / PARTS_DIR
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and len(list(parts.glob("*.npz"))) < 2:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not (staging / "index.json").exists(), "killed before the end: the folder must not look complete"
    stored = len(list(parts.glob("*.npz")))
    assert stored >= 2

    # the same command again (in this process, to save a start), with its progress on: it says what it reused
    prep(settings(corpus, url, neox, engine="ray", workers=1, progress=True, staging=str(staging)))
    said = capsys.readouterr().err
    reused = re.search(r"prep: (\d+) of (\d+) partitions were prepared by the interrupted run and reused", said)
    assert reused, said
    assert stored <= int(reused[1]) < int(reused[2]), (stored, reused[0])
    fs = fsspec.filesystem("s3")
    assert {n: fs.cat(f"{url}/{n}") for n in sorted(reference)} == reference
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(url)) == sorted(reference)
    assert not staging.exists()


def bad_inputs(folder: Path) -> dict[str, Path]:
    good = "".join(json.dumps({"text": f"document number {i} is fine"}) + "\n" for i in range(30))
    cases = {}
    for name, content in [("malformed", good + "{not json\n" + good), ("missing", good + '{"body": 1}\n')]:
        (folder / name).mkdir()
        (folder / name / "in.jsonl").write_text(content)
        cases[name] = folder / name
    (folder / "binary").mkdir()
    (folder / "binary" / "a.txt").write_text("plain")
    (folder / "binary" / "b.txt").write_bytes(b"PNG\x00\x01")
    (folder / "damaged").mkdir()
    (folder / "damaged" / "in.jsonl.gz").write_bytes(gzip.compress(good.encode())[:-30])   # cut short
    return {k: cases.get(k, folder / k) for k in ("malformed", "missing", "binary", "damaged")}


def test_bad_input_is_named_on_ray_as_in_process(cluster, neox, tmp_path):
    said = {}
    for name, folder in bad_inputs(tmp_path).items():
        errors = []
        for engine in ("local", "ray"):
            with pytest.raises(DataInputError) as err:
                prep(PrepConfig(inputs=[str(folder)], out=str(tmp_path / f"{name}-{engine}"), tokenizer=str(neox),
                                engine=engine, workers=2, partition_bytes=300, progress=False))
            errors.append(str(err.value))
        assert errors[0] == errors[1], name
        said[name] = errors[1]
    folder = tmp_path
    assert said["malformed"].startswith(f"{folder}/malformed/in.jsonl:31: malformed JSON"), said
    assert said["missing"].startswith(f"{folder}/missing/in.jsonl:31: no field 'text'"), said
    assert said["binary"].startswith(f"{folder}/binary/b.txt: a NUL byte at offset 3"), said
    assert said["damaged"].startswith(f"{folder}/damaged/in.jsonl.gz:"), said
    assert not any("Traceback" in m or "RayTaskError" in m for m in said.values()), said


def dying_partition(part, s):
    """The stage, but its worker dies on the partition of dies.jsonl (as on a record too big for memory)."""
    if any(p.path.endswith("dies.jsonl") for p in part.pieces):
        os._exit(1)
    from mpt.data.prep_stages import prepare_partition

    return prepare_partition(part, s)


def test_a_worker_that_keeps_dying_is_an_error_naming_the_file(cluster, neox, tmp_path, monkeypatch):
    for name in ("a.jsonl", "dies.jsonl", "z.jsonl"):
        (tmp_path / name).write_text(json.dumps({"text": f"the text of {name}"}) + "\n")
    monkeypatch.setattr(prep_engine, "prepare_partition", dying_partition)   # what the engine is asked to run
    monkeypatch.setattr(prep_ray, "RETRIES", 1)
    with pytest.raises(PrepWorkerError, match=rf"partition 1 \({tmp_path}/dies.jsonl \(lines from 1, bytes 0-35\)\): "
                                              r"the Ray worker preparing it died, 2 times"):
        prep(PrepConfig(inputs=[str(tmp_path / n) for n in ("a.jsonl", "dies.jsonl", "z.jsonl")],
                        out=str(tmp_path / "out"), tokenizer=str(neox), engine="ray", partition_bytes=10,
                        progress=False))


def node_processes(temp_dir: str) -> list:
    """The processes of the Ray node started with ``temp_dir``: those naming it, and their children."""
    import psutil

    roots = [p for p in psutil.process_iter(["cmdline"]) if any(temp_dir in a for a in p.info["cmdline"] or [])]
    return roots + [c for r in roots for c in r.children(recursive=True)]


def test_a_second_node_killed_mid_run_changes_nothing(cluster, corpus, neox, reference, tmp_path, s3_server):
    """A node joined as on another machine (`ray start --address`, its own temp dir) dies with tasks on it:
    Ray runs them again on the head, and the output is the same bytes. The inputs are objects on S3, read
    by whichever node prepares them."""
    import fsspec

    inputs = f"s3://{s3_server.bucket}/ray-inputs"
    fsspec.filesystem("s3").put(f"{corpus}/", f"{inputs}/", recursive=True)
    node_dir = tempfile.mkdtemp(prefix="mpt-ray-node-")
    ray_cli = Path(sys.executable).parent / "ray"
    start = subprocess.run([str(ray_cli), "start", "--address", cluster, "--node-ip-address", "127.0.0.1",
                            "--temp-dir", node_dir, "--num-cpus", "2", "--disable-usage-stats"],
                           capture_output=True, text=True, timeout=120)
    try:
        assert start.returncode == 0, start.stderr
        assert sum(n["Alive"] for n in ray.nodes()) == 2
        out = tmp_path / "out"
        proc = subprocess.Popen(
            [sys.executable, "-m", "mpt.cli", "prep", inputs, "--out", str(out), "--tokenizer", str(neox),
             "--seq-len", "64", "--shard-mb", str(20_000 / (1 << 20)), "--skip-bad", "--min-words", "5",
             "--near-dedup", "--partition-bytes", "30000", "--engine", "ray", "--ray-address", cluster,
             "--workers", "4", "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        parts = out / PARTS_DIR

        def busy() -> bool:      # a partition finished, and the node is preparing another
            return (parts.is_dir() and any(parts.iterdir())
                    and any("prepare_partition" in p.name() for p in node_processes(node_dir)))

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not busy():
            time.sleep(0.01)
        assert proc.poll() is None and not (out / "index.json").exists(), "the run ended before the node was killed"
        assert busy(), "no task ran on the second node"
        import psutil

        victims = node_processes(node_dir)
        for p in victims:
            p.kill()
        assert not psutil.wait_procs(victims, timeout=10)[1]
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
        got = files_of(out)
        assert got.keys() == reference.keys()
        for name, data in reference.items():
            if name == "summary.json":     # its examples of bad records name the objects' URLs
                data = data.replace(str(corpus).encode(), inputs.encode())
            if name != "prep.json":        # the run's claim names its inputs
                assert got[name] == data, name
    finally:
        for p in node_processes(node_dir):
            p.kill()


def test_semantic_dedup_embeds_on_ray_tasks_with_the_local_engines_output(cluster, tmp_path, tiny_bert):
    """--semantic-dedup with the embedding spread over Ray tasks (7 documents each): the local engine's bytes."""
    from tests.data.test_semantic_dedup import _prep_config

    texts, copies = semantic_corpus()
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    drop = len(copies) / len(texts)
    local = prep(_prep_config(tiny_bert, src, tmp_path / "local", semantic_drop=drop))
    assert local.semantic_duplicates == len(copies)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prep_dedup, "EMBED_TASK", 7)
        prep(_prep_config(tiny_bert, src, tmp_path / "ray", semantic_drop=drop, partition_bytes=2000,
                          engine="ray", workers=2))
    assert files_of(tmp_path / "ray") == files_of(tmp_path / "local")
