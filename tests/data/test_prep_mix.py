"""`mpt prep --mix`: a data-mix recipe prepared source by source into the mix `mpt train` streams."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mpt.cli import main
from mpt.config import apply_overrides, from_dict
from mpt.data import read_index
from mpt.data.filters import parse_keep_values
from mpt.data.prep_mix import MixError, load_mix, mix_names, run_mix
from mpt.train.recipe import DataSection

from .conftest import word_tokenizer

SOURCES = {"web": 0.5, "code": 0.3, "books": 0.2}


def write_docs(folder, seed: int, n: int = 40) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    docs = [" ".join(f"w{rng.randrange(200)}" for _ in range(rng.randrange(3, 60))) for _ in range(n)]
    (folder / "part.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))


@pytest.fixture
def recipe(tmp_path):
    """A three-source recipe over generated jsonl; ``books`` also drops documents under 10 words."""
    for i, name in enumerate(SOURCES):
        write_docs(tmp_path / "raw" / name, seed=i)
    data = {"prep": {"tokenizer": word_tokenizer(tmp_path / "tok.json", 200), "seq_len": 16, "workers": 1},
            "sources": {n: {"proportion": p, "inputs": [str(tmp_path / "raw" / n)]} for n, p in SOURCES.items()}}
    data["sources"]["books"]["prep"] = {"min_words": 10}
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sources_of(out) -> list[dict]:
    return yaml.safe_load((out / "mix.yaml").read_text())


def test_mix_preps_every_source_and_writes_the_training_mix(recipe, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prep", "--mix", str(recipe), "--out", str(out), "--no-progress"]) == 0
    assert sources_of(out) == [{"path": str(out / n), "proportion": p} for n, p in SOURCES.items()]
    for name in SOURCES:
        assert read_index(out / name).num_tokens > 0 and read_index(out / name).seq_len == 16
    books = json.loads((out / "books" / "summary.json").read_text())
    assert books["filtered"].get("min_words", 0) > 0          # the source's own filter ran
    summary = json.loads((out / "mix-summary.json").read_text())
    assert summary["skipped"] == {} and summary["renormalised"] is False
    assert "mix.yaml" in capsys.readouterr().out
    # exactly the shape of a training recipe's data.sources, given as the README's override
    data = apply_overrides({"sources": []}, [f"sources={(out / 'mix.yaml').read_text()}"])
    section = from_dict(DataSection, data, "data")
    assert [(s.path, s.proportion) for s in section.sources] == [(str(out / n), p) for n, p in SOURCES.items()]
    # a rerun finds every folder finished and writes the same mix
    assert main(["prep", "--mix", str(recipe), "--out", str(out), "--no-progress"]) == 0
    assert sources_of(out) == [{"path": str(out / n), "proportion": p} for n, p in SOURCES.items()]


def test_missing_source_is_an_error_or_skipped_and_renormalised(recipe, tmp_path, capsys):
    missing = tmp_path / "raw" / "code"
    (missing / "part.jsonl").unlink()
    missing.rmdir()
    out = tmp_path / "out"
    assert main(["prep", "--mix", str(recipe), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "source 'code'" in err and str(missing) in err and "--allow-missing" in err
    assert not out.exists()                                   # refused before any source was prepared
    assert main(["prep", "--mix", str(recipe), "--out", str(out), "--allow-missing", "--no-progress"]) == 0
    assert "code" in capsys.readouterr().out
    assert sources_of(out) == [{"path": str(out / "web"), "proportion": pytest.approx(0.5 / 0.7)},
                               {"path": str(out / "books"), "proportion": pytest.approx(0.2 / 0.7)}]
    assert "skipped" in (out / "mix.yaml").read_text() and "renormalised" in (out / "mix.yaml").read_text()
    summary = json.loads((out / "mix-summary.json").read_text())
    assert summary["skipped"] == {"code": [str(missing)]} and summary["renormalised"] is True
    assert summary["recipe_proportions"] == SOURCES and not (out / "code").exists()


def test_recipe_errors_name_the_file_and_key(recipe):
    data = yaml.safe_load(recipe.read_text())

    def check(change, match):
        bad = recipe.with_name("bad.yaml")
        broken = yaml.safe_load(yaml.safe_dump(data))
        change(broken)
        bad.write_text(yaml.safe_dump(broken, sort_keys=False))
        with pytest.raises(MixError, match=match) as err:
            load_mix(str(bad))
        assert str(bad) in str(err.value)

    check(lambda d: d.update(colour="red"), "unknown key `colour`")
    check(lambda d: d["sources"]["web"].update(weight=1), r"unknown key `sources\.web\.weight`")
    check(lambda d: d["sources"]["web"]["prep"].update(mc5=True) if "prep" in d["sources"]["web"]
          else d["sources"]["web"].update(prep={"mc5": True}), r"unknown key `sources\.web\.prep\.mc5`")
    check(lambda d: d["sources"]["web"].update(proportion=0.6), "sum to 1.1")
    check(lambda d: d["sources"]["books"]["prep"].update(min_words=-1), "source 'books'.*min_words=-1")
    check(lambda d: d["sources"]["web"].update(prep={"inputs": ["x"]}), r"sources\.web\.prep\.inputs")


def test_prep_options_on_the_command_line_apply_to_every_source(recipe, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prep", "a.jsonl", "--mix", str(recipe), "--out", str(out)]) == 2
    assert "takes its inputs from the recipe" in capsys.readouterr().err
    assert main(["prep", "--allow-missing", "--out", str(out)]) == 2
    assert "--allow-missing goes with --mix" in capsys.readouterr().err
    assert main(["prep", "--mix", str(recipe), "--out", str(out), "--seq-len", "8", "--no-progress"]) == 0
    assert all(read_index(out / n).seq_len == 8 for n in SOURCES)
    assert main(["prep", "--mix", "mpt-7b-mixx", "--out", str(out)]) == 2
    assert "unknown data mix 'mpt-7b-mixx'" in capsys.readouterr().err


def test_shipped_mpt_7b_mix_parses_and_validates():
    assert "mpt-7b-mix" in mix_names()
    recipe = load_mix("mpt-7b-mix")
    assert len(recipe.sources) == 10
    assert sum(s.proportion for s in recipe.sources.values()) == pytest.approx(1.0, abs=1e-9)
    shares = {n: s.proportion for n, s in recipe.sources.items()}
    assert shares == {"mc4": 0.33, "c4": 0.299, "redpajama-commoncrawl": 0.10, "the-stack": 0.10,
                      "redpajama-wikipedia": 0.04, "the-stack-markdown": 0.035, "s2orc": 0.033,
                      "redpajama-books": 0.03, "redpajama-arxiv": 0.019, "redpajama-stackexchange": 0.014}
    assert all(s.inputs == [f"data/raw/{n}/"] for n, s in recipe.sources.items())
    assert recipe.options("mc4")["mc4"] is True
    assert recipe.options("s2orc")["lang"] == ["en"] and recipe.options("s2orc")["min_words"] == 500
    assert recipe.options("s2orc")["min_paragraphs"] == 5
    # The Stack's two sources select records by their `lang` column, code and Markdown apart
    stack, markdown = (parse_keep_values(recipe.options(n)["keep_values"]) for n in ("the-stack", "the-stack-markdown"))
    assert markdown == {"lang": ["Markdown"]} and list(stack) == ["lang"] and "Markdown" not in stack["lang"]
    assert recipe.options("the-stack")["text_field"] == recipe.options("the-stack-markdown")["text_field"] == "content"
    assert recipe.options("c4")["semantic_drop"] == 0.2
    # by path too
    assert load_mix(str(__import__("mpt").__path__[0] + "/configs/data/mpt-7b-mix.yaml")).sources.keys() == \
        recipe.sources.keys()


def test_run_mix_refuses_when_nothing_is_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MixError, match="10 of 10 sources.*data/raw/mc4/"):
        run_mix("mpt-7b-mix", str(tmp_path / "out"))
    with pytest.raises(MixError, match="no source has any input"):
        run_mix("mpt-7b-mix", str(tmp_path / "out"), allow_missing=True)


def test_a_source_asking_semantic_dedup_it_cannot_have_stops_the_mix_before_any_work(recipe, tmp_path, capsys):
    data = yaml.safe_load(recipe.read_text())
    data["sources"]["code"]["prep"] = {"semantic_dedup": str(tmp_path / "no-model"), "semantic_drop": 0.2}
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    assert set(load_mix(str(recipe)).sources) == set(SOURCES)     # the recipe reads; the model is checked to run
    out = tmp_path / "out"
    assert main(["prep", "--mix", str(recipe), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err    # no such model folder: named, before work
    assert "source 'code'" in err and "--semantic-dedup" in err and not out.exists()


def test_shipped_mix_selects_the_stacks_languages_and_s2orcs_papers_at_tiny_scale(tmp_path, monkeypatch, capsys):
    """mpt-7b-mix itself, on three of its sources: The Stack's code and Markdown split one table by `lang`, and
    S2ORC keeps English papers of >= 500 words in >= 5 paragraphs; the other sources are absent and skipped."""
    monkeypatch.chdir(tmp_path)
    langs = ["Python", "Java", "Ruby", "Markdown"]        # Python and Java are in the recipe's example list
    table = pa.table({"content": [f"w{i} w{i + 1} w{i + 2}" for i in range(40)], "lang": [langs[i % 4] for i in range(40)]})
    for name in ("the-stack", "the-stack-markdown"):      # one copy, given to both sources
        (tmp_path / "data" / "raw" / name).mkdir(parents=True)
        pq.write_table(table, tmp_path / "data" / "raw" / name / "stack.parquet")
    sentence = "The results of this study show that the proposed method improves accuracy on every benchmark."

    def paper(paragraphs: int, sentences: int) -> str:
        return "\r\n\r\n".join(" ".join([sentence] * sentences) for _ in range(paragraphs))

    papers = [paper(6, 8), paper(4, 12), paper(6, 1), paper(5, 7), paper(9, 6)]    # 0, 3, 4 pass
    (tmp_path / "data" / "raw" / "s2orc").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "s2orc" / "papers.jsonl").write_text("".join(json.dumps({"text": p}) + "\n"
                                                                              for p in papers))
    tok = word_tokenizer(tmp_path / "tok.json", 60)
    out = tmp_path / "out"
    assert main(["prep", "--mix", "mpt-7b-mix", "--out", str(out), "--allow-missing", "--tokenizer", tok,
                 "--seq-len", "4", "--workers", "1", "--no-exact-dedup", "--no-progress"]) == 0
    capsys.readouterr()
    summaries = {n: json.loads((out / n / "summary.json").read_text()) for n in ("the-stack", "the-stack-markdown",
                                                                                 "s2orc")}
    assert summaries["the-stack"]["filtered"] == {"keep_values:lang": 20}           # Ruby and Markdown
    assert summaries["the-stack"]["documents_written"] == 20
    assert summaries["the-stack-markdown"]["filtered"] == {"keep_values:lang": 30}
    assert summaries["the-stack-markdown"]["documents_written"] == 10
    assert summaries["s2orc"]["filtered"] == {"min_paragraphs": 1, "min_words": 1}
    assert summaries["s2orc"]["documents_written"] == 3 and summaries["s2orc"]["languages_kept"] == {"en": 3}
    total = 0.10 + 0.035 + 0.033
    assert sources_of(out) == [{"path": str(out / n), "proportion": pytest.approx(p / total)}
                               for n, p in (("the-stack", 0.10), ("the-stack-markdown", 0.035), ("s2orc", 0.033))]
