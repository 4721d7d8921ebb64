"""System metrics of a trial or a refit, sampled in its own process on the node that runs it.

MLflow's own monitor (`start_run(log_system_metrics=True)`) samples the machine of the process that holds
the run: for a study that is the Ray driver, not the nodes where trials train. So each trial samples itself
and reports the figures with its results, under MLflow's own names (mlflow/system_metrics/metrics, MLflow
3.17), which the MLflow callback logs like any metric and the run page's System metrics tab groups:

    system/cpu_utilization_percentage        the node's CPU use since the last report (psutil, all cores)
    system/system_memory_usage_megabytes     the node's memory in use (and ..._percentage)
    system/gpu_<i>_utilization_percentage    GPU i's utilisation, averaged over the samples since the last report
    system/gpu_<i>_memory_usage_megabytes    GPU i's memory in use, every process's (and ..._percentage)
    system/gpu_<i>_power_usage_watts         GPU i's power draw (and ..._percentage of its limit)

and, for the process itself (the node's figures also count whatever else runs there, e.g. other trials):

    system/process_cpu_utilization_percentage   this process's CPU use (100 = one core busy)
    system/process_memory_rss_megabytes         this process's resident memory

GPU i is the NVML index of a GPU this process may use (`CUDA_VISIBLE_DEVICES`, which Ray sets to the trial's
GPUs: the ids of the run's `placement.gpu_ids` tag). GPUs are read through NVML (the `nvidia-ml-py` package);
without it, or without an NVIDIA driver, the GPU figures are left out. Without psutil nothing is sampled.
Megabytes are 10^6 bytes, as MLflow's.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any

PREFIX = "system/"  # MLflow's prefix of system metrics (SystemMetricsMonitor._metrics_prefix)
GPU_INTERVAL_S = 0.5  # how often GPU utilisation is sampled between two reports
MB = 1e6


def visible_gpu_handles(nvml) -> dict[int, Any]:
    """NVML index -> handle of each GPU this process may use: those CUDA_VISIBLE_DEVICES names (indices or UUIDs),
    every GPU when it is unset."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return {i: nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())}
    handles = {}
    for name in (part.strip() for part in visible.split(",")):
        if not name or name == "-1":
            continue
        handle = (nvml.nvmlDeviceGetHandleByUUID(name) if name.startswith(("GPU-", "MIG-"))
                  else nvml.nvmlDeviceGetHandleByIndex(int(name)))
        handles[int(nvml.nvmlDeviceGetIndex(handle))] = handle
    return handles


class SystemSampler:
    """Samples this process's node between two `take()`s; `take()` returns the figures since the previous one.

    CPU use comes from psutil's counters since the previous take (exact over the interval, no thread); memory is
    read at the take; GPU utilisation is averaged over samples a daemon thread takes every GPU_INTERVAL_S (only
    when there are GPUs to read). One per process: `sampler()`.
    """

    def __init__(self, gpu_interval_s: float = GPU_INTERVAL_S) -> None:
        try:
            import psutil
        except ImportError:  # a dependency of msdn-tune; an install without it reports no system metrics
            psutil = None
        self._psutil = psutil
        self._process = psutil.Process() if psutil else None
        self._nvml, self._gpus = _open_nvml()
        self._lock = threading.Lock()
        self._gpu_util: dict[int, list[float]] = {i: [] for i in self._gpus}
        self.reset()
        if self._gpus:
            threading.Thread(target=self._sample_gpus, args=(gpu_interval_s,), name="system-metrics",
                             daemon=True).start()

    @property
    def gpus(self) -> list[int]:
        return sorted(self._gpus)

    def reset(self) -> None:
        """Start a new interval now (a trial's start: the process may have run another trial before)."""
        if self._psutil:
            self._psutil.cpu_percent()
            self._process.cpu_percent()
        with self._lock:
            for samples in self._gpu_util.values():
                samples.clear()

    def take(self) -> dict[str, float]:
        """The figures since the previous take (or reset), keyed by MLflow's system metric names; then a new
        interval begins."""
        metrics: dict[str, float] = {}
        if self._psutil:
            memory = self._psutil.virtual_memory()
            metrics.update({
                "cpu_utilization_percentage": self._psutil.cpu_percent(),
                "system_memory_usage_megabytes": memory.used / MB,
                "system_memory_usage_percentage": memory.used / memory.total * 100,
                "process_cpu_utilization_percentage": self._process.cpu_percent(),
                "process_memory_rss_megabytes": self._process.memory_info().rss / MB,
            })
        if self._gpus:
            with self._lock:
                samples = {i: list(values) for i, values in self._gpu_util.items()}
                for values in self._gpu_util.values():
                    values.clear()
            for index, handle in self._gpus.items():
                metrics.update(self._gpu_figures(index, handle, samples[index]))
        return {PREFIX + key: round(float(value), 2) for key, value in metrics.items()}

    def _gpu_figures(self, index: int, handle, utilisation: list[float]) -> dict[str, float]:
        """GPU `index`'s figures: its utilisation averaged over `utilisation` and one reading now; memory and
        power now. A figure NVML cannot give (e.g. power on some boards) is left out."""
        nvml, out, name = self._nvml, {}, f"gpu_{index}_"
        try:
            utilisation = [*utilisation, float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)]
            out[name + "utilization_percentage"] = sum(utilisation) / len(utilisation)
        except nvml.NVMLError:
            pass
        try:
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            out[name + "memory_usage_megabytes"] = memory.used / MB
            out[name + "memory_usage_percentage"] = memory.used / memory.total * 100
        except nvml.NVMLError:
            pass
        try:
            watts = nvml.nvmlDeviceGetPowerUsage(handle) / 1000
            out[name + "power_usage_watts"] = watts
            out[name + "power_usage_percentage"] = watts * 1000 / nvml.nvmlDeviceGetEnforcedPowerLimit(handle) * 100
        except nvml.NVMLError:
            pass
        return out

    def _sample_gpus(self, interval: float) -> None:
        while True:
            time.sleep(interval)
            for index, handle in self._gpus.items():
                try:
                    value = float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except self._nvml.NVMLError:
                    continue
                with self._lock:
                    self._gpu_util[index].append(value)


def _open_nvml() -> tuple[Any, dict[int, Any]]:
    """(the pynvml module, the visible GPUs' handles), or (None, {}) without nvidia-ml-py, a driver or a GPU."""
    try:
        import pynvml
    except ImportError:
        return None, {}
    try:
        pynvml.nvmlInit()
        return pynvml, visible_gpu_handles(pynvml)
    except (pynvml.NVMLError, ValueError):  # no driver, no GPU, or a CUDA_VISIBLE_DEVICES NVML does not know
        return None, {}


_SAMPLER: SystemSampler | None = None


def sampler() -> SystemSampler:
    """This process's sampler, started on first use (a reused worker keeps it across trials: `reset` each)."""
    global _SAMPLER
    if _SAMPLER is None:
        _SAMPLER = SystemSampler()
    return _SAMPLER
