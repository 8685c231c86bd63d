import pytest

from mpt.data.filters import FilterConfig, first_failed_rule

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
