"""A paper's results table from finished studies: per benchmark, the tuned and the authors' configuration.

    python -m msdn.report results/msdn-cub-val results/msdn-sun-val results/msdn-awa2-val
    python -m msdn.report results/msdn-*-val --format tex --out table.tex     # booktabs, ready for a paper
    python -m msdn.report results/msdn-*-val --format csv --plot h.png        # and the figure of H

Each RESULT_DIR is a study's result folder (`<storage>/<experiment>/`); the study leaves its outcome there
as `study_summary.json` however it ends. For each finished study with refits the table gives the tuned
configuration and the authors' configuration, each S, U, H, ZSL and AUSUC as mean ± sd [95% interval]
over the refit seeds (tested once each), the paired difference of H (tuned - authors', by seed) with its
interval, the trials and trial-epochs the study spent, and, labelled as selected on test, the figures
the MSDN authors published. A study that is unfinished or has no refits is named in one line under the
table, never silently dropped. Pure reading and formatting: no Ray, no MLflow.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .cli import ExpectedError, cli_entry, command_parser
from .study.report import SUMMARY_FILE
from .study.stats import Interval, paired_difference, t_interval

FORMATS = ("md", "tex", "csv")
# The MSDN authors' README figures (GZSL with calibrated stacking; epoch and gamma selected on the test split), in %.
PUBLISHED: dict[str, dict[str, float]] = {
    "cub": {"S": 67.5, "U": 68.7, "H": 68.1, "zsl_acc": 76.1},
    "sun": {"S": 34.2, "U": 52.2, "H": 41.3, "zsl_acc": 65.8},
    "awa2": {"S": 74.5, "U": 62.0, "H": 67.7, "zsl_acc": 70.1},
}
PUBLISHED_LABEL = "published (selected on test)"
HEADERS = {"S": "S", "U": "U", "H": "H", "zsl_acc": "ZSL", "AUSUC": "AUSUC"}
CONFIG_LABELS = {"tuned": "tuned", "baseline": "authors'"}


class ReportError(ExpectedError):
    """A result folder that cannot be read as a study's."""


@dataclass(frozen=True)
class ConfigRow:
    """One configuration of one benchmark: its figures over the refit seeds (fractions)."""

    config: str  # "tuned" or "baseline"
    seeds: int
    stats: dict[str, Interval]


@dataclass(frozen=True)
class BenchmarkResult:
    """What the table says of one study."""

    dataset: str
    experiment: str
    folder: str
    trials: int
    trial_epochs: int
    rows: list[ConfigRow] = field(default_factory=list)
    delta_h: Interval | None = None


@dataclass(frozen=True)
class Skipped:
    """A study the table cannot show, and why, in one line."""

    folder: str
    reason: str


def read_summary(folder: str | Path) -> dict[str, Any]:
    """The study_summary.json of a result folder; ReportError naming the folder when there is none or it is not JSON."""
    path = Path(folder) / SUMMARY_FILE
    if Path(folder).is_file():
        raise ReportError(f"{folder} is a file; expected a study's result folder (<storage>/<experiment>/ holding "
                          f"{SUMMARY_FILE})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{folder}: no {SUMMARY_FILE}; expected a study's result folder (<storage>/<experiment>/), "
                          "written by tune/run.py as the study ends") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not a readable study summary ({type(exc).__name__}); expected the JSON file "
                          "tune/run.py writes") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _stats(records: Sequence[dict[str, Any]]) -> dict[str, Interval]:
    return {key: t_interval([float(r[key]) for r in records]) for key in HEADERS
            if records and all(isinstance(r.get(key), (int, float)) for r in records)}


def benchmark_result(folder: str | Path, summary: dict[str, Any]) -> BenchmarkResult | Skipped:
    """The table's entry of one study, or why it has none (unfinished, or no refits)."""
    name = summary.get("experiment") or Path(folder).name
    state = summary.get("state", "unknown")
    refits = summary.get("refits") or {}
    if state != "completed":
        return Skipped(str(folder), f"{name}: {state}, no test result yet (continue it with --resume)")
    if not refits.get("tuned"):
        return Skipped(str(folder), f"{name}: completed without refits (--no-refit or the paper protocol): "
                                    "no test result to report")
    trials = summary.get("trials") or []
    rows = [ConfigRow("tuned", len(refits["tuned"]), _stats(refits["tuned"]))]
    delta = None
    if refits.get("baseline"):
        rows.append(ConfigRow("baseline", len(refits["baseline"]), _stats(refits["baseline"])))
        by_seed = {r["seed"]: r["H"] for r in refits["baseline"]}
        pairs = [(r["H"], by_seed[r["seed"]]) for r in refits["tuned"] if r["seed"] in by_seed]
        delta = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
    return BenchmarkResult(dataset=str(summary.get("dataset", "")), experiment=name, folder=str(folder),
                           trials=len(trials), trial_epochs=sum(int(t.get("epochs") or 0) for t in trials),
                           rows=rows, delta_h=delta)


def collect(folders: Sequence[str | Path]) -> tuple[list[BenchmarkResult], list[Skipped]]:
    """Read every folder (all of them, before any output: a bad one fails the whole command)."""
    results, skipped = [], []
    for folder in folders:
        entry = benchmark_result(folder, read_summary(folder))
        (skipped if isinstance(entry, Skipped) else results).append(entry)
    return results, skipped


# ---------------------------------------------------------------------------------------------------
# Cells


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def cell(interval: Interval | None, *, tex: bool = False) -> str:
    """mean ± sd [low, high] in % (one seed: the value alone); '—' when missing."""
    if interval is None or not _finite(interval.mean):
        return "--" if tex else "—"
    if not _finite(interval.sd):
        return f"{100 * interval.mean:.1f}"
    pm = r"$\pm$" if tex else "±"
    return (f"{100 * interval.mean:.1f} {pm} {100 * interval.sd:.1f} "
            f"[{100 * interval.low:.1f}, {100 * interval.high:.1f}]")


def delta_cell(interval: Interval | None, *, tex: bool = False) -> str:
    """+d.d [low, high] points of H; '—' without a baseline."""
    if interval is None or not _finite(interval.mean):
        return "--" if tex else "—"
    text = f"{100 * interval.mean:+.1f}"
    if _finite(interval.low):
        text += f" [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]"
    return text


def table_rows(results: Sequence[BenchmarkResult], *, tex: bool = False) -> list[list[str]]:
    """The table body: per benchmark its configurations, then the published figures when there are some."""
    rows = []
    for result in results:
        for row in result.rows:
            label = f"{CONFIG_LABELS[row.config]} ({row.seeds} seed{'s' if row.seeds != 1 else ''})"
            delta = delta_cell(result.delta_h, tex=tex) if row.config == "tuned" else ""
            spent = [str(result.trials), str(result.trial_epochs)] if row.config == "tuned" else ["", ""]
            rows.append([result.dataset.upper(), label, *(cell(row.stats.get(k), tex=tex) for k in HEADERS),
                         delta, *spent])
        published = PUBLISHED.get(result.dataset)
        if published:
            rows.append([result.dataset.upper(), PUBLISHED_LABEL,
                         *(f"{published[k]:.1f}" if k in published else ("--" if tex else "—") for k in HEADERS),
                         "", "", ""])
    return rows


COLUMNS = ["benchmark", "configuration", *HEADERS.values(), "ΔH (tuned − authors')", "trials", "trial-epochs"]


def markdown(results: Sequence[BenchmarkResult], skipped: Sequence[Skipped]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    lines += ["", "Test accuracies in %, mean ± sd [95% t interval] over the refit seeds, each refit tested once; "
                  "ΔH paired by seed. The published figures chose the epoch and the calibration on the test split."]
    lines += [f"- not in the table: {s.reason}" for s in skipped]
    return "\n".join(lines) + "\n"


def latex(results: Sequence[BenchmarkResult], skipped: Sequence[Skipped]) -> str:
    """A booktabs table (\\usepackage{booktabs}); one \\midrule between benchmarks."""
    header = ["Benchmark", "Configuration", *HEADERS.values(), r"$\Delta$H", "Trials", "Trial-epochs"]
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{ll" + "c" * (len(header) - 2) + "}",
             r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    previous = None
    for row in table_rows(results, tex=True):
        if previous is not None and row[0] != previous:
            lines.append(r"\midrule")
        shown = [row[0] if row[0] != previous else "", *row[1:]]
        previous = row[0]
        lines.append(" & ".join(_tex_escape(c) for c in shown) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}",
              r"\caption{GZSL test accuracy (\%), mean $\pm$ sd [95\% t interval] over refit seeds, each tested "
              r"once; $\Delta$H is paired by seed. Published figures select the epoch and calibration on the "
              r"test split.}",
              r"\end{table}"]
    lines += [f"% not in the table: {s.reason}" for s in skipped]
    return "\n".join(lines) + "\n"


def _tex_escape(text: str) -> str:
    if "$" in text:
        return text
    return text.replace("%", r"\%").replace("_", r"\_").replace("&", r"\&")


def csv_text(results: Sequence[BenchmarkResult], skipped: Sequence[Skipped]) -> str:
    """One row per benchmark and configuration; numbers as fractions, one column per statistic."""
    out = io.StringIO()
    writer = csv.writer(out)
    stats = ("mean", "sd", "ci_low", "ci_high")
    writer.writerow(["benchmark", "experiment", "configuration", "seeds",
                     *(f"{k}_{s}" for k in HEADERS for s in stats),
                     "delta_H_mean", "delta_H_ci_low", "delta_H_ci_high", "trials", "trial_epochs"])
    for result in results:
        for row in result.rows:
            values = []
            for key in HEADERS:
                i = row.stats.get(key)
                values += [_num(getattr(i, a)) if i else "" for a in ("mean", "sd", "low", "high")]
            d = result.delta_h if row.config == "tuned" else None
            writer.writerow([result.dataset, result.experiment, row.config, row.seeds, *values,
                             *([_num(d.mean), _num(d.low), _num(d.high)] if d else ["", "", ""]),
                             result.trials, result.trial_epochs])
        published = PUBLISHED.get(result.dataset)
        if published:
            writer.writerow([result.dataset, "", "published_selected_on_test", "",
                             *(v for k in HEADERS for v in ([_num(published[k] / 100), "", "", ""] if k in published
                                                               else ["", "", "", ""])), "", "", "", "", ""])
    for s in skipped:
        writer.writerow([f"# not in the table: {s.reason}"])
    return out.getvalue()


def _num(x: float) -> str:
    return f"{x:.6g}" if _finite(x) else ""


RENDERERS = {"md": markdown, "tex": latex, "csv": csv_text}


def render(results: Sequence[BenchmarkResult], skipped: Sequence[Skipped], fmt: str = "md") -> str:
    return RENDERERS[fmt](results, skipped)


def plot_h(results: Sequence[BenchmarkResult], path: Path) -> Path:
    """H per benchmark with its 95% interval: tuned and authors' (over the refit seeds) and the published value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * max(len(results), 1), 3.6), dpi=120)
    width = 0.27
    for k, result in enumerate(results):
        for j, (label, color) in enumerate((("tuned", "tab:green"), ("baseline", "tab:blue"))):
            row = next((r for r in result.rows if r.config == label), None)
            if row is None or "H" not in row.stats:
                continue
            h = row.stats["H"]
            err = ([[100 * (h.mean - h.low)], [100 * (h.high - h.mean)]] if _finite(h.low) else None)
            ax.bar(k + (j - 1) * width, 100 * h.mean, width, yerr=err, capsize=3, color=color,
                   label=CONFIG_LABELS[label] + " (95% interval)" if k == 0 else None)
        published = PUBLISHED.get(result.dataset)
        if published:
            ax.bar(k + width, published["H"], width, color="lightgray", edgecolor="gray", hatch="//",
                   label=PUBLISHED_LABEL if k == 0 else None)
    ax.set_xticks(range(len(results)), [r.dataset.upper() for r in results])
    ax.set_ylabel("test H (%)")
    ax.set_title("GZSL H: tuned vs the authors' configuration")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "python -m msdn.report",
        "One table from finished studies: per benchmark, the tuned and the authors' configuration over the refit "
        "seeds, the paired difference of H, what the study spent, and the published figures.",
        "python -m msdn.report results/msdn-cub-val results/msdn-sun-val results/msdn-awa2-val",
        "python -m msdn.report results/msdn-*-val --format tex --out table.tex",
        "python -m msdn.report results/msdn-*-val --format csv --plot h.png",
    )
    parser.add_argument("folders", nargs="+", metavar="RESULT_DIR",
                        help="a study's result folder (<storage>/<experiment>/ holding study_summary.json)")
    out = parser.add_argument_group("output")
    out.add_argument("--format", choices=FORMATS, default="md", help="md (Markdown), tex (booktabs) or csv")
    out.add_argument("--out", metavar="FILE", help="write the table here instead of printing it")
    out.add_argument("--plot", metavar="PNG", help="also draw H with its interval per benchmark into this file")
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results, skipped = collect(args.folders)
    text = render(results, skipped, args.format)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"table: {args.out}")
    else:
        sys.stdout.write(text)
    if args.plot:
        if not results:
            raise ReportError("--plot: no finished study with refits among the folders; nothing to draw")
        print(f"figure: {plot_h(results, Path(args.plot))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
