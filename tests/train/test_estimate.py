"""The memory estimate of a recipe (for `mpt train --dry-run`), checked against the formulas by hand."""

from pathlib import Path

import pytest

from mpt.cli import main
from mpt.presets import load_model_config, model_info
from mpt.train import load_recipe
from mpt.train.estimate import GIB, estimate_memory, memory_lines

STORYWRITER = str(Path(__file__).resolve().parents[2] / "src" / "mpt" / "configs" / "train" / "mpt-7b-storywriter.yaml")


def test_the_65k_storywriter_recipe_is_valid_and_fits_80_gb_gpus(capsys):
    assert main(["train", STORYWRITER, "--dry-run"]) == 0
    assert "is valid" in capsys.readouterr().out
    recipe = load_recipe(STORYWRITER, [])
    e = estimate_memory(recipe, ranks=8)
    info = model_info(load_model_config("mpt-7b"))
    assert e.params == info.params and 6.5e9 < e.params < 6.8e9
    # fp32 weights + gradients + one Lion buffer, FSDP-sharded 8 ways: model-info's figure / 8
    assert e.state_gib == pytest.approx(info.train_state_gib_lion / 8)
    T, h, L = 65536, 4096, 32
    assert e.activations_gib == pytest.approx((L * T * h * 4 + 34 * T * h) / GIB)   # checkpointed inputs + one block
    assert e.attention_gib == 0 and e.loss_gib == pytest.approx(0.125)              # flex; the fused loss's chunk
    assert 40 < e.total_gib < 70                                                     # 8 x 80 GB, as MosaicML trained it
    lines = memory_lines(load_recipe(STORYWRITER, ["train.device=cuda"]), ranks=8)  # also where no CUDA is
    assert lines[0].startswith("memory estimate per GPU on 8 GPUs") and "65,536 tokens" in lines[0]
    assert f"total about {e.total_gib:,.1f} GiB" in lines[-1]


def test_what_the_recipe_settings_are_for():
    """Without activation checkpointing or with torch attention the 65k run cannot fit any GPU."""
    off = estimate_memory(load_recipe(STORYWRITER, ["train.activation_checkpointing=false"]), ranks=8)
    assert off.activations_gib == pytest.approx(32 * 34 * 65536 * 4096 / GIB) and off.total_gib > 200
    torch_attn = estimate_memory(load_recipe(STORYWRITER, ["model.fields.attn_config.attn_impl=torch"]), ranks=8)
    assert torch_attn.attention_gib == pytest.approx(2 * 32 * 65536 * 65536 * 4 / GIB)   # 1 TiB of scores
    one_gpu = estimate_memory(load_recipe(STORYWRITER, ["parallel.strategy=none"]), ranks=1)
    assert one_gpu.state_gib == pytest.approx(model_info(load_model_config("mpt-7b")).train_state_gib_lion)


def test_an_init_from_without_config_and_no_preset_is_named(tmp_path):
    recipe = load_recipe(STORYWRITER, ["model.preset=null", f"model.init_from={tmp_path / 'nothing'}"])
    with pytest.raises(ValueError, match=r"nothing' has no config.json yet and model.preset is null"):
        estimate_memory(recipe)


def test_a_dry_run_on_a_machine_without_cuda_estimates_for_the_cpu_process():
    """mpt-tiny on this CPU trains in one process: not "per GPU on 8 GPUs ... 0.00B parameters"."""
    import os

    import torch

    tiny = str(Path(STORYWRITER).with_name("mpt-tiny.yaml"))
    env = os.environ.pop("WORLD_SIZE", None)
    try:
        lines = memory_lines(load_recipe(tiny, ["train.device=cpu"]))
        assert lines[0].startswith("memory estimate per CPU process on 1 process(es)"), lines[0]
        assert "1.31M parameters" in lines[0] and "CUDA" not in "\n".join(lines)
        gpu = memory_lines(load_recipe(tiny, ["train.device=cuda"]))
        assert gpu[0].startswith("memory estimate per GPU on 8 GPUs")
        auto = memory_lines(load_recipe(tiny))
        assert ("per CPU process" in auto[0]) == (not torch.cuda.is_available())
    finally:
        if env is not None:
            os.environ["WORLD_SIZE"] = env
