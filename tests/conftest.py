import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MPT_SHARED", REPO.parent / "shared"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# as `mpt` sets it: the suite's torchrun ranks and subprocesses share 2 cores with pytest itself
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture
def shared() -> Path:
    """The read-only ../shared folder of test data; tests that need it skip in a user's fresh clone."""
    if not SHARED.is_dir():
        pytest.skip(f"shared test data not found at {SHARED} (set MPT_SHARED to its path)")
    return SHARED


@pytest.fixture
def neox(shared) -> Path:
    """The GPT-NeoX-20B tokenizer.json in the shared data."""
    path = shared / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"GPT-NeoX tokenizer not found at {path}")
    return path


from tests.s3 import s3_server  # noqa: E402,F401  (a real S3 server for tests; see tests/s3.py)
