"""Timing statistics, ratios, and the CSV / Markdown / PNG writers the benchmarks share."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Throughput and latency of one mode over a fixed amount of work.

    images:    images processed.
    seconds:   wall-clock time for all of them (the throughput's denominator).
    latencies: seconds per request (one image, or one batch), for the percentiles.
    """

    images: int
    seconds: float
    latencies: tuple[float, ...]

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    @property
    def p50_ms(self) -> float:
        return percentile_ms(self.latencies, 50)

    @property
    def p99_ms(self) -> float:
        return percentile_ms(self.latencies, 99)

    def __add__(self, other: "Timing") -> "Timing":
        return Timing(self.images + other.images, self.seconds + other.seconds, self.latencies + other.latencies)


def percentile_ms(latencies_s: Iterable[float], q: float) -> float:
    """The q-th percentile in milliseconds, linear interpolation between samples (numpy's default, and
    what perf_analyzer reports too for its own samples)."""
    values = np.asarray(list(latencies_s), dtype=np.float64)
    return float(np.percentile(values, q) * 1000.0) if values.size else float("nan")


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None:
        return None
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator <= 0:
        return None
    return numerator / denominator


def overhead(served: float | None, in_process: float | None) -> float | None:
    """Triton's throughput overhead over in-process: 1 - served/in-process (0.08 = 8 % slower; negative:
    the server was faster, e.g. because it overlaps detectors or batches across requests)."""
    r = ratio(served, in_process)
    return None if r is None else 1.0 - r


def agreement(reference: list[np.ndarray], ours: list[np.ndarray]) -> dict:
    """Per-head probability arrays [N, k] of two pipelines -> max |dprob| over everything, and the share of
    images whose top-1 label matches on every head."""
    if not reference:
        return {"max_abs_prob": None, "top1_agreement": None}
    diff = max(float(np.abs(np.asarray(r) - np.asarray(o)).max()) for r, o in zip(reference, ours))
    same = np.all([np.asarray(r).argmax(1) == np.asarray(o).argmax(1) for r, o in zip(reference, ours)], axis=0)
    return {"max_abs_prob": diff, "top1_agreement": float(np.mean(same))}


# ---------------------------------------------------------------------------------------------------
# formatting


def fmt(value, spec: str = "sig3") -> str:
    """One table cell. spec: "sig3" (3 significant digits), "x" (ratio, 2 decimals + x), "pct", "sci",
    "int", or a format() spec. None / NaN -> an em dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, str):
        return value
    if spec == "sig3":
        if value == 0:
            return "0"
        digits = max(0, 2 - int(math.floor(math.log10(abs(value)))))
        return f"{value:,.{digits}f}" if abs(value) < 1e6 else f"{value:.3g}"
    if spec == "x":
        return f"{value:.2f}×"
    if spec == "pct":
        return f"{100 * value:.1f} %"
    if spec == "sci":
        return "0" if value == 0 else f"{value:.1e}"
    if spec == "int":
        return f"{int(round(value))}"
    return format(value, spec)


Column = tuple[str, str, str]  # (row key, header, fmt spec)


def markdown_table(rows: list[dict], columns: list[Column]) -> str:
    header = "| " + " | ".join(h.replace("|", "\\|") for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(fmt(row.get(key), spec).replace("|", "\\|") for key, _, spec in columns) + " |"
            for row in rows]
    return "\n".join([header, rule, *body])


def text_table(rows: list[dict], columns: list[Column]) -> str:
    """The same table for a terminal: aligned columns, no Markdown."""
    cells = [[h for _, h, _ in columns]] + [[fmt(row.get(k), s) for k, _, s in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """Rows as CSV: `columns` first (in order), then any other key any row has; raw numbers, no units."""
    keys = list(columns or [])
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in keys})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue())
    return path


def _csv_cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return value


# ---------------------------------------------------------------------------------------------------
# plot


def plot_latency_throughput(path: Path, series: dict[str, list[dict]], title: str,
                            label: Callable[[str], str] = str) -> Path | None:
    """One panel per model: throughput (x) against p50 (solid) and p99 (dashed) latency (y), one line per
    protocol through its concurrency levels (annotated). `series`: model -> rows with protocol,
    concurrency, throughput, p50_ms, p99_ms. Returns None (and says why) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: PNG plot skipped (pip install matplotlib)")
        return None
    models = list(series)
    cols = min(4, len(models))
    nrows = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.6 * nrows), squeeze=False)
    colours = {"http": "tab:blue", "grpc": "tab:orange"}
    for ax, model in zip(axes.flat, models):
        rows = series[model]
        for protocol in sorted({r["protocol"] for r in rows}):
            pts = sorted((r for r in rows if r["protocol"] == protocol), key=lambda r: r["concurrency"])
            x = [r["throughput"] for r in pts]
            colour = colours.get(protocol)
            ax.plot(x, [r["p50_ms"] for r in pts], "o-", color=colour, label=f"{protocol} p50")
            ax.plot(x, [r["p99_ms"] for r in pts], "s--", color=colour, alpha=0.7, label=f"{protocol} p99")
            for r in pts:
                ax.annotate(f"c{r['concurrency']}", (r["throughput"], r["p50_ms"]), fontsize=7,
                            textcoords="offset points", xytext=(3, -9))
        ax.set_title(label(model), fontsize=10)
        ax.set_xlabel("throughput (images/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
