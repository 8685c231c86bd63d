"""Document quality filters: the mC4 rules of the MPT-7B release, length, paragraph and field-value rules.

The MPT-7B appendix states the mC4 rules: the most common character is alphabetic; at least 92 % of
characters are alphanumeric; a document of more than 500 words has a most common word of at most
7.5 % of its words, else at most 30 %; and 200 <= words <= 50,000 (all bounds inclusive). Every rule is
off unless switched on; ``FilterConfig.mc4()`` (``mpt prep --mc4``) switches on those four. Also:
``min_chars``/``max_chars``, ``min_paragraphs`` (S2ORC's ">= 5 paragraphs", :func:`count_paragraphs`),
``keep_values`` (records whose field is one of some values: The Stack's languages, :func:`unselected`) and
``lang`` (language ID, :mod:`.langid`: S2ORC's English filter), run last by :func:`judge` as it costs most.
:func:`first_failed_rule` names the first rule a text fails: the key it is counted under in the summary.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from .langid import check_languages, identify


@dataclass
class FilterConfig:
    most_common_char_alpha: bool = False
    min_alnum_ratio: float | None = None          # mC4: 0.92
    max_common_word_ratio_long: float | None = None   # mC4: 0.075, for documents with > long_doc_words words
    max_common_word_ratio_short: float | None = None  # mC4: 0.30, otherwise
    long_doc_words: int = 500
    min_words: int | None = None                  # mC4: 200
    max_words: int | None = None                  # mC4: 50,000
    min_chars: int | None = None
    max_chars: int | None = None
    min_paragraphs: int | None = None             # S2ORC: 5 (see count_paragraphs)
    # field (JSON field / parquet column) -> the values to keep; a record whose field holds another is dropped
    keep_values: dict[str, list[str]] = field(default_factory=dict)
    lang: list[str] = field(default_factory=list)   # ISO 639 codes to keep; empty: no language ID
    lang_min_score: float = 0.0                      # the identified language's least probability

    @classmethod
    def mc4(cls, **overrides) -> FilterConfig:
        return cls(**{**dict(most_common_char_alpha=True, min_alnum_ratio=0.92, max_common_word_ratio_long=0.075,
                             max_common_word_ratio_short=0.30, min_words=200, max_words=50_000), **overrides})

    def validate(self) -> None:
        for name in ("min_alnum_ratio", "max_common_word_ratio_long", "max_common_word_ratio_short"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"filter {name}={value} must be a fraction between 0 and 1")
        for lo, hi in (("min_words", "max_words"), ("min_chars", "max_chars")):
            a, b = getattr(self, lo), getattr(self, hi)
            for name, v in ((lo, a), (hi, b)):
                if v is not None and v < 0:
                    raise ValueError(f"filter {name}={v} must be >= 0")
            if a is not None and b is not None and a > b:
                raise ValueError(f"filter {lo}={a} is larger than {hi}={b}; no document could pass")
        if self.min_paragraphs is not None and self.min_paragraphs < 0:
            raise ValueError(f"filter min_paragraphs={self.min_paragraphs} must be >= 0")
        for name, values in self.keep_values.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"filter keep_values: field name {name!r} must be a non-empty string")
            if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
                raise ValueError(f"filter keep_values[{name!r}] = {values!r}: expected a non-empty list of strings "
                                 "(quote numbers and true/false in YAML)")
        if not 0.0 <= self.lang_min_score <= 1.0:
            raise ValueError(f"filter lang_min_score={self.lang_min_score} must be a probability between 0 and 1")
        if self.lang_min_score and not self.lang:
            raise ValueError(f"filter lang_min_score={self.lang_min_score} needs the languages to keep (--lang)")
        if self.lang:
            check_languages(self.lang)

    @property
    def active(self) -> bool:
        settings = (v for k, v in vars(self).items() if k not in ("long_doc_words", "lang_min_score"))
        return any(v not in (None, False, [], {}) for v in settings)


# A paragraph: a line holding a non-space character, with the lines after it that hold one too. The
# look-behind lets a match start only where a line starts, and the possessive quantifiers never give back,
# so a long blank stretch is scanned once rather than once per character in it.
_PARAGRAPH = re.compile(r"(?<![^\n])[^\S\n]*+\S[^\n]*+(?:\n[^\S\n]*+\S[^\n]*+)*+")


def count_paragraphs(text: str, at_most: int | None = None) -> int:
    """The paragraphs of ``text``, counting no further than ``at_most``.

    Lines end at "\n" (the "\r" of a CRLF is then whitespace at the line's end); a line is blank when it
    holds only whitespace (``str.isspace``: spaces, tabs, CR, no-break spaces...) or nothing. A paragraph
    is a run of consecutive non-blank lines, so paragraphs are separated by one or more blank lines, and
    blank lines before the first or after the last separate nothing. The text is scanned, not copied.
    """
    return sum(1 for _ in itertools.islice(_PARAGRAPH.finditer(text), at_most))


def unselected(fields: dict[str, str], keep: dict[str, list[str]]) -> str | None:
    """``keep_values:FIELD`` for the first field of ``keep`` whose value in ``fields`` (a record's, as the
    readers hand them over) is not one of those to keep; None when every one is."""
    for name, values in keep.items():
        if fields[name] not in values:
            return f"keep_values:{name}"
    return None


def parse_keep_values(items: list[str]) -> dict[str, list[str]]:
    """``["lang=Python,Java", "lang=Go"]`` (``--keep-values``, repeatable) -> ``{"lang": ["Python", "Java", "Go"]}``."""
    keep: dict[str, list[str]] = {}
    for item in items:
        name, sep, listed = item.partition("=")
        values = [v.strip() for v in listed.split(",")]
        if not sep or not name.strip() or not all(values):
            raise ValueError(f"--keep-values {item!r}: expected FIELD=VALUE[,VALUE...] with no empty value, "
                             "e.g. lang=Python,Java")
        kept = keep.setdefault(name.strip(), [])
        kept.extend(v for v in values if v not in kept)
    return keep


class Verdict(NamedTuple):
    rule: str | None             # the first rule failed (a "dropped by filter" key); None: the document passes
    lang: str | None = None      # the identified language, where the language rule was reached


def judge(text: str, cfg: FilterConfig) -> Verdict:
    """The first rule ``text`` fails, the language rule last (it costs the most), and the language found."""
    rule = first_failed_rule(text, cfg)
    if rule is not None or not cfg.lang:
        return Verdict(rule)
    guess = identify(text)
    return Verdict(None if guess.lang in cfg.lang and guess.score >= cfg.lang_min_score else "lang", guess.lang)


# The rule names below are the keys of the "dropped by filter" counts in the prep summary.
def first_failed_rule(text: str, cfg: FilterConfig) -> str | None:
    """The name of the first rule ``text`` fails, or None when it passes all active rules but the
    language rule (see :func:`judge`)."""
    n_chars = len(text)
    if cfg.min_chars is not None and n_chars < cfg.min_chars:
        return "min_chars"
    if cfg.max_chars is not None and n_chars > cfg.max_chars:
        return "max_chars"
    if cfg.min_paragraphs is not None and count_paragraphs(text, cfg.min_paragraphs) < cfg.min_paragraphs:
        return "min_paragraphs"
    if cfg.most_common_char_alpha or cfg.min_alnum_ratio is not None:
        # The appendix does not define "characters": we count the non-whitespace ones, since counting
        # spaces would make the space the most common character of nearly every English text, and the
        # rule would reject everything.
        chars = Counter(text)
        for ws in [c for c in chars if c.isspace()]:
            del chars[ws]
        total = sum(chars.values())
        if cfg.most_common_char_alpha:
            if total == 0 or not chars.most_common(1)[0][0].isalpha():
                return "most_common_char_alpha"
        if cfg.min_alnum_ratio is not None:
            alnum = sum(n for c, n in chars.items() if c.isalnum())
            if total == 0 or alnum / total < cfg.min_alnum_ratio:
                return "min_alnum_ratio"
    needs_words = (cfg.min_words, cfg.max_words, cfg.max_common_word_ratio_long, cfg.max_common_word_ratio_short)
    if any(v is not None for v in needs_words):
        # Nor "words": whitespace-separated tokens, compared lowercased by the most-common-word rule.
        words = text.lower().split()
        n_words = len(words)
        if cfg.min_words is not None and n_words < cfg.min_words:
            return "min_words"
        if cfg.max_words is not None and n_words > cfg.max_words:
            return "max_words"
        limit = cfg.max_common_word_ratio_long if n_words > cfg.long_doc_words else cfg.max_common_word_ratio_short
        if limit is not None and n_words > 0:
            top = Counter(words).most_common(1)[0][1]
            if top / n_words > limit:
                return "max_common_word_ratio"
    return None
