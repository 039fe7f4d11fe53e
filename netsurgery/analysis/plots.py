"""Charts, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display):
PNG or SVG chosen by the output's extension, written atomically. One section per chart."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory

from netsurgery.errors import UsageError
from netsurgery.fileio import atomic_open

from .diff import DiffReport

FORMATS = {".png": "png", ".svg": "svg"}
DPI = 100


@dataclass
class Chart:
    """A written chart: its path and its size in pixels (PNG; SVG at the same size in pt)."""

    path: str
    width: int
    height: int


def chart_format(path: str | os.PathLike) -> str:
    """``png`` or ``svg`` from the extension; anything else is a UsageError."""
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise UsageError(f"{path}: unsupported chart format {ext or '(no extension)'}; "
                         f"use {' or '.join(FORMATS)}")
    return FORMATS[ext]


def _save(fig: Figure, path: str | os.PathLike) -> Chart:
    fmt = chart_format(path)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format=fmt, dpi=DPI)
    width, height = fig.get_size_inches() * DPI
    return Chart(str(path), int(round(width)), int(round(height)))


# -- relative weight differences (netsurgery diff) -----------------------------------------
# The arrays a diff chart can show, one panel each, with the panel titles
DIFF_ARRAYS = {"weights": "kernels (weights)", "biases": "biases",
               "scales": "BatchNorm scales", "rolling_mean": "BatchNorm rolling mean",
               "rolling_variance": "BatchNorm rolling variance"}
DEFAULT_DIFF_ARRAYS = ("weights", "biases")
Y_LABEL = "relative difference |Δ|/|base|"
X_LABEL = "layer index (Darknet)"


def check_arrays(arrays: Sequence[str]) -> list[str]:
    """The arrays asked for (``--arrays``), each known to the diff chart, none twice."""
    arrays = list(arrays)
    unknown = [a for a in arrays if a not in DIFF_ARRAYS]
    if unknown or not arrays or len(set(arrays)) < len(arrays):
        raise UsageError(f"--arrays {','.join(arrays)}: expected one or more of "
                         f"{','.join(DIFF_ARRAYS)}, each once")
    return arrays


def _diff_axes(n_layers: int, n_panels: int) -> tuple[Figure, list]:
    """The figure and one axes per panel, stacked, sharing the layer axis."""
    width = min(40.0, max(10.0, 0.11 * n_layers))
    fig = Figure(figsize=(width, max(8.0, 3.2 * n_panels)), dpi=DPI, layout="constrained")
    return fig, list(fig.subplots(n_panels, 1, sharex=True, squeeze=False)[:, 0])


# The body of a box (p25..p95 and the mean) decides the scale; the maxima of a few elements
# whose base value is near zero (|Δ|/|base| of 10^5) must not flatten every box to 0.
LOG_SPAN = 1e3  # log axis when the bodies span more than three decades


@dataclass
class YScale:
    """How a panel's y axis is drawn: log, or linear up to ``top`` with larger values
    (the clipped maxima) drawn on the top edge and labelled."""

    log: bool
    top: float | None = None


def choose_scale(body: Sequence[float], log_y: bool | None = None) -> YScale:
    """Log when ``log_y`` or (``log_y`` None) when the positive ``body`` values span more
    than LOG_SPAN; else linear from 0 to a little above the largest body value."""
    import math

    values = [v for v in body if math.isfinite(v) and v > 0]
    if log_y is None:
        log_y = bool(values) and max(values) / min(values) > LOG_SPAN
    if log_y or not values:
        return YScale(bool(log_y))
    return YScale(False, 1.12 * max(values))


def _apply_scale(ax, scale: YScale, outliers: Sequence[tuple[float, float]] = ()) -> None:
    """Set the y axis; on a clipped linear axis draw each (x, value) above the top as a
    marker on the top edge with its value."""
    if scale.log:
        ax.set_yscale("log", nonpositive="clip")
        return
    ax.set_ylim(0.0, scale.top)
    if scale.top is None:
        return
    clipped = [(x, v) for x, v in outliers if v > scale.top]
    if not clipped:
        return
    ax.plot([x for x, _ in clipped], [scale.top] * len(clipped), linestyle="none",
            marker="^", markersize=5, markerfacecolor="white", markeredgecolor="black",
            clip_on=False, zorder=5)
    for x, v in clipped:
        ax.annotate(f"max {v:.3g}", (x, scale.top), xytext=(3, -6),
                    textcoords="offset points", rotation=90, ha="left", va="top",
                    fontsize=7, bbox={"boxstyle": "square,pad=0.1", "facecolor": "white",
                                      "edgecolor": "none", "alpha": 0.8})


def check_marks(marks: Sequence[int], n_layers: int) -> list[int]:
    """Candidate share-until layers must be layer indices of the network."""
    bad = [k for k in marks if not 0 <= k < n_layers]
    if bad:
        raise UsageError(f"--mark {','.join(map(str, bad))}: expected layer indices "
                         f"0..{n_layers - 1}")
    return list(marks)


def _decorate(ax, n_layers: int, skipped: dict[int, str], marks: Sequence[int],
              title: str) -> list:
    """Axes labels, limits, skipped-layer bands and candidate-k lines; returns legend
    handles for what it drew."""
    handles = []
    top = blended_transform_factory(ax.transData, ax.transAxes)
    for index, label in sorted(skipped.items()):
        ax.axvspan(index - 0.5, index + 0.5, color="0.85", zorder=0)
        ax.text(index, 0.97, label, transform=top, rotation=90, ha="center", va="top",
                fontsize=7, color="0.3")
    if skipped:
        handles.append(Patch(color="0.85", label="skipped: shapes differ"))
    for k in marks:
        ax.axvline(k, linestyle="--", color="tab:red", linewidth=1.0, zorder=1)
        ax.text(k, 0.99, f" k={k}", transform=top, ha="left", va="top", fontsize=8,
                color="tab:red")
    if marks:
        handles.append(Line2D([], [], linestyle="--", color="tab:red",
                              label="candidate share-until k"))
    ax.set_xlim(-1, n_layers)
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(Y_LABEL)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return handles


def _skipped_labels(report: DiffReport) -> dict[int, str]:
    out = {}
    for s in report.skipped:
        if s.base_shape is not None and s.task_shape is not None:
            out[s.index] = (f"{s.index}: {s.base_shape[0]}→{s.task_shape[0]} "
                            if s.base_shape[0] != s.task_shape[0] else f"{s.index}: shape ")
        else:
            out[s.index] = f"{s.index}: no weights "
    return out


def plot_diff(report: DiffReport, path: str | os.PathLike, log_y: bool | None = None,
              marks: Sequence[int] = (), title: str | None = None,
              arrays: Sequence[str] = DEFAULT_DIFF_ARRAYS) -> Chart:
    """One panel per array of ``arrays`` (default kernels and biases; also ``scales``,
    ``rolling_mean``, ``rolling_variance``: see :data:`DIFF_ARRAYS`): per layer a box from
    the quantiles of |Δ|/(|base|+ε) (p25–p75 box, median line, whisker to p95, max as an
    outlier marker), the mean mean|Δ|/mean|base| as a diamond, bit-identical layers as ticks
    on the x axis, skipped layers as grey bands, ``marks`` as dashed lines. Written to
    ``path`` (.png or .svg).

    The y axis of each panel follows :func:`choose_scale` (``log_y`` True/False forces log
    or linear): linear axes end above the whiskers and means, and maxima beyond are drawn on
    the top edge with their value."""
    chart_format(path)
    arrays = check_arrays(arrays)
    n = report.summary.n_layers
    marks = check_marks(marks, n)
    fig, axes = _diff_axes(n, len(arrays))
    fig.suptitle(title or f"Relative difference per layer: {report.task_name} vs base "
                          f"{report.base_name}")
    skipped = _skipped_labels(report)
    for ax, tensor in zip(axes, arrays):
        beyond = _box_panel(ax, report, tensor, log_y)
        handles = _box_handles() + _decorate(ax, n, skipped, marks, DIFF_ARRAYS[tensor])
        ax.legend(handles=handles + beyond, loc="upper left", bbox_to_anchor=(1.005, 1.0),
                  fontsize=7)
    return _save(fig, path)


def _box_stats(report: DiffReport, tensor: str) -> tuple[list[dict], list[int], list[int]]:
    """Matplotlib box statistics of the changed layers of one array, their layer indices,
    and the indices of the layers where that array is bit-identical."""
    stats, positions, identical = [], [], []
    for layer in report.layers:
        t = layer.tensors.get(tensor)
        if t is None:
            continue
        if t.identical:
            identical.append(layer.index)
            continue
        q = t.quantiles
        stats.append({"med": q.median, "q1": q.p25, "q3": q.p75, "whislo": q.p25,
                      "whishi": q.p95, "fliers": [q.max], "mean": t.rel_mean_abs})
        positions.append(layer.index)
    return stats, positions, identical


def _box_panel(ax, report: DiffReport, tensor: str, log_y: bool | None) -> list:
    """One array's boxes per layer, its bit-identical ticks and its y scale; returns the
    legend entry for maxima drawn on the top edge, if any."""
    stats, positions, identical = _box_stats(report, tensor)
    if stats:
        ax.bxp(stats, positions=positions, widths=0.6, showmeans=True, showfliers=True,
               manage_ticks=False, patch_artist=True,
               boxprops={"facecolor": "tab:blue", "alpha": 0.35, "linewidth": 0.8},
               medianprops={"color": "tab:blue", "linewidth": 1.2},
               whiskerprops={"linewidth": 0.8}, capprops={"linewidth": 0.8},
               flierprops={"marker": "^", "markersize": 3, "markerfacecolor": "black",
                           "markeredgecolor": "black"},
               meanprops={"marker": "D", "markersize": 3, "markerfacecolor": "tab:orange",
                          "markeredgecolor": "tab:orange"})
    else:
        ax.text(0.5, 0.5, f"no changed {DIFF_ARRAYS[tensor]}", transform=ax.transAxes,
                ha="center", color="0.4")
    bottom = blended_transform_factory(ax.transData, ax.transAxes)
    if identical:
        ax.plot(identical, [0.0] * len(identical), linestyle="none", marker="|",
                markersize=12, color="tab:green", transform=bottom, clip_on=False)
    scale = choose_scale([v for st in stats for v in (st["q1"], st["med"], st["q3"],
                                                      st["whishi"], st["mean"])], log_y)
    _apply_scale(ax, scale, [(x, st["fliers"][0]) for x, st in zip(positions, stats)])
    if scale.top is not None and any(st["fliers"][0] > scale.top for st in stats):
        return [Line2D([], [], linestyle="none", marker="^", markersize=5,
                       markerfacecolor="white", markeredgecolor="black",
                       label="max beyond the axis (value)")]
    return []


def _box_handles() -> list:
    """Legend entries of the box panels' marks."""
    return [Patch(facecolor="tab:blue", alpha=0.35, label="p25–p75"),
            Line2D([], [], color="tab:blue", label="median"),
            Line2D([], [], color="black", linewidth=0.8, label="whisker to p95"),
            Line2D([], [], linestyle="none", marker="^", color="black", markersize=4,
                   label="max"),
            Line2D([], [], linestyle="none", marker="D", color="tab:orange",
                   markersize=4, label="mean|Δ|/mean|base|"),
            Line2D([], [], linestyle="none", marker="|", color="tab:green",
                   markersize=10, label="bit-identical")]


def _task_labels(reports: Sequence[DiffReport]) -> list[str]:
    names = [r.task_name for r in reports]
    if len(set(names)) < len(names):  # same file name in different folders
        names = [r.task_weights or f"task {i + 1}" for i, r in enumerate(reports)]
    return names


def plot_diff_tasks(reports: Sequence[DiffReport], path: str | os.PathLike,
                    log_y: bool | None = None, marks: Sequence[int] = (),
                    labels: Sequence[str] | None = None, title: str | None = None,
                    arrays: Sequence[str] = DEFAULT_DIFF_ARRAYS) -> Chart:
    """Several task models against one base on the same axes, one panel per array of
    ``arrays`` (as in :func:`plot_diff`): per
    task a line with markers of mean|Δ|/mean|base| per layer and a thin bar from p25 to p75,
    skipped layers (of any task) as grey bands, ``marks`` as dashed lines. The y axis as in
    :func:`plot_diff` (chosen from the means and bars unless ``log_y`` says)."""
    chart_format(path)
    if not reports:
        raise UsageError("no task reports to plot")
    arrays = check_arrays(arrays)
    labels = list(labels) if labels is not None else _task_labels(reports)
    n = max(r.summary.n_layers for r in reports)
    marks = check_marks(marks, n)
    fig, axes = _diff_axes(n, len(arrays))
    fig.suptitle(title or f"Relative difference per layer vs base {reports[0].base_name}: "
                          f"{', '.join(labels)}")
    skipped: dict[int, str] = {}
    for r in reports:
        skipped.update(_skipped_labels(r))
    m = len(reports)
    for ax, tensor in zip(axes, arrays):
        handles, body = [], []
        for j, (r, name) in enumerate(zip(reports, labels)):
            color = f"C{j % 10}"
            rows = [(d.index, d.tensors[tensor]) for d in r.layers if tensor in d.tensors]
            xs = [i for i, _ in rows]
            ax.plot(xs, [t.rel_mean_abs for _, t in rows], marker="o", markersize=3,
                    linewidth=1.0, color=color)
            offset = (j - (m - 1) / 2) * 0.15
            ax.vlines([x + offset for x in xs], [t.quantiles.p25 for _, t in rows],
                      [t.quantiles.p75 for _, t in rows], color=color, alpha=0.5,
                      linewidth=2.0)
            handles.append(Line2D([], [], color=color, marker="o", markersize=3, label=name))
            body += [v for _, t in rows for v in (t.rel_mean_abs, t.quantiles.p25,
                                                  t.quantiles.p75)]
        handles.append(Line2D([], [], color="0.3", marker="o", markersize=3,
                              label="line: mean|Δ|/mean|base|"))
        handles.append(Line2D([], [], color="0.3", alpha=0.5, linewidth=2.0,
                              label="bar: p25–p75 of |Δ|/|base|"))
        _apply_scale(ax, choose_scale(body, log_y))
        handles += _decorate(ax, n, skipped, marks, DIFF_ARRAYS[tensor])
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7)
    return _save(fig, path)


__all__ = ["DIFF_ARRAYS", "Chart", "FORMATS", "YScale", "chart_format", "check_arrays",
           "check_marks", "choose_scale", "plot_diff", "plot_diff_tasks"]



# -- precision-recall curves of an evaluation -------------------------------------------------
def plot_pr_curves(result, path: str | os.PathLike, title: str = "") -> Chart:
    """Precision against recall per class of an :class:`~netsurgery.detection.evaluate.EvalResult`
    (classes with ground truth, at most 20), AP in the legend. PNG or SVG by extension."""
    import numpy as np

    chart_format(path)
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    shown = [c for c in result.classes if c.n_truth > 0 and c.curve is not None][:20]
    for c in shown:
        precision, recall = c.curve
        ax.step(np.concatenate([[0.0], recall]), np.concatenate([[1.0], precision]),
                where="post", label=f"{c.name} (AP {c.ap * 100:.1f} %)")
    ax.set_xlabel("recall (fraction of ground-truth objects found)")
    ax.set_ylabel("precision (fraction of detections correct)")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"precision-recall at IoU {result.iou_thresh:.2f}, mAP "
                          f"{result.map * 100:.2f} %")
    if shown:
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return _save(fig, path)


# -- training loss (netsurgery train) ---------------------------------------------------------
def plot_loss(iterations: Sequence[int], losses: Sequence[float],
              path: str | os.PathLike) -> Chart:
    """Loss per image against the iteration, with a running mean of up to 20 iterations (a
    third of a short run, so that the mean is a line too); a log axis when the loss spans
    more than a factor 20. PNG or SVG by extension."""
    import numpy as np

    chart_format(path)
    its, loss = np.array(iterations, dtype=int), np.array(losses, dtype=float)
    fig = Figure(figsize=(7, 4), dpi=DPI)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(its, loss, lw=0.8, alpha=0.5, label="loss per image")
    if len(loss) >= 5:
        k = min(20, max(2, len(loss) // 3))
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(its[k - 1:], smooth, lw=1.6, label=f"running mean of {k} iterations")
    if len(loss) and loss.min() > 0 and loss.max() / loss.min() > 20:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss per image")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


# -- suggest-k: predicted mAP and savings against k -------------------------------------------
def plot_suggestion(suggestion, path: str | os.PathLike,
                    measured: dict[int, list[float]] | None = None) -> Chart:
    """Predicted mAP@0.5 (± its uncertainty) against k of a
    :class:`~netsurgery.analysis.suggest.Suggestion`, the recommended k marked, params and
    FLOPs shared on a second axis; ``measured`` (k -> mAPs of sweep runs, 0..1) adds the
    measured curve (mean, min–max band when several)."""
    chart_format(path)
    cands = suggestion.candidates
    ks = [c.k for c in cands]
    fig = Figure(figsize=(7.5, 5.6))
    ax = fig.add_subplot()
    ax.errorbar(ks, [c.predicted_map * 100 for c in cands],
                yerr=[c.map_sigma * 100 for c in cands], fmt="o-", color="tab:blue",
                capsize=3, label="predicted mAP@0.5 (± uncertainty)")
    ax.plot(ks, [c.observed_map * 100 for c in cands], "x", color="tab:blue",
            label="short run's own mAP@0.5 (the line is fitted to these against speed)")
    if measured:
        mk = sorted(measured)
        values = [measured[k] for k in mk]
        ax.plot(mk, [sum(v) / len(v) * 100 for v in values], "D-", color="black",
                label=f"measured by sweep (mean of {max(len(v) for v in values)} runs)")
        ax.fill_between(mk, [min(v) * 100 for v in values], [max(v) * 100 for v in values],
                        color="0.6", alpha=0.3, label="measured min–max")
    ax.axvline(suggestion.recommended, color="tab:red", linestyle="--", linewidth=1.2,
               label=f"recommended k={suggestion.recommended} (confidence "
                     f"{suggestion.confidence:.2f})")
    ax.set_xlabel("share-until layer k (Darknet index)")
    ax.set_xticks(sorted(set(ks) | set(measured or ())))
    ax.set_ylabel("mAP@0.5 (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(ks, [c.params_fraction * 100 for c in cands], "s:", color="tab:green",
             label="params shared (saved per extra detector)")
    ax2.plot(ks, [c.bflops_fraction * 100 for c in cands], "^:", color="tab:orange",
             label="FLOPs shared (saved per extra detector)")
    ax2.set_ylabel("share of one detector (%)")
    ax2.set_ylim(0, 100)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    # below the axes: inside, it would hide the curves it explains
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13),
              ncol=2, frameon=False)
    ax.set_title(f"suggest-k: tolerance {suggestion.tolerance:g} points, "
                 f"{suggestion.candidates[0].iterations} of {suggestion.target_iterations} "
                 f"iterations per candidate ({suggestion.dtype})", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
