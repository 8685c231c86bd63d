"""A real S3-compatible server for tests: moto's standalone server in its own process on 127.0.0.1.

Use the session fixture ``s3_server`` (registered in tests/conftest.py)::

    def test_something(s3_server):
        url = f"s3://{s3_server.bucket}/my-prefix"      # an empty bucket that exists
        ...                                               # fsspec / s3fs / boto3 reach the server as is

While the fixture is alive these variables point every botocore-based client (s3fs, boto3) at the
server: ``AWS_ENDPOINT_URL_S3`` (the endpoint, read by botocore >= 1.31 and hence by s3fs),
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (a real IAM key of the server; the server checks
signatures, so a wrong key is refused as on AWS) and ``AWS_DEFAULT_REGION``. Use a prefix of your own
in the shared bucket, or ``s3_server.make_bucket(name)`` for a fresh one. ``s3_server.endpoint`` is
the URL, ``s3_server.env`` the variables (for subprocesses, add them to their environment).

It skips (with the reason) where ``moto[server]`` or ``s3fs`` is not installed: pip install -e '.[test]'.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    env: dict[str, str] = field(default_factory=dict)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(proc: subprocess.Popen, endpoint: str, log: str, timeout: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode}: {Path(log).read_text()[-2000:]}")
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer at {endpoint} within {timeout:.0f} s: {Path(log).read_text()[-2000:]}")


def _iam_key(endpoint: str) -> tuple[str, str]:
    """A user with full S3 access and its key, made by the server's first (unauthenticated) requests."""
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, aws_access_key_id="bootstrap",
                       aws_secret_access_key="bootstrap", region_name="us-east-1")
    iam.create_user(UserName="mpt-tests")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="mpt-tests", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="mpt-tests")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(scope="session")
def s3_server():
    """Start moto_server on a free loopback port, yield an :class:`S3Server`, stop it at the end."""
    pytest.importorskip("moto.server", reason="the S3 tests need moto[server]: pip install -e '.[test]'")
    pytest.importorskip("s3fs", reason="the S3 tests need s3fs: pip install -e '.[test]'")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # the three IAM calls of _iam_key run unauthenticated; every later request must be signed by a real key
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    # a file, not a pipe: the server logs every request, and a pipe nobody reads would fill and block it
    log = tempfile.NamedTemporaryFile("w+", prefix="moto-server-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION")}
    try:
        _wait_until_up(proc, endpoint, log.name)
        key_id, secret = _iam_key(endpoint)
        server_env = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": key_id,
                      "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"}
        os.environ.update(server_env)
        server = S3Server(endpoint, "mpt-test", server_env)
        server.make_bucket(server.bucket)
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)
