"""msdn/device.py's memory budget for the resident feature array, and the Trainer's use of it.

The decision is tested on the CPU with fake memory readings: no GPU is needed to check that trials
packed on one device stay within it, and that a share too small falls back to host batches.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from msdn.device import (
    UNMANAGED_FEATURE_SHARE, copy_to_device, feature_budget_bytes, keep_features_on_device, step_reserve_bytes,
)

GiB = 2**30
H200 = 141 * GiB
CUB_FEATURES = 11788 * 196 * 2048 * 2  # the float16 cache, 9.4 GB


def cub_reserve() -> int:
    # MSDN at CUB shapes: V (312 x 300) and four 300 x 2048 matrices; batch 50, evaluation batch 500.
    return step_reserve_bytes(312 * 300 + 4 * 300 * 2048, 50, 500, 196, 2048, 312)


def test_reserve_counts_model_state_and_the_largest_batch():
    params = 1000
    small = step_reserve_bytes(params, 50, 500, 196, 2048, 312)
    assert small == step_reserve_bytes(params, 500, 50, 196, 2048, 312)  # the larger of the two batches counts
    assert step_reserve_bytes(2 * params, 50, 500, 196, 2048, 312) - small == 4 * params * 4
    assert 3 * GiB < cub_reserve() < 6 * GiB  # CUB: about 4 GB, mostly one 500-image evaluation batch


@pytest.mark.parametrize("share", [1.0, 0.5, 0.25, 0.125])
def test_packed_trials_starting_together_never_overcommit_the_device(share):
    """K trials of share 1/K each read the whole device free at their start; their budgets still fit."""
    k = round(1 / share)
    reserve = cub_reserve()
    budgets = [feature_budget_bytes(share, H200, H200, reserve) for _ in range(k)]
    assert sum(budgets) + k * reserve <= H200
    assert all(b == int(share * H200) - reserve for b in budgets)


def test_budget_never_exceeds_what_is_free_now():
    """Another process holding memory lowers the budget below the share."""
    assert feature_budget_bytes(0.5, H200, 20 * GiB, GiB) == 19 * GiB
    assert feature_budget_bytes(2.0, H200, H200, 0) == H200  # a share above 1 is the whole device


def test_budget_is_zero_when_the_reserve_does_not_fit():
    assert feature_budget_bytes(0.01, H200, H200, 10 * GiB) == 0


def test_without_a_share_half_the_free_memory_as_before():
    assert feature_budget_bytes(None, H200, 40 * GiB, cub_reserve()) == int(UNMANAGED_FEATURE_SHARE * 40 * GiB)


@pytest.mark.parametrize("share, resident", [(1.0, True), (0.25, True), (0.1, True), (0.05, False)])
def test_cub_features_stay_resident_down_to_a_small_share(share, resident):
    """On a 141 GB device, CUB's 9.4 GB cache fits a share of 0.1 (14 GB) but not 0.05 (7 GB)."""
    budget = feature_budget_bytes(share, H200, H200, cub_reserve())
    assert keep_features_on_device(CUB_FEATURES, budget) is resident


def test_keep_needs_a_positive_size_within_the_budget():
    assert keep_features_on_device(100, 100) and not keep_features_on_device(101, 100)
    assert not keep_features_on_device(0, 100)


def test_copy_to_device_in_chunks_keeps_values_and_dtype():
    array = np.arange(7 * 3 * 5, dtype=np.float16).reshape(7, 3, 5)
    out = copy_to_device(array, torch.device("cpu"), chunk_bytes=array[:2].nbytes)  # 4 chunks, the last short
    assert out.dtype == torch.float16 and torch.equal(out, torch.from_numpy(array))


# ----------------------------------------------------------------------------- the Trainer's decision
def _fake_trainer(share: float | None, n_images: int):
    """What Trainer._features_to_device reads, as a stand-in on a pretend CUDA device (CUB shapes)."""
    from msdn.config import default_config

    feats = np.lib.stride_tricks.as_strided(np.zeros(1, np.float16), (n_images, 196, 2048), (0, 0, 0))
    model = SimpleNamespace(parameters=lambda: [torch.empty(312, 300), *[torch.empty(300, 2048)] * 4])
    return SimpleNamespace(device=torch.device("cuda"), gpu_share=share, bench=SimpleNamespace(features=feats),
                           config=default_config("cub"), model=model,
                           split=SimpleNamespace(att=np.zeros((200, 312), np.float32)))


@pytest.mark.parametrize("share, free, resident", [
    (0.25, H200, True),  # a quarter of the device holds CUB
    (0.05, H200, False),  # too small a share: pinned host batches instead
    (0.5, 8 * GiB, False),  # the share is large, but what is free now is not
    (None, 40 * GiB, True),  # no share known: half the free memory, as before
    (None, 16 * GiB, False),
])
def test_trainer_follows_its_share_of_the_device(monkeypatch, share, free, resident):
    from msdn import train

    copies = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, H200))
    monkeypatch.setattr(train, "copy_to_device", lambda array, device: copies.append(array.shape) or "resident")
    fake = _fake_trainer(share, 11788)
    out = train.Trainer._features_to_device(fake)
    assert (out == "resident") is resident and len(copies) == int(resident)


def test_trainer_keeps_nothing_on_the_cpu(monkeypatch):
    from msdn import train

    fake = _fake_trainer(1.0, 10)
    fake.device = torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: pytest.fail("read GPU memory on the CPU"))
    assert train.Trainer._features_to_device(fake) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_batches_arrive_intact_on_the_gpu():
    from msdn.device import PinnedBatches

    stager = PinnedBatches((4, 8), 5, torch.float16, torch.device("cuda"))
    batches = [np.full((5 - i % 2, 4, 8), i, np.float16) for i in range(6)]
    outs = [stager.to_device(b) for b in batches]  # more batches than buffers: each is reused
    torch.cuda.synchronize()
    for b, out in zip(batches, outs):
        assert torch.equal(out.cpu(), torch.from_numpy(b))
