import random

import pytest

from mpt.data.filters import FilterConfig, count_paragraphs, first_failed_rule, parse_keep_values, unselected

MC4 = FilterConfig.mc4()


def words(n: int, distinct: int) -> str:
    """n words cycling through `distinct` different alphabetic words."""
    vocab = [f"w{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}{chr(97 + i // 676)}" for i in range(distinct)]
    return " ".join(vocab[i % distinct] for i in range(n))


def test_word_count_bounds_are_inclusive():
    assert first_failed_rule(words(200, 50), MC4) is None
    assert first_failed_rule(words(199, 50), MC4) == "min_words"
    assert first_failed_rule(words(50_000, 5000), MC4) is None
    assert first_failed_rule(words(50_001, 5000), MC4) == "max_words"


def test_most_common_word_ratio_switches_at_500_words():
    # 500 words: the 30 % rule; the top word at exactly 30 % passes, one more occurrence fails
    base = ["the"] * 150 + words(350, 350).split()
    assert first_failed_rule(" ".join(base), MC4) is None
    assert first_failed_rule(" ".join(["the"] * 151 + words(349, 349).split()), MC4) == "max_common_word_ratio"
    # 1000 words (> 500): the 7.5 % rule; 75 of 1000 passes, 76 fails
    assert first_failed_rule(" ".join(["the"] * 75 + words(925, 925).split()), MC4) is None
    assert first_failed_rule(" ".join(["the"] * 76 + words(924, 924).split()), MC4) == "max_common_word_ratio"
    # the comparison ignores case
    assert first_failed_rule(" ".join(["The", "THE"] * 38 + words(924, 924).split()), MC4) == "max_common_word_ratio"


def test_alphanumeric_ratio_boundary():
    # 2,500 non-space characters; 200 may be punctuation (92 % exactly), 201 may not
    body = words(250, 250)  # 250 words of 4 letters = 1,000 letters
    assert len(body.replace(" ", "")) == 1000
    ok = body + " " + "x" * 1300 + " " + "." * 200
    bad = body + " " + "x" * 1299 + " " + "." * 201
    assert first_failed_rule(ok, MC4) is None
    assert first_failed_rule(bad, MC4) == "min_alnum_ratio"


def test_most_common_character_must_be_alphabetic():
    digits = words(300, 300) + " " + "7" * 2000     # all alphanumeric, but '7' is the most common character
    assert first_failed_rule(digits, MC4) == "most_common_char_alpha"
    assert first_failed_rule(digits, FilterConfig.mc4(most_common_char_alpha=False)) is None
    # spaces do not count as characters: English text passes although ' ' is its most frequent character
    assert first_failed_rule(words(300, 300), MC4) is None


def test_generic_length_filter_and_defaults():
    assert not FilterConfig().active
    assert first_failed_rule("anything at all", FilterConfig()) is None
    cfg = FilterConfig(min_chars=5, max_chars=10)
    assert first_failed_rule("abcd", cfg) == "min_chars"
    assert first_failed_rule("abcde", cfg) is None
    assert first_failed_rule("a" * 10, cfg) is None
    assert first_failed_rule("a" * 11, cfg) == "max_chars"


def test_invalid_filter_config():
    with pytest.raises(ValueError, match="min_alnum_ratio=1.5"):
        FilterConfig(min_alnum_ratio=1.5).validate()
    with pytest.raises(ValueError, match="min_words=10 is larger than max_words=5"):
        FilterConfig(min_words=10, max_words=5).validate()


def reference_paragraphs(text: str) -> int:
    """The definition, line by line: a non-blank line whose previous line is blank or absent starts a paragraph."""
    lines = text.split("\n")
    return sum(1 for i, line in enumerate(lines) if line.strip() and (i == 0 or not lines[i - 1].strip()))


def test_paragraphs_are_runs_of_non_blank_lines():
    assert count_paragraphs("") == 0 and count_paragraphs(" \n\t\n") == 0
    assert count_paragraphs("one line") == 1
    assert count_paragraphs("a\nb\nc") == 1                              # lines without a blank line between
    assert count_paragraphs("a\n\nb") == 2
    assert count_paragraphs("a\n\n\n\nb") == 2                          # several blank lines: one separation
    assert count_paragraphs("a\r\n\r\nb\r\nc\r\n") == 2                # CRLF: "\r" alone is a blank line
    assert count_paragraphs("a\n   \t \nb") == 2                         # a whitespace-only line separates
    assert count_paragraphs("a\n\u00a0\u3000\nb") == 2                  # so do no-break and ideographic spaces
    assert count_paragraphs("\n\n  \na\n\nb\n\n\n \n") == 2          # leading and trailing blank lines count nothing
    assert count_paragraphs("\nx") == 1 and count_paragraphs("x\n") == 1
    assert count_paragraphs("  indented\n  still the same paragraph") == 1
    assert count_paragraphs("a\rb\rc") == 1                               # a lone CR does not end a line
    many = "para\n\n" * 1000
    assert count_paragraphs(many) == 1000 and count_paragraphs(many, 5) == 5 and count_paragraphs("a\n\nb", 5) == 2
    rng = random.Random(0)
    pieces = ["a", "bc", " ", "\t", "\n", "\n", "\r\n", "\u00a0", "\x0b"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 14)))
        assert count_paragraphs(text) == reference_paragraphs(text), repr(text)


def test_min_paragraphs_rule():
    cfg = FilterConfig(min_paragraphs=5)
    assert cfg.active
    five = "\r\n\r\n".join(f"Paragraph {i}, with a line\r\nand another." for i in range(5)) + "\r\n\r\n \r\n"
    assert first_failed_rule(five, cfg) is None
    assert first_failed_rule(five.replace("\r\n\r\nParagraph 4", "\r\nParagraph 4"), cfg) == "min_paragraphs"
    assert first_failed_rule("one\n \n\ntwo", FilterConfig(min_paragraphs=2)) is None
    assert first_failed_rule("one\ntwo", FilterConfig(min_paragraphs=2)) == "min_paragraphs"
    assert first_failed_rule("", FilterConfig(min_paragraphs=0)) is None
    FilterConfig(min_paragraphs=0).validate()
    with pytest.raises(ValueError, match="min_paragraphs=-1 must be >= 0"):
        FilterConfig(min_paragraphs=-1).validate()


def test_keep_values_parse_select_and_validate():
    assert parse_keep_values(["lang=Python,Java", "ext=py", "lang=Go, Java"]) == {
        "lang": ["Python", "Java", "Go"], "ext": ["py"]}
    assert parse_keep_values(["lang=C#,C++"]) == {"lang": ["C#", "C++"]}
    for bad in ("lang", "=Python", "lang=", "lang=Python,,Java"):
        with pytest.raises(ValueError, match=r"--keep-values .*expected FIELD=VALUE"):
            parse_keep_values([bad])
    keep = {"lang": ["Python", "Java"], "ext": ["py", "java"]}
    assert unselected({"lang": "Python", "ext": "py"}, keep) is None
    assert unselected({"lang": "Ruby", "ext": "py"}, keep) == "keep_values:lang"
    assert unselected({"lang": "Java", "ext": "kt"}, keep) == "keep_values:ext"
    assert unselected({"lang": "python", "ext": "py"}, keep) == "keep_values:lang"     # values compare exactly
    assert FilterConfig(keep_values=keep).active and not FilterConfig(keep_values={}).active
    FilterConfig(keep_values=keep).validate()
    for bad, match in (({"lang": []}, "keep_values\\['lang'\\] = \\[\\]: expected a non-empty list"),
                       ({"lang": "Python"}, "keep_values\\['lang'\\] = 'Python': expected"),
                       ({"stars": [5]}, "quote numbers"), ({"": ["x"]}, "field name '' must be")):
        with pytest.raises(ValueError, match=match):
            FilterConfig(keep_values=bad).validate()
