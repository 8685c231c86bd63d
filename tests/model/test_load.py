"""The one model loader: its defaults, fallbacks and errors (the tokenizer loader: tests/data/test_tokenize.py)."""

import json

import pytest
import torch

from mpt.model import load as load_mod
from mpt.model.hf import convert, save_pretrained
from mpt.model.load import load_model, resolve_dtype, usable_attn_impl
from mpt.paths import looks_local
from tests.tiny import tiny_model


def tiny(tmp_path, attn_impl=None):
    model = tiny_model(0, vocab_size=416)
    save_pretrained(model, tmp_path)
    if attn_impl:  # as a checkpoint trained elsewhere would say; our config refuses flash without flash-attn
        cfg = json.loads((tmp_path / "config.json").read_text())
        cfg["attn_config"]["attn_impl"] = attn_impl
        (tmp_path / "config.json").write_text(json.dumps(cfg))
    return model


@pytest.mark.parametrize("name, local", [("mosaicml/mpt-7b", False), ("gpt2", False), ("./model", True),
                                         ("../x", True), ("/abs/model", True), ("a/b/c", True), ("~/m", True),
                                         ("model/", True)])
def test_local_looking_names_are_never_hub_names(name, local):
    assert looks_local(name) is local


def test_owner_slash_name_is_local_when_owner_is_a_folder_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert looks_local("runs/model") and not looks_local("mosaicml/mpt-7b")


@pytest.mark.parametrize("saved, device, want", [("flash", "cpu", "torch"), ("flex", "cpu", "torch"),
                                                 ("torch", "cuda", "torch"), ("flex", "cuda", "flex"),
                                                 ("triton", "cuda", "torch"), (None, "cuda", "torch")])
def test_attention_fallback_rule(saved, device, want):
    assert usable_attn_impl(saved, device) == want


def test_flash_falls_back_on_cuda_without_flash_attn(monkeypatch):
    monkeypatch.setattr(load_mod.importlib.util, "find_spec", lambda name: None)
    assert usable_attn_impl("flash", "cuda:0") == "torch"
    monkeypatch.setattr(load_mod.importlib.util, "find_spec", lambda name: object())
    assert usable_attn_impl("flash", "cuda:0") == "flash"


def test_dtype_defaults():
    assert resolve_dtype(None, "cpu") == torch.float32 and resolve_dtype(None, "cuda:1") == torch.bfloat16
    assert resolve_dtype("auto", "cuda") is None and resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="dtype 'half' is invalid"):
        resolve_dtype("half", "cpu")


def test_a_flash_checkpoint_loads_on_cpu_with_the_same_logits(tmp_path):
    ref = tiny(tmp_path, attn_impl="flash")
    model = load_model(tmp_path, device="cpu")
    assert model.config.attn_config["attn_impl"] == "torch" and not model.training
    assert next(model.parameters()).dtype == torch.float32
    ids = torch.randint(0, 416, (2, 9))
    torch.testing.assert_close(model(ids).logits, ref(ids).logits)


def test_convert_keeps_the_attention_the_checkpoint_names(tmp_path):
    tiny(tmp_path / "src", attn_impl="flex")
    convert(tmp_path / "src", tmp_path / "dst")
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["attn_config"]["attn_impl"] == "flex"


def test_missing_or_foreign_folders_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("./nope", str(tmp_path / "nope"), "runs/nope/x"):
        with pytest.raises(FileNotFoundError, match=f"^no such model folder: {name}$"):
            load_model(name)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model(tmp_path / "empty")
