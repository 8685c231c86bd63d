"""Update rules against hand computation, schedules, weight-decay groups."""

import math

import pytest
import torch

from mpt import MPTForCausalLM
from mpt.train.optim import DecoupledLion, decoupled_adamw, lr_multiplier, param_groups

from ..model.helpers import model_config as tiny_config


def test_lion_two_steps_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = DecoupledLion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.01)
    grads = [torch.tensor([0.3, -0.2, 0.0]), torch.tensor([-1.0, 0.1, 0.2])]
    w, m = [1.0, -2.0, 0.5], [0.0, 0.0, 0.0]
    for g in grads:
        p.grad = g.clone()
        opt.step()
        for i in range(3):
            w[i] *= 1 - 0.01 * 0.1 / 0.1          # decoupled decay at lr == initial lr
            c = 0.9 * m[i] + 0.1 * float(g[i])
            w[i] -= 0.1 * (math.copysign(1.0, c) if c != 0 else 0.0)
            m[i] = 0.99 * m[i] + 0.01 * float(g[i])
    assert p.tolist() == pytest.approx(w, abs=1e-7)
    assert opt.state[p]["exp_avg"].tolist() == pytest.approx(m, abs=1e-7)


def test_adamw_by_hand_with_decoupled_decay_scaled_by_lr_ratio():
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = decoupled_adamw([{"params": [p], "weight_decay": 0.1}], lr=0.01, betas=(0.9, 0.95), eps=1e-8)
    assert isinstance(opt, torch.optim.AdamW)  # torch's own kernels, not a Python loop
    w, m, v = [1.0, -1.0], [0.0, 0.0], [0.0, 0.0]
    for t, (g, lr) in enumerate([([0.5, -0.1], 0.01), ([0.2, 0.3], 0.005)], start=1):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor(g)
        opt.step()
        for i in range(2):
            w[i] *= 1 - 0.1 * lr / 0.01
            m[i] = 0.9 * m[i] + 0.1 * g[i]
            v[i] = 0.95 * v[i] + 0.05 * g[i] ** 2
            w[i] -= lr * (m[i] / (1 - 0.9**t)) / (math.sqrt(v[i] / (1 - 0.95**t)) + 1e-8)
    assert p.tolist() == pytest.approx(w, rel=1e-6)


def test_lion_keeps_one_buffer_adamw_two():
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    lion, adam = DecoupledLion([a]), decoupled_adamw([{"params": [b]}], lr=1e-4)
    a.grad, b.grad = torch.ones(4), torch.ones(4)
    lion.step()
    adam.step()
    assert [k for k, v in lion.state[a].items() if v.numel() == 4] == ["exp_avg"]
    assert sorted(k for k, v in adam.state[b].items() if v.numel() == 4) == ["exp_avg", "exp_avg_sq"]


def test_schedules():
    assert [lr_multiplier(s, 10, 2, "cosine", 0.1) for s in (0, 1)] == [0.5, 1.0]
    assert lr_multiplier(2, 10, 2, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_multiplier(6, 10, 2, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_multiplier(10, 10, 2, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_multiplier(6, 10, 2, "linear", 0.0) == pytest.approx(0.5)
    assert lr_multiplier(9, 10, 0, "constant", 0.1) == 1.0
    with pytest.raises(ValueError, match="allowed: cosine, linear, constant"):
        lr_multiplier(5, 10, 0, "exp", 0.1)


def test_weight_decay_excludes_norms_and_embeddings_by_default():
    model = MPTForCausalLM(tiny_config(no_bias=False))
    decay, rest = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert all(n.endswith(".weight") and ("Wqkv" in n or "proj" in n) for n in decayed)
    assert "transformer.wte.weight" not in decayed and not any("norm" in n for n in decayed)
    assert rest["weight_decay"] == 0.0
    everything = param_groups(model, 0.1, decay_norms=True, decay_embeddings=True)[0]["params"]
    assert {names[id(p)] for p in everything} >= {"transformer.wte.weight", "transformer.norm_f.weight"}
    model.transformer.wte.weight.requires_grad_(False)  # frozen (as LoRA's base weights are): no state kept
    assert not any(p is model.transformer.wte.weight for g in param_groups(model, 0.1) for p in g["params"])
