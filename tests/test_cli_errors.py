"""Expected failures are one line, ``mpt CMD: error: ...``, exit code 2, no traceback; output is quiet.

Each case runs the installed ``mpt`` script as a user would, in a fresh process.
"""

import gzip
import os
import shutil
import subprocess

import pytest

from mpt.model.hf import save_pretrained
from tests.infer.conftest import build_tokenizer
from tests.tiny import tiny_model

MPT = shutil.which("mpt")


def run(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for key in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY"):  # the command's own defaults
        env.pop(key, None)
    return subprocess.run([MPT, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-errors")
    model = tiny_model(0, vocab_size=416)  # only saved: its train/eval mode does not reach the files
    for name in ("ckpt", "no-tokenizer", "corrupt"):
        save_pretrained(model, root / name)
    build_tokenizer(root / "ckpt")
    build_tokenizer(root / "corrupt")
    weights = root / "corrupt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:8] + b"{not json" + weights.read_bytes()[17:])
    (root / "bad.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a document"}\n' * 100)[:60])
    return root


CASES = {
    "local-looking path never goes to the hub": (
        ["generate", "./no-such-model", "hi"], "mpt generate: error: no such model folder: ./no-such-model"),
    "a near miss of a folder here": (
        ["generate", "./ckp", "hi"], "mpt generate: error: no such model folder: ./ckp; did you mean ./ckpt?"),
    "hub name that cannot be loaded": (
        ["generate", "no-such-model", "hi"], "mpt generate: error: no such model folder or hub model: no-such-model"),
    "checkpoint without tokenizer names the real flag": (
        ["generate", "{root}/no-tokenizer", "hi"], "pass --tokenizer PATH"),
    "corrupt safetensors": (
        ["generate", "{root}/corrupt", "hi"], "the weights cannot be read"),
    "exists already": (
        ["convert", "{root}/ckpt", "{root}/ckpt/config.json"], "mpt convert: error: {root}/ckpt/config.json: file exists"),
    "corrupt gzip archive": (
        ["prep", "{root}/bad.jsonl.gz", "--out", "{root}/shards", "--tokenizer", "{root}/ckpt"], "mpt prep: error: "),
    "missing recipe": (
        ["train", "{root}/missing.yaml"], "mpt train: error: recipe {root}/missing.yaml does not exist"),
}


@pytest.mark.parametrize("case", CASES)
def test_expected_failures_are_one_line_with_exit_code_2(folders, case):
    argv, message = CASES[case]
    out = run(*(a.format(root=folders) for a in argv), cwd=folders)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message.format(root=folders) in errors[0], out.stderr
    if argv[0] != "prep":  # prep's own progress line may precede the error
        assert out.stderr.strip() == errors[0]


def test_a_hub_name_without_a_reachable_hub_fails_once_and_at_once(folders):
    """Without HF_HUB_OFFLINE the hub client would retry DNS with back-off for ~30 s ("Retrying in 8s")."""
    import socket
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy")}
    start = time.monotonic()
    out = subprocess.run([MPT, "generate", "ckp", "hi"], capture_output=True, text=True, env=env, cwd=folders,
                         timeout=300)
    took = time.monotonic() - start
    assert out.returncode == 2 and "Retrying" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    try:
        socket.create_connection(("huggingface.co", 443), timeout=5).close()
    except OSError:  # this machine, like CI, has no route to the hub
        assert "the Hugging Face hub (huggingface.co) cannot be reached" in out.stderr, out.stderr
        assert out.stderr.strip().endswith("did you mean ./ckpt?"), out.stderr
        assert took < 20, took  # the hub client's retries took ~30 s; torch is not even imported now


def test_debug_shows_the_traceback_and_keeps_the_exit_code(folders):
    out = run("generate", "./no-such-model", "hi", "--debug", cwd=folders)
    assert out.returncode == 2 and "Traceback" in out.stderr and "FileNotFoundError" in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "mpt generate: error: no such model folder: ./no-such-model"


def test_third_party_progress_bars_only_with_verbose(folders):
    quiet = run("generate", folders / "ckpt", "hi", "--max-new-tokens", "2", "--device", "cpu")
    assert quiet.returncode == 0, quiet.stderr
    assert "Loading weights" not in quiet.stderr and quiet.stderr.strip().startswith("[2 tokens in")
    loud = run("generate", folders / "ckpt", "hi", "--max-new-tokens", "2", "--device", "cpu", "--verbose")
    assert loud.returncode == 0 and "Loading weights" in loud.stderr
