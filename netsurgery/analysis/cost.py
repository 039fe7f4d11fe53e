"""Cost accounting: parameters and FLOPs per layer, Darknet's "Total BFLOPS", and what sharing
layers 0..k between detectors saves (the paper's Table I).

Conventions
-----------
- Parameters are every float the layer stores in a .weights file (``spec.params``): biases,
  BatchNorm scales *and* rolling statistics, kernels.
- FLOPs are Darknet's per-layer counts (``spec.flops()``: conv 2·weights·out_h·out_w, maxpool,
  shortcut, connected ...). Darknet keeps each layer's BFLOPS as a C ``float`` and sums them in a
  ``float``; :attr:`LayerCost.bflops` and :attr:`CostReport.total_bflops` do the same, so
  ``f"{total_bflops:.3f}"`` is what Darknet prints (yolov3-voc: 65.442, not float64's 65.443).
- Fractions (cumulative and share-until) are exact: ratios of the integer-valued float64 FLOP
  counts over **all** layers (the definition of Darknet's total), and of parameter counts.
- Share-until ``k``: layers 0..k inclusive are shared, k+1.. are replicated per task.

Paper check (YOLOv3 at 416, Table I): these definitions give params 0.65515 / 0.40118 /
0.15559 / 0.09202 and FLOPs 0.74449 / 0.66378 / 0.50505 / 0.42434 for k = 73 / 64 / 48 / 40.
Rounded to 3 decimals that is the paper's table except k=64 FLOPs (paper 0.663, here 0.664);
counting conv FLOPs only gives 0.66372, also 0.664, so the all-layers total is kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from netsurgery.darknet.layers import LayerSpec
from netsurgery.darknet.network import Network
from netsurgery.darknet.weights import WeightsFile, expected_size, file_layout, nonfinite_report
from netsurgery.errors import UsageError

if TYPE_CHECKING:
    from netsurgery.surgery.heads import MergedHeads


@dataclass
class LayerCost:
    """One row of the cost table."""

    index: int
    type: str
    describe: str
    input_shapes: list[list[int]]  # [c, h, w] of every layer read (network input for -1)
    output: list[int]  # [c, h, w]
    params: int
    bflops: float  # float32 value, as Darknet keeps it
    cum_params_fraction: float  # layers 0..index over the whole network
    cum_bflops_fraction: float
    weights_present: bool | None = None  # None: no weights file given, or nothing stored
    nonfinite: int = 0  # NaN/Inf values in this layer's arrays (with a weights file)


@dataclass
class HeadCost:
    """One detector of a merged network as a standalone network: its trunk 0..k and tail."""

    name: str
    params: int
    bflops: float


@dataclass
class MergeSavings:
    """N detectors run as N separate networks versus one merged network sharing their trunk.

    From :meth:`ShareCost.merge_savings` (N copies of one detector, predicted) or from
    :func:`merge_savings` (a real merged network: ``per_head`` holds each head's own cost)."""

    n_tasks: int
    params_separate: int
    params_merged: int
    bflops_separate: float
    bflops_merged: float
    per_head: list[HeadCost] = field(default_factory=list)
    bflops_gated: float | None = None  # expected per image with gates (None: no gate)

    @property
    def params_saved(self) -> int:
        return self.params_separate - self.params_merged

    @property
    def bflops_saved(self) -> float:
        return self.bflops_separate - self.bflops_merged

    @property
    def params_saved_fraction(self) -> float:
        return self.params_saved / self.params_separate if self.params_separate else 0.0

    @property
    def bflops_saved_fraction(self) -> float:
        return self.bflops_saved / self.bflops_separate if self.bflops_separate else 0.0

    @property
    def params_ratio(self) -> float:
        """merged / separate parameters."""
        return self.params_merged / self.params_separate if self.params_separate else 0.0

    @property
    def bflops_ratio(self) -> float:
        """merged / separate FLOPs (what ``time`` compares its measured ratio with)."""
        return self.bflops_merged / self.bflops_separate if self.bflops_separate else 0.0


@dataclass
class ShareCost:
    """What layers 0..k hold of one detector, and what reading them once saves."""

    k: int
    params_fraction: float
    bflops_fraction: float
    frontier: list[int]  # layers ≤ k read by layers > k: what the trunk must hand over
    params_shared: int
    bflops_shared: float
    total_params: int
    total_bflops: float

    @property
    def params_saved_per_extra_task(self) -> int:
        """Each detector beyond the first no longer needs its own copy of layers 0..k."""
        return self.params_shared

    @property
    def bflops_saved_per_extra_task(self) -> float:
        return self.bflops_shared

    def merge_savings(self, n_tasks: int) -> MergeSavings:
        """separate = N·total; merged = total + (N−1)·(total − shared). The route layer a merge
        adds per task costs nothing."""
        if n_tasks < 1:
            raise UsageError(f"n_tasks={n_tasks}: expected at least 1 task")
        extra = n_tasks - 1
        return MergeSavings(
            n_tasks,
            params_separate=n_tasks * self.total_params,
            params_merged=self.total_params + extra * (self.total_params - self.params_shared),
            bflops_separate=n_tasks * self.total_bflops,
            bflops_merged=self.total_bflops + extra * (self.total_bflops - self.bflops_shared),
        )


@dataclass
class NonFinite:
    index: int
    array: str
    count: int


@dataclass
class WeightsInfo:
    """What a .weights file holds for this network."""

    path: str | None
    version: str
    seen: int
    covered: int  # leading layers the file provides
    n_layers: int
    complete: bool
    file_size: int
    expected_size: int  # bytes of a complete file for this cfg, with this header
    notes: list[str] = field(default_factory=list)
    nonfinite: list[NonFinite] = field(default_factory=list)


@dataclass
class CostReport:
    path: str | None
    input: list[int]  # [width, height, channels]
    layers: list[LayerCost]
    total_params: int
    total_bflops: float  # Darknet's float32 sum
    share: list[ShareCost] = field(default_factory=list)
    weights_info: WeightsInfo | None = None


def frontier(network: Network, k: int, readers: Iterable[int] | None = None) -> list[int]:
    """Layers ≤ ``k`` whose output some layer of ``readers`` (default: every layer > ``k``)
    reads, the network input excluded: what a shared trunk 0..k must hand over to a tail."""
    indices = range(k + 1, len(network.layers)) if readers is None else readers
    read = {src for i in indices for src in network.layers[i].inputs() if 0 <= src <= k}
    return sorted(read)


def _bflops32(flops: float) -> np.float32:
    return np.float32(flops / 1e9)


def darknet_total_bflops(network: Network) -> float:
    """Darknet's "Total BFLOPS": per-layer float BFLOPS summed in float32."""
    total = np.float32(0.0)
    for spec in network.layers:
        total = np.float32(total + _bflops32(spec.flops()))
    return float(total)


def share_cost(network: Network, k: int) -> ShareCost:
    """Cost of sharing layers 0..k (see the module docstring for the definitions)."""
    n = len(network.layers)
    if not 0 <= k < n:
        raise UsageError(f"share-until {k}: expected a layer index 0..{n - 1} of "
                         f"{network.path or 'the network'}")
    flops = [spec.flops() for spec in network.layers]
    params = [spec.params for spec in network.layers]
    total_flops = sum(flops)
    total_params = sum(params)
    shared32 = np.float32(0.0)
    for f in flops[:k + 1]:
        shared32 = np.float32(shared32 + _bflops32(f))
    return ShareCost(
        k=k,
        params_fraction=sum(params[:k + 1]) / total_params if total_params else 0.0,
        bflops_fraction=sum(flops[:k + 1]) / total_flops if total_flops else 0.0,
        frontier=frontier(network, k),
        params_shared=sum(params[:k + 1]),
        bflops_shared=float(shared32),
        total_params=total_params,
        total_bflops=darknet_total_bflops(network),
    )


def _weights_info(network: Network, wf: WeightsFile) -> WeightsInfo:
    bad = [NonFinite(i, name, count) for i, name, count in nonfinite_report(wf)]
    return WeightsInfo(
        path=wf.path, version=wf.header.version(), seen=wf.header.seen, covered=wf.covered,
        n_layers=wf.n_layers, complete=wf.complete, file_size=wf.file_size,
        expected_size=expected_size(network.layers, wf.header), notes=list(wf.notes),
        nonfinite=bad)


def network_cost(network: Network, share_until: Iterable[int] = (),
                 weights: WeightsFile | None = None) -> CostReport:
    """Per-layer cost table, totals, share-until analysis for each ``k``, and (with
    ``weights``) what the weights file holds: header, coverage, presence and NaN/Inf per
    layer."""
    specs = network.layers
    total_params = sum(s.params for s in specs)
    total_flops = sum(s.flops() for s in specs)
    stored: set[int] = set()
    info = None
    bad_per_layer: dict[int, int] = {}
    if weights is not None:
        stored = {spec.index for spec, _ in file_layout(specs, weights.header.transposed)}
        info = _weights_info(network, weights)
        for item in info.nonfinite:
            bad_per_layer[item.index] = bad_per_layer.get(item.index, 0) + item.count

    rows: list[LayerCost] = []
    cum_params = 0
    cum_flops = 0.0
    for spec in specs:
        flops = spec.flops()
        cum_params += spec.params
        cum_flops += flops
        present = None
        if weights is not None and spec.index in stored:
            present = spec.index in weights.layers
        rows.append(LayerCost(
            index=spec.index,
            type=spec.type_name,
            describe=spec.describe(),
            input_shapes=[(network.net.shape if i < 0 else specs[i].out_shape).as_list()
                          for i in spec.inputs()],
            output=spec.out_shape.as_list(),
            params=spec.params,
            bflops=float(_bflops32(flops)),
            cum_params_fraction=cum_params / total_params if total_params else 0.0,
            cum_bflops_fraction=cum_flops / total_flops if total_flops else 0.0,
            weights_present=present,
            nonfinite=bad_per_layer.get(spec.index, 0),
        ))
    net = network.net
    return CostReport(
        path=network.path,
        input=[net.width, net.height, net.channels],
        layers=rows,
        total_params=total_params,
        total_bflops=darknet_total_bflops(network),
        share=[share_cost(network, k) for k in share_until],
        weights_info=info,
    )


# -- merged networks ------------------------------------------------------------------------
def merge_savings(network: Network, heads: "MergedHeads") -> MergeSavings:
    """What the merged ``network`` costs against running every head's own network (the base:
    its layers; a task: the trunk 0..k and its tail). ``heads`` must have been checked
    against ``network`` (:func:`netsurgery.surgery.heads.check_heads`)."""
    params = [s.params for s in network.layers]
    flops = [s.flops() / 1e9 for s in network.layers]
    first, last = heads.base.tail
    per_head = [HeadCost(heads.base.name, sum(params[first:last + 1]),
                         sum(flops[first:last + 1]))]
    for g in heads.tasks:
        k, (a, b) = g.share_until, g.tail
        per_head.append(HeadCost(g.name, sum(params[:k + 1]) + sum(params[a:b + 1]),
                                 sum(flops[:k + 1]) + sum(flops[a:b + 1])))
    return MergeSavings(len(per_head), sum(h.params for h in per_head), sum(params),
                        sum(h.bflops for h in per_head), sum(flops), per_head,
                        _gated_bflops(flops, heads))


def _gated_bflops(flops: list[float], heads: "MergedHeads") -> float | None:
    """Expected BFLOPs per image with gates: everything (base, gates, tails) minus the part of
    each gated tail that its gate skips, at the pass rate measured on its held-out images."""
    gated = [g for g in heads.tasks if g.gate is not None]
    if not gated:
        return None
    skipped = 0.0
    for g in gated:
        gate = g.gate
        seen = gate.held_out_positives + gate.held_out_negatives
        passing = (gate.positive_pass_rate * gate.held_out_positives
                   + gate.negative_pass_rate * gate.held_out_negatives) / seen if seen else 1.0
        skipped += (1.0 - passing) * sum(flops[g.route:g.tail[1] + 1])
    return sum(flops) - skipped


def format_savings(s: MergeSavings) -> str:
    """The table ``merge`` and ``info --heads`` print: each head alone, their sum, merged."""
    lines = ["  model                params      BFLOPs"]
    for h in s.per_head:
        lines.append(f"  {h.name:<18} {h.params:>10,d} {h.bflops:>11.3f}")
    lines.append(f"  {'separate (sum)':<18} {s.params_separate:>10,d} {s.bflops_separate:>11.3f}")
    lines.append(f"  {'merged':<18} {s.params_merged:>10,d} {s.bflops_merged:>11.3f}")
    lines.append(f"  merged / separate: params {s.params_ratio:.3f}, FLOPs {s.bflops_ratio:.3f}")
    if s.bflops_gated is not None:
        lines.append(f"  with gates: {s.bflops_gated:.3f} BFLOPs per image expected (gated tails "
                     f"at their held-out pass rates), {s.bflops_gated / s.bflops_separate:.3f} "
                     "of separate")
    return "\n".join(lines)


@dataclass
class TrunkCheck:
    """How far a task's layers 0..k are from the base's."""

    identical: bool  # every array bit-identical
    max_relative_difference: float  # mean|Δ| / mean|base| of the worst array (inf: NaN/Inf)
    worst_layer: int | None


def spec_difference(a: LayerSpec, b: LayerSpec) -> str | None:
    """The first parsed field in which two layer specs differ (``"filters 4 vs 8"``), or None
    when they compute the same thing. Comparing parsed specs, not cfg text, makes key order,
    written-out defaults (``stride=1``) and relative against absolute references
    irrelevant."""
    if a.type_name != b.type_name:
        return f"type [{a.type_name}] vs [{b.type_name}]"
    own = [f.name for f in fields(a) if f.name not in ("index", "section", "in_shape",
                                                         "out_shape")]
    for name in own + ["in_shape", "out_shape"]:  # options first: the shapes follow from them
        x, y = getattr(a, name), getattr(b, name)
        if x != y:
            return f"{name} {x} vs {y}"
    return None


def bit_identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape and the same float32 bits (a NaN copied bit for bit is identical). Chunked,
    so a difference near the start returns early."""
    if a.shape != b.shape:
        return False
    ua = np.ascontiguousarray(a, dtype="<f4").view(np.uint32).reshape(-1)
    ub = np.ascontiguousarray(b, dtype="<f4").view(np.uint32).reshape(-1)
    step = 1 << 18
    return all(np.array_equal(ua[i:i + step], ub[i:i + step]) for i in range(0, ua.size, step))


def _relative_difference(base: np.ndarray, other: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        b64 = base.astype(np.float64)
        rel = float(np.abs(other.astype(np.float64) - b64).mean() /
                    max(float(np.abs(b64).mean()), 1e-30))
    return rel if math.isfinite(rel) else math.inf


def compare_trunk(base: Network, base_arrays: Mapping[int, Mapping[str, np.ndarray]],
                  task: Network, task_arrays: Mapping[int, Mapping[str, np.ndarray]],
                  k: int) -> TrunkCheck:
    """Compare layers 0..k of ``task`` with the base's: input size and parsed layer specs must
    agree (else a UsageError naming the layer and the field); arrays are compared by their
    bytes (a bit-identical NaN is identical). Returns the largest relative difference."""
    last = min(len(base.layers), len(task.layers)) - 1
    if not 0 <= k <= last:
        raise UsageError(f"share_until={k}: expected a layer index 0..{last} (base has "
                         f"{len(base.layers)} layers, task {len(task.layers)})")
    for key in ("width", "height", "channels"):
        if getattr(base.net, key) != getattr(task.net, key):
            raise UsageError(f"[net] {key} differs: base {getattr(base.net, key)}, task "
                             f"{getattr(task.net, key)}; a merged network has one input size")
    worst, worst_layer = 0.0, None
    for i in range(k + 1):
        b, t = base.layers[i], task.layers[i]
        if b.type_name != t.type_name:
            raise UsageError(f"layer {i}: base is [{b.type_name}], task is [{t.type_name}]; "
                             f"the trunks 0..{k} must be the same network")
        difference = spec_difference(b, t)
        if difference is not None:
            raise UsageError(f"layer {i} [{b.type_name}]: differs between base and task "
                             f"({difference})")
        mine, theirs = base_arrays.get(i) or {}, task_arrays.get(i) or {}
        for name, arr in mine.items():
            other = theirs.get(name)
            if other is None or other.shape != arr.shape:
                raise UsageError(f"layer {i}: array '{name}' missing or of another shape in "
                                 "the task")
            if bit_identical(arr, other):
                continue
            rel = _relative_difference(arr, other)
            if worst_layer is None or rel > worst:
                worst, worst_layer = rel, i
    return TrunkCheck(worst_layer is None, worst, worst_layer)


# -- output -------------------------------------------------------------------------------
MERGE_TASKS = (2, 3)


def savings_to_json(s: MergeSavings) -> dict:
    """Plain JSON-able dict of a :class:`MergeSavings` (``heads``: each head's own cost)."""
    return {"n_tasks": s.n_tasks,
            "params_separate": s.params_separate, "params_merged": s.params_merged,
            "params_saved": s.params_saved, "params_saved_fraction": s.params_saved_fraction,
            "bflops_separate": s.bflops_separate, "bflops_merged": s.bflops_merged,
            "bflops_saved": s.bflops_saved, "bflops_saved_fraction": s.bflops_saved_fraction,
            "bflops_gated": s.bflops_gated,
            "heads": [{"name": h.name, "params": h.params, "bflops": h.bflops}
                      for h in s.per_head]}


def report_to_json(report: CostReport) -> dict:
    """Plain JSON-able dict: ``layers``, ``total``, ``share``, ``weights`` (or None)."""
    layers = [{
        "index": r.index, "type": r.type, "describe": r.describe,
        "inputs": r.input_shapes, "output": r.output, "params": r.params, "bflops": r.bflops,
        "cum_params_fraction": r.cum_params_fraction,
        "cum_bflops_fraction": r.cum_bflops_fraction,
        "weights_present": r.weights_present, "nonfinite": r.nonfinite,
    } for r in report.layers]
    share = [{
        "k": s.k, "params_fraction": s.params_fraction, "bflops_fraction": s.bflops_fraction,
        "frontier": list(s.frontier), "params_shared": s.params_shared,
        "bflops_shared": s.bflops_shared,
        "saved_per_extra_task": {"params": s.params_saved_per_extra_task,
                                 "bflops": s.bflops_saved_per_extra_task},
        "merge": [savings_to_json(s.merge_savings(n)) for n in MERGE_TASKS],
    } for s in report.share]
    weights = None
    if report.weights_info is not None:
        w = report.weights_info
        weights = {"path": w.path, "version": w.version, "seen": w.seen, "covered": w.covered,
                   "n_layers": w.n_layers, "complete": w.complete, "file_size": w.file_size,
                   "expected_size": w.expected_size, "notes": list(w.notes),
                   "nonfinite": [{"index": b.index, "array": b.array, "count": b.count}
                                 for b in w.nonfinite]}
    return {
        "cfg": report.path,
        "input": {"width": report.input[0], "height": report.input[1],
                  "channels": report.input[2]},
        "layers": layers,
        "total": {"params": report.total_params, "bflops": report.total_bflops},
        "share": share,
        "weights": weights,
    }


def _shape(chw: list[int]) -> str:
    return "x".join(str(v) for v in chw)


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    """Rows of cells padded to column widths; columns in ``right`` are right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return lines


def _format_layers(report: CostReport) -> list[str]:
    with_weights = report.weights_info is not None
    head = ["idx", "type", "options", "input (c x h x w)", "", "output", "params", "BFLOPs",
            "params 0..i frac", "BFLOPs 0..i frac"]
    if with_weights:
        head.append("weights")
    rows = [head]
    for r in report.layers:
        row = [str(r.index), r.type, r.describe,
               " + ".join(_shape(s) for s in r.input_shapes), "->", _shape(r.output),
               f"{r.params:,}", f"{r.bflops:.3f}", f"{r.cum_params_fraction:.3f}",
               f"{r.cum_bflops_fraction:.3f}"]
        if with_weights:
            mark = {None: "-", True: "yes", False: "missing"}[r.weights_present]
            if r.nonfinite:
                mark += f" {r.nonfinite} NaN/Inf"
            row.append(mark)
        rows.append(row)
    return _table(rows, right={0, 3, 6, 7, 8, 9})


def _format_share(report: CostReport) -> list[str]:
    head = ["k", "params", "BFLOPs", "frontier", "saved per extra task"]
    head += [f"{n} tasks merged save (params, BFLOPs)" for n in MERGE_TASKS]
    rows = [head]
    for s in report.share:
        row = [str(s.k), f"{s.params_fraction:.3f}", f"{s.bflops_fraction:.3f}",
               ",".join(map(str, s.frontier)) or "-",
               f"{s.params_saved_per_extra_task:,} params, "
               f"{s.bflops_saved_per_extra_task:.3f} BFLOPs"]
        for n in MERGE_TASKS:
            m = s.merge_savings(n)
            row.append(f"{m.params_saved_fraction:.1%}, {m.bflops_saved_fraction:.1%}")
        rows.append(row)
    lines = ["", "share until layer k (layers 0..k shared; fractions of one detector):"]
    return lines + _table(rows, right={0, 1, 2})


def _format_weights(w: WeightsInfo) -> list[str]:
    cover = (f"all {w.n_layers} layers" if w.complete else
             f"layers 0..{w.covered - 1} of {w.n_layers} (a partial file)")
    lines = ["", f"weights {w.path}: version {w.version}, seen {w.seen:,}, covers {cover}, "
                 f"{w.file_size:,} bytes (complete file: {w.expected_size:,})"]
    lines += [f"  note: {n}" for n in w.notes]
    if w.nonfinite:
        lines += [f"  layer {b.index} {b.array}: {b.count} NaN/Inf values" for b in w.nonfinite]
    else:
        lines.append("  no NaN/Inf values")
    return lines


def format_report(report: CostReport) -> str:
    """Human-readable table: one row per layer like Darknet's start-up print, but with every
    layer's parameters and cumulative fractions; then totals, share-until and weights info."""
    w, h, c = report.input
    lines = [f"{report.path or '<cfg>'}: {len(report.layers)} layers, input {w}x{h}x{c} "
             "(width x height x channels)"]
    lines += _format_layers(report)
    lines.append(f"total: {report.total_params:,} params, {report.total_bflops:.3f} BFLOPs")
    if report.share:
        lines += _format_share(report)
    if report.weights_info is not None:
        lines += _format_weights(report.weights_info)
    return "\n".join(lines) + "\n"


__all__ = ["LayerCost", "HeadCost", "MergeSavings", "ShareCost", "NonFinite", "WeightsInfo",
           "CostReport", "TrunkCheck", "bit_identical", "frontier", "darknet_total_bflops",
           "share_cost", "network_cost", "merge_savings", "format_savings", "spec_difference",
           "compare_trunk", "savings_to_json", "report_to_json", "format_report"]
