"""Merge several detectors that share layers 0..k into one network with one trunk and several
heads (Bailer & Fassold), and split a task back out of a merged network.

The merged network is the base network unchanged (so its own detections are bit-identical),
then for each task a ``[route] layers=k`` that jumps back to the shared trunk, followed by the
task's layers k+1.. with their own weights, classes and anchors. References inside a copied
tail that point at layers ≤ k read the shared trunk; the others read the task's copy.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from netsurgery.analysis.cost import compare_trunk
from netsurgery.darknet.cfg import Section, make_section, parse_cfg_text
from netsurgery.errors import NetsurgeryError, UsageError
from netsurgery.fileio import atomic_write_text, check_output, staged_outputs
from netsurgery.training.data import load_names

from .editing import Graph, Layer, load_graph, remap_references
from .heads import HeadGroup, MergedHeads, data_text, names_text

PAD_BIAS = -30.0  # logistic(-30) ≈ 1e-13: a padded class never passes any threshold


@dataclass
class TaskInput:
    """One task to merge: its network (cfg + weights) and where it shares the base's trunk."""

    name: str
    graph: Graph
    share_until: int
    names_file: str | None = None


def _yolo_indices(layers: Sequence[Layer], offset: int = 0) -> list[int]:
    return [offset + i for i, l in enumerate(layers) if l.section.type in ("yolo", "region")]


def _classes(layers: Sequence[Layer]) -> int:
    counts = {l.section.get_int("classes", 20) for l in layers
              if l.section.type in ("yolo", "region")}
    if len(counts) > 1:
        raise UsageError(f"heads of one network have different class counts {sorted(counts)}")
    return counts.pop() if counts else 0


def _tail_layers(task: Graph, k: int, route_index: int) -> list[Layer]:
    """Task layers k+1.. placed after a route at ``route_index`` (references remapped)."""
    start = route_index + 1

    def mapping(t: int) -> int:
        return t if t <= k else start + (t - (k + 1))

    return [Layer(remap_references(layer.section, old, start + (old - (k + 1)), mapping),
                  layer.arrays)
            for old, layer in enumerate(task.layers) if old > k]


def merge(base: Graph, tasks: Sequence[TaskInput], base_name: str = "base",
          base_names_file: str | None = None, force: bool = False,
          common_classes: bool = False, warn=None) -> tuple[Graph, MergedHeads]:
    """One network: the base unchanged, then per task a route back to layer k and the task's
    tail. Refuses a task whose layers 0..k differ from the base (not retrained with a frozen
    trunk) unless ``force`` (then ``warn`` is called with the figure)."""
    if not tasks:
        raise UsageError("merge needs at least one --task")
    names = [base_name] + [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise UsageError(f"head names must be unique: {names}")
    layers = [Layer(l.section.copy(), l.arrays) for l in base.layers]
    base_classes = _classes(base.layers)
    base_group = HeadGroup(base_name, _yolo_indices(base.layers), base_classes,
                           class_names(base_name, base_names_file, base_classes),
                           tail=[0, len(layers) - 1])
    groups = []
    for task in tasks:
        k = task.share_until
        check = compare_trunk(base.network(), base.arrays(), task.graph.network(),
                              task.graph.arrays(), k)
        if not check.identical:
            message = (f"task '{task.name}': layers 0..{k} differ from the base (largest "
                       f"relative difference {check.max_relative_difference:.3g} at layer "
                       f"{check.worst_layer}); it was not retrained with a frozen trunk and "
                       "will perform badly when merged")
            if not force:
                raise UsageError(message + " — pass --force to merge anyway")
            if warn:
                warn("warning: " + message)
        route_index = len(layers)
        layers.append(Layer(make_section("route", {"layers": [k]})))
        tail = _tail_layers(task.graph, k, route_index)
        layers.extend(tail)
        t = task.graph
        classes = _classes(t.layers)
        groups.append(HeadGroup(
            task.name, _yolo_indices(tail, route_index + 1), classes,
            class_names(task.name, task.names_file, classes),
            tail=[route_index + 1, len(layers) - 1], share_until=k, route=route_index,
            header=copy.copy(t.header), net=_section_text(t.net)))
    merged = Graph(base.net.copy(), layers, base.header, None)
    heads = MergedHeads(base_group, groups)
    if common_classes:
        merged, heads = pad_to_common_classes(merged, heads)
    merged.network()  # validate shapes and references of the result
    return merged, heads


def _section_text(section: Section) -> str:
    lines = [f"[{section.header}]"] + [f"{o.key}={o.value}" for o in section.options]
    return "\n".join(lines) + "\n"


def class_names(head: str, names_file: str | os.PathLike | None, classes: int) -> list[str]:
    """A head's class names from its ``.names`` file (one per class), or ``head:0``, ``head:1``
    ... when none is given."""
    if names_file is None:
        return [f"{head}:{j}" for j in range(classes)]
    names = load_names(names_file)
    if len(names) != classes:
        raise NetsurgeryError(f"{names_file}: {len(names)} names for head '{head}' with "
                              f"classes={classes}")
    return names


def pad_to_common_classes(graph: Graph, heads: MergedHeads) -> tuple[Graph, MergedHeads]:
    """Pad every head to one class list (the union of the heads' names, in order) so stock
    Darknet, which sizes every detection from the first [yolo] layer, decodes all heads with
    one names file. Classes a head does not own get weights 0 and bias −30 in its last conv,
    so the padded network's detections equal the unpadded ones."""
    union: list[str] = []
    for group in heads.groups():
        for name in group.class_names:
            if name not in union:
                union.append(name)
    total = len(union)
    layers = list(graph.layers)
    for group in heads.groups():
        group.class_map = [union.index(n) for n in group.class_names]
        for y in group.yolo_layers:
            yolo = layers[y].section.copy()
            conv = layers[y - 1]
            if conv.section.type != "convolutional" or not conv.arrays:
                raise UsageError(f"layer {y - 1}: expected a convolution with weights before "
                                 f"the [yolo] layer {y}")
            n_anchors = len(yolo.get_ints("mask", range(yolo.get_int("num", 1))))
            arrays = _pad_head_arrays(conv.arrays, n_anchors, group.classes, group.class_map,
                                      total)
            section = conv.section.copy()
            section.set("filters", n_anchors * (total + 5))
            yolo.set("classes", total)
            layers[y - 1] = Layer(section, arrays)
            layers[y] = Layer(yolo, None)
    heads.common_classes = union
    return Graph(graph.net, layers, graph.header, graph.path), heads


def _pad_head_arrays(arrays: dict[str, np.ndarray], n_anchors: int, classes: int,
                     class_map: list[int], total: int) -> dict[str, np.ndarray]:
    per_old, per_new = classes + 5, total + 5
    rows = []  # for each new output channel, the old channel it copies, or -1 for padding
    for a in range(n_anchors):
        inverse = {new: old for old, new in enumerate(class_map)}
        for k in range(per_new):
            if k < 5:
                rows.append(a * per_old + k)
            else:
                old = inverse.get(k - 5)
                rows.append(-1 if old is None else a * per_old + 5 + old)
    rows_arr = np.array(rows)
    pad = rows_arr < 0
    out = {}
    for name, arr in arrays.items():
        new = arr[np.where(pad, 0, rows_arr)].astype(np.float32, copy=True)
        if name == "weights":
            new[pad] = 0.0
        elif name == "biases":
            new[pad] = PAD_BIAS
        elif name == "scales":
            new[pad] = 0.0  # with BatchNorm the bias alone decides the padded output
        elif name == "rolling_mean":
            new[pad] = 0.0
        elif name == "rolling_variance":
            new[pad] = 1.0
        out[name] = new
    return out


def split(merged: Graph, heads: MergedHeads, name: str) -> Graph:
    """The standalone network of one head: trunk 0..k and that task's tail (or the base)."""
    group = heads.group(name)
    if heads.common_classes is not None:
        raise UsageError("split of a network merged with --common-classes is not supported: "
                         "split the unpadded merge instead")
    if group.route is None:  # the base: its layers come first, unchanged
        first, last = group.tail
        layers = [Layer(l.section.copy(), l.arrays) for l in merged.layers[first:last + 1]]
        return Graph(merged.net.copy(), layers, merged.header, None)
    k = group.share_until
    start, last = group.tail
    trunk = [Layer(l.section.copy(), l.arrays) for l in merged.layers[:k + 1]]

    def mapping(t: int) -> int | None:
        if t <= k:
            return t
        if start <= t <= last:
            return k + 1 + (t - start)
        return None

    tail = [Layer(remap_references(merged.layers[i].section, i, k + 1 + (i - start), mapping),
                  merged.layers[i].arrays) for i in range(start, last + 1)]
    header = copy.copy(group.header) if group.header else merged.header
    net = parse_cfg_text(group.net).net if group.net else merged.net.copy()
    return Graph(net, trunk + tail, header, None)


def parse_task_option(text: str, default_k: int | None) -> tuple[str, str, str, int]:
    """``NAME=TASK.cfg:TASK.weights[@K]`` → (name, cfg, weights, k)."""
    if "=" not in text:
        raise UsageError(f"--task {text}: expected NAME=TASK.cfg:TASK.weights[@K]")
    name, rest = text.split("=", 1)
    k = default_k
    if "@" in rest:
        rest, k_text = rest.rsplit("@", 1)
        try:
            k = int(k_text)
        except ValueError:
            raise UsageError(f"--task {text}: '@{k_text}' is not a layer index") from None
    if ":" not in rest:
        raise UsageError(f"--task {text}: expected NAME=TASK.cfg:TASK.weights[@K]")
    cfg, weights = rest.split(":", 1)
    if k is None:
        raise UsageError(f"--task {text}: no share point; pass --share-until K or @K")
    if not name:
        raise UsageError(f"--task {text}: empty task name")
    return name, cfg, weights, k


def merge_files(base_cfg: str, base_weights: str, tasks: Sequence[str], out: str,
                share_until: int | None = None, names: dict[str, str] | None = None,
                base_name: str = "base", force: bool = False, common_classes: bool = False,
                overwrite: bool = False, warn=None) -> tuple[Graph, MergedHeads]:
    """The ``netsurgery merge`` job: read the files, merge, write ``OUT.cfg``,
    ``OUT.weights``, ``OUT.heads.json`` and ``OUT.names`` (with ``common_classes`` also
    ``OUT.data``), all or none. ``names`` maps head names to ``.names`` files."""
    names = names or {}
    parsed = [parse_task_option(t, share_until) for t in tasks]
    heads_named = [base_name] + [name for name, *_ in parsed]
    for head in names:
        if head not in heads_named:
            raise UsageError(f"--names {head}=...: no head named '{head}': expected one of "
                             f"{', '.join(heads_named)}")
    inputs = [base_cfg, base_weights] + [p for _, c, w, _ in parsed for p in (c, w)] + \
        list(names.values())
    outs = merged_outputs(out, common_classes)
    for o in outs:
        check_output(o, inputs, overwrite)
    base = load_graph(base_cfg, base_weights)
    task_inputs = [TaskInput(name, load_graph(c, w), k, names.get(name))
                   for name, c, w, k in parsed]
    merged, heads = merge(base, task_inputs, base_name, names.get(base_name), force,
                          common_classes, warn)
    with staged_outputs(outs) as staged:  # all or none
        merged.save(staged[0], staged[1])
        heads.save(staged[2])
        atomic_write_text(staged[3], names_text(heads))
        if common_classes:
            atomic_write_text(staged[4], data_text(heads, outs[3]))
    return merged, heads


def merged_outputs(out: str, common_classes: bool = False) -> list[str]:
    """The files ``merge -o OUT`` writes: cfg, weights, heads file, names (and .data)."""
    suffixes = [".cfg", ".weights", ".heads.json", ".names"] + ([".data"] if common_classes
                                                                else [])
    return [f"{out}{s}" for s in suffixes]
