"""Box overlap as Darknet's [yolo] loss measures it: IoU of centre boxes (pairwise and row by
row, with GIoU, DIoU and CIoU), and of box shapes against anchors."""
from __future__ import annotations

import math

import torch


def box_iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of centre boxes a (N, 4) with b (M, 4) -> (N, M); 0 when the union is 0."""
    ax0, ax1 = a[:, 0:1] - a[:, 2:3] / 2, a[:, 0:1] + a[:, 2:3] / 2
    ay0, ay1 = a[:, 1:2] - a[:, 3:4] / 2, a[:, 1:2] + a[:, 3:4] / 2
    bx0, bx1 = b[:, 0] - b[:, 2] / 2, b[:, 0] + b[:, 2] / 2
    by0, by1 = b[:, 1] - b[:, 3] / 2, b[:, 1] + b[:, 3] / 2
    iw = (torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp(min=0)
    ih = (torch.minimum(ay1, by1) - torch.maximum(ay0, by0)).clamp(min=0)
    inter = iw * ih
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def iou_kind(pred: torch.Tensor, truth: torch.Tensor, kind: str) -> torch.Tensor:
    """Row-wise IoU, GIoU, DIoU or CIoU of centre boxes pred (K, 4) and truth (K, 4)."""
    px0, px1 = pred[:, 0] - pred[:, 2] / 2, pred[:, 0] + pred[:, 2] / 2
    py0, py1 = pred[:, 1] - pred[:, 3] / 2, pred[:, 1] + pred[:, 3] / 2
    tx0, tx1 = truth[:, 0] - truth[:, 2] / 2, truth[:, 0] + truth[:, 2] / 2
    ty0, ty1 = truth[:, 1] - truth[:, 3] / 2, truth[:, 1] + truth[:, 3] / 2
    iw = (torch.minimum(px1, tx1) - torch.maximum(px0, tx0)).clamp(min=0)
    ih = (torch.minimum(py1, ty1) - torch.maximum(py0, ty0)).clamp(min=0)
    inter = iw * ih
    union = pred[:, 2] * pred[:, 3] + truth[:, 2] * truth[:, 3] - inter
    iou = inter / union.clamp(min=1e-12)
    if kind in ("iou", "mse"):
        return iou
    cw = torch.maximum(px1, tx1) - torch.minimum(px0, tx0)
    ch = torch.maximum(py1, ty1) - torch.minimum(py0, ty0)
    if kind == "giou":
        enclose = (cw * ch).clamp(min=1e-12)
        return iou - (enclose - union) / enclose
    diag = (cw ** 2 + ch ** 2).clamp(min=1e-12)
    centre = (pred[:, 0] - truth[:, 0]) ** 2 + (pred[:, 1] - truth[:, 1]) ** 2
    diou = iou - centre / diag
    if kind == "diou":
        return diou
    if kind != "ciou":
        raise ValueError(f"unknown IoU kind {kind!r}")
    v = (4 / math.pi ** 2) * (torch.atan(truth[:, 2] / truth[:, 3].clamp(min=1e-12))
                              - torch.atan(pred[:, 2] / pred[:, 3].clamp(min=1e-12))) ** 2
    with torch.no_grad():  # the trade-off weight is a constant in CIoU's gradient
        alpha = v / (1 - iou + v).clamp(min=1e-12)
    return diou - alpha * v


def shape_iou(wh: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """IoU of boxes of size wh (K, 2) and anchors (A, 2) placed at the same centre."""
    inter = torch.minimum(wh[:, None, 0], anchors[None, :, 0]) * \
        torch.minimum(wh[:, None, 1], anchors[None, :, 1])
    union = wh[:, None, 0] * wh[:, None, 1] + anchors[None, :, 0] * anchors[None, :, 1] - inter
    return inter / union


def shape_iou_kind(wh: torch.Tensor, anchors: torch.Tensor, kind: str) -> torch.Tensor:
    """Like :func:`shape_iou` (boxes at one centre), in IoU kind ``kind`` (GIoU, DIoU,
    CIoU): the iou_thresh test of Darknet's box_iou_kind. (K, A)."""
    k, a = len(wh), len(anchors)
    zeros = torch.zeros((k * a, 2), dtype=wh.dtype, device=wh.device)
    truth = torch.cat([zeros, wh.repeat_interleave(a, dim=0)], dim=1)
    anchor = torch.cat([zeros, anchors.repeat(k, 1)], dim=1)
    return iou_kind(anchor, truth, kind).view(k, a)
