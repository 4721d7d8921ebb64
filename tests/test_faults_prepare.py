"""msdn.prepare with images as people have them, and every path with spaces and non-ASCII letters.

Real image files in each mode PIL reads (CMYK and palette JPEG/PNG, greyscale, 16-bit, alpha), truncated,
empty and non-image files, listed paths that climb out of the image folder, and data roots, configs and
checkpoints under folders such as `da ta ü`. A bad image is refused in one paragraph naming it (also from
a loader worker process); a readable one is converted to RGB exactly as torchvision's loader does.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from small_fs import grow, small_filesystem
from test_prepare import cli, make_dataset, run_prepare

from msdn import prepare
from msdn.data import DataError, benchmark_paths, load_benchmark

REPO = Path(__file__).resolve().parents[1]
ODD = "da ta ü"  # a space and a non-ASCII letter, in every folder name a test makes


def as_user(argv: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "msdn.prepare", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def assert_refused(out: subprocess.CompletedProcess, *needles: str) -> str:
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "Caught" not in out.stderr and "worker process" not in out.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def images_of(d: dict[str, Path]) -> list[Path]:
    return sorted(d["images"].rglob("*.jpg"))


def odd_modes(images: list[Path]) -> dict[Path, str]:
    """Rewrite the first images as CMYK JPEG, palette PNG, RGBA PNG, LA PNG and 16-bit greyscale PNG (under
    their .jpg names, as mislabelled files are found in real datasets); returns {path: PIL mode}."""
    rng = np.random.default_rng(3)
    pixels = lambda channels: rng.integers(0, 256, size=(40, 50, channels), dtype=np.uint8)  # noqa: E731
    Image.fromarray(pixels(4), "CMYK").save(images[0], "JPEG")
    Image.fromarray(pixels(3)).convert("P").save(images[1], "PNG")
    Image.fromarray(pixels(4), "RGBA").save(images[3], "PNG")
    Image.fromarray(pixels(2), "LA").save(images[4], "PNG")
    Image.fromarray(rng.integers(0, 65535, size=(40, 50), dtype=np.uint16)).save(images[7], "PNG")
    return {path: Image.open(path).mode for path in images}


def test_every_mode_pil_reads_becomes_rgb_as_torchvision_loads_it(tmp_path):
    from torchvision.datasets.folder import pil_loader

    d = make_dataset(tmp_path / ODD, "cub")
    images = images_of(d)
    modes = odd_modes(images)
    assert {"CMYK", "P", "RGBA", "LA", "L", "RGB"} <= set(modes.values()) and any(m.startswith("I") for m in
                                                                                  modes.values())
    dataset = prepare.ImageFiles(images, 0, 64)
    for i, path in enumerate(images):
        index, tensor, error = dataset[i]
        assert index == i and error == ""
        expected = prepare.image_transform(64)(pil_loader(str(path)))  # torchvision's own loader: convert("RGB")
        assert tensor.shape == (3, 64, 64) and torch.equal(tensor, expected), (path.name, modes[path])


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_odd_modes_and_odd_paths_prepare(tmp_path):
    d = make_dataset(tmp_path / ODD, "cub")
    odd_modes(images_of(d))
    out = tmp_path / ODD / "o u t ü"
    proc = as_user(cli("cub", d, out, "--workers", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"--data-root '{out}'" in proc.stderr  # quoted: the line can be pasted into a shell
    bench = load_benchmark("cub", out, progress=None)
    assert bench.features.shape == (9, 4, 2048) and np.isfinite(bench.features[:]).all()


DAMAGE = {"truncated": lambda intact: intact[: len(intact) // 2], "empty": lambda intact: b"",
          "text": lambda intact: b"not an image\n"}


@pytest.mark.parametrize("damage,says", [("truncated", "OSError: image file is truncated"),
                                         ("empty", "not an image file PIL can read"),
                                         ("text", "not an image file PIL can read")])
def test_an_unreadable_image_is_said_in_one_paragraph_naming_it(tmp_path, damage, says):
    d = make_dataset(tmp_path / ODD, "cub")
    bad = images_of(d)[4]
    bad.write_bytes(DAMAGE[damage](bad.read_bytes()))
    index, tensor, error = prepare.ImageFiles(images_of(d), 0, 64)[4]
    assert index == 4 and tensor.shape == (3, 64, 64) and not tensor.any()
    assert error.startswith(f"{bad}: cannot read as an image (") and says in error and "\n" not in error
    assert error.count(str(bad)) == 1 and "run the same command again" in error


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_an_unreadable_image_is_named_even_from_a_loader_worker(tmp_path):
    d = make_dataset(tmp_path / ODD, "cub")
    bad = images_of(d)[4]
    intact = bad.read_bytes()
    bad.write_bytes(DAMAGE["truncated"](intact))
    out = tmp_path / ODD / "out"
    error = assert_refused(as_user(cli("cub", d, out, "--workers", "2")), f"error: {bad}: cannot read as an image",
                           "image file is truncated", "run the same command again")
    assert "\n" not in error
    hdf5 = benchmark_paths("cub", out).hdf5
    partial = hdf5.with_name(hdf5.name + ".partial")
    assert not hdf5.exists() and partial.is_file()  # the batches before it are kept
    bad.write_bytes(intact)  # the user puts the intact file back: the run continues and completes
    messages: list[str] = []
    run_prepare(cli("cub", d, out), messages)
    assert any("resuming" in m for m in messages) and hdf5.is_file() and not partial.exists()


@pytest.mark.parametrize("dataset,stored", [
    ("awa2", "/BS/xian/work/data/Animals_with_Attributes2/JPEGImages/../escaped.jpg"),
    ("sun", "/BS/Deep_Fragments/work/MSc/data/SUN/images/a/../../../../escaped.jpg"),
])
@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_a_listed_path_that_leaves_the_image_folder_is_refused(tmp_path, dataset, stored):
    d = make_dataset(tmp_path / ODD, dataset)
    res101 = d["xlsa17"] / "data" / prepare.DATASET_DIRS[dataset] / "res101.mat"
    mat = scipy.io.loadmat(res101)
    files = mat["image_files"]
    files[2, 0] = np.array([stored])
    scipy.io.savemat(res101, {"image_files": files, "labels": mat["labels"], "features": mat["features"]})
    escaped = tmp_path / "escaped.jpg"  # where a lookup that follows '..' could land: a real image, so only the
    escaped.write_bytes(images_of(d)[0].read_bytes())  # check itself can refuse it
    out = tmp_path / "out"
    assert_refused(as_user(cli(dataset, d, out)), f"image path {stored!r}", "leaves that folder",
                   "Nothing was extracted")
    assert not out.exists()


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_a_missing_listed_image_under_odd_paths_as_a_user(tmp_path):
    d = make_dataset(tmp_path / ODD, "sun")
    gone = images_of(d)[-1]
    gone.unlink()
    out = tmp_path / ODD / "out"
    proc = as_user(cli("sun", d, out))
    assert_refused(proc, "1 of 9 sun images are missing", f"under {d['images']}")
    assert f"  {gone}\n" in proc.stderr and "Nothing was extracted" in proc.stderr  # the list of missing files
    assert not out.exists()


@pytest.mark.slow
def test_train_and_evaluate_with_odd_paths_everywhere(tmp_path, synthetic_root):
    root = tmp_path / ODD / "data root"
    shutil.copytree(synthetic_root, root)
    config = tmp_path / ODD / "config ü.yaml"
    config.write_text("epochs: 1\n")
    checkpoint = tmp_path / ODD / "check point ü.pt"
    common = ["--dataset", "synthetic", "--data-root", str(root)]
    train = subprocess.run([sys.executable, "-m", "msdn.train", *common, "--config", str(config), "--checkpoint",
                            str(checkpoint), "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert train.returncode == 0, train.stderr[-3000:]
    assert "epoch   1/1" in train.stdout and checkpoint.is_file()
    evaluate = subprocess.run([sys.executable, "-m", "msdn.evaluate", *common, "--checkpoint", str(checkpoint)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    assert evaluate.returncode == 0 and "H=" in evaluate.stdout, evaluate.stderr[-3000:]


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_a_full_disk_under_out_is_named_and_the_run_continues_once_there_is_space(tmp_path):
    import h5py

    d = make_dataset(tmp_path / ODD, "cub")
    with small_filesystem(tmp_path / "small", "1150k") as small:
        out = small / "o u t ü"
        with pytest.raises(DataError) as err:
            run_prepare(cli("cub", d, out))
        hdf5 = benchmark_paths("cub", out).hdf5
        partial = hdf5.with_name(hdf5.name + ".partial")
        message = str(err.value)
        assert message.startswith(f"{partial}: no space left on device (") and "run the same command again" in message
        with h5py.File(partial, "r") as f:  # consistent: it opens, and declares only whole batches done
            done = int(f.attrs["images_done"])
        assert 0 < done < 9
        grow(small, "40m")
        messages: list[str] = []
        run_prepare(cli("cub", d, out), messages)
        assert f"resuming {partial.name}: {done}/9 images already extracted" in messages and hdf5.is_file()
        assert load_benchmark("cub", out, progress=None).features.shape == (9, 4, 2048)
