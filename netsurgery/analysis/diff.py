"""Per-layer weight differences between a base model and a model fine-tuned from it (the
paper's Fig. 1–3: where did training change the network?).

Definitions (per layer that carries weights, per array: ``weights`` = the kernel, ``biases``,
and BatchNorm ``scales``, ``rolling_mean``, ``rolling_variance``; Δ = task − base):

- ``rel_mean_abs = mean|Δ| / mean|base|`` and ``rel_l2 = ‖Δ‖₂ / ‖base‖₂``, fractions of the
  base model. A ratio 0/0 is 0 (nothing changed, nothing there); x/0 with x > 0 is ``inf``.
- The element-wise relative change ``|Δ| / (|base| + ε)`` with ε = :data:`EPSILON` = 1e-8
  (so an unchanged zero weight counts 0 and a changed zero weight counts |Δ|·1e8), summarised
  by its quantiles p25, median, p75, p95 and max (numpy's default "linear" interpolation).
- ``cosine`` = ⟨base, task⟩ / (‖base‖·‖task‖); 1 when both tensors are all zero, 0 when only
  one is.
- ``identical``: the two arrays are bit-identical (compared as raw 32-bit words, so −0.0 and
  0.0 differ, and a NaN equals the same NaN).

Each array is compared by :func:`~netsurgery.analysis.tensorstats.tensor_diff` (float64
sums, arrays streamed in cache-sized chunks: see that module).

Layers whose arrays differ in shape (e.g. the conv before a [yolo] whose class count changed)
or in the set of arrays (BatchNorm on in one model only) are skipped and listed, as in the
paper; so are layers a partial weights file does not cover. Networks whose layer lists differ
in length or in type at some index are refused (:class:`~netsurgery.errors.UsageError`).
"""
from __future__ import annotations

import csv
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from netsurgery.analysis.tensorstats import EPSILON, Quantiles, TensorDiff, tensor_diff
from netsurgery.darknet.cfg import Cfg
from netsurgery.darknet.layers import LayerSpec
from netsurgery.darknet.network import Network, build_network
from netsurgery.darknet.weights import WeightsFile, file_layout, load_weights
from netsurgery.errors import UsageError
from netsurgery.fileio import atomic_open

TENSOR_ORDER = ("weights", "biases", "scales", "rolling_mean", "rolling_variance")


# -- data ---------------------------------------------------------------------------------
@dataclass
class LayerDiff:
    """The compared arrays of one layer, by name in file order."""

    index: int
    type: str
    tensors: dict[str, TensorDiff]

    @property
    def identical(self) -> bool:
        return all(t.identical for t in self.tensors.values())


@dataclass
class SkippedLayer:
    """A layer with weights that could not be compared, and why."""

    index: int
    type: str
    base_shape: tuple[int, ...] | None  # the kernel's shape (None: no weights in that file)
    task_shape: tuple[int, ...] | None
    reason: str

    @property
    def changed(self) -> bool:
        """Shapes or arrays differ (True), or one file has no weights for it (False)."""
        return self.base_shape is not None and self.task_shape is not None


@dataclass
class Jump:
    """The largest increase of the kernels' rel_mean_abs between two consecutive compared
    layers with kernels."""

    from_index: int
    to_index: int
    from_value: float
    to_value: float

    @property
    def increase(self) -> float:
        return self.to_value - self.from_value


@dataclass
class DiffSummary:
    n_layers: int
    compared: int  # layers with weights compared
    changed: list[int]  # compared but not bit-identical, or skipped for a shape change
    identical_layers: list[int]  # layers with weights whose arrays are all bit-identical
    identical_prefix: int  # layers 0..k all have bit-identical weights; -1 if layer 0 differs
    first_changed: int | None
    last_changed: int | None
    largest_jump: Jump | None

    def describe_prefix(self) -> str:
        k = self.identical_prefix
        if k < 0:
            return "no bit-identical prefix: the first layer with weights already differs"
        if k >= self.n_layers - 1:
            return f"all {self.n_layers} layers have bit-identical weights"
        return (f"layers 0..{k} are bit-identical: sharing layers 0..k for any k up to {k} "
                "costs nothing")


@dataclass
class DiffReport:
    base_cfg: str | None
    base_weights: str | None
    task_cfg: str | None
    task_weights: str | None
    layers: list[LayerDiff]
    skipped: list[SkippedLayer]
    summary: DiffSummary
    epsilon: float = EPSILON

    @property
    def task_name(self) -> str:
        return Path(self.task_weights).name if self.task_weights else "task"

    @property
    def base_name(self) -> str:
        return Path(self.base_weights).name if self.base_weights else "base"


# -- comparison ---------------------------------------------------------------------------
def _network(cfg: Cfg | Network | str | os.PathLike) -> Network:
    return cfg if isinstance(cfg, Network) else build_network(cfg)


def _weights(weights: WeightsFile | str | os.PathLike, network: Network) -> WeightsFile:
    return weights if isinstance(weights, WeightsFile) else load_weights(weights, network.layers)


def check_same_layers(base: Network, task: Network) -> None:
    """Refuse networks whose layer lists differ in length or in type at some index."""
    for i in range(max(len(base.layers), len(task.layers))):
        b = base.layers[i].type_name if i < len(base.layers) else None
        t = task.layers[i].type_name if i < len(task.layers) else None
        if b != t:
            b_txt = f"[{b}]" if b else f"absent (it has {len(base.layers)} layers)"
            t_txt = f"[{t}]" if t else f"absent (it has {len(task.layers)} layers)"
            raise UsageError(
                f"layer {i}: base {base.path or '<cfg>'} has {b_txt}, task "
                f"{task.path or '<cfg>'} has {t_txt}; the layer lists must match to compare "
                "weights layer by layer")


def _canonical(arrays: dict[str, np.ndarray], spec: LayerSpec, transposed: bool):
    """A layer's arrays from a file in the module's layout (the same for any file header)."""
    return {name: spec.to_module_layout(name, a, transposed) for name, a in arrays.items()}


def _kernel_shape(arrays: dict[str, np.ndarray]) -> tuple[int, ...]:
    arr = arrays.get("weights")
    if arr is None:
        arr = next(iter(arrays.values()))
    return tuple(int(s) for s in arr.shape)


def _skip(index: int, type_name: str, base: dict[str, np.ndarray] | None,
          task: dict[str, np.ndarray] | None, base_path, task_path) -> SkippedLayer | None:
    """Why a layer's arrays cannot be compared, or None when they can."""
    if base is None or task is None:
        which, path = ("base", base_path) if base is None else ("task", task_path)
        return SkippedLayer(index, type_name, None if base is None else _kernel_shape(base),
                            None if task is None else _kernel_shape(task),
                            f"no weights in the {which} file {path} (a partial file)")
    if list(base) != list(task):
        return SkippedLayer(index, type_name, _kernel_shape(base), _kernel_shape(task),
                            f"arrays differ: base has {', '.join(base)}; task has "
                            f"{', '.join(task)}")
    for name in base:
        if base[name].shape != task[name].shape:
            return SkippedLayer(index, type_name, _kernel_shape(base), _kernel_shape(task),
                                f"shapes differ ({name}: {tuple(base[name].shape)} vs "
                                f"{tuple(task[name].shape)})")
    return None


def summarize(n_layers: int, layers: Sequence[LayerDiff],
              skipped: Sequence[SkippedLayer]) -> DiffSummary:
    """First/last changed layer, bit-identical layers and prefix, largest kernel jump."""
    changed = sorted([d.index for d in layers if not d.identical]
                     + [s.index for s in skipped if s.changed])
    identical = [d.index for d in layers if d.identical]
    # the prefix stops at the first layer with weights that is not known to be identical
    not_identical = [d.index for d in layers if not d.identical] + [s.index for s in skipped]
    prefix = (min(not_identical) - 1) if not_identical else n_layers - 1
    jump = None
    kernels = [(d.index, d.tensors["weights"].rel_mean_abs)
               for d in sorted(layers, key=lambda d: d.index) if "weights" in d.tensors]
    for (i, a), (j, b) in zip(kernels, kernels[1:]):
        step = b - a
        if math.isnan(step):
            continue
        if jump is None or step > jump.increase:
            jump = Jump(i, j, a, b)
    return DiffSummary(n_layers, len(layers), changed, identical, prefix,
                       changed[0] if changed else None, changed[-1] if changed else None, jump)


def diff_weights(base_cfg: Cfg | Network | str | os.PathLike,
                 base_weights: WeightsFile | str | os.PathLike,
                 task_cfg: Cfg | Network | str | os.PathLike,
                 task_weights: WeightsFile | str | os.PathLike,
                 workers: int = 1) -> DiffReport:
    """Compare every layer's arrays of ``task_weights`` with ``base_weights``.

    Cfgs may be paths or parsed networks, weights paths or loaded (memory-mapped) files. The
    cfgs must have the same layer types in the same order; a layer whose arrays differ in
    shape is skipped and listed. Weights that do not fit their cfg raise
    :class:`~netsurgery.errors.WeightsError` naming the layer. ``workers`` > 1 compares
    tensors in parallel threads (numpy releases the GIL in its loops; on a busy 2-core
    machine the gain was inconsistent, hence the default 1); the result does not depend on
    it."""
    base_net = _network(base_cfg)
    same_cfg = (isinstance(task_cfg, (str, os.PathLike)) and base_net.path is not None
                and Path(task_cfg).resolve() == Path(base_net.path).resolve())
    task_net = base_net if same_cfg else _network(task_cfg)
    check_same_layers(base_net, task_net)
    base_wf, task_wf = _weights(base_weights, base_net), _weights(task_weights, task_net)
    skipped: list[SkippedLayer] = []
    jobs: list[tuple[int, str, dict[str, np.ndarray], dict[str, np.ndarray]]] = []
    stored = {spec.index for spec, _ in file_layout(base_net.layers)}
    stored |= {spec.index for spec, _ in file_layout(task_net.layers)}
    for index in sorted(stored):
        type_name = base_net.layers[index].type_name
        b, t = base_wf.layers.get(index), task_wf.layers.get(index)
        b = None if b is None else _canonical(b.arrays, base_net.layers[index],
                                              base_wf.header.transposed)
        t = None if t is None else _canonical(t.arrays, task_net.layers[index],
                                              task_wf.header.transposed)
        skip = _skip(index, type_name, b, t, base_wf.path, task_wf.path)
        if skip is not None:
            skipped.append(skip)
        else:
            jobs.append((index, type_name, b, t))
    if workers <= 1:
        layers = [LayerDiff(i, ty, {n: tensor_diff(n, b[n], t[n]) for n in b})
                  for i, ty, b, t in jobs]
    else:
        # the jobs hold views into the memory-mapped files; only running ones copy data
        with ThreadPoolExecutor(workers) as pool:
            futures = [(i, ty, {n: pool.submit(tensor_diff, n, b[n], t[n]) for n in b})
                       for i, ty, b, t in jobs]
            layers = [LayerDiff(i, ty, {n: f.result() for n, f in fs.items()})
                      for i, ty, fs in futures]
    summary = summarize(len(base_net.layers), layers, skipped)
    return DiffReport(base_net.path, base_wf.path, task_net.path, task_wf.path, layers,
                      skipped, summary)


def diff_many(base_cfg: Cfg | Network | str | os.PathLike,
              base_weights: WeightsFile | str | os.PathLike,
              tasks: Iterable[tuple[Cfg | Network | str | os.PathLike,
                                    WeightsFile | str | os.PathLike]],
              workers: int = 1) -> list[DiffReport]:
    """:func:`diff_weights` of several (task cfg, task weights) against one base (read once)."""
    base_net = _network(base_cfg)
    base_wf = _weights(base_weights, base_net)
    return [diff_weights(base_net, base_wf, cfg, weights, workers) for cfg, weights in tasks]


# -- cfg lookup (CLI helper) --------------------------------------------------------------
@dataclass
class CfgChoice:
    """The cfgs to use for a base and its task weights, and notes on any that were guessed."""

    base: Path
    tasks: list[Path]
    notes: list[str] = field(default_factory=list)


def sibling_cfg(weights: str | os.PathLike) -> Path | None:
    """``x.weights`` → ``x.cfg`` beside it, if that file exists."""
    candidate = Path(weights).with_suffix(".cfg")
    return candidate if candidate.is_file() else None


def resolve_cfgs(base_weights: str | os.PathLike, task_weights: Sequence[str | os.PathLike],
                 base_cfg: str | os.PathLike | None = None,
                 task_cfgs: Sequence[str | os.PathLike] = ()) -> CfgChoice:
    """Pick the cfgs: ``base_cfg``, else the base weights' same-stem .cfg (an error if none);
    per task: its ``task_cfgs`` entry (one for all tasks, or one per task), else the task
    weights' same-stem .cfg, else the base cfg. Guesses are described in ``notes``."""
    notes = []
    if base_cfg is None:
        found = sibling_cfg(base_weights)
        if found is None:
            raise UsageError(f"{base_weights}: no cfg given and "
                             f"{Path(base_weights).with_suffix('.cfg')} does not exist; pass "
                             "--cfg BASE.cfg")
        notes.append(f"base cfg: {found} (same stem as {base_weights})")
        base = found
    else:
        base = Path(base_cfg)
    task_cfgs = list(task_cfgs)
    if len(task_cfgs) not in (0, 1, len(task_weights)):
        raise UsageError(f"{len(task_cfgs)} task cfgs for {len(task_weights)} task weights: "
                         "give one for all tasks or one per task")
    tasks = []
    for i, weights in enumerate(task_weights):
        if task_cfgs:
            tasks.append(Path(task_cfgs[i] if len(task_cfgs) > 1 else task_cfgs[0]))
            continue
        found = sibling_cfg(weights)
        if found is not None:
            notes.append(f"task cfg: {found} (same stem as {weights})")
            tasks.append(found)
        else:
            notes.append(f"task cfg: {base} (the base cfg; "
                         f"{Path(weights).with_suffix('.cfg')} does not exist)")
            tasks.append(base)
    return CfgChoice(base, tasks, notes)


# -- output -------------------------------------------------------------------------------
def _num(x: float) -> float | str:
    """JSON has no inf/nan: those are written as the strings "inf", "-inf", "nan"."""
    return x if math.isfinite(x) else str(x)


def _tensor_json(t: TensorDiff) -> dict:
    return {"shape": list(t.shape), "count": t.count, "rel_mean_abs": _num(t.rel_mean_abs),
            "rel_l2": _num(t.rel_l2), "cosine": _num(t.cosine), "identical": t.identical,
            "quantiles": {k: _num(v) for k, v in t.quantiles.as_dict().items()}}


def _shape_json(shape):
    return None if shape is None else list(shape)


def report_to_json(report: DiffReport) -> dict:
    """Plain JSON-able dict: ``base``, ``task``, ``epsilon``, ``layers``, ``skipped``,
    ``summary``. Non-finite numbers are strings ("inf", "nan")."""
    s = report.summary
    jump = None
    if s.largest_jump is not None:
        j = s.largest_jump
        jump = {"from": j.from_index, "to": j.to_index, "from_value": _num(j.from_value),
                "to_value": _num(j.to_value), "increase": _num(j.increase)}
    return {
        "base": {"cfg": report.base_cfg, "weights": report.base_weights},
        "task": {"cfg": report.task_cfg, "weights": report.task_weights},
        "epsilon": report.epsilon,
        "layers": [{"index": d.index, "type": d.type, "identical": d.identical,
                    "tensors": {n: _tensor_json(t) for n, t in d.tensors.items()}}
                   for d in report.layers],
        "skipped": [{"index": k.index, "type": k.type, "base_shape": _shape_json(k.base_shape),
                     "task_shape": _shape_json(k.task_shape), "reason": k.reason}
                    for k in report.skipped],
        "summary": {"n_layers": s.n_layers, "compared": s.compared, "changed": s.changed,
                    "first_changed": s.first_changed, "last_changed": s.last_changed,
                    "identical_layers": s.identical_layers,
                    "identical_prefix": s.identical_prefix, "largest_jump": jump,
                    "text": s.describe_prefix()},
    }


def reports_to_json(reports: Sequence[DiffReport]) -> dict:
    """``{"base": {"cfg", "weights"}, "tasks": [report_to_json(...), ...]}`` for one task or
    several alike."""
    return {"base": {"cfg": reports[0].base_cfg, "weights": reports[0].base_weights},
            "tasks": [report_to_json(r) for r in reports]}


def write_json(reports: DiffReport | Sequence[DiffReport], path: str | os.PathLike) -> None:
    from netsurgery.jsonout import write_document

    if isinstance(reports, DiffReport):
        reports = [reports]
    write_document(path, "diff", reports_to_json(reports))


CSV_COLUMNS = ("task", "index", "type", "tensor", "count", "identical", "rel_mean_abs",
               "rel_l2", "cosine", "p25", "median", "p75", "p95", "max")


def write_csv(reports: DiffReport | Sequence[DiffReport], path: str | os.PathLike) -> None:
    """One row per task × compared layer × array (skipped layers have no row), atomically."""
    if isinstance(reports, DiffReport):
        reports = [reports]
    with atomic_open(path, "w") as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(CSV_COLUMNS)
        for r in reports:
            for d in r.layers:
                for name, t in d.tensors.items():
                    q = t.quantiles
                    out.writerow([r.task_weights, d.index, d.type, name, t.count,
                                  int(t.identical), repr(t.rel_mean_abs), repr(t.rel_l2),
                                  repr(t.cosine), repr(q.p25), repr(q.median), repr(q.p75),
                                  repr(q.p95), repr(q.max)])


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def format_report(report: DiffReport) -> str:
    """Text table: one row per compared layer (kernel: mean, L2, cosine, median, p95, max;
    the other arrays: rel_mean_abs), then the skipped layers and the summary."""
    others = [n for n in TENSOR_ORDER[1:]
              if any(n in d.tensors for d in report.layers)]
    head = ["idx", "type", "W mean", "W l2", "W cos", "W med", "W p95", "W max"]
    head += [{"biases": "B mean", "scales": "S mean", "rolling_mean": "RM mean",
              "rolling_variance": "RV mean"}[n] for n in others]
    head.append("")
    rows = [head]
    for d in report.layers:
        k = d.tensors.get("weights")
        row = [str(d.index), d.type]
        if k is None:
            row += ["-"] * 6
        else:
            q = k.quantiles
            row += [_fmt(k.rel_mean_abs), _fmt(k.rel_l2), f"{k.cosine:.6f}", _fmt(q.median),
                    _fmt(q.p95), _fmt(q.max)]
        row += [_fmt(d.tensors[n].rel_mean_abs) if n in d.tensors else "-" for n in others]
        row.append("identical" if d.identical else "")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"relative differences of {report.task_weights} (cfg {report.task_cfg}) from "
             f"{report.base_weights} (cfg {report.base_cfg})",
             "mean = mean|Δ|/mean|base|, l2 = ‖Δ‖/‖base‖, cos = cosine similarity, med/p95/max "
             f"= quantiles of |Δ|/(|base|+{report.epsilon:g}); W kernel, B biases, S/RM/RV "
             "BatchNorm scales / rolling mean / rolling variance"]
    for r in rows:
        cells = [c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    for k in report.skipped:
        lines.append(f"skipped layer {k.index} [{k.type}]: {k.reason}; kernel "
                     f"{_shape_text(k.base_shape)} (base) vs {_shape_text(k.task_shape)} (task)")
    s = report.summary
    lines.append(f"summary: {s.compared} layers compared, {len(report.skipped)} skipped, "
                 f"{len(s.changed)} changed")
    if s.first_changed is not None:
        lines.append(f"  first changed layer {s.first_changed}, last changed layer "
                     f"{s.last_changed}")
    lines.append(f"  {s.describe_prefix()}")
    if s.identical_layers:
        lines.append(f"  bit-identical layers: {', '.join(map(str, s.identical_layers))}")
    if s.largest_jump is not None:
        j = s.largest_jump
        lines.append(f"  largest jump of the kernels' mean|Δ|/mean|base|: layer {j.from_index} "
                     f"({_fmt(j.from_value)}) -> layer {j.to_index} ({_fmt(j.to_value)})")
    return "\n".join(lines) + "\n"


def _shape_text(shape) -> str:
    return "none" if shape is None else "x".join(str(s) for s in shape)


__all__ = ["EPSILON", "Quantiles", "TensorDiff", "LayerDiff", "SkippedLayer", "Jump",
           "DiffSummary", "DiffReport", "tensor_diff", "check_same_layers", "summarize",
           "diff_weights", "diff_many", "CfgChoice", "sibling_cfg",
           "resolve_cfgs", "report_to_json", "reports_to_json", "write_json", "write_csv",
           "format_report"]
