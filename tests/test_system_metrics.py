"""System metrics sampled in a trial's own process (msdn/study/system_metrics.py), under MLflow's own names."""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from msdn.study.system_metrics import SystemSampler, visible_gpu_handles

# MLflow 3.17's names (mlflow/system_metrics/metrics/cpu_monitor.py), which its UI groups in the System metrics tab
MLFLOW_CPU_NAMES = {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                    "system/system_memory_usage_percentage"}


def test_mlflow_names_are_mlflows_own():
    psutil = pytest.importorskip("psutil")
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor

    monitor = CPUMonitor()
    monitor.collect_metrics()
    assert {f"system/{k}" for k in monitor.aggregate_metrics()} == MLFLOW_CPU_NAMES
    assert psutil.cpu_count() >= 1


def test_a_take_gives_the_figures_since_the_last_one():
    pytest.importorskip("psutil")
    sampler = SystemSampler()
    sampler.reset()
    began, end = time.monotonic(), time.process_time() + 0.4
    while time.process_time() < end:  # this process keeps a core busy for 0.4 s of CPU time
        pass
    busy = sampler.take()
    share = 0.4 / (time.monotonic() - began) * 100  # its CPU share, less than 100 % when other processes ran too
    time.sleep(0.4)  # and then idles
    idle = sampler.take()
    assert MLFLOW_CPU_NAMES | {"system/process_cpu_utilization_percentage",
                               "system/process_memory_rss_megabytes"} <= set(busy)
    assert busy["system/process_cpu_utilization_percentage"] == pytest.approx(share, abs=15)
    assert idle["system/process_cpu_utilization_percentage"] < 10
    assert 0 <= busy["system/cpu_utilization_percentage"] <= 100 and busy["system/process_memory_rss_megabytes"] > 10
    if not sampler.gpus:  # no NVIDIA GPU here (or no nvidia-ml-py): no GPU figures, nothing else missing
        assert not [k for k in busy if k.startswith("system/gpu_")]


class FakeNVML:
    """NVML's handle lookups, for the parsing of CUDA_VISIBLE_DEVICES (three GPUs)."""

    uuids = {"GPU-aaa": 0, "GPU-bbb": 1, "GPU-ccc": 2}

    def nvmlDeviceGetCount(self):
        return 3

    def nvmlDeviceGetHandleByIndex(self, index):
        return SimpleNamespace(index=index)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return SimpleNamespace(index=self.uuids[uuid])

    def nvmlDeviceGetIndex(self, handle):
        return handle.index


@pytest.mark.parametrize("visible, expected", [(None, [0, 1, 2]), ("2", [2]), ("1,2", [1, 2]), ("", []),
                                               ("GPU-ccc,GPU-aaa", [2, 0]), ("-1", [])])
def test_the_gpus_sampled_are_those_the_process_may_use(monkeypatch, visible, expected):
    """Ray sets CUDA_VISIBLE_DEVICES to a trial's GPUs (empty for a CPU trial): GPU i is named by its NVML index."""
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert list(visible_gpu_handles(FakeNVML())) == expected
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == visible
