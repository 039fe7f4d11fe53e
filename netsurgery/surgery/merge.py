"""Merge several detectors that share layers 0..k into one network with one trunk and several
heads (Bailer & Fassold), and split a task back out of a merged network.

The merged network is the base network unchanged (so its own detections are bit-identical),
then for each task a ``[route] layers=k`` that jumps back to the shared trunk, followed by the
task's layers k+1.. with their own weights, classes and anchors. References inside a copied
tail that point at layers ≤ k read the shared trunk; the others read the task's copy.

Both work on :class:`~netsurgery.surgery.weighted.WeightedNetwork` (the typed network plus its
arrays): the result can be saved, or run with ``merged.model()`` without touching disk.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from netsurgery.analysis.cost import compare_trunk
from netsurgery.darknet.cfg import Cfg, Section, make_section, parse_cfg_text
from netsurgery.darknet.network import Network
from netsurgery.errors import NetsurgeryError, UsageError
from netsurgery.fileio import atomic_write_text, check_output, staged_outputs
from netsurgery.training.data import load_names

from .heads import HeadGroup, MergedHeads, data_text, detection_layers, names_text
from .weighted import Arrays, WeightedNetwork, assemble, load_weighted

PAD_BIAS = -30.0  # logistic(-30) ≈ 1e-13: a padded class never passes any threshold


@dataclass
class TaskInput:
    """One task to merge: its network with weights and where it shares the base's trunk."""

    name: str
    network: WeightedNetwork
    share_until: int
    names_file: str | os.PathLike | None = None


def head_classes(network: WeightedNetwork | Network) -> int:
    """The class count of a network's detection layers (one count per network)."""
    net = network.network if isinstance(network, WeightedNetwork) else network
    counts = {net.layers[i].classes for i in detection_layers(net)}
    if len(counts) > 1:
        raise UsageError(f"heads of one network have different class counts {sorted(counts)}")
    return counts.pop() if counts else 0


def _check_task_trunk(base: WeightedNetwork, task: TaskInput, force: bool, warn) -> None:
    k = task.share_until
    check = compare_trunk(base.network, base.arrays, task.network.network, task.network.arrays, k)
    if check.identical:
        return
    message = (f"task '{task.name}': layers 0..{k} differ from the base (largest relative "
               f"difference {check.max_relative_difference:.3g} at layer {check.worst_layer}); "
               "it was not retrained with a frozen trunk and will perform badly when merged")
    if not force:
        raise UsageError(message + " — pass --force to merge anyway")
    if warn:
        warn("warning: " + message)


def merge(base: WeightedNetwork, tasks: Sequence[TaskInput], base_name: str = "base",
          base_names_file: str | os.PathLike | None = None, force: bool = False,
          common_classes: bool = False, warn=None) -> tuple[WeightedNetwork, MergedHeads]:
    """One network: the base unchanged, then per task a route back to layer k and the task's
    tail. Refuses a task whose layers 0..k differ from the base (not retrained with a frozen
    trunk) unless ``force`` (then ``warn`` is called with the figure)."""
    if not tasks:
        raise UsageError("merge needs at least one --task")
    names = [base_name] + [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise UsageError(f"head names must be unique: {names}")
    sections = [s.copy() for s in base.cfg.layers]
    arrays: Arrays = dict(base.arrays)
    base_classes = head_classes(base)
    base_group = HeadGroup(base_name, detection_layers(base.network), base_classes,
                           class_names(base_name, base_names_file, base_classes),
                           tail=[0, len(sections) - 1])
    groups = []
    for task in tasks:
        k = task.share_until
        _check_task_trunk(base, task, force, warn)
        route = len(sections)
        sections.append(make_section("route", {"layers": [k]}))
        start = route + 1
        own = task.network.network.layers[k + 1:]

        def mapping(t: int, k=k, start=start) -> int:
            return t if t <= k else start + (t - (k + 1))

        for spec in own:
            new_index = mapping(spec.index)
            sections.append(spec.renumbered(new_index, mapping))
            if spec.index in task.network.arrays:
                arrays[new_index] = task.network.arrays[spec.index]
        classes = head_classes(task.network)
        groups.append(HeadGroup(
            task.name, [mapping(i) for i in detection_layers(task.network.network) if i > k],
            classes, class_names(task.name, task.names_file, classes),
            tail=[start, len(sections) - 1], share_until=k, route=route,
            header=copy.copy(task.network.header), trunk_cfg=trunk_text(task.network.cfg, k)))
    heads = MergedHeads(base_group, groups)
    if common_classes:
        sections, arrays = pad_to_common_classes(sections, arrays, heads)
    merged = assemble(base.cfg.net.copy(), sections, arrays, base.header)  # checks the result
    return merged, heads


def trunk_text(cfg: Cfg, k: int) -> str:
    """``[net]`` and layers 0..k of ``cfg`` as cfg text, comments and training keys (such as
    ``stopbackward=1``) kept: what split needs to give a task's cfg back as it was."""
    return Cfg(cfg.net, cfg.layers[:k + 1], None, cfg.trailing_comments).to_text()


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


def pad_to_common_classes(sections: list[Section], arrays: Arrays,
                          heads: MergedHeads) -> tuple[list[Section], Arrays]:
    """Pad every head to one class list (the union of the heads' names, in order) so stock
    Darknet, which sizes every detection from the first [yolo] layer, decodes all heads with
    one names file. Classes a head does not own get weights 0 and bias −30 in its last conv,
    so the padded network's detections equal the unpadded ones. Sets ``heads.common_classes``
    and each head's ``class_map``."""
    union: list[str] = []
    for group in heads.groups():
        for name in group.class_names:
            if name not in union:
                union.append(name)
    total = len(union)
    sections, arrays = list(sections), dict(arrays)
    for group in heads.groups():
        group.class_map = [union.index(n) for n in group.class_names]
        for y in group.yolo_layers:
            conv = sections[y - 1]
            if conv.type != "convolutional" or y - 1 not in arrays:
                raise UsageError(f"layer {y - 1}: expected a convolution with weights before "
                                 f"the [yolo] layer {y}")
            yolo = sections[y].copy()
            n_anchors = len(yolo.get_ints("mask", range(yolo.get_int("num", 1))))
            arrays[y - 1] = _pad_head_arrays(arrays[y - 1], n_anchors, group.classes,
                                             group.class_map, total)
            sections[y - 1] = conv.copy()
            sections[y - 1].set("filters", n_anchors * (total + 5))
            yolo.set("classes", total)
            sections[y] = yolo
    heads.common_classes = union
    return sections, arrays


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


def split(merged: WeightedNetwork, heads: MergedHeads, name: str) -> WeightedNetwork:
    """The standalone network of one head: the base's layers, or a task's own ``[net]`` and
    trunk 0..k (as its cfg had them: comments, ``stopbackward``) with its tail and header."""
    group = heads.group(name)
    if heads.common_classes is not None:
        raise UsageError("split of a network merged with --common-classes is not supported: "
                         "split the unpadded merge instead")
    first, last = group.tail
    specs = merged.network.layers
    if group.is_base:  # the base: its layers come first, unchanged
        return assemble(merged.cfg.net.copy(), [s.section.copy() for s in specs[:last + 1]],
                        {i: a for i, a in merged.arrays.items() if i <= last}, merged.header)
    k = group.share_until
    own = parse_cfg_text(group.trunk_cfg, f"{heads.path or 'heads'}: {name} trunk")
    trunk = own.layers or [s.section.copy() for s in specs[:k + 1]]  # format 1: [net] only

    def mapping(t: int) -> int | None:
        if t <= k:
            return t
        return k + 1 + (t - first) if first <= t <= last else None

    tail = [specs[i].renumbered(mapping(i), mapping) for i in range(first, last + 1)]
    arrays = {i: a for i, a in merged.arrays.items() if i <= k}
    arrays.update({mapping(i): a for i, a in merged.arrays.items() if first <= i <= last})
    result = assemble(own.net, trunk + tail, arrays, copy.copy(group.header))
    result.cfg.trailing_comments = list(own.trailing_comments)
    return result


def parse_task_option(text: str, default_k: int | None) -> tuple[str, str, str, int]:
    """``NAME=TASK.cfg:TASK.weights[@K]`` → (name, cfg, weights, k).

    ``@K`` is read only when what follows the last '@' is an integer, so a weights path may
    hold '@'. A cfg path may hold ':': the split is at the ':' after which the cfg part is an
    existing file, else after the first part ending in ``.cfg``, else at the first ':'."""
    name, sep, rest = text.partition("=")
    if not sep:
        raise UsageError(f"--task {text}: expected NAME=TASK.cfg:TASK.weights[@K]")
    k = default_k
    head, at, k_text = rest.rpartition("@")
    if at and re.fullmatch(r"[+-]?\d+", k_text.strip()):
        rest, k = head, int(k_text)
        if k < 0:
            raise UsageError(f"--task {text}: '@{k_text}' is not a layer index (expected a "
                             "layer index ≥ 0)")
    cuts = [i for i, c in enumerate(rest) if c == ":"]
    if not cuts:
        raise UsageError(f"--task {text}: expected NAME=TASK.cfg:TASK.weights[@K]")
    cut = next((i for i in cuts if os.path.isfile(rest[:i])), None)
    if cut is None:
        cut = next((i for i in cuts if rest[:i].endswith(".cfg")), cuts[0])
    cfg, weights = rest[:cut], rest[cut + 1:]
    if k is None:
        raise UsageError(f"--task {text}: no share point; pass --share-until K or @K")
    if not name:
        raise UsageError(f"--task {text}: empty task name")
    return name, cfg, weights, k


def merge_files(base_cfg: str, base_weights: str, tasks: Sequence[str], out: str,
                share_until: int | None = None, names: dict[str, str] | None = None,
                base_name: str = "base", force: bool = False, common_classes: bool = False,
                overwrite: bool = False, warn=None) -> tuple[WeightedNetwork, MergedHeads]:
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
    base = load_weighted(base_cfg, base_weights)
    task_inputs = [TaskInput(name, load_weighted(c, w), k, names.get(name))
                   for name, c, w, k in parsed]
    merged, heads = merge(base, task_inputs, base_name, names.get(base_name), force,
                          common_classes, warn)
    write_merged(merged, heads, out)
    return merged, heads


def write_merged(merged: WeightedNetwork, heads: MergedHeads, out: str | os.PathLike) -> None:
    """Write what ``merge -o OUT`` writes (:func:`merged_outputs`), all or none."""
    outs = merged_outputs(str(out), heads.common_classes is not None)
    with staged_outputs(outs) as staged:
        merged.save(staged[0], staged[1])
        heads.save(staged[2])
        atomic_write_text(staged[3], names_text(heads))
        if heads.common_classes is not None:
            atomic_write_text(staged[4], data_text(heads, outs[3]))


def merged_outputs(out: str, common_classes: bool = False) -> list[str]:
    """The files ``merge -o OUT`` writes: cfg, weights, heads file, names (and .data)."""
    suffixes = [".cfg", ".weights", ".heads.json", ".names"] + ([".data"] if common_classes
                                                                else [])
    return [f"{out}{s}" for s in suffixes]
