"""Attribute word vectors: the authors' <DS>_attribute.pkl, a .npy, or GloVe text averaged over attribute names."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data import DATASET_DIRS, DataError
from ..data.readers import cell_strings, check_matrix, read_vector_file
from ..progress import Progress, silent, to_stderr

WORD_SPLIT = re.compile(r"[_:()\-/\s]+")
LEADING_INDEX = re.compile(r"^\s*\d+\s+")


def attribute_words(name: str) -> list[str]:
    """'1 has_bill_shape::curved_(up_or_down)' -> ['has', 'bill', 'shape', 'curved', 'up', 'or', 'down']."""
    return [w for w in WORD_SPLIT.split(LEADING_INDEX.sub("", name).lower()) if w]


def read_attribute_names(path: str | Path) -> list[str]:
    """One name per line (CUB attributes.txt, AwA2 predicates.txt), or SUN's attributes.mat cell array."""
    path = Path(path)
    if path.suffix == ".mat":
        import scipy.io

        mat = {k: v for k, v in scipy.io.loadmat(str(path)).items() if not k.startswith("__")}
        key = "attributes" if "attributes" in mat else next(iter(mat), None)
        if key is None:
            raise DataError(f"{path}: no variables; expected a cell array of attribute names")
        return list(cell_strings(mat[key], path, key))
    return [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]


def glove_vectors(path: str | Path, names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Average the vectors of each name's words from a GloVe/word2vec text file; also return missing words."""
    path = Path(path)
    words = [attribute_words(n) for n in names]
    needed = {w for ws in words for w in ws}
    found: dict[str, np.ndarray] = {}
    dim = None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, 1):
            token, _, rest = line.rstrip("\n").partition(" ")
            key = token.lower()
            if key not in needed or (key in found and token != key):  # an exact lowercase token wins
                continue
            vec = np.array(rest.split(), dtype=np.float64)
            if dim is None:
                dim = vec.size
            if vec.size != dim:
                raise DataError(f"{path}: line {line_no} ({token!r}): found {vec.size} values; expected {dim} like "
                                "the other vectors ('word v1 v2 ...' per line)")
            found[key] = vec
    if dim is None:
        raise DataError(f"{path}: none of the {len(needed)} attribute words was found; expected a GloVe-format text "
                        "file ('word v1 v2 ...' per line)")
    out = np.zeros((len(names), dim))
    for i, ws in enumerate(words):
        vecs = [found[w] for w in ws if w in found]
        if vecs:
            out[i] = np.mean(vecs, axis=0)
    missing = sorted(needed - set(found))
    return out, missing


def load_word_vectors(dataset: str, n_attributes: int, word_vectors: str | None, attribute_names: str | None,
                      xlsa17: str | Path, progress: Progress = to_stderr) -> tuple[np.ndarray, str]:
    """The I x D attribute word vectors and a description of their source."""
    say = progress or silent
    if word_vectors is None:
        w2v = Path(xlsa17).parent / "w2v"
        candidates = [w2v / f"{DATASET_DIRS[dataset]}_attribute.{ext}" for ext in ("pkl", "npy")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DataError(f"no attribute word vectors: {candidates[0]} does not exist. Pass --word-vectors FILE "
                            "(the authors' <DS>_attribute.pkl, a .npy, or a GloVe text file with --attribute-names)")
    else:
        path = Path(word_vectors)
        if not path.is_file():
            raise DataError(f"--word-vectors {path}: no such file")
    if path.suffix in (".pkl", ".pickle", ".npy"):
        vec = read_vector_file(path)
        source = f"{'npy' if path.suffix == '.npy' else 'pickle'} {path}"
    else:
        if attribute_names is None:
            raise DataError(f"--word-vectors {path} is a text (GloVe) file: it needs --attribute-names FILE (one "
                            "attribute name per line, e.g. CUB attributes.txt or AwA2 predicates.txt)")
        names = read_attribute_names(attribute_names)
        if len(names) != n_attributes:
            raise DataError(f"--attribute-names {attribute_names}: found {len(names)} names; expected "
                            f"{n_attributes}, the attributes (rows of att) in att_splits.mat")
        vec, missing = glove_vectors(path, names)
        empty = [names[i] for i in np.flatnonzero(~vec.any(axis=1))]
        if missing:
            say(f"word vectors: {len(missing)} word(s) not in {path.name}: {', '.join(missing)}")
        if empty:
            say(f"word vectors: {len(empty)} attribute(s) with no known word get a zero vector: {', '.join(empty)}")
        source = f"GloVe text {path} averaged over the words of {attribute_names}"
    if attribute_names is not None and source.startswith(("pickle", "npy")):
        say(f"note: --attribute-names is only used with a GloVe text file; ignored for {path.name}")
    vec = check_matrix(vec, path, "(array)")  # finite numeric attributes x dims (I x 300)
    if vec.shape[0] != n_attributes:
        raise DataError(f"{path}: found {vec.shape[0]} rows (shape {vec.shape}); expected {n_attributes}, one per "
                        "attribute of att_splits.mat")
    return vec.astype(np.float64), source
