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
