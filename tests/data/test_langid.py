"""Language ID (``mpt prep --lang``), with the real py3langid model: languages named with a probability;
the rule runs after the others; ``mpt prep`` keeps the languages asked for, drops and counts the others
per language, honours ``--lang-min-score``, and refuses a code the model does not know before any work."""

import pytest

from mpt.data.filters import FilterConfig, Verdict, judge
from mpt.data.langid import identify, known_languages

EN = ["The committee will meet again next Thursday to discuss the budget.",
      "Most of the samples were stored at minus eighty degrees until analysis.",
      "Children learn new words remarkably quickly between the ages of two and five.",
      "The city council voted to extend the bicycle lanes along the main avenue."]
DE = ["Der Ausschuss trifft sich nächsten Donnerstag erneut, um den Haushalt zu besprechen.",
      "Die meisten Proben wurden bis zur Analyse bei minus achtzig Grad gelagert.",
      "Eine kleine Bäckerei an der Ecke verkauft das beste Brot der Stadt."]
FR = ["Le comité se réunira de nouveau jeudi prochain pour discuter du budget.",
      "Une petite boulangerie au coin de la rue vend le meilleur pain de la ville."]
SHORT_EN = "Good morning"       # English, but the model is far from sure (about 0.16)


def test_identify_names_the_language_and_its_probability():
    guess = identify(EN[0])
    assert guess.lang == "en" and 0.95 < guess.score <= 1.0
    assert [identify(t).lang for t in DE + FR] == ["de"] * 3 + ["fr"] * 2
    short = identify(SHORT_EN)
    assert short.lang == "en" and short.score < 0.5
    assert {"en", "de", "fr", "zh"} <= set(known_languages())


def test_language_rule_runs_last_and_keeps_its_least_score():
    assert judge(EN[0], FilterConfig(lang=["en", "de"])) == Verdict(None, "en")
    assert judge(DE[0], FilterConfig(lang=["en", "de"])) == Verdict(None, "de")
    assert judge(FR[0], FilterConfig(lang=["en", "de"])) == Verdict("lang", "fr")
    assert judge(SHORT_EN, FilterConfig(lang=["en"], min_words=3)) == Verdict("min_words")   # not identified
    assert judge(EN[0], FilterConfig()) == Verdict(None)
    score = identify(SHORT_EN).score
    assert judge(SHORT_EN, FilterConfig(lang=["en"], lang_min_score=score)) == Verdict(None, "en")   # inclusive
    assert judge(SHORT_EN, FilterConfig(lang=["en"], lang_min_score=score + 1e-6)) == Verdict("lang", "en")
    assert FilterConfig(lang=["en"]).active and not FilterConfig().active and not FilterConfig(lang=[]).active


def test_unknown_codes_and_bad_scores_are_errors():
    with pytest.raises(ValueError, match=r"--lang 'english', 'EN': not a language the identifier knows; use one of "
                                         r"its lowercase ISO 639 codes: .*\bde\b.*\ben\b"):
        FilterConfig(lang=["en", "english", "EN"]).validate()
    with pytest.raises(ValueError, match="lang_min_score=1.5 must be a probability between 0 and 1"):
        FilterConfig(lang=["en"], lang_min_score=1.5).validate()
    with pytest.raises(ValueError, match=r"lang_min_score=0.5 needs the languages to keep \(--lang\)"):
        FilterConfig(lang_min_score=0.5).validate()
