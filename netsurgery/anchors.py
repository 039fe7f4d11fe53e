"""Anchor boxes for a dataset: k-means on box shapes with 1 − IoU as the distance, like
Darknet's ``detector calc_anchors``."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def shape_iou(wh: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """IoU of boxes and centroids compared by shape only (both centred at the origin)."""
    inter = np.minimum(wh[:, None, 0], centroids[None, :, 0]) * \
        np.minimum(wh[:, None, 1], centroids[None, :, 1])
    union = wh[:, None, 0] * wh[:, None, 1] + centroids[None, :, 0] * centroids[None, :, 1] - inter
    return inter / union


def kmeans_anchors(wh: Sequence[tuple[float, float]], n_anchors: int, net_w: int, net_h: int,
                   seed: int = 0, iterations: int = 100) -> list[tuple[int, int]]:
    """``n_anchors`` anchors (network pixels, sorted by area) for relative box sizes ``wh``."""
    boxes = np.asarray(wh, dtype=np.float64) * np.array([net_w, net_h], dtype=np.float64)
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
