"""Extract ResNet-101 region features from the original images into the layout msdn.data reads.

The command line of msdn.prepare (`python -m msdn.prepare DATASET --images ... --xlsa17 ... --out ...`):
checks every input first (xlsa17 files, every image, word vectors, weights, device), then extracts,
moves the finished HDF5 into place, copies att_splits.mat and lets msdn.data validate the result.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Sequence

from ..config import REAL_DATASETS
from ..cli import cli_entry, command_parser, device_flag, is_disk_full
from ..data import DataError, benchmark_paths, load_benchmark
from ..fsutil import atomic_path
from ..progress import Progress, silent, to_stderr
from .backbone import RANDOM_WEIGHTS, build_backbone, resolve_weights
from .extract import extract, metadata_matches, run_signature, signature_differences, write_metadata
from .images import map_image_paths
from .word_vectors import load_word_vectors
from .xlsa17 import read_xlsa17


def _copy_att_splits(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_file() and os.path.samefile(src, dst):
        return
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


# ----------------------------------------------------------------------------- main


def main(args: argparse.Namespace, progress: Progress = to_stderr) -> Path:
    """Prepare one dataset under args.out; return the HDF5 path. Raises DataError for bad inputs.

    A full disk under --out (HDF5 and the cache say so in their own wordings, mostly without OSError) is a
    DataError naming the file and the free space: what was extracted is kept, the same command continues.
    """
    try:
        return _prepare(args, progress)
    except (OSError, RuntimeError) as exc:
        if not is_disk_full(exc):
            raise
        raise DataError(disk_full_message(args, exc)) from None


def disk_full_message(args: argparse.Namespace, exc: BaseException) -> str:
    """Which file the full disk stopped, how much is free there, and how to continue."""
    found = re.search(r"filename = '([^']+)'", str(exc)) or re.search(r"filename = '([^']+)'", str(exc.__context__))
    where = Path(getattr(exc, "filename", None) or (found.group(1) if found else args.out))
    folder = next((p for p in (where, *where.parents) if p.is_dir()), Path("."))
    free = shutil.disk_usage(folder).free
    shown = f"{free / 2**30:.2f} GiB" if free >= 2**30 else f"{free / 2**20:.1f} MiB"
    return (f"{where}: no space left on device ({shown} free there); expected room for the features and the "
            f"float16 cache (see 'Disk space' in docs/prepare.md: e.g. CUB needs 28.4 GB as float32, 18.9 GB as "
            f"float16). The images extracted so far are kept: free space, or choose another --out, then run the same "
            f"command again; it continues from the last complete batch.")


def _prepare(args: argparse.Namespace, progress: Progress) -> Path:
    import torch

    say = progress or silent
    check_folders(args)
    device = device_flag(args.device)
    if args.image_size < 32 or args.batch_size < 1 or args.workers < 0:
        raise DataError(f"--image-size {args.image_size} / --batch-size {args.batch_size} / --workers "
                        f"{args.workers}: expected an image size >= 32, a batch size >= 1 and workers >= 0")
    x = read_xlsa17(args.dataset, args.xlsa17)
    paths = map_image_paths(args.dataset, x.image_files, args.images)
    w2v, w2v_source = load_word_vectors(args.dataset, x.att.shape[1], args.word_vectors, args.attribute_names,
                                        args.xlsa17, progress)
    weights = resolve_weights(args.weights)
    n, k, i = len(paths), x.att.shape[0], x.att.shape[1]
    say(f"{args.dataset}: {n} images, {k} classes, {i} attributes, trainval/test_seen/test_unseen "
        f"{'/'.join(str(v.size) for v in x.locs.values())}; word vectors {w2v.shape} from {w2v_source}; "
        f"backbone weights: {weights.label}; device {device}")
    if weights.path is None:
        say(f"WARNING: --weights random: {RANDOM_WEIGHTS}. These features are useless for real results.")

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False  # full float32 convolutions, like the authors' features
        torch.backends.cuda.matmul.allow_tf32 = False
    backbone = build_backbone(weights).to(device)
    with torch.inference_mode():
        probe = backbone(torch.zeros(1, 3, args.image_size, args.image_size, device=device))
    shape = tuple(int(s) for s in probe.shape[1:])
    signature = run_signature(args, x, weights, shape)

    bp = benchmark_paths(args.dataset, args.out)
    final, partial = bp.hdf5, bp.hdf5.with_name(bp.hdf5.name + ".partial")
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.is_file():
        import h5py

        with h5py.File(final, "r") as f:  # "r": opening with "r+" alone changes the mtime, i.e. the cache key
            diffs = signature_differences(f.attrs, signature)
            if diffs:
                raise DataError(f"{final} exists but was made differently ({'; '.join(diffs)}); expected the "
                                "settings of this run. Move or delete it to extract again.")
            current = metadata_matches(f, x, w2v)
        if current:
            say(f"{final}: already complete (delete it to extract again)")
        else:
            with h5py.File(final, "r+") as f:
                write_metadata(f, x, w2v)
            say(f"{final}: features already complete; labels/splits/attributes/word vectors updated")
    else:
        extra = {"word_vectors": w2v_source, "images_root": str(Path(args.images).resolve()),
                 "preprocessing": f"PIL RGB -> Resize({args.image_size}) -> CenterCrop({args.image_size}) -> "
                                  "ToTensor -> Normalize(ImageNet mean/std); torchvision resnet101 children[:-2]",
                 "torch_version": str(torch.__version__), "created_by": "msdn.prepare"}
        extract(args, paths, partial, signature, backbone, device, extra, progress)
        import h5py

        with h5py.File(partial, "r+") as f:
            fm = f["feature_map"]
            if fm.shape != (n, *shape) or int(f.attrs["images_done"]) != n:
                raise DataError(f"{partial}: feature_map {fm.shape} with {int(f.attrs['images_done'])} images done; "
                                f"expected {(n, *shape)} complete")
            write_metadata(f, x, w2v)
        os.replace(partial, final)
        say(f"wrote {final} ({final.stat().st_size / 2**30:.2f} GiB)")
    _copy_att_splits(x.att_splits, bp.att_splits)
    # The loaders validate every key against att_splits.mat and build the float16 cache (a full read, NaN check).
    bench = load_benchmark(args.dataset, args.out, progress=progress)
    say(f"ready: --dataset {args.dataset} --data-root {shlex.quote(str(args.out))} ({bench.features.shape[0]} images, "
        f"{bench.feature_shape[0]} regions x {bench.feature_shape[1]} channels)")
    return final


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "python -m msdn.prepare", __doc__.split("\n\n")[0],
        "python -m msdn.prepare cub --images ~/data/CUB --xlsa17 ~/data/xlsa17 --out data",
        "python -m msdn.prepare sun --images ~/data/SUN --xlsa17 ~/data/xlsa17 --out data --dtype float16",
        "python -m msdn.prepare cub --images ~/data/CUB --xlsa17 ~/data/xlsa17 --out smoke --weights random",
    )
    data = p.add_argument_group("data")
    data.add_argument("dataset", choices=REAL_DATASETS, help="benchmark to extract")
    data.add_argument("--images", required=True, metavar="DIR",
                      help="folder holding the dataset's images (see docs/prepare.md)")
    data.add_argument("--xlsa17", required=True, metavar="DIR",
                      help="xlsa17 root: holds data/<DS>/att_splits.mat and res101.mat")
    data.add_argument("--word-vectors", default=None, metavar="FILE", help="<DS>_attribute.pkl, .npy, or GloVe "
                      "text (+ --attribute-names); default: XLSA17/../w2v/<DS>_attribute.pkl")
    data.add_argument("--attribute-names", default=None, metavar="FILE",
                      help="one attribute name per line (for a GloVe file; default: none)")
    extraction = p.add_argument_group("extraction")
    extraction.add_argument("--weights", default=None, metavar="FILE", help="ResNet-101 state dict or MSDN "
                            "checkpoint file, or 'random' (smoke tests); default: torchvision's ImageNet file in "
                            "the torch hub cache")
    extraction.add_argument("--image-size", type=int, default=448, metavar="PIXELS",
                            help="Resize + CenterCrop size (448: 14 x 14 regions)")
    extraction.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per backbone batch")
    extraction.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
                            help="image-loading processes (default: min(8, CPU count), "
                                 f"{min(8, os.cpu_count() or 1)} here)")
    extraction.add_argument("--device", default="auto", help="auto (GPU when present), cuda, cuda:1, cpu")
    output = p.add_argument_group("output")
    output.add_argument("--out", required=True, metavar="DIR", help="data root for msdn.train --data-root")
    output.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="feature_map dtype in the HDF5 (the authors': float32)")
    return p


@cli_entry
def run(argv: Sequence[str] | None = None) -> int:
    """`python -m msdn.prepare`: 0 when the data is ready; 2 with the message on stderr for bad inputs (msdn.cli)."""
    main(build_parser().parse_args(argv))
    return 0


def check_folders(args: argparse.Namespace) -> None:
    """--images and --xlsa17 must be existing folders, --out a folder or a path to create; DataError otherwise."""
    for flag, value, must_exist in (("--images", args.images, True), ("--xlsa17", args.xlsa17, True),
                                    ("--out", args.out, False)):
        path = Path(value)
        if path.exists() and not path.is_dir():
            raise DataError(f"{flag} {path} is a file; expected a folder")
        if must_exist and not path.exists():
            raise DataError(f"{flag} {path}: no such folder")
