"""MPTConfig: validation naming the field, the tokenizer check, the JSON round trip."""

import pytest

from mpt import MPTConfig, MPTConfigError
from tests.tiny import tiny_config

from .helpers import MODEL_FIELDS


@pytest.mark.parametrize("overrides,field,value", [
    (dict(n_heads=5), "n_heads", "5"),
    (dict(attn_config={"attn_impl": "triton"}), "attn_config.attn_impl", "'triton'"),
    (dict(attn_config={"attn_typo": 1}), "attn_config.attn_typo", "1"),
    (dict(norm_type="rmsnorm"), "norm_type", "'rmsnorm'"),
    (dict(d_model=0), "d_model", "0"),
    (dict(logit_scale=-1.0), "logit_scale", "-1.0"),
    (dict(attn_config={"clip_qkv": -2}), "attn_config.clip_qkv", "-2"),
    (dict(init_config={"name": "xavier"}), "init_config.name", "'xavier'"),
    (dict(attn_config={"attn_type": "multiquery_attention"}), "attn_config.attn_type", "'multiquery_attention'"),
])
def test_bad_config_names_field_value_and_allowed(overrides, field, value):
    with pytest.raises(MPTConfigError) as err:
        tiny_config(**(MODEL_FIELDS | overrides))
    msg = str(err.value)
    assert f"`{field}`" in msg and value in msg


def test_unknown_attn_impl_lists_allowed_values():
    with pytest.raises(MPTConfigError, match="allowed: torch, flash, flex"):
        tiny_config(**MODEL_FIELDS, attn_config={"attn_impl": "xformers"})


@pytest.mark.skipif(__import__("importlib").util.find_spec("flash_attn") is not None, reason="flash-attn installed")
def test_flash_without_flash_attn_is_an_error_before_any_weight():
    with pytest.raises(MPTConfigError, match="flash-attn is not installed"):
        MPTConfig(d_model=4096, n_heads=32, n_layers=32, attn_config={"attn_impl": "flash"})


def test_vocab_smaller_than_tokenizer_is_an_error():
    cfg = tiny_config(**(MODEL_FIELDS | {"vocab_size": 50000}))
    with pytest.raises(MPTConfigError, match="`vocab_size` = 50000.*50277.*50304"):
        cfg.check_tokenizer(50277)
    tiny_config(**(MODEL_FIELDS | {"vocab_size": 50432})).check_tokenizer(50277)


def test_config_round_trips_through_json(tmp_path):
    cfg = tiny_config(**MODEL_FIELDS, attn_config={"clip_qkv": 1.5, "alibi_bias_max": 4}, init_config={"init_std": 0.01})
    cfg.save_pretrained(tmp_path)
    back = MPTConfig.from_pretrained(tmp_path)
    assert back.attn_config == cfg.attn_config and back.init_config == cfg.init_config
    assert back.to_dict()["attn_config"]["attn_pdrop"] == 0  # int, as transformers' strict config wants


def test_config_flag_must_be_a_boolean():
    with pytest.raises(ValueError, match="attn_config.attn_uses_sequence_id` = 'yes'"):
        tiny_config(**MODEL_FIELDS, attn_config={"attn_uses_sequence_id": "yes"})
