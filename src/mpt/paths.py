"""Where a model or tokenizer name points: a local path or a Hugging Face hub repo.

One rule for both loaders, so that a mistyped folder is reported as missing at once instead of
being sent to the hub (retries, then "Repo id must use alphanumeric chars" for ``./x``).
"""

from __future__ import annotations

from pathlib import Path


def looks_local(name: str | Path) -> bool:
    """True for anything a hub repo id (``name`` or ``owner/name``) cannot be.

    ``owner/name`` is ambiguous: it is local when ``owner`` is a folder here (``runs/model``).
    """
    if isinstance(name, Path) or Path(name).exists():
        return True
    if name.startswith((".", "/", "~")) or name.endswith("/") or "\\" in name:
        return True
    parts = name.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def first_line(err: BaseException) -> str:
    """The hub client's errors run to many lines; the first one says what went wrong."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def did_you_mean(name: str) -> str:
    """``"; did you mean ./my-mpt?"`` when a folder here has a similar name, else ``""``."""
    import difflib

    here = [p.name for p in Path(".").iterdir() if p.is_dir() and not p.name.startswith(".")]
    close = difflib.get_close_matches(name, here, n=1, cutoff=0.6)
    return f"; did you mean ./{close[0]}?" if close else ""


def check_hub_reachable(name: str, what: str) -> None:
    """Fail at once, in one line, when ``name`` is no folder here and the hub cannot be reached.

    Without this, the hub client retries a failing DNS look-up with back-off for about 30 s, printing
    a "Retrying in Ns" line each time, before its own error. A name already in the local hub cache,
    ``HF_HUB_OFFLINE`` (the client then answers from the cache at once) and a proxy (a direct
    connection says nothing about it) skip the check.
    """
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    from huggingface_hub import constants

    if (Path(constants.HF_HUB_CACHE) / f"models--{name.replace('/', '--')}").is_dir():
        return
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as err:
        raise FileNotFoundError(f"no such {what} folder: {name}, and the Hugging Face hub ({host}) cannot be "
                                f"reached to look for it there ({err.strerror or err}){did_you_mean(name)}") from None


def check_model_name(name: str) -> None:
    """A missing local folder, or a hub name when the hub cannot be reached, is an error before torch loads."""
    if looks_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no such model folder: {name}{did_you_mean(path.name)}")
    else:
        check_hub_reachable(name, "model")
