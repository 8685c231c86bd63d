"""Commands generated from typed configs: flags from fields, --config YAML, key=value overrides, precedence."""

import pytest

from mpt.cli import main, parse
from mpt.eval.command import EvalRunConfig
from mpt.infer.commands import GenerateConfig
from mpt.typed_cli import build_config


def config_of(argv):
    args = parse(argv)
    return build_config(args._cls, args, args._overrides, args._parser)


def test_flags_come_from_the_fields_with_their_types_and_defaults():
    cfg = config_of(["eval", "m", "--limit", "3", "--num-fewshot", "0", "5", "--no-progress"])
    assert cfg == EvalRunConfig(model="m", limit=3, num_fewshot=[0, 5], progress=False)


def test_yaml_then_overrides_then_flags(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("model: from-file\nlimit: 1\nbatch_size: 4\ntasks: [a.jsonl]\n")
    cfg = config_of(["eval", "--config", str(path), "limit=2", "batch_size=9", "--batch-size", "16"])
    assert (cfg.model, cfg.limit, cfg.batch_size, cfg.tasks) == ("from-file", 2, 16, ["a.jsonl"])


def test_a_key_value_that_is_not_a_field_stays_a_prompt():
    cfg = config_of(["generate", "m", "x=1", "--stop", "a=b", "--stop", "c", "seed=3"])
    assert cfg == GenerateConfig(model="m", prompt="x=1", stop=["a=b", "c"], seed=3)


def test_bad_values_name_the_key(tmp_path, capsys):
    assert main(["eval", "m", "limit=many"]) == 2
    assert "`limit` = 'many': expected int" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--limit", "3"])
    assert exit_.value.code == 2 and "required: model (or give them in --config)" in capsys.readouterr().err


def test_every_command_takes_a_config_file(tmp_path, capsys):
    path = tmp_path / "info.yaml"
    path.write_text("preset: [mpt-125m]\n")
    assert main(["model-info", "--config", str(path)]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert len(rows) == 1 and rows[0].split()[0] == "mpt-125m"


def test_lm_eval_is_an_mpt_command():
    with pytest.raises(SystemExit, match="no task 'nope' in suite mpt7b"):
        main(["lm-eval", "export", "nope", "out", "--tokenizer", "unused"])
    argv = ["--model", "mpt", "--model_args", "pretrained=x", "--tasks", "t"]
    assert parse(["lm-eval", *argv]).rest == argv  # lm_eval's flags pass through untouched


def test_prep_flags_fold_into_nested_sections_over_the_yaml(tmp_path):
    from mpt.cli import prep_config

    path = tmp_path / "prep.yaml"
    path.write_text("inputs: [a.jsonl]\nout: shards\nseq_len: 128\nfilters: {min_words: 50}\n")
    cfg = prep_config(parse(["prep", "--config", str(path), "dedup.threshold=0.9", "--mc4", "--min-words", "7",
                             "--shard-mb", "0.5", "--no-exact-dedup"]))
    assert (cfg.inputs, cfg.out, cfg.seq_len, cfg.shard_bytes) == (["a.jsonl"], "shards", 128, 1 << 19)
    assert (cfg.filters.min_words, cfg.filters.min_alnum_ratio) == (7, 0.92)  # --mc4, then the flag
    assert (cfg.dedup.threshold, cfg.dedup.exact) == (0.9, False)


def test_a_model_is_required_where_the_config_default_means_none_given(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--port", "0"])
    assert exit_.value.code == 2 and "required: model" in capsys.readouterr().err


def test_help_shows_the_defaults_of_the_dataclass(capsys):
    import dataclasses

    default = {f.name: f.default for f in dataclasses.fields(EvalRunConfig)}["max_batch_tokens"]
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {default})" in text and "--no-progress no progress bar" in text


def test_main_leaves_the_callers_warning_settings_as_they_were(capsys):
    import warnings

    fmt, filters = warnings.formatwarning, list(warnings.filters)
    assert main(["model-info", "mpt-tiny"]) == 0
    assert warnings.formatwarning is fmt and warnings.filters == filters
