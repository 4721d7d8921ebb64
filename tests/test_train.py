"""The trainer: learning on the synthetic benchmark, exact resume, CLI and configuration."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from msdn.config import default_config, overrides_from_yaml
from msdn.data import load_benchmark, make_split
from msdn.train import Trainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic(synthetic_root):
    """The session's synthetic data root and its opened benchmark (the cache is already built)."""
    return synthetic_root, load_benchmark("synthetic", synthetic_root, progress=None)


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_training_learns_and_beats_chance(synthetic):
    root, bench = synthetic
    split = make_split(bench, "paper")
    trainer = Trainer(default_config("synthetic", data_root=str(root), epochs=4), bench, split, progress=None)
    history = list(trainer.run())
    assert [m["epoch"] for m in history] == [1, 2, 3, 4]
    last = history[-1]
    chance = 1 / len(split.class_ids)
    assert last["U"] > 5 * chance and last["H"] > 5 * chance
    assert history[-1]["loss"] < history[0]["loss"]
    for key in ("S", "U", "H", "zsl_acc", "AUSUC", "H_grid", "S_grid", "U_grid"):
        assert 0.0 <= last[key] <= 1.0
    # no study grid: the grid is the configured alpha x the gamma sweep, which holds gamma=2, so its best is at
    # least as good, and the calibration curve is its row
    assert last["grid_alpha"] == 0.9 and last["H_grid"] >= last["H"] - 1e-12
    curve = trainer.last_result.curve
    assert curve.gammas.tolist() == trainer.config.gamma_grid().tolist()
    assert last["H_grid"] == curve.harmonic.max() and last["grid_gamma"] == curve.gammas[curve.harmonic.argmax()]
    assert not [k for k in last if "best" in k]


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_resume_gives_the_uninterrupted_result(synthetic, tmp_path):
    root, bench = synthetic
    split = make_split(bench, "val", seed=0)
    cfg = default_config("synthetic", data_root=str(root), epochs=3, protocol="val", balanced_batches=True)
    straight = Trainer(cfg, bench, split, progress=None)
    full = list(straight.run())

    first = Trainer(cfg, bench, split, progress=None)
    next(iter(first.run()))
    first.save(tmp_path / "ckpt.pt")
    resumed = Trainer(cfg, bench, split, progress=None)
    resumed.load(tmp_path / "ckpt.pt")
    assert resumed.epoch == 1
    rest = list(resumed.run())
    assert len(rest) == 2
    for a, b in zip(full[1:], rest):
        for key in ("loss", "S", "U", "H", "zsl_acc", "AUSUC", "H_grid", "grid_gamma"):
            assert a[key] == b[key], key
    for name, p in straight.model.state_dict().items():
        torch.testing.assert_close(p, resumed.model.state_dict()[name], rtol=0, atol=0)
    assert [m["epoch"] for m in resumed.history] == [1, 2, 3]


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_same_seed_same_run_different_seed_different_run(synthetic):
    root, bench = synthetic
    split = make_split(bench, "paper")
    cfg = default_config("synthetic", data_root=str(root), epochs=1)
    a = Trainer(cfg, bench, split, progress=None).run_epoch()
    b = Trainer(cfg, bench, split, progress=None).run_epoch()
    c = Trainer(cfg.replace(seed=7), bench, split, progress=None).run_epoch()
    assert a["loss"] == b["loss"] and a["H"] == b["H"]
    assert a["loss"] != c["loss"]


def test_seen_only_cross_entropy_and_lr_factor_are_used(synthetic):
    root, bench = synthetic
    split = make_split(bench, "paper")
    cfg = default_config("synthetic", data_root=str(root), epochs=1, ce_over="seen", lr_v_factor=0.0 + 1e-12)
    trainer = Trainer(cfg, bench, split, progress=None)
    v_before = trainer.model.V.detach().clone()
    trainer.run_epoch()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.lr * 1e-12)
    assert torch.allclose(trainer.model.V, v_before, atol=1e-6)  # V barely moves at a ~0 learning rate


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_cli_json_output_and_overrides(synthetic, tmp_path):
    root, _ = synthetic
    yaml_file = tmp_path / "cfg.yaml"
    yaml_file.write_text("lambda_dis: 0.01\nepochs: 5\nalpha: 0.8\n")
    out = subprocess.run(
        [sys.executable, "-m", "msdn.train", "--dataset", "synthetic", "--data-root", str(root), "--config",
         str(yaml_file), "--epochs", "2", "--json", "--checkpoint", str(tmp_path / "run.pt")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]  # the flag beat the YAML's epochs: 5
    for key in ("epoch", "loss", "S", "U", "H", "zsl_acc", "AUSUC", "H_grid", "S_grid", "U_grid", "grid_alpha",
                "grid_gamma"):
        assert key in lines[-1]
    assert lines[-1]["grid_alpha"] == 0.8  # the configured alpha: no study grid here
    state = torch.load(tmp_path / "run.pt", weights_only=True)
    assert state["config"]["lambda_dis"] == 0.01 and state["config"]["alpha"] == 0.8 and state["epoch"] == 2
    # resume continues at epoch 3
    out = subprocess.run(
        [sys.executable, "-m", "msdn.train", "--dataset", "synthetic", "--data-root", str(root), "--epochs", "3",
         "--json", "--checkpoint", str(tmp_path / "run.pt"), "--resume"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["epoch"] for line in out.stdout.strip().splitlines()] == [3]
    # and the checkpoint evaluates with msdn.evaluate
    out = subprocess.run(
        [sys.executable, "-m", "msdn.evaluate", "--dataset", "synthetic", "--data-root", str(root),
         "--checkpoint", str(tmp_path / "run.pt"), "--json"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result) >= {"S", "U", "H", "zsl_acc", "AUSUC"} and 0 <= result["H"] <= 1 and 0 < result["AUSUC"] < 1


def test_the_epoch_line_gives_every_figure():
    from msdn.train import format_epoch

    m = {"epoch": 3, "loss": 1.5, "loss_ce": 1.0, "loss_cal": 0.25, "loss_dis": 0.125, "S": 0.6, "U": 0.5, "H": 0.545,
         "zsl_acc": 0.7, "AUSUC": 0.4321, "gamma": 2.0, "grid_alpha": 0.9, "grid_gamma": 1.5, "H_grid": 0.6,
         "epoch_time": 1.25}
    assert format_epoch(m, 5) == ("epoch   3/5 | loss 1.5000 (ce 1.0000 cal 0.2500 dis 0.1250) | S 0.6000 U 0.5000 "
                                  "H 0.5450 ZSL 0.7000 @gamma 2.00 | AUSUC 0.4321 | grid alpha 0.90 gamma 1.50: "
                                  "H 0.6000 | 1.2s")


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_bad_configuration_is_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lambda_dis: 0.01\nlearning_rate: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown keys \['learning_rate'\]"):
        overrides_from_yaml(bad)
    with pytest.raises(ValueError, match="alpha=1.5"):
        default_config("cub", alpha=1.5)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        default_config("imagenet")
    out = subprocess.run([sys.executable, "-m", "msdn.train", "--dataset", "cub", "--data-root", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2
    assert "feature_map_ResNet_101_CUB.hdf5" in out.stderr and "synthetic" in out.stderr


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_bf16_autocast_step_runs_on_cpu(synthetic):
    root, bench = synthetic
    split = make_split(bench, "paper")
    cfg = default_config("synthetic", data_root=str(root), epochs=1, amp=True)
    trainer = Trainer(cfg, bench, split, progress=None)
    metrics = trainer.run_epoch()
    assert np.isfinite(metrics["loss"]) and metrics["U"] > 1 / len(split.class_ids)
