"""python -m msdn.report: the paper table from study summaries, checked against statistics computed here."""
from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from msdn.report import PUBLISHED, collect, main, render

REPO = Path(__file__).resolve().parents[1]


def refit(seed: int, S: float, U: float, AUSUC: float = 0.5) -> dict:
    H = 2 * S * U / (S + U)
    return {"S": S, "U": U, "H": H, "zsl_acc": U + 0.05, "AUSUC": AUSUC, "seed": seed, "epochs": 5}


def write_study(folder: Path, dataset: str, tuned: list[dict], baseline: list[dict] | None = None,
                state: str = "completed", epochs: tuple[int, ...] = (4, 2, 2)) -> Path:
    folder.mkdir(parents=True)
    refits = {"seeds": [r["seed"] for r in tuned], "tuned": tuned, **({"baseline": baseline} if baseline else {})}
    summary = {"experiment": folder.name, "dataset": dataset, "protocol": "val", "state": state,
               "trials": [{"trial_id": f"t{i}", "epochs": e} for i, e in enumerate(epochs)],
               "refits": refits if tuned else {}}
    (folder / "study_summary.json").write_text(json.dumps(summary))
    return folder


TUNED = [refit(1, 0.60, 0.55, 0.40), refit(2, 0.62, 0.50, 0.42), refit(3, 0.58, 0.57, 0.41)]
AUTHORS = [refit(1, 0.59, 0.45, 0.35), refit(2, 0.61, 0.44, 0.36), refit(3, 0.60, 0.47, 0.37)]


def t_cell(values) -> str:
    values = np.asarray(values) * 100
    mean, sd = values.mean(), values.std(ddof=1)
    half = stats.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))
    return f"{mean:.1f} ± {sd:.1f} [{mean - half:.1f}, {mean + half:.1f}]"


def test_markdown_table_has_each_configuration_with_intervals_and_the_paired_delta(tmp_path):
    cub = write_study(tmp_path / "msdn-cub-val", "cub", TUNED, AUTHORS)
    results, skipped = collect([cub])
    text = render(results, skipped, "md")
    rows = [line for line in text.splitlines() if line.startswith("| CUB")]
    assert len(rows) == 3  # tuned, authors', published
    tuned, authors, published = ([c.strip() for c in row.strip("|").split("|")] for row in rows)
    assert tuned[1] == "tuned (3 seeds)" and authors[1] == "authors' (3 seeds)"
    for col, key in ((2, "S"), (3, "U"), (4, "H"), (5, "zsl_acc"), (6, "AUSUC")):
        assert tuned[col] == t_cell([r[key] for r in TUNED])
        assert authors[col] == t_cell([r[key] for r in AUTHORS])
    diff = np.array([a["H"] - b["H"] for a, b in zip(TUNED, AUTHORS)]) * 100
    half = stats.t.ppf(0.975, 2) * diff.std(ddof=1) / math.sqrt(3)
    assert tuned[7] == f"{diff.mean():+.1f} [{diff.mean() - half:+.1f}, {diff.mean() + half:+.1f}]"
    assert (tuned[8], tuned[9]) == ("3", "8")  # trials, trial-epochs spent
    assert published[1] == "published (selected on test)"
    assert published[2:6] == [f"{PUBLISHED['cub'][k]:.1f}" for k in ("S", "U", "H", "zsl_acc")]


def test_unfinished_and_refitless_studies_are_named_not_dropped(tmp_path):
    done = write_study(tmp_path / "a", "synthetic", TUNED)
    stopped = write_study(tmp_path / "b", "sun", [], state="interrupted")
    no_refit = write_study(tmp_path / "c", "awa2", [])
    results, skipped = collect([done, stopped, no_refit])
    assert [r.dataset for r in results] == ["synthetic"]
    text = render(results, skipped, "md")
    assert "- not in the table: b: interrupted, no test result yet (continue it with --resume)" in text
    assert "- not in the table: c: completed without refits" in text
    # synthetic has no published figures; one seed-set without a baseline: no delta
    (row,) = [line for line in text.splitlines() if line.startswith("| SYNTHETIC")]
    assert row.split("|")[8].strip() == "—"


def test_latex_is_a_booktabs_table_and_csv_holds_fractions(tmp_path):
    cub = write_study(tmp_path / "cub", "cub", TUNED, AUTHORS)
    sun = write_study(tmp_path / "sun", "sun", TUNED[:1], AUTHORS[:1])
    results, skipped = collect([cub, sun])
    tex = render(results, skipped, "tex")
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == 1 and r"\begin{tabular}{ll" in tex
    assert tex.count(r"\midrule") == 2  # under the header, and between the two benchmarks
    assert "$\\pm$" in tex and "±" not in tex and "—" not in tex
    # one seed: the value alone, no interval
    (sun_tuned,) = [line for line in tex.splitlines() if line.startswith("SUN & tuned")]
    assert f"& {100 * TUNED[0]['S']:.1f} &" in sun_tuned
    rows = list(csv.DictReader(io.StringIO(render(results, skipped, "csv"))))
    first = rows[0]
    assert (first["benchmark"], first["configuration"], first["seeds"]) == ("cub", "tuned", "3")
    assert float(first["H_mean"]) == pytest.approx(np.mean([r["H"] for r in TUNED]), rel=1e-5)
    assert float(first["H_sd"]) == pytest.approx(np.std([r["H"] for r in TUNED], ddof=1), rel=1e-5)
    published = [r for r in rows if r["configuration"] == "published_selected_on_test"]
    assert [float(r["H_mean"]) for r in published] == [0.681, 0.413]


@pytest.mark.slow  # a command run as a user (a subprocess), or seconds of work
def test_cli_writes_the_table_and_the_figure_and_refuses_a_folder_without_a_summary(tmp_path, capsys):
    cub = write_study(tmp_path / "cub", "cub", TUNED, AUTHORS)
    out, png = tmp_path / "t.tex", tmp_path / "h.png"
    assert main([str(cub), "--format", "tex", "--out", str(out), "--plot", str(png)]) == 0
    assert out.read_text().startswith(r"\begin{table}") and png.read_bytes()[:4] == b"\x89PNG"
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "msdn.report", str(cub), str(empty)], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {empty}: no study_summary.json") and "Traceback" not in proc.stderr
