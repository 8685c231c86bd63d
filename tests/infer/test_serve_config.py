"""ServeConfig: serving beyond loopback without an API key warns."""

from mpt.infer.serve_config import ServeConfig


def test_serving_beyond_loopback_without_a_key_warns(monkeypatch):
    monkeypatch.delenv("MPT_API_KEY", raising=False)
    assert "without an API key" in ServeConfig(host="0.0.0.0").validate().exposure_warning()
    assert ServeConfig(host="0.0.0.0", api_key="k").validate().exposure_warning() is None
    assert ServeConfig(host="127.0.0.1").validate().exposure_warning() is None
