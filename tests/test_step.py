"""msdn/step.py: the one training step and optimiser, used by the Trainer and by the benchmark alike."""
from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import torch

from msdn import step
from msdn.config import default_config
from msdn.data import load_benchmark, make_split
from msdn.model import MSDN
from msdn.train import Trainer

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step.py"


def make_model(seed: int = 0) -> MSDN:
    g = torch.Generator().manual_seed(seed)
    model = MSDN(torch.randn(6, 5, generator=g), torch.rand(4, 6, generator=g),
                 torch.tensor([True, True, True, False]), 8, generator=g)
    with torch.no_grad():  # the authors' init zeroes three matrices; random ones give every one a gradient
        for p in (model.W_2, model.W_1_1, model.W_2_1):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(5, 9, 8, generator=g).half(), torch.tensor([0, 1, 2, 0, 1])


def test_optimizer_groups_and_hyperparameters():
    cfg = default_config("awa2", lr_v_factor=0.5, rms_alpha=0.95, rms_eps=1e-6)
    model = make_model()
    opt = step.build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.RMSprop)
    v_group, w_group = opt.param_groups
    assert v_group["params"] == [model.V] and v_group["lr"] == cfg.lr * 0.5
    assert w_group["params"] == [model.W_1, model.W_2, model.W_1_1, model.W_2_1] and w_group["lr"] == cfg.lr
    for group in opt.param_groups:
        assert (group["alpha"], group["eps"], group["weight_decay"], group["momentum"]) == (0.95, 1e-6, 1e-4, 0.0)
    # every trainable parameter is stepped, once: a parameter added to the model cannot be forgotten here
    stepped = [p for g in opt.param_groups for p in g["params"]]
    assert sorted(map(id, stepped)) == sorted(id(p) for p in model.parameters())


def test_step_moves_every_parameter_and_returns_the_weighted_loss():
    cfg = default_config("cub")
    model = make_model()
    model.eval()
    before = copy.deepcopy(model.state_dict())
    opt = step.build_optimizer(model, cfg)
    features, labels = batch()
    terms = step.train_step(model, opt, features, labels, cfg)
    assert model.training
    for name, p in model.named_parameters():
        assert p.grad is not None and not torch.equal(p, before[name]), name
    expected = terms.ce + cfg.lambda_cal * terms.cal + cfg.lambda_dis * terms.dis
    torch.testing.assert_close(terms.total, expected)
    assert torch.isfinite(terms.total)


def test_amp_runs_the_forward_in_bf16_and_changes_the_result():
    features, labels = batch()
    totals = []
    for amp in (False, True):
        cfg = default_config("cub", amp=amp)
        model = make_model()
        totals.append(step.train_step(model, step.build_optimizer(model, cfg), features, labels, cfg).total.item())
    assert totals[0] != totals[1] and abs(totals[0] - totals[1]) < 0.05 * abs(totals[0])


def test_trainer_takes_exactly_this_step(synthetic_root):
    bench = load_benchmark("synthetic", synthetic_root, progress=None)
    cfg = default_config("synthetic", data_root=str(synthetic_root), epochs=1, lambda_dis=0.01)
    trainer = Trainer(cfg, bench, make_split(bench, "paper"), progress=None)
    model = copy.deepcopy(trainer.model)
    opt = step.build_optimizer(model, cfg)
    for _ in range(3):
        idx = trainer.sample_batch()
        features = trainer.batch_features(idx)
        labels = trainer.labels[torch.as_tensor(idx)]
        ours = step.train_step(model, opt, features, labels, cfg)
        theirs = trainer.train_step(idx)
        assert torch.equal(ours.total, theirs.total)
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, dict(model.named_parameters())[name]), name


def test_benchmark_times_the_same_functions(monkeypatch):
    """The benchmark once carried its own copy of the step; it must call msdn.step's."""
    spec = importlib.util.spec_from_file_location("bench_step", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_step", bench)  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    assert bench.train_step is step.train_step and bench.build_optimizer is step.build_optimizer
    assert bench.mode_config("bf16-autocast").amp and not bench.mode_config("float32").amp
