"""The YOLO training loss with Darknet's semantics (AlexeyAB, yolo_layer.c:
``forward_yolo_layer`` / ``delta_yolo_box`` / ``delta_yolo_class``).

Darknet does not compute a loss and differentiate it: it writes ``delta`` (the negative
gradient) for every output of the conv layer before ``[yolo]`` and passes it back unchanged
(no logistic derivative). Every term below is written so that its gradient with respect to
the raw conv outputs is exactly Darknet's ``-delta``:

* Assignment: each truth goes to the anchor (among all ``num`` anchors) whose (w, h) has the
  best IoU with its (w, h); if that anchor is in this layer's ``mask``, the cell holding
  the truth's centre, that anchor, gets the truth. Otherwise this layer ignores it. With
  ``iou_thresh`` < 1 (YOLOv4: 0.213) every other anchor of the mask whose (w, h) match with
  the truth (``iou_thresh_kind``: IoU, GIoU, DIoU or CIoU of the boxes at one centre) exceeds
  it gets the truth too, in the same cell, with the same terms.
* Box, ``iou_loss=mse`` (default), scaled by ``iou_normalizer``·(2 − w·h):
  x, y: delta = t − out with out = s·σ(z) − (s−1)/2 (s = ``scale_x_y``); the loss with that
  gradient is s·KL(q‖σ(z)), q = (t + (s−1)/2)/s (for s = 1 the logistic cross entropy
  minus its minimum). w, h: ½(t − z)² with t = log(w·net_w/anchor_w).
* Box, ``iou_loss=iou|giou|diou|ciou``: value ``iou_normalizer``·(1 − IoU-kind) of the
  decoded box; gradient as Darknet applies it: ∂/∂x, ∂/∂y of the box go to the x, y logits
  unchanged, ∂/∂w·exp(tw) and ∂/∂h·exp(th) to tw, th (no (2 − w·h) scale), each then clipped
  to ±``max_delta`` when set (Darknet clips in this branch only, not for MSE).
* Objectness: logistic cross entropy (delta = 1 − p at assigned cells, 0 − p elsewhere),
  times ``obj_normalizer``; a prediction whose box has IoU > ``ignore_thresh`` with some
  truth, and some class probability > 0.25 (Darknet's compare_yolo_class), gets none.
* Classes: one-vs-all logistic cross entropy at assigned cells; several truths in one cell
  give a multi-hot target (Darknet's delta_yolo_class); ``label_smooth_eps`` as Darknet.
  ``cls_normalizer`` does not scale them on its own: AlexeyAB's delta_yolo_class applies it
  only together with ``counters_per_class``.
* ``counters_per_class`` (objects per class): multipliers max/count (capped at
  ``max_delta``) scale, for each truth, its box terms (inside the normaliser, before the
  clip), its cell's objectness (the last truth written to a cell sets it) and its class term
  — times ``cls_normalizer`` for the first truth in a cell, without it for later ones, as
  delta_yolo_class does.
* ``focal_loss=1``: the first truth in a cell scales all its class terms by Darknet's focal
  factor α·(−(1 − pt)(2·pt·ln pt + pt − 1)), α = 0.5, pt its class's probability (see
  :func:`_class_plan`).

Sums run over all cells and images; the trainer divides by the batch size, as Darknet's
update divides the accumulated deltas by the batch.

Several truths in one cell and anchor add their box terms; with ``iou_thresh`` < 1 Darknet
then divides that cell's box deltas by the number of classes whose delta is positive there
(``averages_yolo_deltas``, called only in that case), and so does this loss.

``objectness_smooth=1``: an ignored prediction gets obj_normalizer·(IoU − out) instead of no
delta (the best IoU with a truth as a soft target), and an assigned cell's objectness is
written only where its delta is still exactly 0 — as forward_yolo_layer does, so in practice
assigned cells keep that soft or background delta.

``new_coords=1`` (Scaled-YOLOv4): the conv before ``[yolo]`` applies the logistic itself and
``[yolo]`` activates nothing, so ``raw`` already holds probabilities and the box is
((i + s·x − (s−1)/2)/W, …, (2·w)²·anchor). Objectness and classes become ½(out − target)²
(gradient out − target, Darknet's −delta; the logistic's own derivative is autograd's, as
Darknet's conv backward applies it); MSE boxes target x, y on the scaled output without
the factor s in the gradient and w, h = sqrt(w/4·anchor); IoU boxes pass ∂/∂(x, y, w, h) to
the outputs unchanged.

``truth_thresh`` < 1: before the truth loop, every prediction whose box overlaps a truth by
more than it also learns that truth in its own cell — objectness target 1 (IoU² with
objectness_smooth), the truth's class, its box — as forward_yolo_layer's per-prediction
stage does; statistics (count, IoU, recall) count the truth loop only, like Darknet's.

Not implemented (:func:`unsupported_keys` lists them when set): ``map`` (the YOLO9000 class
remapping file) and ``delta_normalizer`` ≠ 1 (Darknet's GPU build scales every delta by it,
its CPU build ignores it). No reference cfg sets either.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from netsurgery.darknet.layers.yolo import YoloSpec
from netsurgery.darknet.network import Network

from .boxes import box_iou_matrix, iou_kind
from .boxes import shape_iou as _shape_iou
from .boxes import shape_iou_kind as _shape_iou_kind

IOU_KINDS = ("mse", "iou", "giou", "diou", "ciou")
CLASS_MATCH_THRESH = 0.25  # compare_yolo_class's conf_thresh in forward_yolo_layer


@dataclass(frozen=True)
class YoloHeadConfig:
    """The loss settings of one [yolo] layer, with Darknet's defaults."""

    layer: int  # index of the [yolo] layer; its input is the conv at layer - 1
    classes: int
    mask: tuple[int, ...]
    anchors: tuple[tuple[float, float], ...]  # all `num` anchors (w, h) in network pixels
    ignore_thresh: float = 0.5
    scale_x_y: float = 1.0
    iou_loss: str = "mse"
    iou_normalizer: float = 0.75
    obj_normalizer: float = 1.0
    cls_normalizer: float = 1.0
    label_smooth_eps: float = 0.0
    max_boxes: int = 200
    iou_thresh: float = 1.0  # < 1: other anchors of the mask matching the truth's shape too
    iou_thresh_kind: str = "iou"  # how that shape match is measured: iou, giou, diou, ciou
    truth_thresh: float = 1.0  # < 1: predictions overlapping a truth that much learn it too
    max_delta: float = math.inf  # clip of each box delta (IoU losses)
    class_multipliers: tuple[float, ...] | None = None  # from counters_per_class
    focal_loss: bool = False  # focal scaling of the class terms (see _class_plan)
    new_coords: bool = False  # the conv before is logistic already; w = (2·out)²·anchor
    objectness_smooth: bool = False  # soft objectness targets (see the module docstring)

    @classmethod
    def from_spec(cls, spec: YoloSpec) -> "YoloHeadConfig":
        s = spec.section
        iou_loss = s.get_str("iou_loss", "mse")
        if iou_loss not in IOU_KINDS:
            iou_loss = "iou"  # Darknet: any other name means plain IoU
        pairs = tuple((spec.anchors[2 * k], spec.anchors[2 * k + 1]) for k in range(spec.total))
        for w, h in pairs:
            if w <= 0 or h <= 0:
                raise spec.error(f"anchor {w},{h}: anchors must be positive for training",
                                 "anchors")
        return cls(layer=spec.index, classes=spec.classes, mask=tuple(spec.mask),
                   anchors=pairs,
                   ignore_thresh=s.get_float("ignore_thresh", 0.5),
                   scale_x_y=spec.scale_x_y,
                   iou_loss=iou_loss,
                   iou_normalizer=s.get_float("iou_normalizer", 0.75),
                   obj_normalizer=s.get_float("obj_normalizer", 1.0),
                   cls_normalizer=s.get_float("cls_normalizer", 1.0),
                   label_smooth_eps=s.get_float("label_smooth_eps", 0.0),
                   max_boxes=s.get_int("max", 200),
                   iou_thresh=s.get_float("iou_thresh", 1.0),
                   # Darknet's get_IoU: any other name (mse too) means plain IoU
                   iou_thresh_kind=kind if (kind := s.get_str("iou_thresh_kind", "iou"))
                   in ("giou", "diou", "ciou") else "iou",
                   truth_thresh=s.get_float("truth_thresh", 1.0),
                   max_delta=s.get_float("max_delta", math.inf),
                   class_multipliers=_class_multipliers(spec),
                   focal_loss=s.get_float("focal_loss", 0) != 0,
                   new_coords=bool(spec.new_coords),
                   objectness_smooth=s.get_float("objectness_smooth", 0) != 0)


def unsupported_keys(spec: YoloSpec) -> list[str]:
    """Loss options set in a [yolo] section that this loss does not implement."""
    s = spec.section
    out = ["map"] if s.has("map") else []
    if s.get_float("delta_normalizer", 1.0) != 1.0:
        out.append("delta_normalizer")
    return [f"layer {spec.index} [yolo] {key}" for key in out]


def _class_multipliers(spec: YoloSpec) -> tuple[float, ...] | None:
    """``counters_per_class`` (objects per class in the training set) as Darknet's
    classes_multipliers: the largest count over each count (counts below 1 taken as 1),
    capped at ``max_delta``."""
    s = spec.section
    if not s.has("counters_per_class"):
        return None
    counts = [max(c, 1) for c in s.get_ints("counters_per_class")]
    if len(counts) != spec.classes:
        raise spec.error(f"counters_per_class has {len(counts)} values: expected one per class "
                         f"(classes={spec.classes})", "counters_per_class")
    cap = s.get_float("max_delta", math.inf)
    return tuple(min(max(counts) / c, cap) for c in counts)


@dataclass
class HeadLoss:
    """One head's loss (summed over the batch) and Darknet's training statistics."""

    total: torch.Tensor
    box: float
    obj: float
    cls: float
    count: int  # truths assigned to this head
    iou_sum: float  # IoU of the assigned cells' predicted boxes with their truths
    recall50: int  # assigned truths whose predicted box has IoU > 0.5


@dataclass
class LossResult:
    """The loss of all heads: ``total`` (to backpropagate) and per-part sums."""

    total: torch.Tensor
    heads: list[HeadLoss] = field(default_factory=list)

    @property
    def parts(self) -> dict[str, float]:
        return {key: sum(getattr(h, key) for h in self.heads) for key in ("box", "obj", "cls")}

    @property
    def count(self) -> int:
        return sum(h.count for h in self.heads)

    @property
    def avg_iou(self) -> float:
        n = self.count
        return sum(h.iou_sum for h in self.heads) / n if n else 0.0


def _activated(pd: torch.Tensor, head: YoloHeadConfig) -> torch.Tensor:
    """What the [yolo] layer makes of its input (b, n, 5+C, h, w): x, y in cell units with
    scale_x_y, w, h as multiples of the anchor, objectness and classes as probabilities.
    With new_coords the conv before already applied the logistic."""
    s, off = head.scale_x_y, 0.5 * (head.scale_x_y - 1)
    out = pd.clone() if head.new_coords else torch.sigmoid(pd)
    out[:, :, 0:2] = out[:, :, 0:2] * s - off
    out[:, :, 2:4] = pd[:, :, 2:4] ** 2 * 4 if head.new_coords else torch.exp(pd[:, :, 2:4])
    return out


def _logistic_terms(z: torch.Tensor, target: torch.Tensor, head: YoloHeadConfig) -> torch.Tensor:
    """Per-element terms whose gradient with respect to ``z`` is Darknet's −delta
    = out − target: the logistic cross entropy of logits, or, with new_coords (``z`` is the
    probability already, its logistic lies in the conv before), ½(z − target)²."""
    if head.new_coords:
        return 0.5 * (z - target) ** 2
    return F.binary_cross_entropy_with_logits(z, target, reduction="none")


def _entropy(q: torch.Tensor) -> torch.Tensor:
    q = q.clamp(0, 1)
    return -(torch.special.xlogy(q, q) + torch.special.xlogy(1 - q, 1 - q))


# --------------------------------------------------------------------------- the loss


@dataclass
class _Assignment:
    image: list[int] = field(default_factory=list)
    anchor: list[int] = field(default_factory=list)  # index into mask
    row: list[int] = field(default_factory=list)
    col: list[int] = field(default_factory=list)
    truth: list[list[float]] = field(default_factory=list)  # class, x, y, w, h
    # None: assigned by the truth loop; else the prediction's IoU² with the truth it matched
    # above truth_thresh (the per-prediction stage, which Darknet runs first)
    iou_multiplier: list[float | None] = field(default_factory=list)

    def add(self, b: int, a: int, j: int, i: int, truth: list[float],
            iou_multiplier: float | None = None) -> None:
        self.image.append(b)
        self.anchor.append(a)
        self.row.append(j)
        self.col.append(i)
        self.truth.append(truth)
        self.iou_multiplier.append(iou_multiplier)


def yolo_loss(raw: torch.Tensor, head: YoloHeadConfig, truths: Sequence[torch.Tensor],
              net_w: int, net_h: int) -> HeadLoss:
    """Loss of one [yolo] head.

    ``raw`` is the output of the conv layer before the [yolo] layer (B, len(mask)·(5+C),
    H, W), not activated. ``truths[b]`` is a float tensor (k, 5): class, x, y, w, h relative
    to the network input. Returns the sum over the batch."""
    b, c, h, w = raw.shape
    n, nf = len(head.mask), 5 + head.classes
    if c != n * nf:
        raise ValueError(f"head at layer {head.layer}: input has {c} channels, expected "
                         f"{n}·(5+{head.classes}) = {n * nf}")
    if len(truths) != b:
        raise ValueError(f"{len(truths)} truth tensors for a batch of {b}")
    pred = _predict(raw.view(b, n, nf, h, w), head, net_w, net_h)
    dev, f32 = raw.device, torch.float32
    obj_weight = torch.full((b, n, h, w), head.obj_normalizer, dtype=f32, device=dev)
    obj_target = torch.zeros((b, n, h, w), dtype=f32, device=dev)
    assigned = _assign(pred, head, truths, obj_weight, obj_target)
    zero = raw.sum() * 0  # keeps the graph connected when nothing is assigned
    box_loss = cls_loss = zero
    iou_sum, recall = 0.0, 0
    if assigned.image:
        box_loss, cls_loss, iou_sum, recall = _assigned_terms(pred, head, assigned,
                                                              obj_weight, obj_target)
    obj_loss = (obj_weight * _logistic_terms(pred.p[:, :, 4].float(), obj_target, head)).sum()
    total = box_loss + obj_loss + cls_loss
    from_loop = sum(m is None for m in assigned.iou_multiplier)  # Darknet's count
    return HeadLoss(total, float(box_loss.detach()), float(obj_loss.detach()),
                    float(cls_loss.detach()), from_loop, iou_sum, recall)


@dataclass
class _Prediction:
    """A head's raw output (B, n, 5+C, H, W) and, without gradient, what it predicts."""

    p: torch.Tensor
    act: torch.Tensor  # x, y scaled; objectness and classes as probabilities
    boxes: torch.Tensor  # (B, n, H, W, 4) cx, cy, w, h relative to the input
    class_match: torch.Tensor  # (B, n, H, W): some class above CLASS_MATCH_THRESH
    anchors_rel: torch.Tensor  # every anchor of the head's list, relative to the input
    mask_rel: torch.Tensor  # the anchors of this head's mask

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n, H, W)."""
        return self.p.shape[1], self.p.shape[3], self.p.shape[4]


def _predict(p: torch.Tensor, head: YoloHeadConfig, net_w: int, net_h: int) -> _Prediction:
    dev, f32 = p.device, torch.float32
    b, n, _, h, w = p.shape
    anchors = torch.tensor(head.anchors, dtype=f32, device=dev)
    anchors_rel = anchors / torch.tensor([net_w, net_h], dtype=f32, device=dev)
    mask_rel = anchors_rel[list(head.mask)]
    with torch.no_grad():  # the boxes the layer currently predicts, for ignore and stats
        pd = p.detach().float()
        gx = torch.arange(w, device=dev, dtype=f32).view(1, 1, 1, w)
        gy = torch.arange(h, device=dev, dtype=f32).view(1, 1, h, 1)
        act = _activated(pd, head)
        boxes = torch.stack([(gx + act[:, :, 0]) / w, (gy + act[:, :, 1]) / h,
                             act[:, :, 2] * mask_rel[:, 0].view(1, n, 1, 1),
                             act[:, :, 3] * mask_rel[:, 1].view(1, n, 1, 1)], dim=-1)
        class_match = act[:, :, 5:].amax(dim=2) > CLASS_MATCH_THRESH
    return _Prediction(p, act, boxes, class_match, anchors_rel, mask_rel)


def _assign(pred: _Prediction, head: YoloHeadConfig, truths: Sequence[torch.Tensor],
            obj_weight: torch.Tensor, obj_target: torch.Tensor) -> _Assignment:
    """Darknet's per-image pass: ignore predictions that already match a truth (updating
    the objectness weights and targets), then assign truths to cells and anchors."""
    n, h, w = pred.shape
    mask = list(head.mask)
    dev, f32 = pred.p.device, torch.float32
    assigned = _Assignment()
    for bi, t in enumerate(truths):
        t = t.to(device=dev, dtype=f32).reshape(-1, 5)[:head.max_boxes]
        t = t[(t[:, 0] >= 0) & (t[:, 0] < head.classes)]  # Darknet skips such labels
        if len(t) == 0:
            continue
        best, best_t = box_iou_matrix(pred.boxes[bi].reshape(-1, 4), t[:, 1:5]).max(dim=1)
        best, best_t = best.view(n, h, w), best_t.view(n, h, w)
        ignored = (best > head.ignore_thresh) & pred.class_match[bi]
        if head.objectness_smooth:  # obj_normalizer·(IoU − out) instead of no delta
            obj_target[bi][ignored] = best[ignored]
        else:
            obj_weight[bi][ignored] = 0
        if head.truth_thresh < 1:
            rows = t.tolist()
            for a, j, i in (best > head.truth_thresh).nonzero().tolist():
                assigned.add(bi, a, j, i, rows[int(best_t[a, j, i])],
                             float(best[a, j, i]) ** 2)
        shape_iou = _shape_iou(t[:, 3:5], pred.anchors_rel)
        best_anchor = shape_iou.argmax(dim=1).tolist()
        if head.iou_thresh < 1 and head.iou_thresh_kind != "iou":
            shape_iou = _shape_iou_kind(t[:, 3:5], pred.anchors_rel, head.iou_thresh_kind)
        for row, best_n, ious in zip(t.tolist(), best_anchor, shape_iou.tolist()):
            i = min(int(row[1] * w), w - 1)
            j = min(int(row[2] * h), h - 1)
            if best_n in mask:  # else another head's anchor
                assigned.add(bi, mask.index(best_n), j, i, row)
            if head.iou_thresh < 1:
                for m, anchor in enumerate(mask):
                    if anchor != best_n and ious[anchor] > head.iou_thresh:
                        assigned.add(bi, m, j, i, row)
    return assigned


def _assigned_terms(pred: _Prediction, head: YoloHeadConfig, assigned: _Assignment,
                    obj_weight: torch.Tensor, obj_target: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Box and class loss of the assigned cells, their objectness targets (written into
    ``obj_weight``/``obj_target``), and the IoU sum and recall of the truth loop's
    assignments."""
    p, act, (n, h, w) = pred.p, pred.act, pred.shape
    dev, f32 = p.device, torch.float32
    count = len(assigned.image)
    bi = torch.tensor(assigned.image, device=dev)
    ai = torch.tensor(assigned.anchor, device=dev)
    jj = torch.tensor(assigned.row, device=dev)
    ii = torch.tensor(assigned.col, device=dev)
    truth = torch.tensor(assigned.truth, dtype=f32, device=dev)  # (K, 5)
    z = p[bi, ai, :, jj, ii].float()  # (K, nf) raw outputs of the assigned cells
    slot = ((bi * n + ai) * h + jj) * w + ii
    unique, inverse = torch.unique(slot, return_inverse=True)
    cells = (unique // (n * h * w), (unique // (h * w)) % n, (unique // w) % h, unique % w)
    probs = act[cells[0], cells[1], 5:, cells[2], cells[3]]  # (U, classes), no grad
    target, cls_weights = _class_plan(inverse.tolist(), assigned_classes(assigned), head,
                                      probs, assigned.iou_multiplier)
    weight = torch.ones(count, dtype=f32, device=dev)
    if head.iou_thresh < 1 and head.classes:
        # averages_yolo_deltas: / the classes with a positive delta in the cell
        positive = ((target - probs) > 0).sum(dim=1).clamp(min=1).to(f32)
        weight = 1 / positive[inverse]
    mult = torch.ones(count, dtype=f32, device=dev)
    if head.class_multipliers is not None:
        mult = torch.tensor([head.class_multipliers[int(c)] for c in assigned_classes(
            assigned)], dtype=f32, device=dev)
    box_loss = _box_loss(z, truth, pred.mask_rel[ai], ii, jj, w, h, head, mult, weight)
    from_truths = torch.tensor([m is None for m in assigned.iou_multiplier], device=dev)
    with torch.no_grad():  # Darknet's statistics count the truth loop's assignments
        ious = iou_kind(pred.boxes[bi, ai, jj, ii], truth[:, 1:5], "iou")[from_truths]
        iou_sum, recall = float(ious.sum()), int((ious > 0.5).sum())
    if not bool(from_truths.all()):  # the truth_thresh stage comes first, per prediction
        stage = ~from_truths
        iou_mult = torch.tensor([m or 0.0 for m in assigned.iou_multiplier], device=dev)
        first_cells = (bi[stage], ai[stage], jj[stage], ii[stage])
        obj_target[first_cells] = iou_mult[stage] if head.objectness_smooth else 1.0
        obj_weight[first_cells] = head.obj_normalizer
    pick, write = _objectness_writers(from_truths, inverse, len(unique), cells, act, head,
                                      obj_weight, obj_target)
    cls_loss = p.sum() * 0
    if head.classes:
        z_cls = p[cells[0], cells[1], 5:, cells[2], cells[3]].float()  # (U, classes)
        cls_loss = (cls_weights * _logistic_terms(z_cls, target, head)).sum()
    obj_cells = tuple(c[write] for c in cells)
    obj_target[obj_cells] = 1
    obj_weight[obj_cells] = head.obj_normalizer * mult[pick[write]]
    return box_loss, cls_loss, iou_sum, recall


def _objectness_writers(from_truths: torch.Tensor, inverse: torch.Tensor, n_cells: int,
                        cells, act: torch.Tensor, head: YoloHeadConfig,
                        obj_weight: torch.Tensor, obj_target: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Which assignment writes each cell's objectness, and whether it does. Each truth
    assigned to a cell writes it, so the last one's multiplier stays (Darknet's order: truth
    by truth, best anchor first); with objectness_smooth only where the cell's delta is
    still exactly 0, so the first's."""
    count = len(from_truths)
    order = torch.arange(count, device=from_truths.device)
    if head.objectness_smooth:
        key = torch.where(from_truths, order, count)
        pick = torch.full((n_cells,), count, dtype=torch.long,
                          device=order.device).scatter_reduce(0, inverse, key, "amin")
        delta = obj_weight[cells] * (obj_target[cells] - act[:, :, 4][cells])
        return pick, (pick < count) & (delta == 0)
    key = torch.where(from_truths, order, -1)
    pick = torch.full((n_cells,), -1, dtype=torch.long,
                      device=order.device).scatter_reduce(0, inverse, key, "amax")
    return pick, pick >= 0


def _box_loss(z: torch.Tensor, truth: torch.Tensor, anchor_wh: torch.Tensor,
              col: torch.Tensor, row: torch.Tensor, w: int, h: int, head: YoloHeadConfig,
              mult: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Box terms of the K assignments: ``mult`` (K,) scales the normaliser (the class
    multiplier, before the max_delta clip), ``weight`` (K,) the result (the averaging)."""
    s, off = head.scale_x_y, 0.5 * (head.scale_x_y - 1)
    if head.iou_loss == "mse" and head.new_coords:
        # Darknet: delta on the scaled x, y passed to the conv as is (no factor s); w, h
        # target sqrt(w / 4·anchor) on the conv's output
        scale = head.iou_normalizer * (2 - truth[:, 3] * truth[:, 4]) * mult * weight
        loss = z.new_zeros(())
        for k, (cells, pos) in enumerate(((w, col), (h, row))):
            target = truth[:, 1 + k] * cells - pos
            out = z[:, k] * s - off
            value = 0.5 * scale * (target - out.detach()) ** 2
            g = -(scale * (target - out)).detach()
            surrogate = (g * z[:, k]).sum()
            loss = loss + value.sum() + surrogate - surrogate.detach()
        for k in (2, 3):
            target = torch.sqrt(truth[:, 1 + k] / (4 * anchor_wh[:, k - 2]))
            loss = loss + (0.5 * scale * (target - z[:, k]) ** 2).sum()
        return loss
    if head.iou_loss == "mse":
        scale = head.iou_normalizer * (2 - truth[:, 3] * truth[:, 4]) * mult * weight
        loss = z.new_zeros(())
        for k, (cells, pos) in enumerate(((w, col), (h, row))):
            target = truth[:, 1 + k] * cells - pos  # position inside the cell, [0, 1)
            q = (target + off) / s
            bce = F.binary_cross_entropy_with_logits(z[:, k], q, reduction="none")
            loss = loss + (scale * s * (bce - _entropy(q))).sum()
        for k in (2, 3):
            target = torch.log(truth[:, 1 + k] / anchor_wh[:, k - 2])
            loss = loss + (0.5 * scale * (target - z[:, k]) ** 2).sum()
        return loss
    # IoU kinds: the value of 1 - IoU, the gradient Darknet applies (see module docstring)
    zd = z[:, :4].detach()
    if head.new_coords:  # x, y: the scaled conv output; w = (2·out)²·anchor
        xy = zd[:, 0:2] * s - off
        wh = zd[:, 2:4] ** 2 * 4
    else:
        xy = torch.sigmoid(zd[:, 0:2]) * s - off
        wh = torch.exp(zd[:, 2:4])
    with torch.enable_grad():
        pred = torch.stack([(col.float() + xy[:, 0]) / w, (row.float() + xy[:, 1]) / h,
                            wh[:, 0] * anchor_wh[:, 0], wh[:, 1] * anchor_wh[:, 1]],
                           dim=1).requires_grad_(True)
        value = 1 - iou_kind(pred, truth[:, 1:5], head.iou_loss)
        (grad,) = torch.autograd.grad(value.sum(), pred)
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    # Darknet passes ∂/∂x, ∂/∂y of the box to the outputs unchanged, and ∂/∂w·exp(tw) to tw
    # (with new_coords ∂/∂w unchanged too)
    jacobian = torch.ones_like(zd)
    if not head.new_coords:
        jacobian[:, 2:4] = wh
    g = head.iou_normalizer * mult[:, None] * grad * jacobian
    if math.isfinite(head.max_delta):
        g = g.clamp(-head.max_delta, head.max_delta)  # per truth, before accumulating
    g = g * weight[:, None]
    surrogate = (g * z[:, :4]).sum()
    return head.iou_normalizer * (mult * weight * value.detach()).sum() + surrogate - \
        surrogate.detach()


def assigned_classes(assigned: _Assignment) -> list[int]:
    return [int(t[0]) for t in assigned.truth]


FOCAL_ALPHA = 0.5  # AlexeyAB's delta_yolo_class


def _class_plan(inverse: list[int], classes: list[int], head: YoloHeadConfig,
                probs: torch.Tensor, iou_multipliers: Sequence[float | None] = ()
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and per-term weights (U cells, classes) of the class terms, replaying
    Darknet's delta_yolo_class truth by truth (``inverse[k]``: the cell of truth k):

    * the first truth in a cell sets every class of it: target 1 for its class, 0 for the
      others (smoothed by ``label_smooth_eps``); with ``counters_per_class`` its class is
      scaled by multiplier·cls_normalizer; with ``focal_loss`` the whole row is scaled by
      α·(−(1 − pt)(2·pt·ln pt + pt − 1)), pt = its class probability, and not smoothed;
    * a later truth in the same cell rewrites only its own class: target 1 (smoothed), scaled
      by its multiplier alone.

    A truth matched by a prediction above ``truth_thresh`` (``iou_multipliers[k]`` not
    None) is handled like a first truth; with ``objectness_smooth`` its class then gets the
    soft target IoU², scaled by its multiplier alone.

    ``probs`` (U, classes) are the current class probabilities (for focal's pt)."""
    eps = head.label_smooth_eps
    hi, lo = 1 - 0.5 * eps, 0.5 * eps  # Darknet's y·(1 − eps) + 0.5·eps
    target = torch.full(probs.shape, lo, dtype=torch.float32, device=probs.device)
    weights = torch.ones_like(target)
    multipliers = head.class_multipliers
    seen: set[int] = set()
    iou_multipliers = list(iou_multipliers) or [None] * len(classes)
    for u, c, soft in zip(inverse, classes, iou_multipliers):
        m = multipliers[c] if multipliers else 1.0
        if u in seen:
            target[u, c] = hi
            weights[u, c] = m
            continue
        seen.add(u)
        if head.focal_loss:
            pt = float(probs[u, c]) + 1e-15
            target[u] = 0
            target[u, c] = 1
            weights[u] = FOCAL_ALPHA * -(1 - pt) * (2 * pt * math.log(pt) + pt - 1)
        else:
            target[u, c] = hi
            weights[u, c] = m * head.cls_normalizer if multipliers else 1.0
        if soft is not None and head.objectness_smooth:
            target[u, c] = soft
            weights[u, c] = m
    return target, weights


class DetectionLoss:
    """The loss of every [yolo] head of a network.

    ``inputs`` are the layer indices whose (raw) outputs the loss needs: the conv before
    each [yolo]. Call with those outputs in the same order."""

    def __init__(self, network: Network):
        self.heads: list[YoloHeadConfig] = []
        self.unsupported: list[str] = []
        for index in network.heads():
            spec = network.layers[index]
            if not isinstance(spec, YoloSpec):
                raise spec.error("only [yolo] heads can be trained by netsurgery "
                                 f"(this is [{spec.section.header}])")
            self.heads.append(YoloHeadConfig.from_spec(spec))
            self.unsupported += unsupported_keys(spec)
        if not self.heads:
            raise network.cfg.net.error("no [yolo] layer: nothing to train a detector with")
        self.inputs = [head.layer - 1 for head in self.heads]
        self.net_w, self.net_h = network.net.width, network.net.height

    def __call__(self, raws: Sequence[torch.Tensor], truths: Sequence[torch.Tensor],
                 net_size: tuple[int, int] | None = None) -> LossResult:
        """``net_size`` = (width, height) of the input the raws come from, when the network
        runs at another size than its cfg's (multi-scale training): anchors are in its
        pixels."""
        net_w, net_h = net_size or (self.net_w, self.net_h)
        heads = [yolo_loss(raw, head, truths, net_w, net_h)
                 for raw, head in zip(raws, self.heads)]
        total = heads[0].total
        for head in heads[1:]:
            total = total + head.total
        return LossResult(total, heads)
