"""The study's own timings: where a trial's time goes besides training and evaluation.

Trials report, with their metrics, how long their setup and their reporting took (`TRIAL_TIMING_KEYS`);
`ResultTimer`, a Tune callback on the driver, adds how long each result took to reach the driver.
`benchmarks/bench_study.py` reads them back from the study's results to split the overhead.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from ray.tune import Callback

# Reported once per trial start (the first result after a start or a restore):
TIME_WORKER_START = "time_worker_start"  # process start -> trial ready (a worker's first trial only, else 0)
TIME_WORKER_IDLE = "time_worker_idle"  # reused worker: previous trial's last report -> this trial's entry
TIME_DATA_OPEN = "time_data_open"  # opening and validating the benchmark and its split (cached per worker)
TIME_TRAINER_BUILD = "time_trainer_build"  # model, optimiser, resident features, checkpoint restore
WORKER_TRIAL = "worker_trial"  # 1 for a worker process's first trial, 2 for its second, ...
# Reported with every result, about the previous epoch (0 with the first result of a start):
TIME_CHECKPOINT = "time_checkpoint"  # writing the trainer's state (0 when the epoch was not checkpointed)
TIME_REPORT = "time_report"  # the trial blocked in tune.report: checkpoint upload + the driver's round trip
# Wall-clock times the trial sends and ResultTimer turns into durations on the driver (and removes):
REPORTED_AT = "reported_at"  # just before tune.report -> TIME_TO_DRIVER
WORKER_READY_AT = "worker_ready_at"  # a worker's first trial, when ready -> clamps TIME_WORKER_START
TIME_TO_DRIVER = "time_to_driver"  # report -> the driver's callbacks see the result

TRIAL_TIMING_KEYS = (TIME_WORKER_START, TIME_WORKER_IDLE, TIME_DATA_OPEN, TIME_TRAINER_BUILD, WORKER_TRIAL,
                     TIME_CHECKPOINT, TIME_REPORT, TIME_TO_DRIVER)


def process_start_time() -> float | None:
    """Wall-clock time at which this process started (Linux /proc, 10 ms resolution); None elsewhere.

    The age comes from /proc/uptime and the process's start tick, both finer than /proc/stat's whole-
    second boot time.
    """
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(after_name[19])  # field 22, starttime; the split starts at field 3
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class ResultTimer(Callback):
    """Driver side: turn a result's wall-clock stamps into durations.

    REPORTED_AT becomes TIME_TO_DRIVER, the seconds the result took to reach the driver. A worker's start
    is counted from the tuning loop's start at the earliest: Ray may have started the process before the
    study (its pool of idle workers), and that wait is not the study's cost. Placed first among the
    callbacks, so the MLflow callback and Tune's own result files record the durations. Both ends read
    the wall clock, so on a multi-node cluster the figures include the nodes' clock skew.
    """

    def __init__(self) -> None:
        self.loop_started_at = time.time()

    def setup(self, **info) -> None:
        self.loop_started_at = time.time()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        sent = result.pop(REPORTED_AT, None)
        if isinstance(sent, (int, float)):
            result[TIME_TO_DRIVER] = max(0.0, time.time() - sent)
        ready = result.pop(WORKER_READY_AT, None)
        if isinstance(ready, (int, float)) and isinstance(result.get(TIME_WORKER_START), (int, float)):
            result[TIME_WORKER_START] = max(0.0, min(result[TIME_WORKER_START], ready - self.loop_started_at))
