import shutil
import subprocess

import pytest
import torch

from mpt import MPTForCausalLM
from mpt.cli import build_parser, main
from mpt.presets import load_model_config, model_info, preset_names


def test_console_script_help():
    exe = shutil.which("mpt")
    assert exe, "the `mpt` console script is not installed"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("model-info", "convert", "demo"):
        assert command in out


@pytest.mark.parametrize("name", preset_names())
def test_model_info_counts_equal_the_built_model(name):
    cfg = load_model_config(name)
    with torch.device("meta"):
        model = MPTForCausalLM(cfg)
    assert model_info(cfg).params == sum(p.numel() for p in model.parameters())


def test_presets_have_the_published_shapes():
    shapes = {name: (c.d_model, c.n_heads, c.n_layers) for name in preset_names()
              for c in [load_model_config(name)]}
    assert shapes["mpt-125m"] == (768, 12, 12) and shapes["mpt-350m"] == (1024, 16, 24)
    assert shapes["mpt-760m"] == (1536, 12, 24) and shapes["mpt-1b"] == (2048, 16, 24)
    assert shapes["mpt-3b"] == (2560, 20, 32) and shapes["mpt-7b"] == (4096, 32, 32)
    assert shapes["mpt-30b"] == (7168, 56, 48)
    seven = load_model_config("7b")
    assert (seven.vocab_size, seven.max_seq_len) == (50432, 2048)


def test_model_info_prints_a_row_per_preset(capsys):
    assert main(["model-info"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in preset_names())
    assert "6,649.3M" in out  # MPT-7B


def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["model-info", "mpt-9b"]) == 2
    err = capsys.readouterr().err
    assert "unknown model preset 'mpt-9b'" in err and "mpt-7b" in err


def test_demo_runs_offline(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "MptForCausalLM" in out and "past max_seq_len" in out
    assert (tmp_path / "model.safetensors").is_file()


def test_export_from_a_training_checkpoint_copies_the_tokenizer_of_the_run(tmp_path, capsys):
    from mpt import load
    from mpt.config import from_dict
    from mpt.train import Recipe, train
    from tests.infer.conftest import build_tokenizer
    from tests.train.helpers import make_shards, recipe_dict

    build_tokenizer(tmp_path / "tok")  # 416 tokens; the synthetic shards use ids below 64
    data = make_shards(tmp_path / "data", tokenizer=str(tmp_path / "tok"))
    train(from_dict(Recipe, recipe_dict(tmp_path, data, train={"max_duration": "4ba"})), log=lambda m: None)
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (tmp_path / "tok" / "tokenizer.json").read_bytes()
    assert load(tmp_path / "hf", device="cpu").tokenizer.eos_token == "<|endoftext|>"  # no --tokenizer needed


def test_data_commands_have_help(capsys):
    for cmd in (["prep", "--help"], ["tokenizer", "train", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(cmd)
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: mpt {' '.join(cmd[:-1])}" in out and "--out" in out
