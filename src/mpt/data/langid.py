"""Language identification for ``mpt prep --lang``: py3langid's model, which ships inside its package.

:func:`identify` gives a text's most likely language (a lowercase ISO 639 code, as py3langid spells
them) and its probability among the 140 languages the model knows; :func:`check_languages` refuses
a code the model does not know. The model loads once per process, on first use (about half a
second); a forked worker inherits the driver's. Chosen over pycld2, lingua, fastText's lid.176.ftz
and langdetect for its accuracy on short lines, its speed and its size (pure Python and numpy):
``benchmarks/bench_langid.py`` gives the figures.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import NamedTuple

INSTALL = "pip install 'py3langid>=0.4,<0.5'"


class Guess(NamedTuple):
    lang: str        # ISO 639 code
    score: float     # probability among the languages the model knows, 0 to 1


@functools.cache
def _identifier():
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError as err:
        raise ImportError(f"language identification (--lang) needs py3langid: {INSTALL}") from err
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def known_languages() -> list[str]:
    """The codes the model can answer, sorted."""
    return sorted(_identifier().labels)


def check_languages(codes: Iterable[str]) -> None:
    """Raise ValueError naming every code in ``codes`` that the model does not know."""
    known = set(known_languages())
    unknown = [c for c in codes if c not in known]
    if unknown:
        raise ValueError(f"--lang {', '.join(map(repr, unknown))}: not a language the identifier knows; "
                         f"use one of its lowercase ISO 639 codes: {', '.join(sorted(known))}")


def identify(text: str) -> Guess:
    """The most likely language of ``text`` and its probability."""
    lang, score = _identifier().classify(text)
    return Guess(str(lang), float(score))
