"""msdn/study/trainable.py: per-trial seeds that reproduce a study, and the trial's configuration.

These need no Ray: the trial's seed and config are plain functions of the study seed and the
values Optuna sampled.
"""
from __future__ import annotations

import pytest

from msdn.config import default_config
from msdn.study.trainable import trial_config, trial_seed

SAMPLED = {"lr": 3e-4, "lambda_dis": 0.01, "alpha": 0.8, "momentum": 0.9, "balanced_batches": True}


# ----------------------------------------------------------------------------- trial_seed
def test_same_study_seed_and_values_same_seed():
    assert trial_seed(0, dict(SAMPLED)) == trial_seed(0, dict(SAMPLED))


def test_seed_is_pinned_across_versions():
    """Resuming a study recomputes each trial's seed: a changed derivation would change its trials."""
    assert trial_seed(0, {"lr": 0.001, "momentum": 0.9}) == 324099420
    assert trial_seed(214, {}) == 1325136760


def test_independent_of_key_order():
    reordered = dict(reversed(list(SAMPLED.items())))
    assert list(reordered) != list(SAMPLED)
    assert trial_seed(7, reordered) == trial_seed(7, SAMPLED)


def test_differs_with_the_study_seed():
    seeds = {trial_seed(s, SAMPLED) for s in range(20)}
    assert len(seeds) == 20


@pytest.mark.parametrize("name, other", [
    ("lr", 3.0001e-4), ("lambda_dis", 0.02), ("alpha", 0.81), ("momentum", 0.0), ("balanced_batches", False),
])
def test_differs_with_any_sampled_value(name, other):
    assert trial_seed(0, {**SAMPLED, name: other}) != trial_seed(0, SAMPLED)


def test_differs_with_an_added_value():
    assert trial_seed(0, {**SAMPLED, "gamma": 2.0}) != trial_seed(0, SAMPLED)


def test_in_range_for_every_seeding_api():
    """torch.manual_seed and numpy accept it; [0, 2**31 - 1) also fits a signed 32-bit int."""
    for study_seed in range(50):
        for lr in (1e-5, 1e-4, 1e-3):
            seed = trial_seed(study_seed, {**SAMPLED, "lr": lr})
            assert type(seed) is int and 0 <= seed < 2**31 - 1


# ----------------------------------------------------------------------------- trial_config
def base() -> dict:
    """The study's fixed settings, as the runner passes them (a whole TrainConfig as a dict)."""
    return default_config("synthetic").replace(protocol="val", epochs=4, data_root="/data").to_dict()


def test_base_then_sampled_values_then_the_seed():
    cfg = trial_config(base(), {"lr": 3e-4, "alpha": 0.8}, seed=123)
    assert (cfg.lr, cfg.alpha, cfg.seed) == (3e-4, 0.8, 123)
    assert (cfg.protocol, cfg.epochs, cfg.data_root, cfg.lambda_cal) == ("val", 4, "/data", 0.1)  # from base


def test_the_given_seed_wins_over_base_and_sampled():
    cfg = trial_config({**base(), "seed": 1}, {"seed": 2}, seed=3)
    assert cfg.seed == 3


def test_sampled_values_are_coerced_to_the_field_types():
    cfg = trial_config(base(), {"epochs": 6.0, "momentum": "0.9", "balanced_batches": "true"}, seed=0)
    assert cfg.epochs == 6 and type(cfg.epochs) is int
    assert cfg.momentum == 0.9 and cfg.balanced_batches is True


def test_base_is_not_modified():
    b = base()
    trial_config(b, {"lr": 3e-4}, seed=0)
    assert b == base()


@pytest.mark.parametrize("sampled, expected", [
    ({"alpha": 1.5}, "alpha=1.5"),
    ({"lr": 0.0}, "lr=0.0 (expected > 0)"),
    ({"ce_over": "unseen"}, "ce_over='unseen'"),
    ({"epochs": 2.5}, "epochs: expected an integer, got 2.5"),
    ({"amp": "maybe"}, "amp: expected a boolean, got 'maybe'"),
])
def test_invalid_values_are_refused_with_the_field(sampled, expected):
    with pytest.raises(ValueError) as err:
        trial_config(base(), sampled, seed=0)
    assert expected in str(err.value)


# ----------------------------------------------------------------------------- checkpoint_due
@pytest.mark.parametrize("every, last, expected", [
    (1, 5, [1, 2, 3, 4, 5]),
    (3, 8, [3, 6, 8]),  # the last epoch always, so a finished trial has its final state
    (10, 4, [4]),
])
def test_checkpoint_every_n_epochs_and_the_last(every, last, expected):
    from msdn.study.trainable import checkpoint_due

    assert [e for e in range(1, last + 1) if checkpoint_due(e, last, every)] == expected


# ----------------------------------------------------------------------------- WorkerCache
def _data_files(root):
    """Small stand-ins for every file data_signature stats (their contents are never read here)."""
    from msdn.data import benchmark_paths

    paths = benchmark_paths("synthetic", root)
    for path in (paths.hdf5, paths.att_splits, paths.res101, paths.w2v_pkl):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return paths


@pytest.fixture
def counted_loads(monkeypatch):
    """load_benchmark and make_split replaced by counters that return fresh objects."""
    import msdn.data

    calls = {"load": 0, "split": []}

    def load(dataset, data_root, progress=None):
        calls["load"] += 1
        return object()

    def split(bench, protocol, val_fraction=0.2, seed=0):
        calls["split"].append((protocol, val_fraction, seed))
        return object()

    monkeypatch.setattr(msdn.data, "load_benchmark", load)
    monkeypatch.setattr(msdn.data, "make_split", split)
    return calls


def test_a_warm_worker_opens_the_data_once(tmp_path, counted_loads):
    from msdn.study.trainable import DataSpec, WorkerCache

    _data_files(tmp_path)
    cache, spec = WorkerCache(), DataSpec("synthetic", str(tmp_path))
    first = cache.open(spec, "val", 0.2, 0)
    again = cache.open(spec, "val", 0.2, 0)
    assert again[0] is first[0] and again[1] is first[1]
    assert counted_loads["load"] == 1 and counted_loads["split"] == [("val", 0.2, 0)]


def test_each_protocol_and_holdout_gets_its_own_split(tmp_path, counted_loads):
    from msdn.study.trainable import DataSpec, WorkerCache

    _data_files(tmp_path)
    cache, spec = WorkerCache(), DataSpec("synthetic", str(tmp_path))
    keys = [("val", 0.2, 0), ("paper", 0.2, 0), ("val", 0.3, 0), ("val", 0.2, 1)]
    benches = {cache.open(spec, *key)[0] for key in keys}
    assert len(benches) == 1 and counted_loads["load"] == 1
    assert len(counted_loads["split"]) == 4


@pytest.mark.parametrize("change", ["att_splits", "w2v_pkl", "hdf5", "cache", "removed"])
def test_a_changed_data_file_is_read_again(tmp_path, counted_loads, change):
    import os

    from msdn.data import cache_path
    from msdn.study.trainable import DataSpec, WorkerCache

    paths = _data_files(tmp_path)
    cache_file = cache_path(paths.hdf5, paths.cache_dir)
    cache_file.parent.mkdir(parents=True)
    cache_file.write_bytes(b"cache")
    cache, spec = WorkerCache(), DataSpec("synthetic", str(tmp_path))
    bench, split = cache.open(spec, "val", 0.2, 0)
    if change == "removed":
        paths.res101.unlink()
    elif change == "hdf5":
        paths.hdf5.write_bytes(b"a new, longer file")  # also a new cache name (keyed by the HDF5)
    else:
        target = cache_file if change == "cache" else getattr(paths, change)
        st = target.stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched: same size, newer
    again = cache.open(spec, "val", 0.2, 0)
    assert counted_loads["load"] == 2 and again[0] is not bench and again[1] is not split
    assert cache.open(spec, "val", 0.2, 0)[0] is again[0]  # and cached again from then on


def test_worker_cache_opens_the_real_benchmark(synthetic_root):
    from msdn.data import load_benchmark, make_split
    from msdn.study.trainable import DataSpec, WorkerCache

    bench, split = WorkerCache().open(DataSpec("synthetic", str(synthetic_root)), "val", 0.2, 0)
    expected = make_split(load_benchmark("synthetic", synthetic_root, progress=None), "val", val_fraction=0.2, seed=0)
    assert bench.features.shape[0] == len(bench.labels)
    assert (split.train_idx == expected.train_idx).all() and (split.eval_unseen_idx == expected.eval_unseen_idx).all()


def test_resident_features_follow_their_benchmark(tmp_path, counted_loads):
    from types import SimpleNamespace

    import torch

    from msdn.study.trainable import DataSpec, WorkerCache

    paths = _data_files(tmp_path)
    cache, spec = WorkerCache(), DataSpec("synthetic", str(tmp_path))
    bench, _ = cache.open(spec, "val", 0.2, 0)
    assert cache.resident_features(spec, bench, "cpu") is None
    features = object()
    cache.keep_resident(spec, bench, SimpleNamespace(features_on_device=features, device=torch.device("cpu")))
    assert cache.resident_features(spec, bench, "cpu") is features
    paths.att_splits.write_bytes(b"changed")
    reloaded, _ = cache.open(spec, "val", 0.2, 0)
    assert cache.resident_features(spec, reloaded, "cpu") is None  # made from the old files: dropped


# ----------------------------------------------------------------------------- timings
def test_result_timer_turns_stamps_into_durations():
    import time

    from msdn.study import timing

    timer = timing.ResultTimer()
    timer.setup()
    now = time.time()
    result = {timing.REPORTED_AT: now - 0.25, "H": 0.5}
    timer.on_trial_result(0, [], None, result)
    assert timing.REPORTED_AT not in result and 0.25 <= result[timing.TIME_TO_DRIVER] < 5
    # A process Ray started long before the study counts from the loop's start only.
    result = {timing.TIME_WORKER_START: 100.0, timing.WORKER_READY_AT: timer.loop_started_at + 2.0}
    timer.on_trial_result(0, [], None, result)
    assert result[timing.TIME_WORKER_START] == pytest.approx(2.0) and timing.WORKER_READY_AT not in result
    result = {timing.TIME_WORKER_START: 1.5, timing.WORKER_READY_AT: timer.loop_started_at + 2.0}
    timer.on_trial_result(0, [], None, result)
    assert result[timing.TIME_WORKER_START] == 1.5  # started during the loop: as measured


def test_process_start_time_is_in_the_past():
    import time

    from msdn.study.timing import process_start_time

    started = process_start_time()
    if started is None:
        pytest.skip("no /proc on this system")
    assert 0 < time.time() - started < 24 * 3600


def test_gpu_share_from_the_trial_resources():
    from types import SimpleNamespace

    from msdn.study.trainable import trial_gpu_share

    def context(resources):
        return SimpleNamespace(get_trial_resources=lambda: SimpleNamespace(required_resources=resources))

    assert trial_gpu_share(context({"CPU": 1.0, "GPU": 0.25})) == 0.25
    assert trial_gpu_share(context({"CPU": 1.0})) is None
    assert trial_gpu_share(SimpleNamespace()) is None  # not under Tune


def test_the_settings_grid_is_reported_where_the_study_metric_improves():
    """The trial reports the whole grid (for the heat map) at epochs that improve its metric, so its best has it."""
    import numpy as np

    from msdn.metrics import GridResult
    from msdn.study.trainable import GRID_MAP_KEYS, grid_lists, improves

    assert improves(0.5, None, "max") and improves(0.6, 0.5, "max") and not improves(0.5, 0.5, "max")
    assert improves(0.4, 0.5, "min") and not improves(float("nan"), None, "max") and not improves(None, 0.1, "max")
    h = np.array([[0.123456, 0.5], [0.25, 0.0]])
    grid = GridResult(alphas=np.array([0.5, 1.0]), gammas=np.array([0.0, 2.0]), seen=h, unseen=h, harmonic=h)
    lists = grid_lists(grid)
    assert list(lists) == list(GRID_MAP_KEYS)
    assert lists == {"curve_grid_alpha": [0.5, 1.0], "curve_grid_gamma": [0.0, 2.0],
                     "curve_grid_H": [[0.1235, 0.5], [0.25, 0.0]]}



def test_the_seen_unseen_curve_is_reported_thinned_as_lists():
    import numpy as np

    from msdn.metrics import seen_unseen_curve
    from msdn.study.trainable import SU_CURVE_KEYS, SU_CURVE_POINTS, seen_unseen_lists

    rng = np.random.default_rng(0)
    unseen = np.arange(10) >= 5
    labels = rng.integers(0, 5, 3000), rng.integers(5, 10, 3000)
    scores = [np.eye(10)[y] + rng.normal(scale=0.8, size=(3000, 10)) for y in labels]
    curve = seen_unseen_curve(scores[0], labels[0], scores[1], labels[1], unseen)
    assert curve.unseen_acc.size > SU_CURVE_POINTS  # enough states to be thinned
    lists = seen_unseen_lists(curve)
    assert list(lists) == list(SU_CURVE_KEYS) and all(isinstance(v, list) for v in lists.values())
    u, s = lists["curve_su_U"], lists["curve_su_S"]
    assert len(u) == len(s) <= SU_CURVE_POINTS and (u[0], s[-1]) == (0.0, 0.0)
    assert (u[-1], s[0]) == (round(curve.unseen_acc[-1], 5), round(curve.seen_acc[0], 5))
