"""Where each dataset's images sit: xlsa17's stored paths (from the authors' machines) -> files under --images."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data import DataError

MISSING_SHOWN = 10  # missing files listed in the error, at most


@dataclass(frozen=True)
class Layout:
    """Where a dataset's images sit: the anchor that ends the authors' prefix, and accepted --images roots."""

    anchor: re.Pattern  # matches up to the start of the dataset-relative tail
    roots: tuple[str, ...]  # folders under --images that may hold the tail, most complete first
    example: str


LAYOUTS = {
    "cub": Layout(re.compile(r"(?:^|/)images/(?=\d{3}\.[^/]+/[^/]+$)"), ("CUB_200_2011/images", "images", ""),
                  "CUB_200_2011/images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg"),
    "sun": Layout(re.compile(r"(?:^|/)images/(?=[^/]/.+$)"), ("images", ""),
                  "images/a/abbey/sun_aakbdcgfpksytcwj.jpg"),
    "awa2": Layout(re.compile(r"(?:^|/)JPEGImages/(?=[^/]+/[^/]+$)"),
                   ("Animals_with_Attributes2/JPEGImages", "JPEGImages", ""),
                   "Animals_with_Attributes2/JPEGImages/antelope/antelope_10001.jpg"),
}


def image_tail(dataset: str, stored: str) -> str:
    """The dataset-relative part of a stored image path, e.g. '001.Black_footed_Albatross/x.jpg' for CUB."""
    norm = re.sub(r"/+", "/", stored.strip().replace("\\", "/"))
    m = LAYOUTS[dataset].anchor.search(norm)
    if m is None:
        raise DataError(f"image path {stored!r}: found no {dataset} image folder in it; expected a path ending "
                        f"like {LAYOUTS[dataset].example}")
    tail = norm[m.end():]
    if ".." in tail.split("/"):
        # Looked up under --images, `..` would read a file outside it (e.g. JPEGImages/../../x.jpg).
        raise DataError(f"image path {stored!r} (res101.mat, image_files): its part inside the {dataset} image "
                        f"folder, {tail!r}, leaves that folder; expected a path ending like "
                        f"{LAYOUTS[dataset].example}, with no '..' after the image folder. Nothing was extracted.")
    return tail


def map_image_paths(dataset: str, stored: Sequence[str], images: str | Path) -> list[Path]:
    """Map xlsa17's stored image paths onto the `images` folder; every file must exist (else DataError)."""
    images = Path(images)
    tails = [image_tail(dataset, s) for s in stored]
    if not tails:
        raise DataError(f"{dataset}: res101.mat lists no images")
    roots = [images / r if r else images for r in LAYOUTS[dataset].roots]
    probe = tails[:: max(1, len(tails) // 16)][:16]  # a few files spread over the list pick the layout
    hits = [sum((root / t).is_file() for t in probe) for root in roots]
    root = roots[int(np.argmax(hits))]
    paths = [root / t for t in tails]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = "\n".join(f"  {p}" for p in missing[:MISSING_SHOWN])
        more = f"\n  ... and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
        tried = ", ".join(str(r / "<tail>") for r in roots)
        raise DataError(f"{len(missing)} of {len(paths)} {dataset} images are missing under {images} (layout used: "
                        f"{root}/<tail>; tried {tried}; tail example: {tails[0]}):\n{shown}{more}\n"
                        "Nothing was extracted. Point --images at the folder that holds "
                        f"{LAYOUTS[dataset].example.split('/')[0]}/ (or at that folder itself).")
    return paths
