"""Per-class test accuracy of the refits: each refit's table, and where the tuned configuration gains or loses.

A refit computes its table in its one evaluation on the test split (`class_table`, from the predictions that
give its S and U: `msdn.metrics.GZSLResult.classes`, at its configured alpha and gamma), so the table is no
second look at the test split. Each refit's run logs it as `per_class_accuracy.csv`; the parent run logs, when
the authors' configuration was refit too, every class's mean over seeds for both configurations and their
difference (`class_differences`), as `per_class/per_class_difference.csv` and a plot of the classes that gain
and lose most (`msdn.study.plots.plot_class_differences`).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from msdn.study.results import Refits

# A refit's table (RefitResult.classes): the class's id in the benchmark (0-based, the order of its class list),
# its name (the benchmark's, e.g. allclasses_names in att_splits.mat; class_<id> where it has none), its group
# ("seen" or "unseen"), its test images, and the fraction of them predicted right.
CLASS_COLUMNS = ("class_id", "class", "group", "images", "accuracy")
# The parent run's table: the mean accuracy over seeds of each configuration, and tuned minus authors'.
DIFFERENCE_COLUMNS = ("class_id", "class", "group", "images", "tuned", "authors", "difference")


def class_table(accuracies, class_ids: np.ndarray, seen: np.ndarray, names: Sequence[str]) -> dict[str, list]:
    """A refit's table under CLASS_COLUMNS from a msdn.metrics.ClassAccuracies over a split's candidate classes
    (`class_ids`: their ids in the benchmark, `seen`: which are seen, `names`: the benchmark's class names)."""
    ids = [int(class_ids[k]) for k in accuracies.classes]
    return {"class_id": ids, "class": [str(names[i]) for i in ids],
            "group": ["seen" if seen[k] else "unseen" for k in accuracies.classes],
            "images": [int(n) for n in accuracies.images], "accuracy": [float(a) for a in accuracies.accuracy]}


def class_differences(refits: Refits) -> dict[str, list] | None:
    """Each class's mean test accuracy over seeds, tuned and authors', and the difference, largest gain first
    (then by class id), under DIFFERENCE_COLUMNS; None without the authors' refits or a table in every refit."""
    if not refits.baseline or not all(r.classes for r in refits.tuned + refits.baseline):
        return None
    means = {}
    for config, results in (("tuned", refits.tuned), ("authors", refits.baseline)):
        values: dict[int, list[float]] = {}
        for result in results:
            for class_id, accuracy in zip(result.classes["class_id"], result.classes["accuracy"]):
                values.setdefault(int(class_id), []).append(float(accuracy))
        means[config] = {k: float(np.mean(v)) for k, v in values.items()}
    first = refits.tuned[0].classes
    rows = [(class_id, name, group, images, means["tuned"][class_id], means["authors"][class_id])
            for class_id, name, group, images in zip(first["class_id"], first["class"], first["group"],
                                                     first["images"])
            if class_id in means["authors"]]
    rows.sort(key=lambda row: (-(row[4] - row[5]), row[0]))
    columns = list(zip(*rows)) if rows else [()] * 6
    return {**dict(zip(DIFFERENCE_COLUMNS, (list(c) for c in columns))),
            "difference": [tuned - authors for tuned, authors in zip(columns[4], columns[5])]}


def csv_text(table: dict[str, list], columns: Sequence[str]) -> str:
    """`table` (a list per column) as CSV text with a header row; floats with 6 decimals."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in zip(*(table[c] for c in columns)):
        writer.writerow([f"{v:.6f}" if isinstance(v, float) else str(v) for v in row])
    return out.getvalue()


def write_csv(path: Path, table: dict[str, list], columns: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(csv_text(table, columns))
    return path
