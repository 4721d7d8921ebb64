"""Tests for msdn/prepare/: tiny image folders in each dataset's layout, random weights, 64 px images."""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from msdn import prepare
from msdn.data import DataError, benchmark_paths, load_benchmark

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path("/work/shared/realdata")
NUM_ATTRIBUTES = 4
# Original-machine prefixes as in xlsa17's res101.mat, and each dataset's folders under --images.
PREFIX = {
    "cub": "/BS/Deep_Fragments/work/MSc/CUB_200_2011/",
    "sun": "/BS/Deep_Fragments/work/MSc/data/SUN/",
    "awa2": "/BS/xian/work/data/",
}
CLASSES = {
    "cub": ["CUB_200_2011/images/001.Black_footed_Albatross", "CUB_200_2011/images/002.Laysan_Albatross",
            "CUB_200_2011/images/003.Sooty_Albatross"],
    "sun": ["images/a/abbey", "images/a/apartment_building/outdoor", "images/z/zoo"],
    "awa2": ["Animals_with_Attributes2//JPEGImages/antelope", "Animals_with_Attributes2//JPEGImages/grizzly+bear",
             "Animals_with_Attributes2//JPEGImages/zebra"],
}
ATTRIBUTE_NAMES = ["1 has_bill_shape::curved_(up_or_down)", "2 has_wing_color::blue", "3 has_size::small_(5_-_9_in)",
                   "4 has_eye_color::xyzzy"]


def _cell(strings: list[str]) -> np.ndarray:
    cell = np.empty((len(strings), 1), dtype=object)
    for j, s in enumerate(strings):
        cell[j, 0] = s
    return cell


def make_dataset(root: Path, dataset: str, per_class: int = 3, size: tuple[int, int] | None = None
                 ) -> dict[str, Path]:
    """3 classes x per_class JPEGs (classes 0, 1 seen: the last image of each test-seen, the others trainval;
    class 2 unseen), xlsa17 files, w2v. size=(width, height) for all images; default: small and varied."""
    rng = np.random.default_rng(0)
    images, files, labels = root / "images", [], []
    for c, folder in enumerate(CLASSES[dataset]):
        for j in range(per_class):
            rel = f"{folder}/{folder.rsplit('/', 1)[-1]}_{j:04d}.jpg"
            path = images / rel.replace("//", "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            w, h = size or (56 - 5 * c, 40 + 6 * j)
            img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
            (img.convert("L") if (c, j) == (1, 2) else img).save(path, quality=90)  # one greyscale image
            files.append(PREFIX[dataset] + rel)
            labels.append(c + 1)
    n = per_class
    original = rng.uniform(0, 100, size=(NUM_ATTRIBUTES, 3))
    att = original / np.linalg.norm(original, axis=0, keepdims=True)
    loc = lambda idx: (np.array(idx) + 1).astype(np.uint16).reshape(-1, 1)  # noqa: E731
    splits = {"att": att, "original_att": original, "allclasses_names": _cell([f.rsplit("/", 1)[-1]
                                                                               for f in CLASSES[dataset]]),
              "trainval_loc": loc([*range(n - 1), *range(n, 2 * n - 1)]), "test_seen_loc": loc([n - 1, 2 * n - 1]),
              "test_unseen_loc": loc(range(2 * n, 3 * n))}
    if dataset != "cub":  # like the real files: CUB's public copy lacks train_loc / val_loc
        splits.update(train_loc=loc(range(n)), val_loc=loc(range(n, 2 * n)))
    xlsa = root / "xlsa17" / "data" / prepare.DATASET_DIRS[dataset]
    xlsa.mkdir(parents=True)
    scipy.io.savemat(xlsa / "att_splits.mat", splits)
    scipy.io.savemat(xlsa / "res101.mat", {"image_files": _cell(files), "labels": np.array(labels, np.uint8)[:, None],
                                           "features": np.zeros((2048, len(files)))})
    (root / "w2v").mkdir()
    w2v = rng.standard_normal((NUM_ATTRIBUTES, 300))
    with open(root / "w2v" / f"{prepare.DATASET_DIRS[dataset]}_attribute.pkl", "wb") as fh:
        pickle.dump(w2v, fh)
    return {"images": images, "xlsa17": root / "xlsa17", "w2v": root / "w2v", "splits": xlsa / "att_splits.mat"}


def cli(dataset: str, d: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [dataset, "--images", str(d["images"]), "--xlsa17", str(d["xlsa17"]), "--out", str(out),
            "--weights", "random", "--device", "cpu", "--image-size", "64", "--batch-size", "2", "--workers", "0",
            *extra]


def run_prepare(argv: list[str], messages: list[str] | None = None) -> Path:
    say = messages.append if messages is not None else (lambda _m: None)
    return prepare.main(prepare.build_parser().parse_args(argv), progress=say)


def read_h5(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f} | {"attrs": dict(f.attrs)}


def train_ok(dataset: str, data_root: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "msdn.train", "--dataset", dataset, "--data-root", str(data_root),
                           "--epochs", "1", "--device", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "epoch   1/1" in proc.stdout


@pytest.fixture(scope="module")
def cub(tmp_path_factory) -> tuple[dict[str, Path], Path, list[str]]:
    """The tiny CUB set and one uninterrupted run of msdn.prepare (with two loader worker processes)."""
    root = tmp_path_factory.mktemp("cub")
    d = make_dataset(root, "cub")
    out, messages = root / "out", []
    run_prepare(cli("cub", d, out, "--workers", "2"), messages)
    return d, out, messages


# ----------------------------------------------------------------------------- end to end


def test_cub_writes_the_hdf5_the_loaders_read(cub):
    d, out, messages = cub
    p = benchmark_paths("cub", out)
    h = read_h5(p.hdf5)
    assert h["feature_map"].shape == (9, 2048, 2, 2) and h["feature_map"].dtype == np.float32
    assert np.isfinite(h["feature_map"]).all() and h["feature_map"].std() > 0
    assert not np.allclose(h["feature_map"][0], h["feature_map"][1])  # one row per image, not a repeat
    assert h["labels"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert h["trainval_loc"].tolist() == [0, 1, 3, 4] and h["test_seen_loc"].tolist() == [2, 5]
    assert h["test_unseen_loc"].tolist() == [6, 7, 8]
    mat = scipy.io.loadmat(d["splits"])
    assert np.array_equal(h["att"], mat["att"].T) and np.array_equal(h["original_att"], mat["original_att"].T)
    assert np.allclose(np.linalg.norm(h["att"], axis=1), 1.0)
    assert np.array_equal(h["w2v_att"], pickle.loads((d["w2v"] / "CUB_attribute.pkl").read_bytes()))
    attrs = h["attrs"]
    assert attrs["backbone_weights"] == "random (NOT ImageNet: smoke tests only)"
    assert attrs["images_done"] == 9 and attrs["image_size"] == 64 and attrs["dtype"] == "float32"
    with h5py.File(p.hdf5, "r") as f:
        assert f["feature_map"].chunks == (1, 2048, 2, 2)
    assert not p.hdf5.with_name(p.hdf5.name + ".partial").exists()
    assert p.att_splits.read_bytes() == d["splits"].read_bytes()
    assert any("images/s" in m and "ETA" in m for m in messages)
    assert any("WARNING: --weights random" in m for m in messages)
    bench = load_benchmark("cub", out, progress=None)  # the cache exists and matches the HDF5
    assert bench.features.shape == (9, 4, 2048)
    assert np.allclose(bench.features[3], h["feature_map"][3].reshape(2048, 4).T, rtol=1e-3, atol=1e-3)


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_cub_result_trains(cub):
    train_ok("cub", cub[1])


def test_second_run_reuses_the_finished_file(cub):
    d, out, _ = cub
    hdf5 = benchmark_paths("cub", out).hdf5
    mtime = hdf5.stat().st_mtime_ns
    messages: list[str] = []
    run_prepare(cli("cub", d, out), messages)
    assert hdf5.stat().st_mtime_ns == mtime and any("already complete" in m for m in messages)
    with pytest.raises(DataError, match="made differently.*dtype"):
        run_prepare(cli("cub", d, out, "--dtype", "float16"))


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_killed_run_resumes_to_the_same_file(cub, tmp_path):
    d, ref_out, _ = cub
    out = tmp_path / "out"
    env = {**os.environ, prepare.STOP_ENV: "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "msdn.prepare", *cli("cub", d, out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # SIGKILL right after the first flushed batch
    hdf5 = benchmark_paths("cub", out).hdf5
    partial = hdf5.with_name(hdf5.name + ".partial")
    assert partial.is_file() and not hdf5.exists()
    with h5py.File(partial, "r") as f:
        assert f.attrs["images_done"] == 2
    with pytest.raises(DataError, match="interrupted run with other settings.*image_size"):
        run_prepare(cli("cub", d, out, "--image-size", "96"))
    messages: list[str] = []
    run_prepare(cli("cub", d, out), messages)
    assert any("resuming" in m and "2/9" in m for m in messages)
    assert not partial.exists()
    resumed, reference = read_h5(hdf5), read_h5(benchmark_paths("cub", ref_out).hdf5)
    for key in ("feature_map", "labels", "trainval_loc", "test_seen_loc", "test_unseen_loc", "att", "w2v_att"):
        assert np.array_equal(resumed[key], reference[key]), key


@pytest.mark.parametrize("dataset", ["sun", "awa2"])
@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_sun_and_awa2_layouts_float16_and_training(dataset, tmp_path):
    d = make_dataset(tmp_path, dataset)
    images = d["images"] / ("images" if dataset == "sun" else "Animals_with_Attributes2/JPEGImages")
    argv = cli(dataset, d, tmp_path / "out", "--dtype", "float16")
    argv[argv.index("--images") + 1] = str(images)  # --images pointing at the folder of the class folders
    hdf5 = run_prepare(argv)
    h = read_h5(hdf5)
    assert h["feature_map"].shape == (9, 2048, 2, 2) and h["feature_map"].dtype == np.float16
    assert h["labels"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    bench = load_benchmark(dataset, tmp_path / "out", progress=None)
    assert bench.train_loc is not None  # att_splits.mat was copied, so the val protocol has its classes
    train_ok(dataset, tmp_path / "out")


def test_missing_image_is_reported_before_extraction(tmp_path):
    d = make_dataset(tmp_path, "awa2")
    gone = d["images"] / "Animals_with_Attributes2/JPEGImages/zebra/zebra_0001.jpg"
    gone.unlink()
    with pytest.raises(DataError) as err:
        run_prepare(cli("awa2", d, tmp_path / "out"))
    msg = str(err.value)
    assert "1 of 9 awa2 images are missing" in msg and str(gone) in msg and "Nothing was extracted" in msg
    assert not (tmp_path / "out" / "AWA2").exists()


# ----------------------------------------------------------------------------- image paths


@pytest.mark.parametrize("dataset,prefix,roots", [
    ("cub", "/BS/Deep_Fragments/work/MSc/CUB_200_2011/", ["", "CUB_200_2011", "CUB_200_2011/images"]),
    ("sun", "/BS/Deep_Fragments/work/MSc/data/SUN/", ["", "images"]),
    ("awa2", "/BS/xian/work/data/", ["", "Animals_with_Attributes2", "Animals_with_Attributes2/JPEGImages"]),
])
def test_real_image_paths_map_onto_each_accepted_layout(dataset, prefix, roots, tmp_path):
    ds = prepare.DATASET_DIRS[dataset]
    listed = (REALDATA / ds / "image_files.txt").read_text().splitlines()
    labels = np.load(REALDATA / ds / "labels.npy")
    assert len(listed) == labels.size
    stored = [prefix + line for line in listed]
    tails = [prepare.image_tail(dataset, s) for s in stored]
    assert len(set(tails)) == len(tails)  # every real path gives a distinct file
    pick = stored[:3] + stored[-3:]
    anchor = {"cub": "CUB_200_2011/images", "sun": "images", "awa2": "Animals_with_Attributes2/JPEGImages"}[dataset]
    for r in roots:  # --images at the folder above the dataset's, at the dataset folder, or at the image folder
        images = tmp_path / (r.replace("/", "_") or "top")
        expected = [images / (anchor + "/" + prepare.image_tail(dataset, s))[len(r) + 1 if r else 0:] for s in pick]
        for path in expected:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        assert prepare.map_image_paths(dataset, pick, images) == expected
    assert tails[0] == {"cub": "001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg",
                        "sun": "a/abbey/sun_aakbdcgfpksytcwj.jpg", "awa2": "antelope/antelope_10001.jpg"}[dataset]


def test_unrecognised_path_and_many_missing_files(tmp_path):
    with pytest.raises(DataError, match="no cub image folder"):
        prepare.image_tail("cub", "/somewhere/else/x.jpg")
    stored = [f"/x/CUB_200_2011/images/001.A/{j}.jpg" for j in range(25)]
    with pytest.raises(DataError, match=r"25 of 25 cub images are missing[\s\S]*and 15 more"):
        prepare.map_image_paths("cub", stored, tmp_path)


# ----------------------------------------------------------------------------- word vectors


def test_word_vectors_default_pkl_and_npy(tmp_path):
    d = make_dataset(tmp_path, "cub")
    expected = pickle.loads((d["w2v"] / "CUB_attribute.pkl").read_bytes())
    vec, source = prepare.load_word_vectors("cub", NUM_ATTRIBUTES, None, None, d["xlsa17"])
    assert np.array_equal(vec, expected) and "CUB_attribute.pkl" in source
    np.save(tmp_path / "w.npy", expected.astype(np.float32))
    vec, _ = prepare.load_word_vectors("cub", NUM_ATTRIBUTES, str(tmp_path / "w.npy"), None, d["xlsa17"])
    assert np.allclose(vec, expected, atol=1e-6)
    with pytest.raises(DataError, match="expected 5, one per attribute"):
        prepare.load_word_vectors("cub", 5, str(tmp_path / "w.npy"), None, d["xlsa17"])
    with open(tmp_path / "evil.pkl", "wb") as fh:
        pickle.dump({"not": "an array"}, fh)
    with pytest.raises(DataError, match="refusing to unpickle|expected a numeric numpy array"):
        prepare.load_word_vectors("cub", NUM_ATTRIBUTES, str(tmp_path / "evil.pkl"), None, d["xlsa17"])
    shutil.rmtree(d["w2v"])
    with pytest.raises(DataError, match="CUB_attribute.pkl does not exist"):
        prepare.load_word_vectors("cub", NUM_ATTRIBUTES, None, None, d["xlsa17"])


def test_glove_text_with_attribute_names(tmp_path):
    words = ["has", "bill", "shape", "curved", "up", "or", "down", "wing", "color", "blue", "size", "small", "5",
             "9", "in", "eye"]
    vectors = {w: np.arange(3, dtype=float) + k for k, w in enumerate(words)}
    lines = ["16 3"] + [f"{w} {' '.join(str(v) for v in vectors[w])}" for w in words] + ["Blue 9 9 9", "zzz 1 1 1"]
    (tmp_path / "glove.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "attributes.txt").write_text("\n".join(ATTRIBUTE_NAMES) + "\n")
    messages: list[str] = []
    vec, source = prepare.load_word_vectors("cub", 4, str(tmp_path / "glove.txt"), str(tmp_path / "attributes.txt"),
                                            tmp_path, messages.append)
    assert vec.shape == (4, 3) and "GloVe" in source
    assert np.allclose(vec[1], np.mean([vectors[w] for w in ("has", "wing", "color", "blue")], axis=0))
    assert np.allclose(vec[3], np.mean([vectors[w] for w in ("has", "eye", "color")], axis=0))  # xyzzy is unknown
    assert any("1 word(s) not in glove.txt: xyzzy" in m for m in messages)
    (tmp_path / "predicates.txt").write_text("1\tblack\n2\tzzz-unknown\n")
    vec, _ = prepare.load_word_vectors("awa2", 2, str(tmp_path / "glove.txt"), str(tmp_path / "predicates.txt"),
                                       tmp_path, messages.append)
    assert not vec[0].any() and np.allclose(vec[1], [1, 1, 1])
    assert any("zero vector: 1\tblack" in m for m in messages)
    with pytest.raises(DataError, match="needs --attribute-names"):
        prepare.load_word_vectors("cub", 4, str(tmp_path / "glove.txt"), None, tmp_path)
    with pytest.raises(DataError, match="found 4 names; expected 5"):
        prepare.load_word_vectors("cub", 5, str(tmp_path / "glove.txt"), str(tmp_path / "attributes.txt"), tmp_path)


def test_attribute_words_and_sun_mat_names(tmp_path):
    assert prepare.attribute_words("1 has_bill_shape::curved_(up_or_down)") == \
        ["has", "bill", "shape", "curved", "up", "or", "down"]
    assert prepare.attribute_words("12\tfurry") == ["furry"]
    assert prepare.read_attribute_names(REALDATA / "SUN" / "attributes.mat")[0] == "sailing/ boating"
    assert prepare.attribute_words("sailing/ boating") == ["sailing", "boating"]


# ----------------------------------------------------------------------------- weights


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_weights_files_torchvision_and_msdn_checkpoint(tmp_path):
    import torchvision

    torch.manual_seed(1)
    model = torchvision.models.resnet101(weights=None)
    sd = model.state_dict()
    torch.save(sd, tmp_path / "tv.pth")
    seq_sd = torch.nn.Sequential(*list(model.children())[:-2]).state_dict()
    msdn_ckpt = {f"resnet101.{k}": v for k, v in seq_sd.items()} | {"V": torch.zeros(4, 300), "W_1": torch.zeros(2)}
    torch.save(msdn_ckpt, tmp_path / "msdn.pth")
    for name in ("tv.pth", "msdn.pth"):
        w = prepare.resolve_weights(str(tmp_path / name))
        assert w.label == f"file {name}" and len(w.sha256) == 64
        got = prepare.build_backbone(w).state_dict()
        assert torch.equal(got["0.weight"], sd["conv1.weight"])
        assert torch.equal(got["7.2.bn3.running_var"], sd["layer4.2.bn3.running_var"])
    torch.save({"conv1.weight": sd["conv1.weight"]}, tmp_path / "bad.pth")
    with pytest.raises(DataError, match="missing key"):
        prepare.build_backbone(prepare.resolve_weights(str(tmp_path / "bad.pth")))


def test_hub_cache_lookup_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(DataError) as err:
        prepare.resolve_weights(None)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet101-63fe2227.pth") in str(err.value)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "resnet101-cd907fc2.pth").write_bytes(b"v2")
    assert "IMAGENET1K_V2" in prepare.resolve_weights(None).label
    (tmp_path / "hub" / "checkpoints" / "resnet101-63fe2227.pth").write_bytes(b"v1")
    assert "IMAGENET1K_V1" in prepare.resolve_weights(None).label  # V1, what pretrained=True loads, wins
    r = prepare.resolve_weights("random")
    assert r.path is None and "NOT ImageNet" in r.label


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_cli_exits_2_with_the_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "msdn.prepare", "cub", "--images", str(tmp_path), "--xlsa17",
                           str(tmp_path), "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "error: --xlsa17" in proc.stderr


def test_namespace_defaults_match_the_paper():
    args = prepare.build_parser().parse_args(["cub", "--images", "i", "--xlsa17", "x", "--out", "o"])
    assert isinstance(args, Namespace)
    assert (args.image_size, args.dtype, args.device, args.weights) == (448, "float32", "auto", None)
