"""Turning [yolo] / [region] layer outputs into boxes, NMS, and Darknet's printed list.

Follows AlexeyAB/darknet: ``get_yolo_detections`` + ``correct_yolo_boxes`` (yolo_layer.c),
``custom_get_region_detections`` (network.c / region_layer.c), ``do_nms_sort`` and
``box_iou`` (box.c), ``draw_detections_v3`` (image.c). Arithmetic is done in float32 where
Darknet uses float and in float64 where the C code promotes to double, so boxes and
probabilities agree with Darknet's to the last bit in the common cases.

Boxes are relative (0..1) centre boxes (x, y, w, h) in original-image coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .image import letterbox_geometry

F32 = np.float32


@dataclass(frozen=True)
class Box:
    """Centre box (x, y, w, h), relative to the image size."""
    x: float
    y: float
    w: float
    h: float


@dataclass
class YoloHead:
    """What decoding needs from a [yolo] section."""
    mask: list[int]
    anchors: list[float]  # flat w,h pairs in network pixels, all anchors of the section
    classes: int
    new_coords: bool = False
    name: str | None = None  # copied into Detection.head (e.g. "layer_016")


@dataclass
class RegionHead:
    """What decoding needs from a yolov2 [region] section."""
    anchors: list[float]  # flat w,h pairs in grid-cell units
    classes: int
    num: int
    coords: int = 4
    softmax: bool = True
    name: str | None = None


@dataclass
class Detection:
    """One Darknet ``detection``: a box, its objectness and per-class probabilities
    (objectness·class, zero where not above the decode threshold)."""
    box: Box
    objectness: float
    probs: np.ndarray  # float32 (classes,)
    head: str | None = None


@dataclass(frozen=True)
class PrintedDetection:
    """One line of ``darknet detector test`` output."""
    class_id: int
    prob: float
    box: Box
    best: bool  # True for the first line of a detection (its best class)


def _correct_boxes(x, y, w, h, net_w: int, net_h: int, image_w: int, image_h: int,
                   letterbox: bool):
    """``correct_yolo_boxes`` with relative=1: map network-relative boxes to the image."""
    if letterbox:
        geo = letterbox_geometry(image_w, image_h, net_w, net_h)
        new_w, new_h = geo.new_w, geo.new_h
    else:
        new_w, new_h = net_w, net_h
    delta_w, delta_h = F32(net_w - new_w), F32(net_h - new_h)
    ratio_w, ratio_h = F32(new_w) / F32(net_w), F32(new_h) / F32(net_h)
    # b.x = (b.x - deltaw / 2. / netw) / ratiow is evaluated in double, stored as float
    x = ((x.astype(np.float64) - np.float64(delta_w) / 2.0 / net_w)
         / np.float64(ratio_w)).astype(F32)
    y = ((y.astype(np.float64) - np.float64(delta_h) / 2.0 / net_h)
         / np.float64(ratio_h)).astype(F32)
    w = w * (F32(1) / ratio_w)
    h = h * (F32(1) / ratio_h)
    return x, y, w, h


def _make_detections(x, y, w, h, objectness, probs, head: str | None) -> list[Detection]:
    return [Detection(Box(float(x[i]), float(y[i]), float(w[i]), float(h[i])),
                      float(objectness[i]), probs[i].copy(), head)
            for i in range(len(x))]


def decode_yolo(output: np.ndarray, head: YoloHead, net_w: int, net_h: int,
                image_w: int, image_h: int, thresh: float,
                letterbox: bool) -> list[Detection]:
    """Darknet's ``get_yolo_detections`` on one [yolo] output as Darknet leaves it.

    ``output`` is float32 (len(mask)·(5+classes), H, W): x, y already logistic (and
    scale_x_y applied), w, h raw, objectness and classes logistic (with new_coords nothing
    is activated and w = (2t)²·anchor is used instead of exp). A box is kept when
    objectness > thresh; each class probability is objectness·class if > thresh, else 0.
    Detections come in Darknet's order: cells row by row, anchors within a cell."""
    output = np.asarray(output, dtype=F32)
    n_anchors, n_fields = len(head.mask), 5 + head.classes
    if output.ndim != 3 or output.shape[0] != n_anchors * n_fields:
        raise ValueError(f"decode_yolo: output shape {output.shape} does not fit "
                         f"{n_anchors} anchors x (5 + {head.classes} classes)")
    _, grid_h, grid_w = output.shape
    p = output.reshape(n_anchors, n_fields, grid_h, grid_w)
    thresh32 = F32(thresh)
    # (row, col, anchor) in C order is Darknet's loop order
    row, col, a = np.nonzero(p[:, 4].transpose(1, 2, 0) > thresh32)
    objectness = p[a, 4, row, col]
    tx, ty, tw, th = (p[a, k, row, col] for k in range(4))
    anchors = np.asarray(head.anchors, dtype=F32).reshape(-1, 2)[np.asarray(head.mask)[a]]
    x = (col.astype(F32) + tx) / F32(grid_w)
    y = (row.astype(F32) + ty) / F32(grid_h)
    if head.new_coords:
        w = tw * tw * F32(4) * anchors[:, 0] / F32(net_w)
        h = th * th * F32(4) * anchors[:, 1] / F32(net_h)
    else:
        # exp() and the products are in double in the C code
        w = (np.exp(tw.astype(np.float64)) * anchors[:, 0] / net_w).astype(F32)
        h = (np.exp(th.astype(np.float64)) * anchors[:, 1] / net_h).astype(F32)
    cls = p[a, 5:, row, col]  # (n, classes)
    probs = objectness[:, None] * cls
    probs = np.where(probs > thresh32, probs, F32(0)).astype(F32)
    x, y, w, h = _correct_boxes(x, y, w, h, net_w, net_h, image_w, image_h, letterbox)
    return _make_detections(x, y, w, h, objectness, probs, head.name)


def _logistic(v: np.ndarray) -> np.ndarray:
    """Darknet's logistic_activate: 1./(1. + exp(-x)) in double, stored as float."""
    return (1.0 / (1.0 + np.exp(-v.astype(np.float64)))).astype(F32)


def _softmax_darknet(v: np.ndarray) -> np.ndarray:
    """Darknet's softmax over axis 0 with its float32 running sum."""
    largest = v.max(axis=0)
    e = np.exp((v - largest).astype(np.float64)).astype(F32)
    total = np.zeros(v.shape[1:], dtype=F32)
    for k in range(v.shape[0]):  # sequential float sum, as the C loop
        total = total + e[k]
    return e / total


def decode_region(raw: np.ndarray, head: RegionHead, net_w: int, net_h: int,
                  image_w: int, image_h: int, thresh: float,
                  letterbox: bool) -> list[Detection]:
    """AlexeyAB's ``custom_get_region_detections`` for a yolov2 [region] layer.

    ``raw`` is the [region] layer's *input* (the conv output, nothing activated), float32
    (num·(coords+1+classes), H, W), channel = anchor·(coords+1+classes) + entry. Darknet's
    own region output buffer is reordered and partly activated, so the raw input is the
    unambiguous thing to pass. x, y, objectness get the logistic, classes the softmax;
    x = (col + σ(tx))/W, w = exp(tw)·anchor_w/W. Every cell and anchor gives a detection
    with objectness 1 (as AlexeyAB does); probs are σ(obj)·class if > thresh, else 0."""
    raw = np.asarray(raw, dtype=F32)
    n_fields = head.coords + 1 + head.classes
    if raw.ndim != 3 or raw.shape[0] != head.num * n_fields:
        raise ValueError(f"decode_region: input shape {raw.shape} does not fit "
                         f"{head.num} anchors x {n_fields} fields")
    _, grid_h, grid_w = raw.shape
    p = raw.reshape(head.num, n_fields, grid_h, grid_w).transpose(2, 3, 0, 1)
    p = p.reshape(grid_h * grid_w * head.num, n_fields)  # Darknet's index = cell*num + n
    cell = np.repeat(np.arange(grid_h * grid_w), head.num)
    anchor = np.tile(np.arange(head.num), grid_h * grid_w)
    row, col = cell // grid_w, cell % grid_w
    anchors = np.asarray(head.anchors, dtype=F32).reshape(-1, 2)[anchor]
    x = (col.astype(F32) + _logistic(p[:, 0])) / F32(grid_w)
    y = (row.astype(F32) + _logistic(p[:, 1])) / F32(grid_h)
    w = (np.exp(p[:, 2].astype(np.float64)) * anchors[:, 0] / grid_w).astype(F32)
    h = (np.exp(p[:, 3].astype(np.float64)) * anchors[:, 1] / grid_h).astype(F32)
    scale = _logistic(p[:, head.coords])
    cls = p[:, head.coords + 1:].T
    cls = (_softmax_darknet(cls) if head.softmax else cls).T
    probs = scale[:, None] * cls
    probs = np.where(probs > F32(thresh), probs, F32(0)).astype(F32)
    x, y, w, h = _correct_boxes(x, y, w, h, net_w, net_h, image_w, image_h, letterbox)
    return _make_detections(x, y, w, h, np.ones(len(x), dtype=F32), probs, head.name)


def box_iou(a: Box, b: Box) -> float:
    """Darknet's ``box_iou`` (AlexeyAB: 0 when the intersection or union is 0), float32."""
    boxes = np.array([[b.x, b.y, b.w, b.h]], dtype=F32)
    return float(_iou_one_to_many(np.array([a.x, a.y, a.w, a.h], dtype=F32), boxes)[0])


def _iou_one_to_many(a: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of box a (4,) with each row of boxes (n, 4), with box.c's float32 steps."""
    half = F32(2)

    def overlap(x1, w1, x2, w2):
        left = np.maximum(x1 - w1 / half, x2 - w2 / half)
        right = np.minimum(x1 + w1 / half, x2 + w2 / half)
        return right - left

    ow = overlap(a[0], a[2], boxes[:, 0], boxes[:, 2])
    oh = overlap(a[1], a[3], boxes[:, 1], boxes[:, 3])
    inter = np.where((ow < 0) | (oh < 0), F32(0), ow * oh).astype(F32)
    union = (a[2] * a[3] + boxes[:, 2] * boxes[:, 3]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((inter == 0) | (union == 0), F32(0), iou).astype(F32)


def do_nms_sort(dets: Sequence[Detection], classes: int,
                nms_thresh: float = 0.45) -> list[Detection]:
    """Darknet's ``do_nms_sort``; returns new detections in Darknet's final array order.

    Detections with objectness 0 are first swapped to the end (Darknet's loop, which
    reorders). Then for each class in turn the others are sorted by that class's
    probability, descending, and every later box with IoU > nms_thresh with a box of
    non-zero probability gets that class's probability set to 0. Darknet sorts with
    qsort, which glibc implements as a stable merge sort; a stable sort is used here, so
    ties keep their previous order. The input is not modified."""
    out = [Detection(d.box, d.objectness, np.array(d.probs, dtype=F32, copy=True), d.head)
           for d in dets]
    k = len(out) - 1
    i = 0
    while i <= k:
        if out[i].objectness == 0:
            out[i], out[k] = out[k], out[i]
            k -= 1
            i -= 1
        i += 1
    total = k + 1
    active = out[:total]
    if total == 0:
        return out
    sizes = {len(d.probs) for d in active}
    if len(sizes) > 1:
        # Darknet sizes every detection from one layer; heads must share a class list
        raise ValueError(f"do_nms_sort: detections have different class counts {sorted(sizes)}")
    boxes = np.array([[d.box.x, d.box.y, d.box.w, d.box.h] for d in active], dtype=F32)
    probs = np.stack([d.probs for d in active]).astype(F32)  # rows follow `order`
    order = np.arange(total)
    thresh32 = F32(nms_thresh)
    iou_rows: dict[int, np.ndarray] = {}  # a box's IoU with every box, reused across classes
    for cls in range(classes):
        order = order[np.argsort(-probs[order, cls], kind="stable")]
        column = probs[order, cls]
        for i in np.flatnonzero(column):
            if column[i] == 0:  # zeroed by an earlier box in this pass
                continue
            row = iou_rows.get(order[i])
            if row is None:
                row = iou_rows[order[i]] = _iou_one_to_many(boxes[order[i]], boxes)
            column[i + 1:][row[order[i + 1:]] > thresh32] = 0
        probs[order, cls] = column
    result = []
    for idx in order:
        d = active[idx]
        d.probs = probs[idx].copy()
        result.append(d)
    return result + out[total:]


def _c_round(v: float) -> float:
    """C's round(): halves away from zero (Python's round() rounds halves to even)."""
    return float(np.copysign(np.floor(np.abs(np.float64(v)) + 0.5), v))


def _pixel_values(box: Box, image_w: int, image_h: int) -> tuple[float, float, float, float]:
    """The four values -ext_output prints, with draw_detections_v3's float steps."""
    x, y, w, h = F32(box.x), F32(box.y), F32(box.w), F32(box.h)
    left = (x - w / F32(2)) * F32(image_w)
    top = (y - h / F32(2)) * F32(image_h)
    return (_c_round(left), _c_round(top), _c_round(w * F32(image_w)),
            _c_round(h * F32(image_h)))


def to_pixels(box: Box, image_w: int, image_h: int) -> tuple[int, int, int, int]:
    """(left, top, width, height) in pixels as ``-ext_output`` prints them:
    round((x-w/2)·W), round((y-h/2)·H), round(w·W), round(h·H) with C's round()."""
    return tuple(int(v) for v in _pixel_values(box, image_w, image_h))  # type: ignore


def printed_detections(dets: Iterable[Detection], thresh: float = 0.25,
                       names: Sequence[str] | None = None) -> list[PrintedDetection]:
    """What ``draw_detections_v3`` prints, in its order.

    A detection is shown when some class has prob > thresh; its best class (the first
    highest, skipping names starting with "dont_show") comes first. Shown detections are
    sorted by left edge x - w/2 (stable, as glibc's qsort); after each best-class line
    come the detection's other classes with prob > thresh in class order. Pass the list
    returned by do_nms_sort to get Darknet's order."""
    thresh32 = F32(thresh)
    hidden = {i for i, n in enumerate(names or []) if str(n).startswith("dont_show")}
    selected: list[tuple[F32, Detection, int]] = []
    for det in dets:
        probs = np.asarray(det.probs, dtype=F32)
        eligible = probs > thresh32
        for i in hidden:  # such classes are never a detection's best class
            if i < eligible.size:
                eligible[i] = False
        if not eligible.any():
            continue
        best = int(np.argmax(np.where(eligible, probs, -np.inf)))
        left = F32(det.box.x) - F32(det.box.w) / F32(2)
        selected.append((left, det, best))
    selected.sort(key=lambda item: item[0])
    lines: list[PrintedDetection] = []
    for _, det, best in selected:
        probs = np.asarray(det.probs, dtype=F32)
        lines.append(PrintedDetection(best, float(probs[best]), det.box, True))
        for j in np.flatnonzero(probs > thresh32):
            if j != best:
                lines.append(PrintedDetection(int(j), float(probs[j]), det.box, False))
    return lines


def format_printed(line: PrintedDetection, names: Sequence[str] | None,
                   image_w: int, image_h: int, ext_output: bool = True) -> str:
    """One line exactly as ``darknet detector test [-ext_output]`` prints it (no newline)."""
    name = names[line.class_id] if names is not None else str(line.class_id)
    percent = float(F32(line.prob) * F32(100))  # float multiply, then printf("%.0f")
    text = "%s: %.0f%%" % (name, percent)
    if ext_output:
        left, top, width, height = _pixel_values(line.box, image_w, image_h)
        text += "\t(left_x: %4.0f   top_y: %4.0f   width: %4.0f   height: %4.0f)" % (
            left, top, width, height)
    return text
