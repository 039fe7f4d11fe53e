"""The ``--decode`` tail of an exported graph: per head, every candidate box as Darknet's
``get_yolo_detections`` computes it before thresholding and NMS.

For a head of [yolo] layers with K candidates in all (per layer H·W·anchors, in Darknet's
order: cells row by row, anchors within a cell; layers in head order):

- ``boxes`` (N, K, 4): centre x, y and width, height in network-input pixels —
  x = (col + x̂)/W·net_w, w = exp(t_w)·anchor_w (with ``new_coords``: (2·t_w)²·anchor_w);
  x̂ is the [yolo] output (logistic, scale_x_y applied).
- ``objectness`` (N, K).
- ``probs`` (N, K, classes): objectness·class, Darknet's ``det.prob``.

A consumer keeps a box when objectness > thresh and a class when its prob > thresh, then runs
NMS per class. Letterboxing is the caller's: boxes are in the coordinates of the network input
it was given (``correct_yolo_boxes`` is not in the graph).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from netsurgery.darknet.network import Network
from netsurgery.errors import NetsurgeryError

from .graph import OnnxGraph


def _layer_candidates(g: OnnxGraph, network: Network, layer: int, tensor: str):
    """(boxes, objectness, probs) of one [yolo] layer."""
    spec = network.layers[layer]
    if spec.type_name != "yolo":
        raise NetsurgeryError(
            f"{network.path}: layer {layer} [{spec.section.header}]: --decode supports [yolo] "
            "heads only; export without --decode and decode the raw outputs")
    n, fields = len(spec.mask), spec.classes + 5
    h, w = spec.out_shape.h, spec.out_shape.w
    k = h * w * n
    v = g.reshape(tensor, [0, n, fields, h, w], "anchors")
    rows = g.reshape(g.op("Transpose", [v], "cells_first", perm=[0, 3, 4, 1, 2]),
                     [0, k, fields], "candidates")
    txy = g.slice(rows, 2, 0, 2, "xy")
    twh = g.slice(rows, 2, 2, 4, "wh")
    obj = g.slice(rows, 2, 4, 5, "objectness")
    cls = g.slice(rows, 2, 5, fields, "classes")
    row, col = np.divmod(np.arange(h * w), w)
    grid = np.repeat(np.stack([col, row], axis=1), n, axis=0).reshape(1, k, 2)
    net = network.net
    xy = g.op("Mul", [g.op("Div", [g.op("Add", [txy, g.const(grid, "grid")]),
                                   g.const([w, h], "grid_size")]),
                      g.const([net.width, net.height], "net_size")], "xy_px")
    anchors = np.tile(np.asarray(spec.head_anchors, dtype=np.float32), (h * w, 1))
    anchors = g.const(anchors.reshape(1, k, 2), "anchors")
    if spec.new_coords:
        wh = g.op("Mul", [g.op("Mul", [g.op("Mul", [twh, twh]), g.const(4.0)]), anchors],
                  "wh_px")
    else:
        wh = g.op("Mul", [g.op("Exp", [twh]), anchors], "wh_px")
    boxes = g.op("Concat", [xy, wh], "boxes", axis=2)
    return boxes, g.reshape(obj, [0, k], "objectness"), g.op("Mul", [obj, cls], "probs")


def decode_head(g: OnnxGraph, network: Network, layers: Sequence[int],
                tensors: dict[int, str]) -> tuple[str, str, str]:
    """(boxes, objectness, probs) of a head made of the [yolo] ``layers``."""
    per_layer = []
    for layer in layers:
        g.prefix = f"decode/{layer}"
        per_layer.append(_layer_candidates(g, network, layer, tensors[layer]))
    if len(per_layer) == 1:
        return per_layer[0]
    g.prefix = f"decode/{'_'.join(map(str, layers))}"
    return tuple(g.op("Concat", list(parts), what, axis=1)  # type: ignore[return-value]
                 for parts, what in zip(zip(*per_layer), ("boxes", "objectness", "probs")))
