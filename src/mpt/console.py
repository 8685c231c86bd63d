"""How ``mpt`` commands talk to the terminal: third-party noise off, warnings and expected errors on one line.

A user runs ``mpt generate`` to see text, not transformers' "Loading weights" bars or a 60-line
traceback for a mistyped folder. ``--verbose`` brings the third-party output back; ``--debug``
shows the traceback of an expected error.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator


def quiet_third_parties(prog: str) -> None:
    """Progress bars and info logs of transformers / huggingface_hub off; each warning once, on one line."""
    # Read when those libraries are imported, which in `mpt` happens after this (lazy imports).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:  # imported already (a caller's process): switch off directly
        from transformers.utils import logging

        logging.disable_progress_bar()
        logging.set_verbosity_error()
    warnings.filterwarnings("once")
    warnings.formatwarning = lambda message, *_args, **_kw: f"{prog}: warning: {message}\n"


@contextlib.contextmanager
def command_output(prog: str, verbose: bool) -> Iterator[None]:
    """Quiet (unless ``verbose``) while a command runs; warning filters and format restored after it,
    for callers that run ``main()`` inside their own process (tests, notebooks)."""
    saved = warnings.formatwarning
    with warnings.catch_warnings():
        if not verbose:
            quiet_third_parties(prog)
        try:
            yield
        finally:
            warnings.formatwarning = saved


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures of input rather than of code: bad or missing files and values, corrupt archives and weights."""
    import tarfile
    import zipfile
    import zlib

    errors: list[type[BaseException]] = [ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile,
                                         tarfile.TarError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:
        pass
    return tuple(errors)


def one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename and err.strerror:  # not "[Errno 17] File exists: 'x'"
        return f"{err.filename}: {err.strerror.lower()}"
    return " ".join(str(err).split()) or type(err).__name__
