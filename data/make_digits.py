#!/usr/bin/env python3
"""Build data/digits/{train,test}.h5 from scikit-learn's copy of the UCI
"Optical Recognition of Handwritten Digits" data (sklearn.datasets.load_digits).

How to run (from the repository root):

    python3 -m venv /tmp/digits-venv
    /tmp/digits-venv/bin/pip install scikit-learn h5py numpy
    /tmp/digits-venv/bin/python data/make_digits.py

Versions used to produce the files in data/digits/:
    Python 3.11.7, numpy 2.4.6, scikit-learn 1.9.1, scipy 1.17.1,
    h5py 3.16.0 (HDF5 library 2.0.0)

Output (per file):
    x : float32, shape (N, 64), raw pixel counts 0..16 divided by 16 -> [0, 1];
        row-major 8x8 image flattened (index = row * 8 + col)
    y : int64,   shape (N,),    class labels 0..9
    root attributes: source, licence, split

Split: sklearn.model_selection.train_test_split(test_size=0.2, stratify=y,
random_state=42) -> train 1437 rows, test 360 rows.

Deterministic: the data is bundled inside scikit-learn (no download), the split
uses a fixed seed, and datasets are written with track_times=False so that
re-running produces byte-identical .h5 files (given the same library versions).
"""

import hashlib
import os
import sys

import h5py
import numpy as np
import sklearn
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits")

SOURCE = (
    "UCI ML Repository, 'Optical Recognition of Handwritten Digits' "
    "(E. Alpaydin, C. Kaynak, 1998), https://archive.ics.uci.edu/dataset/80 ; "
    "via scikit-learn %s sklearn.datasets.load_digits (1797 samples = the "
    "UCI optdigits.tes test set)" % sklearn.__version__
)
LICENCE = (
    "UCI data set: Creative Commons Attribution 4.0 International (CC BY 4.0). "
    "scikit-learn: BSD-3-Clause."
)
SPLIT = (
    "stratified 80/20 split: sklearn.model_selection.train_test_split("
    "test_size=0.2, stratify=y, random_state=42); x = raw/16 as float32, "
    "y = int64 labels 0..9"
)


def array_sha256(a: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def write(path: str, x: np.ndarray, y: np.ndarray, part: str) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, dtype="<f4", track_times=False)
        f.create_dataset("y", data=y, dtype="<i8", track_times=False)
        f.attrs["source"] = SOURCE
        f.attrs["licence"] = LICENCE
        f.attrs["split"] = "%s part of %s" % (part, SPLIT)


def main() -> int:
    digits = load_digits()
    raw = digits.data  # float64, (1797, 64), integer values 0..16
    y = digits.target.astype(np.int64)
    assert raw.shape == (1797, 64)
    assert raw.min() == 0 and raw.max() == 16

    x = (raw / 16.0).astype(np.float32)

    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=42
    )
    assert x_tr.shape == (1437, 64) and x_te.shape == (360, 64)

    os.makedirs(OUT_DIR, exist_ok=True)
    for name, xs, ys in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        path = os.path.join(OUT_DIR, name + ".h5")
        write(path, xs, ys, name)
        counts = np.bincount(ys, minlength=10).tolist()
        print("%s: x %s %s sha256=%s" % (path, xs.shape, xs.dtype, array_sha256(xs)))
        print("%s: y %s %s sha256=%s" % (path, ys.shape, ys.dtype, array_sha256(ys)))
        print("%s: class counts %s" % (path, counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
