"""Check a benchmark completely: validate its files and read every block of its float16 cache against the
digests recorded when the cache was built; a damaged cache is rebuilt (it is derived from the HDF5).

    python -m msdn.data.verify --dataset cub --data-root DIR [--cache-dir DIR]

Exit codes as every command (msdn.cli, docs/errors.md): 0 when the benchmark and its cache check out
(after a rebuild, if one was needed), 2 with the reason on stderr otherwise.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from ..cli import cli_entry, command_parser
from ..config import DATASETS
from .benchmark import load_benchmark
from .cache import DIGEST_BLOCK_BYTES


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "python -m msdn.data.verify", __doc__.split("\n\n")[0],
        "python -m msdn.data.verify --dataset synthetic",
        "python -m msdn.data.verify --dataset cub --data-root /data/zsl --cache-dir /scratch/msdn-cache",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, choices=DATASETS, help="benchmark to check")
    data.add_argument("--data-root", default="data", metavar="DIR", help="folder holding the benchmarks")
    data.add_argument("--cache-dir", default=None, metavar="DIR",
                      help="where the float16 cache lives (default: DATA_ROOT/<DS>/cache)")
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    bench = load_benchmark(args.dataset, args.data_root, progress=print, cache_dir=args.cache_dir, verify_cache=True)
    path = Path(bench.features.filename)
    size = path.stat().st_size
    print(f"{path}: every {DIGEST_BLOCK_BYTES // 2**20} MiB block matches its digest ({size / 2**30:.2f} GiB, "
          f"{bench.features.shape[0]} images; checked in {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
