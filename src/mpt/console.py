"""How ``mpt`` commands talk to the terminal: third-party noise off, warnings and expected errors on one line.

A user runs ``mpt generate`` to see text, not transformers' "Loading weights" bars or a 60-line
traceback for a mistyped folder. ``--verbose`` brings the third-party output back; ``--debug``
shows the traceback of an expected error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator


def quiet_third_parties(prog: str) -> None:
    """Progress bars and info logs of transformers / huggingface_hub off; each warning once, on one line."""
    # Read when those libraries are imported, which in `mpt` happens after this (lazy imports).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("LMEVAL_LOG_LEVEL", "ERROR")  # lm-eval sets its own logger's level from this
    if "transformers" in sys.modules:  # imported already (a caller's process): switch off directly
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    warnings.filterwarnings("once")
    # "once" shows what Python hides by default: third parties' deprecation notices (torch.jit's, met
    # when peft loads) say nothing to a user of `mpt`.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
    warnings.formatwarning = lambda message, *_args, **_kw: f"{prog}: warning: {message}\n"
    # Libraries that log through an unconfigured logger reach stderr through logging's last resort:
    # bitsandbytes' "Failed to load CPU gemm_4bit_forward ..." on every import, lm-eval's INFO lines,
    # `kernels`' "Skipping publisher trust check ..." (bitsandbytes asks it for a CPU kernel when offline).
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


NOISY_LOGGERS = ("bitsandbytes", "kernels", "lm_eval", "lm-eval", "peft", "accelerate", "datasets", "evaluate")


@contextlib.contextmanager
def transformers_bars_off() -> Iterator[None]:
    """transformers' own bars ("Loading weights", "Writing model shards") off inside, for the Python API as
    for the commands; ``MPT_VERBOSE=1`` (set by ``--verbose``) leaves them on."""
    from transformers.utils import logging as tlog

    hide = tlog.is_progress_bar_enabled() and os.environ.get("MPT_VERBOSE") != "1"
    if hide:
        tlog.disable_progress_bar()
    try:
        yield
    finally:
        if hide:
            tlog.enable_progress_bar()


@contextlib.contextmanager
def command_output(prog: str, verbose: bool) -> Iterator[None]:
    """Quiet (unless ``verbose``) while a command runs; warning filters and format restored after it,
    for callers that run ``main()`` inside their own process (tests, notebooks)."""
    saved = warnings.formatwarning
    with warnings.catch_warnings():
        if verbose:
            os.environ["MPT_VERBOSE"] = "1"
        else:
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
