"""Hugging Face checkpoints: ours against transformers' own MptForCausalLM on the same files, in both
directions, and MosaicML's original layout (mosaicml/mpt-7b), built from the published config."""

import json
import time
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, MptConfig, MptForCausalLM

from mpt import MPTConfig, MPTForCausalLM
from mpt.model.hf import save_pretrained
from tests.tiny import tiny_config, tiny_model

from .helpers import MODEL_FIELDS

PARITY_CONFIGS = {
    "odd-heads": dict(n_heads=6),
    "twelve-heads": dict(d_model=96, n_heads=12),
    "clip-qkv": dict(attn_config={"clip_qkv": 0.5}),
    "softmax-scale": dict(attn_config={"softmax_scale": 0.5}),
    "untied": dict(tie_word_embeddings=False),
    "layernorm-fp32": dict(norm_type="layernorm"),
    # a packing-trained model: the flag only matters when sequence_id is passed, so no warning
    "sequence-id": dict(attn_config={"attn_uses_sequence_id": True}),
}


def _ids(cfg, B=2, T=20, seed=0):
    return torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", PARITY_CONFIGS)
def test_ours_loads_in_plain_transformers_with_same_logits(tmp_path, name):
    torch.manual_seed(0)
    cfg = tiny_config(**(MODEL_FIELDS | PARITY_CONFIGS[name]))
    ours = MPTForCausalLM(cfg).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing in these configs should warn
        save_pretrained(ours, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "mpt" and "auto_map" not in saved
    assert saved["architectures"] == ["MptForCausalLM"]  # the class tools like `transformers serve` look up
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(theirs) is MptForCausalLM
    ids = _ids(cfg)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding in the second row
    with torch.no_grad():
        assert (ours(ids).logits - theirs(ids).logits).abs().max() <= 1e-4
        diff = (ours(ids, attention_mask=mask).logits - theirs(ids, attention_mask=mask).logits).abs()
        assert diff[mask.bool()].max() <= 1e-4


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("n_heads", [4, 6])
def test_we_load_transformers_checkpoints_with_same_logits(tmp_path, tied, n_heads):
    torch.manual_seed(1)
    hf_cfg = MptConfig(d_model=48, n_heads=n_heads, n_layers=2, max_seq_len=32, vocab_size=97,
                       tie_word_embeddings=tied, attn_config={"clip_qkv": 2.0})
    theirs = MptForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # transformers initialises norms to ones; make them matter
        for name, p in theirs.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    theirs.save_pretrained(tmp_path)
    ours = MPTForCausalLM.from_pretrained(tmp_path).eval()
    assert ours.config.tie_word_embeddings == tied
    assert (ours.lm_head is None) == tied
    ids = _ids(ours.config)
    with torch.no_grad():
        assert (ours(ids).logits - theirs(ids).logits).abs().max() <= 1e-4


def test_round_trip_ours_transformers_ours(tmp_path):
    torch.manual_seed(2)
    cfg = tiny_config(**MODEL_FIELDS, tie_word_embeddings=False)
    ours = MPTForCausalLM(cfg).eval()
    save_pretrained(ours, tmp_path / "a")
    AutoModelForCausalLM.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b")
    back = MPTForCausalLM.from_pretrained(tmp_path / "b").eval()
    for (n1, p1), (n2, p2) in zip(ours.state_dict().items(), back.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)


@pytest.mark.parametrize("overrides,field", [
    (dict(attn_config={"qk_ln": True}), "attn_config.qk_ln"),
    (dict(logit_scale=0.5), "logit_scale"),
    (dict(learned_pos_emb=True, attn_config={"alibi": False}), "learned_pos_emb"),
    (dict(attn_config={"alibi_bias_max": 16}), "attn_config.alibi_bias_max"),
    (dict(expansion_ratio=2), "expansion_ratio"),
])
def test_export_warns_for_fields_transformers_ignores(tmp_path, overrides, field):
    ours = tiny_model(3, **MODEL_FIELDS, **overrides)
    with pytest.warns(UserWarning, match=f"`{field}`"):
        save_pretrained(ours, tmp_path)
    # The export is still written, and transformers really does compute something else.
    back = MPTForCausalLM.from_pretrained(tmp_path).eval()
    ids = _ids(ours.config)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, ours(ids).logits)
    if field == "expansion_ratio":  # transformers cannot even build the FFN with the saved shapes
        with pytest.raises(Exception, match="(?i)size|shape"):
            AutoModelForCausalLM.from_pretrained(tmp_path)
        return
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert (theirs(ids).logits - ours(ids).logits).abs().max() > 1e-3


def _published(shared):
    return json.loads((shared / "data/reference/mpt-7b/config.json").read_text())


def test_published_7b_config_builds_exactly_the_published_tensors(shared):
    cfg = MPTConfig(**_published(shared))
    assert cfg.learned_pos_emb is False  # ALiBi on: MosaicML's code drops position embeddings
    start = time.perf_counter()
    with torch.device("meta"):
        model = MPTForCausalLM(cfg)
    assert time.perf_counter() - start < 5  # no real allocation or initialisation on meta
    expected = {"transformer.wte.weight": (50432, 4096), "transformer.norm_f.weight": (4096,)}
    for n in range(32):
        b = f"transformer.blocks.{n}."
        expected |= {b + "norm_1.weight": (4096,), b + "attn.Wqkv.weight": (12288, 4096),
                     b + "attn.out_proj.weight": (4096, 4096), b + "norm_2.weight": (4096,),
                     b + "ffn.up_proj.weight": (16384, 4096), b + "ffn.down_proj.weight": (4096, 16384)}
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == 6_649_286_656


def _write_mosaicml_fixture(shared, folder, seed=0):
    """The published config shrunk to a tiny size, weights in bf16 as two .bin shards + index."""
    fields = _published(shared) | {"d_model": 64, "n_heads": 4, "n_layers": 3, "vocab_size": 256,
                                   "max_seq_len": 32}
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(fields, indent=2))
    torch.manual_seed(seed)
    d, f = 64, 256
    tensors = {"transformer.wte.weight": torch.randn(256, d) * 0.3, "transformer.norm_f.weight": 1 + 0.2 * torch.randn(d)}
    for n in range(3):
        b = f"transformer.blocks.{n}."
        tensors |= {b + "norm_1.weight": 1 + 0.2 * torch.randn(d), b + "attn.Wqkv.weight": torch.randn(3 * d, d) * 0.15,
                    b + "attn.out_proj.weight": torch.randn(d, d) * 0.1, b + "norm_2.weight": 1 + 0.2 * torch.randn(d),
                    b + "ffn.up_proj.weight": torch.randn(f, d) * 0.1, b + "ffn.down_proj.weight": torch.randn(d, f) * 0.05}
    tensors = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    names = sorted(tensors)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    weight_map = {}
    for shard, keys in shards.items():
        torch.save({k: tensors[k] for k in keys}, folder / shard)
        weight_map |= {k: shard for k in keys}
    index = {"metadata": {"total_size": sum(t.numel() * 2 for t in tensors.values())}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return tensors


def test_mosaicml_layout_loads_with_the_same_logits_as_transformers(shared, tmp_path):
    tensors = _write_mosaicml_fixture(shared, tmp_path / "mpt")
    ours = MPTForCausalLM.from_pretrained(tmp_path / "mpt", dtype=torch.float32).eval()
    theirs = MptForCausalLM.from_pretrained(tmp_path / "mpt", dtype=torch.float32).eval()
    assert torch.equal(ours.transformer.wte.weight, tensors["transformer.wte.weight"].float())
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(ids).logits, theirs(ids).logits
    assert a.abs().max() > 1  # a real signal, not a degenerate model
    assert (a - b).abs().max() <= 1e-4


def test_convert_mosaicml_layout_for_plain_transformers(shared, tmp_path):
    from transformers import AutoModelForCausalLM

    from mpt.cli import main

    _write_mosaicml_fixture(shared, tmp_path / "mpt")
    assert main(["convert", str(tmp_path / "mpt"), str(tmp_path / "hf"), "--dtype", "float32"]) == 0
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "auto_map" not in saved and saved["model_type"] == "mpt"
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    original = MptForCausalLM.from_pretrained(tmp_path / "mpt", dtype=torch.float32).eval()
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        assert (converted(ids).logits - original(ids).logits).abs().max() <= 1e-5


def test_attn_impl_override_reads_a_checkpoint_saved_with_another_backend(shared, tmp_path):
    from mpt import MPTConfigError
    from mpt.model.hf import load_pretrained

    _write_mosaicml_fixture(shared, tmp_path / "mpt")
    cfg_path = tmp_path / "mpt" / "config.json"
    fields = json.loads(cfg_path.read_text())
    fields["attn_config"]["attn_impl"] = "triton"  # as some of MosaicML's configs say
    cfg_path.write_text(json.dumps(fields))
    with pytest.raises(MPTConfigError, match="attn_impl='torch'"):
        MPTForCausalLM.from_pretrained(tmp_path / "mpt")
    model = load_pretrained(tmp_path / "mpt", attn_impl="torch")
    assert model.config.attn_config["attn_impl"] == "torch"
