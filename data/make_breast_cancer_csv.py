#!/usr/bin/env python3
"""Write data/breast-cancer/breast-cancer.csv: scikit-learn's bundled copy of the UCI
Breast Cancer Wisconsin (Diagnostic) data as a plain CSV with a header.

scikit-learn ships the data as sklearn/datasets/data/breast_cancer.csv, whose first line
is "569,30,malignant,benign" (not column names) and whose last column is the class index
(0 = malignant, 1 = benign). This script writes the same 569 rows with a header of the
30 feature names (sklearn's load_breast_cancer().feature_names) and a last column
`diagnosis` holding the class name. Feature values are copied as text, unchanged.

How to run (from the repository root):

    python3 -m venv /tmp/skvenv
    /tmp/skvenv/bin/pip install scikit-learn
    /tmp/skvenv/bin/python data/make_breast_cancer_csv.py

Made with Python 3.11, scikit-learn 1.9.1 (input file sha256
fed3eb72d0575ef6192293f5093c6e801b1476b577d0386bf4455504522172ed).
"""

import csv
import os

from importlib import resources

from sklearn.datasets import load_breast_cancer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "breast-cancer", "breast-cancer.csv")


def main() -> None:
    names = list(load_breast_cancer().feature_names)
    source = resources.files("sklearn.datasets.data").joinpath("breast_cancer.csv")
    with source.open(newline="") as f:
        rows = list(csv.reader(f))
    n, d, *class_names = rows[0]
    assert (int(n), int(d), class_names) == (569, 30, ["malignant", "benign"]), rows[0]
    assert len(names) == 30
    with open(OUT, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(names + ["diagnosis"])
        for row in rows[1:]:
            assert len(row) == 31, row
            w.writerow(row[:30] + [class_names[int(row[30])]])
    print(f"wrote {OUT}: {len(rows) - 1} rows")


if __name__ == "__main__":
    main()
