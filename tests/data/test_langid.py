"""Language ID (``mpt prep --lang``), with the real py3langid model: languages named with a probability;
the rule runs after the others; ``mpt prep`` keeps the languages asked for, drops and counts the others
per language, honours ``--lang-min-score``, and refuses a code the model does not know before any work."""

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from mpt.cli import main
from mpt.data import Shard, read_index
from mpt.data.filters import FilterConfig, Verdict, judge
from mpt.data.langid import identify, known_languages

from .conftest import word_tokenizer

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


@pytest.fixture
def mixed(tmp_path):
    """A mixed-language jsonl and a word-level tokenizer knowing its words (so the shards decode back)."""
    texts = [EN[0], DE[0], FR[0], EN[1], SHORT_EN, DE[1], EN[2], FR[1], DE[2], EN[3]]
    src = tmp_path / "mixed.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    words = sorted({w for t in texts for w in t.split()})
    return src, Path(word_tokenizer(tmp_path / "tok.json", words))


def kept_texts(out, tokenizer) -> list[str]:
    tok = Tokenizer.from_file(str(tokenizer))
    shards = [Shard(out / s.file, np.dtype("<u2")) for s in read_index(out).shards]
    return [tok.decode(shard[i].tolist()[:-1]) for shard in shards for i in range(len(shard))]


def test_prep_keeps_english_and_counts_every_language(mixed, tmp_path, capsys):
    src, tok = mixed
    out = tmp_path / "en"
    # small partitions, so several worker processes identify languages
    assert main(["prep", str(src), "--out", str(out), "--tokenizer", str(tok), "--mode", "docs", "--workers", "2",
                 "--partition-bytes", "300", "--lang", "en", "--no-progress"]) == 0
    assert "language  kept en 5; dropped de 3, fr 2" in capsys.readouterr().out
    assert kept_texts(out, tok) == [EN[0], EN[1], SHORT_EN, EN[2], EN[3]]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["filtered"] == {"lang": 5} and summary["documents_written"] == 5
    assert summary["languages_kept"] == {"en": 5}
    assert list(summary["languages_dropped"].items()) == [("de", 3), ("fr", 2)]     # sorted: the same every run


def test_prep_lang_min_score_drops_the_unsure(mixed, tmp_path, capsys):
    src, tok = mixed
    out = tmp_path / "en-de"
    assert main(["prep", str(src), "--out", str(out), "--tokenizer", str(tok), "--mode", "docs", "--lang", "en",
                 "--lang", "de", "--lang-min-score", "0.5", "--min-words", "2", "--no-progress"]) == 0
    assert "language  kept de 3, en 4; dropped en 1, fr 2" in capsys.readouterr().out
    assert kept_texts(out, tok) == [EN[0], DE[0], EN[1], DE[1], EN[2], DE[2], EN[3]]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["filtered"] == {"lang": 3}
    assert summary["languages_kept"] == {"de": 3, "en": 4} and summary["languages_dropped"] == {"en": 1, "fr": 2}


def test_prep_unknown_language_fails_before_any_work(mixed, tmp_path, capsys):
    src, tok = mixed
    out = tmp_path / "never"
    assert main(["prep", str(src), "--out", str(out), "--tokenizer", str(tok), "--lang", "en", "--lang", "klingon",
                 "--no-progress"]) == 2
    assert "--lang 'klingon': not a language the identifier knows" in capsys.readouterr().err
    assert not out.exists()
