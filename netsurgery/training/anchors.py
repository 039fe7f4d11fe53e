"""Anchor boxes for a dataset: k-means on box shapes with 1 − IoU as the distance, like
Darknet's ``detector calc_anchors``."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from netsurgery.errors import DataError, UsageError


def shape_iou(wh: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """IoU of boxes and centroids compared by shape only (both centred at the origin)."""
    inter = np.minimum(wh[:, None, 0], centroids[None, :, 0]) * \
        np.minimum(wh[:, None, 1], centroids[None, :, 1])
    union = wh[:, None, 0] * wh[:, None, 1] + centroids[None, :, 0] * centroids[None, :, 1] - inter
    return inter / union


def kmeans_anchors(wh: Sequence[tuple[float, float]], n_anchors: int, net_w: int, net_h: int,
                   seed: int = 0, iterations: int = 100) -> list[tuple[int, int]]:
    """``n_anchors`` anchors (network pixels, sorted by area) for relative box sizes ``wh``."""
    boxes = np.asarray(wh, dtype=np.float64).reshape(-1, 2) * \
        np.array([net_w, net_h], dtype=np.float64)
    if len(boxes) < n_anchors:
        raise ValueError(f"{len(boxes)} boxes are too few for {n_anchors} anchors")
    rng = np.random.default_rng(seed)
    centroids = boxes[rng.choice(len(boxes), n_anchors, replace=False)]
    for _ in range(iterations):
        assign = np.argmax(shape_iou(boxes, centroids), axis=1)
        new = np.array([boxes[assign == j].mean(axis=0) if np.any(assign == j) else centroids[j]
                        for j in range(n_anchors)])
        if np.allclose(new, centroids):
            break
        centroids = new
    order = np.argsort(centroids[:, 0] * centroids[:, 1])
    return [(max(1, int(round(w))), max(1, int(round(h)))) for w, h in centroids[order]]


def mean_best_iou(wh: Sequence[tuple[float, float]], anchors: Sequence[tuple[int, int]],
                  net_w: int, net_h: int) -> float:
    """Average over boxes of the best shape IoU with any anchor (Darknet prints it)."""
    boxes = np.asarray(wh, dtype=np.float64) * np.array([net_w, net_h], dtype=np.float64)
    return float(shape_iou(boxes, np.asarray(anchors, dtype=np.float64)).max(axis=1).mean())


def task_cfg_for_dataset(base_cfg, data, classes: int | None = None, fit_anchors: bool = True):
    """The base cfg retargeted to a Darknet dataset: its class count and, with
    ``fit_anchors``, anchors fitted to its training boxes at the cfg's input size. Returns
    (cfg, anchors or None, mean best IoU or None). Without ``data`` only the class count
    changes (``classes`` is then required).

    ``classes``, when given, must agree with the ``.data`` file. Too few boxes to fit the
    anchors to is a DataError that suggests keeping the base's anchors."""
    from netsurgery.darknet.cfg import load_cfg
    from netsurgery.darknet.network import build_network
    from netsurgery.surgery.editing import retarget_heads

    from .data import load_data_file, load_dataset

    cfg = load_cfg(base_cfg) if not hasattr(base_cfg, "layers") else base_cfg
    network = build_network(cfg)
    yolo_layers = [i for i in network.heads() if network.layers[i].type_name == "yolo"]
    if not yolo_layers:
        raise UsageError(f"{network.path}: no [yolo] layer to retarget (task-cfg edits the "
                         "[yolo] heads and the convolution before each)")
    if data is None:  # classes only
        new = retarget_heads(cfg, classes)
        build_network(new)
        return new, None, None
    data_file = load_data_file(data)
    n_classes = data_file.require_classes()
    if classes is not None and classes != n_classes:
        raise UsageError(f"--classes {classes}: {data_file.where('classes')} says "
                         f"classes={n_classes}; give one or make them agree")
    anchors = quality = None
    if fit_anchors:
        train = data_file.require("train")
        dataset = load_dataset(train, n_classes)
        wh = [(lab.w, lab.h) for s in dataset.items for lab in s.labels]
        n = network.layers[yolo_layers[0]].total
        if len(wh) < n:
            raise DataError(f"{train}: {len(wh)} boxes in {len(dataset.items)} usable images "
                            f"({dataset.summary}), too few to fit {n} anchors; add labelled "
                            "images or pass --keep-anchors")
        anchors = kmeans_anchors(wh, n, network.net.width, network.net.height)
        quality = mean_best_iou(wh, anchors, network.net.width, network.net.height)
    flat = [v for a in anchors for v in a] if anchors else None
    new = retarget_heads(cfg, n_classes, flat)
    build_network(new)  # the result must be a valid network
    return new, anchors, quality
