from pathlib import Path

import pytest

from mpt.config import ConfigError, from_dict
from mpt.train import Recipe, load_recipe
from mpt.train.recipe import parse_duration

from .helpers import recipe_dict


def _recipe(tmp_path, **sections):
    return from_dict(Recipe, recipe_dict(tmp_path, tmp_path / "data", **sections))


@pytest.mark.parametrize("section,values,message", [
    ("optimizer", {"lrr": 1.0}, "unknown key `optimizer.lrr`"),
    ("optimizer", {"lr": "fast"}, "`optimizer.lr` = 'fast'"),
    ("optimizer", {"name": "sgd"}, "`optimizer.name` = 'sgd': allowed values are 'lion', 'adamw'"),
    ("train", {"global_batch_size": 2.5}, "`train.global_batch_size` = 2.5: expected int"),
    ("train", {"max_duration": "10 steps"}, "`train.max_duration` = '10 steps'"),
    ("train", {"micro_batch_size": 0}, "`train.micro_batch_size` = 0"),
    ("spike", {"factor": 0.5}, "`spike.factor` = 0.5"),
    ("checkpoint", {"keep": 0}, "`checkpoint.keep` = 0"),
])
def test_bad_recipe_names_the_key_path_and_value(tmp_path, section, values, message):
    with pytest.raises(ConfigError) as err:
        _recipe(tmp_path, **{section: values})
    assert message in str(err.value)


def test_pretraining_without_sources_is_an_error(tmp_path):
    data = recipe_dict(tmp_path, tmp_path)
    data["data"]["sources"] = []
    with pytest.raises(ConfigError, match="`data.sources`"):
        from_dict(Recipe, data)


def test_durations():
    assert parse_duration("4800ba") == (4800, "ba")
    assert parse_duration("2.5e9tok") == (2_500_000_000, "tok")
    assert parse_duration("1ep") == (1, "ep")


def test_yaml_recipe_with_overrides(tmp_path):
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(tmp_path, tmp_path / "data")))
    recipe = load_recipe(str(path), ["optimizer.lr=1e-3", "train.precision=bf16", "model.fields.n_layers=3"])
    assert recipe.optimizer.lr == 1e-3 and recipe.train.precision == "bf16"
    assert recipe.model.fields.n_layers == 3
    # model fields are typed: a misspelt or mistyped one is named before any work starts
    with pytest.raises(ConfigError, match=r"unknown key `model.fields.n_layer`; known keys.*n_layers"):
        load_recipe(str(path), ["model.fields.n_layer=3"])
    with pytest.raises(ConfigError, match=r"`model.fields.attn_config.alibi` = 'yes please': expected bool or null"):
        load_recipe(str(path), ["model.fields.attn_config.alibi=yes please"])
    with pytest.raises(ConfigError, match=r"`model.fields.attn_config.attn_impl` = 'fast'"):
        load_recipe(str(path), ["model.fields.attn_config.attn_impl=fast"])
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        load_recipe(str(path), ["optimizer.lr"])


def test_shipped_recipes_are_valid():
    from pathlib import Path

    import mpt

    folder = Path(mpt.__file__).parent / "configs" / "train"
    recipes = sorted(folder.glob("*.yaml"))
    assert recipes
    for path in recipes:
        load_recipe(str(path))


# A valid value other than the default for every MPTConfig field; a field added to model/fields.py
# without an entry here fails the first test, so none is left unsettable from a recipe.
NON_DEFAULT = {
    "d_model": 96, "n_heads": 3, "n_layers": 3, "expansion_ratio": 2, "max_seq_len": 96, "vocab_size": 640,
    "resid_pdrop": 0.1, "emb_pdrop": 0.1, "learned_pos_emb": True, "init_device": "meta",
    "logit_scale": "inv_sqrt_d_model", "no_bias": False, "embedding_fraction": 0.5, "norm_type": "layernorm",
    "layer_norm_epsilon": 1e-6, "use_cache": True, "tie_word_embeddings": False,
    "attn_config": {"attn_type": "multihead_attention", "attn_impl": "flex", "attn_pdrop": 0.1, "clip_qkv": 6.0,
                    "qk_ln": True, "softmax_scale": 0.5, "prefix_lm": False, "attn_uses_sequence_id": True,
                    "alibi": False, "alibi_bias_max": 16},
    "init_config": {"name": "small_init_", "fan_mode": "fan_out", "init_nonlinearity": "linear",
                    "init_div_is_residual": False, "init_gain": 0.5, "init_std": 0.01, "emb_init_std": 0.03,
                    "emb_init_uniform_lim": 0.1},
}


def test_every_mpt_config_field_can_be_set_from_a_recipe(tmp_path):
    import dataclasses

    import yaml

    from mpt.model.fields import AttnFields, InitFields, ModelFields
    from mpt.presets import load_model_config
    from mpt.train.recipe import model_overrides

    assert set(NON_DEFAULT) == {f.name for f in dataclasses.fields(ModelFields)}
    assert set(NON_DEFAULT["attn_config"]) == {f.name for f in dataclasses.fields(AttnFields)}
    assert set(NON_DEFAULT["init_config"]) == {f.name for f in dataclasses.fields(InitFields)}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(tmp_path, tmp_path / "data")))
    overrides = []
    for key, value in NON_DEFAULT.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        overrides += [f"model.fields.{key}{'.' + k if k else ''}={yaml.safe_dump(v).strip()}" for k, v in items]
    recipe = load_recipe(str(path), overrides)
    base = load_model_config(recipe.model.preset)
    config = load_model_config(recipe.model.preset,  # as the training loop builds it
                               **model_overrides(recipe.model.fields, base.attn_config, base.init_config))
    for key, value in NON_DEFAULT.items():
        if key == "learned_pos_emb":  # MosaicML's rule: ALiBi off here, so it stays as set
            assert config.learned_pos_emb is True
        elif isinstance(value, dict):
            assert getattr(config, key) == value, key
        else:
            assert getattr(config, key) == value, key


@pytest.mark.parametrize("override,message", [
    ("model.fields.n_head=4", "unknown key `model.fields.n_head`; known keys in `model.fields`: d_model, n_heads"),
    ("model.fields.attn_config.attn_implementation=flex", "unknown key `model.fields.attn_config.attn_implementation`"),
    ("model.fields.attn_config.attn_impl=fast", "expected one of 'torch', 'flash', 'flex' or null"),
    ("model.fields.norm_type=rmsnorm", "expected one of 'low_precision_layernorm', 'layernorm' or null"),
    # values checked together with the preset's, as MPTConfig checks them, before any work
    ("model.fields.n_heads=7", "MPT config field `n_heads` = 7 is invalid: must divide d_model"),
    ("model.fields.attn_config.attn_pdrop=1.5", "`attn_config.attn_pdrop` = 1.5 is invalid"),
])
def test_a_bad_model_field_in_a_recipe_is_named(tmp_path, override, message):
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(tmp_path, tmp_path / "data")))
    with pytest.raises(ValueError) as err:
        load_recipe(str(path), [override])
    assert message in str(err.value)


def test_a_bad_recipe_is_refused_before_torch_is_imported(tmp_path):
    """`mpt train` checks the whole recipe, model fields included, before the loop's module loads torch."""
    import subprocess
    import sys
    import time

    code = ("import sys; from mpt.cli import main\n"
            "for bad in ('model.fields.n_heads=7', 'model.fields.d_modle=3', 'optimizer.lr=abc', "
            "'model.fields.attn_config.attn_impl=fast'):\n"
            "    assert main(['train', 'configs/train/mpt-tiny.yaml', bad]) == 2\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[2])
    took = time.monotonic() - start
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
    assert out.stderr.count("mpt train: error:") == 4, out.stderr
    print(f"four recipe errors in {took:.2f} s, torch never imported")
