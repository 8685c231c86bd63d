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
