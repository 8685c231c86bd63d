"""The one uvicorn internal the header timeout reads is still there, and its absence is said plainly.

(The header timeout and the connection limit themselves are tested on real sockets in
test_serve_slow_clients.py.)"""

import pytest

pytest.importorskip("uvicorn", reason="needs the serve extra: pip install -e '.[serve]'")


def test_this_uvicorn_has_what_the_header_timeout_reads():
    from mpt.infer.connections import check_uvicorn

    check_uvicorn()


def test_a_uvicorn_without_it_fails_loudly_naming_the_fix(monkeypatch):
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from mpt.infer.connections import check_uvicorn

    built = H11Protocol.__init__

    def without_conn(self, *args, **kwargs):
        built(self, *args, **kwargs)
        self.h11_connection = self.__dict__.pop("conn")  # as if a release renamed it

    monkeypatch.setattr(H11Protocol, "__init__", without_conn)
    with pytest.raises(RuntimeError, match=r"no longer keeps its h11.Connection in `conn`.*pyproject.toml"):
        check_uvicorn()
