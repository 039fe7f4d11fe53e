"""The starting point of a run: the base network's arrays where the task layer matches them,
Darknet's initial values elsewhere; and the check that a frozen trunk stayed bit-identical."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from netsurgery.analysis.cost import bit_identical
from netsurgery.darknet.cfg import load_cfg
from netsurgery.darknet.model import DarknetModel
from netsurgery.darknet.network import Network, build_network
from netsurgery.darknet.weights import WeightsFile, WeightsHeader, load_weights
from netsurgery.errors import UsageError


@dataclass
class LayerInit:
    """Which layers got the base's arrays and which were initialised fresh."""

    copied: list[int] = field(default_factory=list)
    reinitialised: list[int] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)


def fresh_arrays(spec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Darknet's initial values for a layer's arrays (make_*_layer)."""
    return {arr.name: spec.initial_array(arr, rng).astype(np.float32)
            for arr in spec.weight_arrays()}


# Initial objectness of a freshly initialised head: logistic(-4.6) ≈ 0.01 instead of 0.5.
# Darknet starts at 0.5, which makes the first hundreds of iterations do nothing but push
# thousands of empty cells down; with the prior, short CPU runs learn the objects instead.
OBJECTNESS_PRIOR_BIAS = -4.6


def _objectness_prior(network: Network, spec, arrays: dict[str, np.ndarray]) -> None:
    """Set the objectness biases of a fresh convolution that feeds a [yolo] layer."""
    nxt = spec.index + 1
    if spec.type_name != "convolutional" or nxt >= len(network.layers):
        return
    yolo = network.layers[nxt]
    if yolo.type_name != "yolo" or spec.batch_normalize:
        return
    per_anchor = yolo.classes + 5
    arrays["biases"][4::per_anchor] = OBJECTNESS_PRIOR_BIAS


def init_from_base(model: DarknetModel, base: WeightsFile, base_net: Network,
                   seed: int) -> LayerInit:
    """Copy the base arrays into every layer whose arrays match by name and shape (same
    index, same type); initialise the others fresh. Returns which was which."""
    report = LayerInit()
    task = model.network
    with torch.no_grad():
        for spec in task.layers:
            wanted = spec.weight_arrays()
            if not wanted:
                continue
            reason = None
            lw = base.layers.get(spec.index)
            if spec.index >= len(base_net.layers):
                reason = "not in the base network"
            elif lw is None:
                reason = "not in the base weights file"
            elif base_net.layers[spec.index].type_name != spec.type_name:
                reason = (f"base layer is [{base_net.layers[spec.index].section.header}], "
                          f"task layer is [{spec.section.header}]")
            else:  # compared and copied in the module's layout, whatever the file's header
                stored = {name: spec.to_module_layout(name, np.asarray(a), base.header.transposed)
                          for name, a in lw.arrays.items()}
                have = {name: tuple(a.shape) for name, a in stored.items()}
                want = {a.name: tuple(a.shape) for a in wanted}
                if have != want:
                    diff = [f"{n} {have.get(n)} vs {s}" for n, s in want.items()
                            if have.get(n) != s]
                    reason = "shapes differ: " + ", ".join(diff)
            if reason is None:
                arrays = stored
                report.copied.append(spec.index)
            else:
                arrays = fresh_arrays(spec, np.random.default_rng([seed, 1, spec.index]))
                _objectness_prior(task, spec, arrays)
                report.reinitialised.append(spec.index)
                report.reasons[spec.index] = reason
            tensors = dict(model.layers[spec.index].weight_tensors())
            for name, arr in arrays.items():
                target = tensors[name]
                target.copy_(torch.from_numpy(np.ascontiguousarray(arr)).view_as(target))
    return report


@dataclass
class StartingPoint:
    """A task model initialised from the base weights."""

    model: DarknetModel
    base_net: Network
    layers: LayerInit


def start_from_base(network: Network, weights: Path, base_cfg: Path,
                    seed: int) -> StartingPoint:
    """The task model with the base arrays where they match (:func:`init_from_base`), the
    base file's version in its header and ``seen`` 0."""
    base_net = build_network(load_cfg(base_cfg))
    base_wf = load_weights(weights, base_net.layers)
    model = DarknetModel(network)
    layers = init_from_base(model, base_wf, base_net, seed)
    model.header = WeightsHeader(base_wf.header.major, base_wf.header.minor,
                                 base_wf.header.revision, 0)
    return StartingPoint(model, base_net, layers)


def check_frozen_copied(layers: LayerInit, freeze_until: int) -> None:
    """Refuse to freeze a layer that has no base arrays."""
    frozen_fresh = [i for i in layers.reinitialised if i <= freeze_until]
    if frozen_fresh:
        raise UsageError(f"layers {', '.join(map(str, frozen_fresh))} would be frozen but "
                         f"have no base weights ({layers.reasons[frozen_fresh[0]]}); "
                         "choose a smaller freeze-until or matching base weights")


def compare_trunk(saved: str | os.PathLike, saved_net: Network, base: str | os.PathLike,
                  base_net: Network, upto: int) -> list[str]:
    """Differences between layers 0..upto of two .weights files, bit for bit (empty list =
    identical)."""
    a = load_weights(saved, saved_net.layers)
    b = load_weights(base, base_net.layers)
    problems = []
    for index in range(upto + 1):
        la, lb = a.layers.get(index), b.layers.get(index)
        if la is None and lb is None:
            continue
        if la is None or lb is None:
            problems.append(f"layer {index}: arrays in only one of the files")
            continue
        for name, arr in lb.arrays.items():
            other = la.arrays.get(name)
            if other is None or not bit_identical(other, arr):
                problems.append(f"layer {index} {name}")
    return problems
