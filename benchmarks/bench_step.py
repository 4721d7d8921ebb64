"""Training-step and evaluation throughput of MSDN at the real CUB shapes, on random data.

    .venv/bin/python benchmarks/bench_step.py                      # auto device, CUB shapes
    .venv/bin/python benchmarks/bench_step.py --device cpu --repeats 7 --warmup 2
    .venv/bin/python benchmarks/bench_step.py --quick              # tiny shapes, a few seconds (tests)

Each mode (float32, bf16 autocast) times, in the same run and interleaved repeat by repeat:
  train  the Trainer's own step, `msdn.step.train_step` with the optimiser of `msdn.step.build_optimizer`
         (CUB hyper-parameters; `amp` on in the bf16 mode): batch gather from float16 features,
         forward, `msdn_loss`, backward, RMSprop step;
  eval   `msdn.evaluate.fused_scores` over the feature pool, no grad, `--eval-batch` images a chunk;
  ref    the device's matrix-multiply rate on the step's own big products, (B*R, C) @ (C, 4I) and
         its weight gradient (C, B*R) @ (B*R, 4I), in the mode's dtype.
Efficiency = achieved training FLOP/s (`msdn.model.training_flops` / step time) / reference rate,
the median over repeats of each repeat's ratio; "best-repeat eff" divides the fastest step repeat by
the fastest reference repeat, the figure to trust when other work shares the machine.
Features stay on the device (as the Trainer keeps them on a GPU): no step copies from host memory.
"""
from __future__ import annotations

import argparse
import math
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from msdn.config import TrainConfig, default_config  # noqa: E402
from msdn.device import resolve_device  # noqa: E402
from msdn.evaluate import fused_scores  # noqa: E402
from msdn.model import MSDN, training_flops  # noqa: E402
from msdn.step import build_optimizer, train_step  # noqa: E402

MODES = ("float32", "bf16-autocast")
COLUMNS = (
    "mode", "train img/s", "eval img/s", "peak train MiB", "peak eval MiB",
    "train GFLOP/s", "matmul GFLOP/s", "efficiency", "best-repeat eff",
)
MIB = 2**20


@dataclass(frozen=True)
class Shapes:
    batch: int
    n_regions: int
    n_channels: int
    n_att: int
    dim_v: int
    n_classes: int
    n_seen: int

    def flops(self) -> int:
        return training_flops(self.batch, self.n_regions, self.n_channels, self.n_att, self.dim_v, self.n_classes)

    def big_product_flops(self) -> int:
        return 2 * self.batch * self.n_regions * self.n_channels * 4 * self.n_att


CUB = Shapes(batch=50, n_regions=196, n_channels=2048, n_att=312, dim_v=300, n_classes=200, n_seen=150)
QUICK = Shapes(batch=4, n_regions=9, n_channels=32, n_att=12, dim_v=10, n_classes=8, n_seen=6)


@dataclass
class ModeResult:
    mode: str
    train_ips: float
    eval_ips: float
    peak_train_mib: float
    peak_eval_mib: float
    train_gflops: float
    matmul_gflops: float
    efficiency: float
    best_efficiency: float  # fastest step repeat / fastest reference repeat: robust to a shared machine


# ----------------------------------------------------------------------------- timing and memory
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Seconds per call of `fn`, over `calls` back-to-back calls (device work included)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def calls_for(seconds_per_call: float, min_time: float) -> int:
    """Calls per timed repeat so that one repeat lasts at least `min_time` seconds."""
    return max(1, math.ceil(min_time / max(seconds_per_call, 1e-9)))


class PeakMemory:
    """Peak memory above the level at `reset()`: CUDA allocator peak, or the process's peak RSS on CPU.

    On Linux the RSS high-water mark is reset through /proc/self/clear_refs, so each phase is measured
    on its own; elsewhere ru_maxrss can only show growth beyond the process's earlier peak.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            _reset_rss_peak()
            self.base = _rss_peak_bytes()

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / MIB
        return max(_rss_peak_bytes() - self.base, 0) / MIB


def _reset_rss_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS
    except OSError:
        pass


def _rss_peak_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ----------------------------------------------------------------------------- the workload
def build_model(shapes: Shapes, device: torch.device, seed: int) -> MSDN:
    """MSDN with the authors' initialisation, its zero-initialised matrices given small random values."""
    g = torch.Generator().manual_seed(seed)
    seen = torch.zeros(shapes.n_classes, dtype=torch.bool)
    seen[: shapes.n_seen] = True
    model = MSDN(
        torch.randn(shapes.n_att, shapes.dim_v, generator=g), torch.rand(shapes.n_classes, shapes.n_att, generator=g),
        seen, shapes.n_channels, generator=g,
    )
    with torch.no_grad():  # zero attention weights would make every softmax uniform: not a trained model's work
        for p in (model.W_2, model.W_1_1, model.W_2_1):
            p.copy_(0.01 * torch.randn(p.shape, generator=g))
    return model.to(device)


def mode_config(mode: str) -> TrainConfig:
    """The CUB recipe; the bf16 mode is the Trainer's `amp` switch (bf16 autocast around the forward)."""
    return default_config("cub", amp=mode == "bf16-autocast")


def autocast(device: torch.device, config: TrainConfig):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp)


def run_mode(mode: str, shapes: Shapes, device: torch.device, args: argparse.Namespace) -> ModeResult:
    config = mode_config(mode)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    n_pool = max(args.eval_images, shapes.batch)
    # float16 region-major features, as the cache stores them, resident on the device
    pool = torch.randn(n_pool, shapes.n_regions, shapes.n_channels, device=device, generator=gen).abs_().half()
    labels = torch.randint(0, shapes.n_seen, (n_pool,), device=device, generator=gen)
    eval_idx = np.arange(n_pool)
    model = build_model(shapes, device, args.seed)
    optimizer = build_optimizer(model, config)

    def step() -> None:  # Trainer.train_step, with the batch drawn on the device instead of by the sampler
        idx = torch.randint(0, n_pool, (shapes.batch,), device=device, generator=gen)
        train_step(model, optimizer, pool[idx], labels[idx], config)

    def evaluate() -> None:
        with autocast(device, config):
            fused_scores(model, None, eval_idx, config.alpha, batch_size=args.eval_batch, device=device,
                         feature_cache=pool)

    dtype = torch.bfloat16 if config.amp else torch.float32
    rows, cols = shapes.batch * shapes.n_regions, 4 * shapes.n_att
    a = torch.randn(rows, shapes.n_channels, device=device, generator=gen).to(dtype)
    w = torch.randn(shapes.n_channels, cols, device=device, generator=gen).to(dtype)
    g = torch.randn(rows, cols, device=device, generator=gen).to(dtype)

    def reference() -> None:
        torch.mm(a, w)  # forward product
        torch.mm(a.t(), g)  # its weight gradient

    for _ in range(args.warmup):
        step()
        evaluate()
        reference()
    memory = PeakMemory(device)  # one call each, after warm-up: model, optimiser state and features resident
    memory.reset()
    step()
    peak_train = memory.peak_mib()
    memory.reset()
    evaluate()
    peak_eval = memory.peak_mib()

    n_train = calls_for(time_calls(step, 1, device), args.min_time)
    n_eval = calls_for(time_calls(evaluate, 1, device), args.min_time)
    n_ref = calls_for(time_calls(reference, 1, device), args.min_time)
    step_times, eval_times, ref_times = [], [], []
    for _ in range(args.repeats):  # interleaved: a busy machine slows the step and its reference alike
        step_times.append(time_calls(step, n_train, device))
        ref_times.append(time_calls(reference, n_ref, device))
        eval_times.append(time_calls(evaluate, n_eval, device))

    flops = shapes.flops()
    ref_flops = 2 * shapes.big_product_flops()
    return ModeResult(
        mode=mode,
        train_ips=shapes.batch / statistics.median(step_times),
        eval_ips=n_pool / statistics.median(eval_times),
        peak_train_mib=peak_train,
        peak_eval_mib=peak_eval,
        train_gflops=flops / statistics.median(step_times) / 1e9,
        matmul_gflops=ref_flops / statistics.median(ref_times) / 1e9,
        efficiency=statistics.median((flops / s) / (ref_flops / r) for s, r in zip(step_times, ref_times)),
        best_efficiency=(flops / min(step_times)) / (ref_flops / min(ref_times)),
    )


# ----------------------------------------------------------------------------- report
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        return f"device: {torch.cuda.get_device_name(device)} (cuda), torch {torch.__version__}"
    return (f"device: cpu ({cpu_model()}, {torch.get_num_threads()} torch threads), torch {torch.__version__}")


def format_table(results: list[ModeResult]) -> str:
    cells = [COLUMNS] + [
        (r.mode, f"{r.train_ips:.1f}", f"{r.eval_ips:.1f}", f"{r.peak_train_mib:.1f}", f"{r.peak_eval_mib:.1f}",
         f"{r.train_gflops:.1f}", f"{r.matmul_gflops:.1f}", f"{r.efficiency:.3f}",
         f"{r.best_efficiency:.3f}")
        for r in results
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(wd) if i else c.ljust(wd) for i, (c, wd) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each workload first")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds each timed repeat lasts at least")
    parser.add_argument("--eval-images", type=int, default=500, help="images in the feature pool evaluated")
    parser.add_argument("--eval-batch", type=int, default=500, help="images per forward in evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny shapes and one short repeat: a smoke test")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        print(f"error: --modes {args.modes!r}: unknown {unknown}; expected some of {list(MODES)}", file=sys.stderr)
        return 2
    shapes = CUB
    if args.quick:
        shapes = QUICK
        args.repeats, args.warmup, args.min_time = 2, 1, 0.0
        args.eval_images, args.eval_batch = min(args.eval_images, 16), min(args.eval_batch, 8)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(device_line(device))
    print(f"shapes: {shapes}; eval {args.eval_images} images, {args.eval_batch} a batch")
    print(f"training FLOPs per step (msdn.model.training_flops): {shapes.flops():.4g}; "
          f"median of {args.repeats} repeats, {args.warmup} warm-up calls")
    results = [run_mode(mode, shapes, device, args) for mode in modes]
    print(format_table(results))
    base = next((r for r in results if r.mode == "float32"), None)
    fastest = max(results, key=lambda r: r.train_ips)
    if base is not None:
        print(f"fastest mode: {fastest.mode}; train {fastest.train_ips / base.train_ips:.2f}x, "
              f"eval {fastest.eval_ips / base.eval_ips:.2f}x float32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
