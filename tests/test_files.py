"""mpt.files, checked against its plain definition (hashlib over the whole file)."""

import hashlib

from mpt.files import file_sha256


def test_file_sha256_reads_in_chunks_and_equals_hashlib(tmp_path):
    data = bytes(range(256)) * 1000 + b"tail"
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert file_sha256(path) == want == file_sha256(str(path), chunk=777)  # a chunk size that splits unevenly
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
