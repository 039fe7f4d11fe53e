"""Tests of netsurgery.training.loss: the YOLOv3 loss against Darknet's deltas (AlexeyAB
forward_yolo_layer), on hand-made tiny predictions."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from netsurgery.darknet.cfg import parse_cfg_text
from netsurgery.darknet.network import build_network
from netsurgery.errors import CfgError
from netsurgery.training.loss import DetectionLoss, YoloHeadConfig, iou_kind, yolo_loss

NET = 64  # network input size used by the hand-made heads
ANCHORS = ((8.0, 8.0), (16.0, 16.0), (24.0, 40.0), (40.0, 24.0), (32.0, 32.0), (56.0, 56.0))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: one thread avoids OpenMP overhead on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def head(mask=(0, 1, 2), classes=1, **kw) -> YoloHeadConfig:
    return YoloHeadConfig(layer=1, classes=classes, mask=tuple(mask), anchors=ANCHORS, **kw)


def raw_zeros(n_anchors=3, classes=1, grid=2, batch=1) -> torch.Tensor:
    return torch.zeros(batch, n_anchors * (5 + classes), grid, grid, requires_grad=True)


def grads(raw, h, truths):
    """Loss and d loss / d raw, viewed (batch, anchor, field, row, col)."""
    result = yolo_loss(raw, h, truths, NET, NET)
    result.total.backward()
    n = len(h.mask)
    return result, raw.grad.view(raw.shape[0], n, 5 + h.classes, *raw.shape[2:])


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


# --------------------------------------------------------------------------- assignment


def test_truth_goes_to_best_shape_anchor_among_all_heads():
    # a 30x30-pixel truth: IoU of shapes with anchor 4 (32x32) is 900/1024 = 0.879, the best
    truth = [torch.tensor([[0, 0.3, 0.7, 30 / NET, 30 / NET]])]
    big = head(mask=(3, 4, 5))
    res, g = grads(raw_zeros(), big, truth)
    assert res.count == 1
    # assigned to anchor index 1 of this head (anchor 4), cell col 0, row 1
    box = g[0, :, 0:4].abs().sum(dim=1)  # (anchor, row, col)
    assert torch.nonzero(box).tolist() == [[1, 1, 0]]
    # the head holding anchors 0..2 does not take it: no box or class gradient at all
    # (ignore_thresh high: the 24x40 anchor of that cell overlaps the truth by IoU > 0.5)
    small = head(mask=(0, 1, 2), ignore_thresh=0.95)
    res, g = grads(raw_zeros(), small, truth)
    assert res.count == 0 and res.box == 0 and res.cls == 0
    assert g[0, :, 0:4].abs().sum() == 0 and g[0, :, 5:].abs().sum() == 0
    # every objectness output is pushed down: delta = 0 - 0.5
    assert torch.allclose(g[0, :, 4], torch.full((3, 2, 2), 0.5))


def test_iou_thresh_assigns_every_anchor_of_a_similar_shape():
    # a 20x20 truth: shape IoU with 16x16 (anchor 1) = 256/400 = 0.64, the best; with 8x8
    # 64/400 = 0.16; with 24x40 400/960 = 0.417. iou_thresh 0.3 adds anchor 2, not anchor 0.
    truth = [torch.tensor([[0, 0.3, 0.7, 20 / NET, 20 / NET]])]
    res, g = grads(raw_zeros(), head(iou_thresh=0.3), truth)
    assert res.count == 2
    box = g[0, :, 0:4].abs().sum(dim=1)  # (anchor, row, col)
    assert torch.nonzero(box).tolist() == [[1, 1, 0], [2, 1, 0]]
    # both get the objectness and class targets of an assigned cell: delta = 1 - 0.5
    assert g[0, 1, 4, 1, 0].item() == g[0, 2, 4, 1, 0].item() == pytest.approx(-0.5)
    assert g[0, 2, 5, 1, 0].item() == pytest.approx(-0.5)
    # the default (1.0) keeps Darknet's single best anchor
    res, g = grads(raw_zeros(), head(), truth)
    assert res.count == 1 and torch.nonzero(g[0, :, 0:4].abs().sum(dim=1)).tolist() == [[1, 1, 0]]


@pytest.mark.parametrize("kind,extra", [("iou", 2), ("giou", 1), ("diou", 2), ("ciou", 1),
                                        ("mse", 2)])
def test_iou_thresh_kind_measures_the_shape_match(kind, extra):
    # a 30x10 truth; anchors 30x10 (the best), 10x30 and 8x8, all at one centre:
    # 10x30: IoU 100/500 = 0.2, GIoU 0.2 − 400/900 = −0.244, DIoU 0.2, CIoU 0.2 − α·v = 0.094
    # 8x8:   IoU 64/300 = 0.213 = GIoU = DIoU, CIoU 0.205 (Darknet's mse kind means IoU)
    anchors = ((30.0, 10.0), (10.0, 30.0), (8.0, 8.0))
    h = YoloHeadConfig(layer=1, classes=1, mask=(0, 1, 2), anchors=anchors, iou_thresh=0.15,
                       iou_thresh_kind="iou" if kind == "mse" else kind)
    res, _ = grads(raw_zeros(), h, [torch.tensor([[0, 0.3, 0.3, 30 / NET, 10 / NET]])])
    assert res.count == 1 + extra
    if kind in ("giou", "ciou"):
        from netsurgery.training.loss import _shape_iou_kind
        values = _shape_iou_kind(torch.tensor([[30 / NET, 10 / NET]]),
                                 torch.tensor(anchors) / NET, kind)[0].tolist()
        v = 4 / math.pi ** 2 * (math.atan(3) - math.atan(1 / 3)) ** 2
        expected = {"giou": [1.0, 0.2 - 400 / 900, 64 / 300],
                    "ciou": [1.0, 0.2 - v / (1 - 0.2 + v) * v, None]}[kind]
        for got, want in zip(values, expected):
            if want is not None:
                assert got == pytest.approx(want, abs=1e-6)


def test_max_delta_clips_each_iou_box_delta():
    truth = [torch.tensor([[0, 0.4, 0.3, 0.25, 0.25]])]
    _, free = grads(raw_zeros(), head(iou_loss="giou", iou_normalizer=50.0), truth)
    _, clipped = grads(raw_zeros(), head(iou_loss="giou", iou_normalizer=50.0, max_delta=5.0),
                       truth)
    big = free[0, 1, 0:4, 0, 0]
    assert big.abs().max() > 5  # would exceed the clip
    np.testing.assert_allclose(clipped[0, 1, 0:4, 0, 0], big.clamp(-5, 5), rtol=1e-6)
    # the other terms are not clipped
    assert torch.equal(clipped[0, :, 4:], free[0, :, 4:])


def test_tie_between_anchors_goes_to_the_first():
    anchors = ((16.0, 16.0), (16.0, 16.0), (8.0, 8.0))
    h = YoloHeadConfig(layer=1, classes=1, mask=(0, 1, 2), anchors=anchors)
    res, g = grads(raw_zeros(), h, [torch.tensor([[0, 0.6, 0.6, 0.25, 0.25]])])
    box = g[0, :, 0:4].abs().sum(dim=1)
    assert torch.nonzero(box).tolist() == [[0, 1, 1]]


# --------------------------------------------------------------------------- box terms


def test_mse_box_gradient_has_darknet_scale():
    # 2x2 grid, truth centre (0.3, 0.7) -> cell col 0 (tx = 0.6), row 1 (ty = 0.4); size
    # 0.3 x 0.25 = 19.2 x 16 pixels. Shape IoUs: anchor 1 (16x16) 256/307.2 = 0.833, anchors
    # 2 and 3 (24x40, 40x24) 307.2/960 = 0.32, anchor 4 (32x32) 0.3: anchor 1 wins.
    truth = torch.tensor([[0, 0.3, 0.7, 0.3, 0.25]])
    h = head(mask=(0, 1, 2), iou_normalizer=0.75)
    res, g = grads(raw_zeros(), h, [truth])
    a = 1
    scale = 0.75 * (2 - 0.3 * 0.25)  # iou_normalizer · (2 - w·h) = 1.44375
    # x, y: delta = t - sigmoid(0) applied to the raw logit; gradient = -delta
    assert g[0, a, 0, 1, 0].item() == pytest.approx(-scale * (0.6 - 0.5), abs=1e-6)
    assert g[0, a, 1, 1, 0].item() == pytest.approx(-scale * (0.4 - 0.5), abs=1e-6)
    # w, h: delta = log(w·net_w / anchor_w) - raw
    assert g[0, a, 2, 1, 0].item() == pytest.approx(-scale * math.log(1.2), abs=1e-6)
    assert g[0, a, 3, 1, 0].item() == pytest.approx(0.0, abs=1e-6)  # log(16/16)
    # the box loss value: x/y KL terms + 1/2 squared log-space errors
    kl = sum(t * math.log(t / 0.5) + (1 - t) * math.log((1 - t) / 0.5) for t in (0.6, 0.4))
    wh = 0.5 * math.log(1.2) ** 2
    assert res.box == pytest.approx(scale * (kl + wh), rel=1e-5)
    # nothing else gets box gradients
    mask = torch.ones_like(g[0, :, 0:4], dtype=torch.bool)
    mask[a, :, 1, 0] = False
    assert g[0, :, 0:4][mask].abs().sum() == 0


def test_scale_x_y_gradient_is_output_minus_target():
    truth = torch.tensor([[0, 0.3, 0.7, 0.3, 0.25]])
    raw = raw_zeros()
    with torch.no_grad():
        raw.view(1, 3, 6, 2, 2)[0, 1, 0, 1, 0] = 0.8
    h = head(scale_x_y=1.2, iou_normalizer=1.0)
    _, g = grads(raw, h, [truth])
    out = 1.2 * sigmoid(0.8) - 0.1
    assert g[0, 1, 0, 1, 0].item() == pytest.approx((2 - 0.075) * (out - 0.6), abs=1e-6)


def giou_at(box, truth) -> float:
    return iou_kind(torch.tensor([box], dtype=torch.float64), truth[:, 1:5].double(),
                    "giou").item()


def assert_box_grad_is_giou_derivative(g_box, box, truth, normalizer: float) -> None:
    """Each of the 4 box gradients equals −normalizer·∂GIoU/∂(box coordinate), by central
    finite differences in box coordinates."""
    eps = 1e-6
    for k in range(4):
        up, down = list(box), list(box)
        up[k] += eps
        down[k] -= eps
        d = (giou_at(up, truth) - giou_at(down, truth)) / (2 * eps)
        assert g_box[k].item() == pytest.approx(-normalizer * d, abs=1e-5), k


def test_giou_value_and_darknet_jacobian():
    # predicted box of anchor 1 at cell (0, 0) with raw 0: centre (0.25, 0.25), 0.25 x 0.25
    truth = torch.tensor([[0, 0.4, 0.3, 0.25, 0.25]])
    h = head(iou_loss="giou", iou_normalizer=0.5)
    res, g = grads(raw_zeros(), h, [truth])
    # hand-computed: intersection 0.1 x 0.2 = 0.02, union 2·0.0625 - 0.02 = 0.105,
    # enclosing 0.4 x 0.3 = 0.12 -> GIoU = 0.02/0.105 - (0.12-0.105)/0.12
    giou = 0.02 / 0.105 - 0.015 / 0.12
    assert res.box == pytest.approx(0.5 * (1 - giou), rel=1e-5)
    # Darknet's gradient: dGIoU/dx of the box goes to the x logit unchanged, dGIoU/dw·exp(tw)
    # to tw (exp(0) = 1 here); check against finite differences of GIoU in box coordinates
    assert_box_grad_is_giou_derivative(g[0, 1, 0:4, 0, 0], [0.25, 0.25, 0.25, 0.25], truth, 0.5)
    # no (2 - w·h) scale with IoU losses, and x is not scaled by sigmoid' or 1/grid
    assert abs(g[0, 1, 0, 0, 0].item()) > 0.1


def test_new_coords_iou_gradient_goes_to_the_outputs_unchanged():
    """new_coords: the box is ((i + out_x)/W, ..., (2·out_w)²·anchor); Darknet passes the IoU
    derivative with respect to the box straight to the outputs (no exp, no (2·out)² chain)."""
    truth = torch.tensor([[0, 0.4, 0.3, 0.25, 0.25]])
    h = head(iou_loss="giou", iou_normalizer=0.5, new_coords=True)
    raw = torch.full((1, 18, 2, 2), 0.5)
    raw[0, 1 * 6 + 2] = 0.6  # anchor 1's w output: w = 0.6²·4 = 1.44 anchors
    raw.requires_grad_(True)
    res, g = grads(raw, h, [truth])
    box = [0.25, 0.25, 1.44 * 16 / NET, 0.25]  # anchor 1 is 16x16 at NET 64
    assert_box_grad_is_giou_derivative(g[0, 1, 0:4, 0, 0], box, truth, 0.5)
    assert res.box == pytest.approx(0.5 * (1 - giou_at(box, truth)), rel=1e-5)


def test_ciou_and_diou_values():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.4]], dtype=torch.float64)
    truth = torch.tensor([[0.6, 0.5, 0.4, 0.4]], dtype=torch.float64)
    # intersection: x overlap [0.4, 0.6] ∩ [0.4, 0.8] = 0.2, y overlap 0.4 -> 0.08
    iou = 0.08 / (0.08 + 0.16 - 0.08)
    # enclosing box 0.4 x 0.4, diagonal² 0.32, centre distance² 0.01
    diou = iou - 0.01 / 0.32
    v = 4 / math.pi ** 2 * (math.atan(1.0) - math.atan(0.5)) ** 2
    ciou = diou - v / (1 - iou + v) * v
    assert iou_kind(pred, truth, "iou").item() == pytest.approx(iou)
    assert iou_kind(pred, truth, "diou").item() == pytest.approx(diou)
    assert iou_kind(pred, truth, "ciou").item() == pytest.approx(ciou)
    # the enclosing box (0.16) equals the union (0.16) here, so GIoU = IoU
    assert iou_kind(pred, truth, "giou").item() == pytest.approx(iou)


# --------------------------------------------------------------------------- objectness


def test_objectness_and_class_gradient_signs():
    truth = torch.tensor([[0, 0.3, 0.7, 0.3, 0.25]])
    h = head(classes=2, obj_normalizer=2.0, cls_normalizer=1.0)
    res, g = grads(raw_zeros(classes=2), h, [truth])
    obj = g[0, :, 4]
    # assigned cell: delta = obj_normalizer·(1 - 0.5) pushes the logit up (negative grad)
    assert obj[1, 1, 0].item() == pytest.approx(-1.0)
    # every other cell: delta = obj_normalizer·(0 - 0.5)
    others = torch.ones_like(obj, dtype=torch.bool)
    others[1, 1, 0] = False
    assert torch.allclose(obj[others], torch.full((11,), 1.0))
    # classes: one-vs-all, only at the assigned cell
    assert g[0, 1, 5, 1, 0].item() == pytest.approx(-0.5)
    assert g[0, 1, 6, 1, 0].item() == pytest.approx(0.5)
    assert g[0, :, 5:].abs().sum().item() == pytest.approx(1.0)
    assert res.obj == pytest.approx(2.0 * 12 * math.log(2), rel=1e-6)
    assert res.cls == pytest.approx(2 * math.log(2), rel=1e-6)
    # cls_normalizer changes nothing without counters_per_class (AlexeyAB's delta_yolo_class)
    _, g2 = grads(raw_zeros(classes=2), head(classes=2, obj_normalizer=2.0, cls_normalizer=3.0),
                  [truth])
    assert torch.equal(g2, g)


def _ignore_setup(class_logit: float):
    """A 0.9x0.9 truth centred in cell (0, 0) of a 2x2 grid; anchor 0 of cell (1, 0) (right
    neighbour) predicts a box at (0.55, 0.45) of the same size: IoU 0.8 with the truth."""
    anchors = ((57.6, 57.6), (8.0, 8.0), (9.0, 9.0))  # 57.6 px = 0.9 of the input
    h_low = YoloHeadConfig(layer=1, classes=1, mask=(0, 1, 2), anchors=anchors,
                           ignore_thresh=0.7)
    raw = raw_zeros()
    with torch.no_grad():
        v = raw.view(1, 3, 6, 2, 2)
        # x: (1 + sigmoid(zx))/2 = 0.55 -> sigmoid(zx) = 0.1; y: (0 + sigmoid(zy))/2 = 0.45
        v[0, 0, 0, 0, 1] = math.log(0.1 / 0.9)
        v[0, 0, 1, 0, 1] = math.log(0.9 / 0.1)
        v[0, 0, 5, 0, 1] = class_logit
    truth = [torch.tensor([[0, 0.45, 0.45, 0.9, 0.9]])]
    return raw, h_low, truth


def test_ignore_thresh_removes_objectness_penalty():
    raw, h, truth = _ignore_setup(class_logit=0.0)  # class prob 0.5 > 0.25
    # IoU of (0.55, 0.45, 0.9, 0.9) with (0.45, 0.45, 0.9, 0.9) = 0.8·0.9/(2·0.81-0.72)
    iou = 0.72 / (1.62 - 0.72)
    assert iou == pytest.approx(0.8)
    _, g = grads(raw, h, truth)
    assert g[0, 0, 4, 0, 1].item() == 0.0  # IoU 0.8 > ignore_thresh 0.7: no penalty
    assert g[0, 0, 4, 1, 1].item() == pytest.approx(0.5)  # a far cell keeps it
    # above the IoU: penalised again
    raw, _, truth = _ignore_setup(class_logit=0.0)
    h_high = YoloHeadConfig(layer=1, classes=1, mask=(0, 1, 2), anchors=h.anchors,
                            ignore_thresh=0.85)
    _, g = grads(raw, h_high, truth)
    assert g[0, 0, 4, 0, 1].item() == pytest.approx(0.5)


def test_ignore_needs_a_class_probability_above_quarter():
    # Darknet's compare_yolo_class: no class above 0.25 -> the prediction is penalised
    raw, h, truth = _ignore_setup(class_logit=-2.0)  # sigmoid(-2) = 0.12
    _, g = grads(raw, h, truth)
    assert g[0, 0, 4, 0, 1].item() == pytest.approx(0.5)


def test_two_truths_in_one_cell_give_multi_hot_classes_and_summed_boxes():
    t = torch.tensor([[0, 0.3, 0.7, 0.25, 0.25], [2, 0.35, 0.6, 0.25, 0.25]])
    h = head(classes=3, iou_normalizer=1.0)
    res, g = grads(raw_zeros(classes=3), h, [t])
    assert res.count == 2
    cls = g[0, 1, 5:, 1, 0]
    assert cls.tolist() == pytest.approx([-0.5, 0.5, -0.5])
    scale = 2 - 0.0625
    expected_x = -scale * ((0.6 - 0.5) + (0.7 - 0.5))
    assert g[0, 1, 0, 1, 0].item() == pytest.approx(expected_x, abs=1e-6)


def test_sgd_steps_lower_the_loss():
    torch.manual_seed(0)
    raw = (0.3 * torch.randn(2, 18, 4, 4)).requires_grad_(True)
    truths = [torch.tensor([[0, 0.3, 0.6, 0.3, 0.4]]), torch.tensor([[0, 0.7, 0.2, 0.1, 0.1]])]
    h = head()
    losses = []
    for _ in range(20):
        res = yolo_loss(raw, h, truths, NET, NET)
        losses.append(res.total.item())
        raw.grad = None
        res.total.backward()
        with torch.no_grad():
            raw -= 0.5 * raw.grad
    # 73.2 -> 10.7 with these numbers: the gradient points downhill for every term
    assert losses[-1] < 0.2 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:]))


# --------------------------------------------------------------------------- vs Darknet


def _iou(a, b) -> float:
    def overlap(x1, w1, x2, w2):
        return min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2)
    w, h = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
    inter = 0.0 if w < 0 or h < 0 else w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return 0.0 if union == 0 else inter / union


def darknet_deltas(raw: np.ndarray, h: YoloHeadConfig, truths, net_w: int, net_h: int):
    """Literal loops of forward_yolo_layer / process_batch (MSE box loss) -> delta, float64."""
    B, _, H, W = raw.shape
    n, C = len(h.mask), h.classes
    x = raw.reshape(B, n, 5 + C, H, W).astype(np.float64)
    out = x.copy()
    s = h.scale_x_y
    if h.new_coords:  # [yolo] activates nothing, only scales x, y
        out[:, :, 0:2] = x[:, :, 0:2] * s - 0.5 * (s - 1)
    else:
        out[:, :, 0:2] = 1 / (1 + np.exp(-x[:, :, 0:2])) * s - 0.5 * (s - 1)
        out[:, :, 4:] = 1 / (1 + np.exp(-x[:, :, 4:]))
    multipliers = h.class_multipliers

    def box_w(value: float) -> float:  # multiple of the anchor
        return value * value * 4 if h.new_coords else math.exp(value)

    def delta_yolo_box(b, a, j, i, t, anchor, mult):
        _, tx, ty, tw, th = t
        aw, ah = h.anchors[anchor]
        scale = (2 - tw * th) * h.iou_normalizer * mult
        if h.new_coords:
            targets = (tx * W - i, ty * H - j, math.sqrt(tw * net_w / (4 * aw)),
                       math.sqrt(th * net_h / (4 * ah)))
        else:
            targets = (tx * W - i, ty * H - j, math.log(tw * net_w / aw),
                       math.log(th * net_h / ah))
        for k in range(4):
            value = out[b, a, k, j, i] if k < 2 else x[b, a, k, j, i]
            delta[b, a, k, j, i] += scale * (targets[k] - value)

    def delta_yolo_class(b, a, j, i, c):
        if delta[b, a, 5 + c, j, i]:
            delta[b, a, 5 + c, j, i] = 1 - out[b, a, 5 + c, j, i]
            if multipliers:
                delta[b, a, 5 + c, j, i] *= multipliers[c]
        elif h.focal_loss:
            pt = out[b, a, 5 + c, j, i] + 1e-15
            grad = -(1 - pt) * (2 * pt * math.log(pt) + pt - 1)
            for k in range(C):
                delta[b, a, 5 + k, j, i] = ((k == c) - out[b, a, 5 + k, j, i]) * 0.5 * grad
        else:
            for k in range(C):
                delta[b, a, 5 + k, j, i] = (k == c) - out[b, a, 5 + k, j, i]
                if multipliers and k == c:
                    delta[b, a, 5 + k, j, i] *= multipliers[c] * h.cls_normalizer

    delta = np.zeros_like(out)
    ignored = 0
    for b in range(B):
        for j in range(H):
            for i in range(W):
                for a in range(n):
                    aw, ah = h.anchors[h.mask[a]]
                    pred = ((i + out[b, a, 0, j, i]) / W, (j + out[b, a, 1, j, i]) / H,
                            box_w(x[b, a, 2, j, i]) * aw / net_w,
                            box_w(x[b, a, 3, j, i]) * ah / net_h)
                    match = any(out[b, a, 5 + c, j, i] > 0.25 for c in range(C))
                    best, best_t = 0.0, 0
                    for k, t in enumerate(truths[b]):
                        iou = _iou(pred, t[1:])
                        if iou > best:
                            best, best_t = iou, k
                    delta[b, a, 4, j, i] = h.obj_normalizer * (0 - out[b, a, 4, j, i])
                    if match and best > h.ignore_thresh:
                        if h.objectness_smooth:
                            smooth = h.obj_normalizer * (best - out[b, a, 4, j, i])
                            if smooth > delta[b, a, 4, j, i]:
                                delta[b, a, 4, j, i] = smooth
                        else:
                            delta[b, a, 4, j, i] = 0
                        ignored += 1
                    if best > h.truth_thresh:
                        iou_multiplier = best * best
                        target = iou_multiplier if h.objectness_smooth else 1.0
                        delta[b, a, 4, j, i] = h.obj_normalizer * (target - out[b, a, 4, j, i])
                        t = truths[b][best_t]
                        c = int(t[0])
                        delta_yolo_class(b, a, j, i, c)
                        mult = multipliers[c] if multipliers else 1.0
                        if h.objectness_smooth:
                            delta[b, a, 5 + c, j, i] = mult * (iou_multiplier
                                                               - out[b, a, 5 + c, j, i])
                        delta_yolo_box(b, a, j, i, t, h.mask[a], mult)
        for t in truths[b]:
            cls, tx, ty, tw, th = t
            i, j = int(tx * W), int(ty * H)

            def assign(anchor: int) -> None:
                a = h.mask.index(anchor)
                c = int(cls)
                mult = multipliers[c] if multipliers else 1.0
                delta_yolo_box(b, a, j, i, t, anchor, mult)
                obj = mult * h.obj_normalizer * (1 - out[b, a, 4, j, i])
                if not h.objectness_smooth or delta[b, a, 4, j, i] == 0:
                    delta[b, a, 4, j, i] = obj
                delta_yolo_class(b, a, j, i, c)

            best_iou, best_n = 0.0, 0
            for k, (aw, ah) in enumerate(h.anchors):
                iou = _iou((0, 0, aw / net_w, ah / net_h), (0, 0, tw, th))
                if iou > best_iou:
                    best_iou, best_n = iou, k
            if best_n in h.mask:
                assign(best_n)
            # the iou_thresh loop: every other anchor of this layer with a similar shape
            for n_anchor in range(len(h.anchors)):
                if n_anchor in h.mask and n_anchor != best_n and h.iou_thresh < 1:
                    aw, ah = h.anchors[n_anchor]
                    if _iou((0, 0, aw / net_w, ah / net_h), (0, 0, tw, th)) > h.iou_thresh:
                        assign(n_anchor)
        if h.iou_thresh < 1:  # averages_yolo_deltas, only in that case
            for j in range(H):
                for i in range(W):
                    for a in range(n):
                        if delta[b, a, 4, j, i] != 0:
                            positive = sum(delta[b, a, 5 + c, j, i] > 0 for c in range(C))
                            if positive > 0:
                                delta[b, a, 0:4, j, i] /= positive
    return delta, ignored


@pytest.mark.parametrize("variant", ["", "new_coords", "smooth", "new_coords+smooth", "focal",
                                     "new_coords+focal", "truth", "truth+smooth",
                                     "truth+new_coords+smooth+focal"])
@pytest.mark.parametrize("multipliers", [None, (10.0, 1.0, 2.5)], ids=["", "counters"])
@pytest.mark.parametrize("iou_thresh", [1.0, 0.25], ids=["best-anchor", "iou_thresh"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gradient_equals_darknet_delta_on_random_predictions(seed, iou_thresh, multipliers,
                                                             variant):
    rng = np.random.default_rng(seed)
    B, grid, C = 2, 4, 3
    anchors = ((10.0, 14.0), (23.0, 27.0), (37.0, 58.0), (81.0, 82.0), (135.0, 169.0),
               (344.0, 319.0))
    h = YoloHeadConfig(layer=1, classes=C, mask=(0, 1, 2), anchors=anchors,
                       ignore_thresh=0.3, iou_normalizer=0.75, obj_normalizer=1.5,
                       scale_x_y=1.05, iou_thresh=iou_thresh, cls_normalizer=0.5,
                       class_multipliers=multipliers, new_coords="new_coords" in variant,
                       objectness_smooth="smooth" in variant, focal_loss="focal" in variant,
                       truth_thresh=0.3 if "truth" in variant else 1.0)
    net = 128
    raw = rng.normal(0, 1, (B, 3 * (5 + C), grid, grid)).astype(np.float32)
    if h.new_coords:  # the conv before [yolo] is logistic: its outputs lie in (0, 1)
        raw = (1 / (1 + np.exp(-raw))).astype(np.float32)
    truths = []
    for _ in range(B):
        k = 4
        boxes = np.column_stack([rng.integers(0, C, k), rng.uniform(0.05, 0.95, (k, 2)),
                                 rng.uniform(0.05, 0.45, (k, 2))])
        truths.append([tuple(map(float, row)) for row in boxes])
    # two truths in one cell, one of them another class
    truths[0].append((float((int(truths[0][0][0]) + 1) % C), truths[0][0][1] + 0.01,
                      truths[0][0][2], truths[0][0][3], truths[0][0][4]))
    # and two of the same class in one cell (Darknet rewrites that class's delta)
    truths[1].append((truths[1][0][0], truths[1][0][1] + 0.01, truths[1][0][2],
                      truths[1][0][3], truths[1][0][4]))
    delta, ignored = darknet_deltas(raw, h, truths, net, net)
    t = torch.tensor(raw, requires_grad=True)
    res = yolo_loss(t, h, [torch.tensor(b, dtype=torch.float32) for b in truths], net, net)
    res.total.backward()
    grad = t.grad.numpy().reshape(delta.shape)
    assert ignored > 0 and res.count > 0  # both rules were exercised
    if h.truth_thresh < 1:  # predictions above truth_thresh learned their truths too
        plain = yolo_loss(torch.tensor(raw), replace(h, truth_thresh=1.0),
                          [torch.tensor(b, dtype=torch.float32) for b in truths], net, net)
        assert float(plain.total.detach()) != pytest.approx(float(res.total.detach()), rel=1e-4)
    if iou_thresh < 1:  # extra anchors were assigned
        best_only = yolo_loss(torch.tensor(raw), replace(h, iou_thresh=1.0),
                              [torch.tensor(b, dtype=torch.float32) for b in truths], net, net)
        assert res.count > best_only.count
    np.testing.assert_allclose(grad, -delta, atol=2e-5)


# --------------------------------------------------------------------------- from a cfg


# one conv (stride 8) and a one-class [yolo] head with three anchors
ONE_HEAD = """[net]
width=64
height=64
channels=3
[convolutional]
filters=18
size=1
stride=8
activation=linear
[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=1
num=3
"""


def test_head_config_from_cfg_and_unsupported_options():
    text = ONE_HEAD + """ignore_thresh=.6
iou_loss=ciou
iou_normalizer=0.07
cls_normalizer=2
max_delta=5
"""
    loss = DetectionLoss(build_network(parse_cfg_text(text, "t.cfg")))
    (hc,) = loss.heads
    assert loss.inputs == [0]
    assert (hc.ignore_thresh, hc.iou_loss, hc.iou_normalizer, hc.obj_normalizer,
            hc.cls_normalizer) == (0.6, "ciou", 0.07, 1.0, 2.0)
    assert hc.anchors == ((10, 14), (23, 27), (37, 58))
    assert hc.max_delta == 5 and hc.iou_thresh == 1.0 and hc.iou_thresh_kind == "iou"
    assert loss.unsupported == []
    odd = DetectionLoss(build_network(parse_cfg_text(text + "map=9k.map\ndelta_normalizer=2\n",
                                                     "t.cfg")))
    assert odd.unsupported == ["layer 1 [yolo] map", "layer 1 [yolo] delta_normalizer"]
    assert hc.class_multipliers is None
    # defaults are Darknet's: iou_normalizer 0.75, ignore_thresh 0.5, MSE
    plain = YoloHeadConfig(layer=0, classes=1, mask=(0,), anchors=((1.0, 1.0),))
    assert (plain.iou_normalizer, plain.ignore_thresh, plain.iou_loss) == (0.75, 0.5, "mse")


def test_loss_at_another_input_size_uses_that_size_for_anchors():
    """Multi-scale training runs the cfg at other sizes: the anchors (pixels) are relative to
    the actual input, as Darknet's yolo layer uses the resized net.w / net.h."""
    cfg = parse_cfg_text(ONE_HEAD, "t.cfg")
    at_cfg_size = DetectionLoss(build_network(cfg))
    built_at_size = DetectionLoss(build_network(cfg, size=(96, 128)))
    raw = torch.randn(2, 18, 16, 12, generator=torch.Generator().manual_seed(0))
    truths = [torch.tensor([[0, 0.4, 0.5, 0.2, 0.3]]), torch.tensor([[0, 0.7, 0.2, 0.5, 0.4]])]
    want = built_at_size([raw], truths).total
    assert float(at_cfg_size([raw], truths, (96, 128)).total) == float(want)
    assert abs(float(at_cfg_size([raw], truths).total) - float(want)) > 1e-3  # size matters


def test_counters_per_class_and_iou_thresh_kind_from_the_cfg():
    def head_of(extra: str) -> YoloHeadConfig:
        text = ONE_HEAD.replace("classes=1", "classes=3").replace("filters=18", "filters=24")
        return DetectionLoss(build_network(parse_cfg_text(text + extra, "t.cfg"))).heads[0]

    # counts below 1 count as 1; multiplier = largest count / count, capped at max_delta
    assert head_of("counters_per_class=100, 2000, 0\n").class_multipliers == (20.0, 1.0, 2000.0)
    assert head_of("counters_per_class=100, 2000, 0\nmax_delta=5\n").class_multipliers == \
        (5.0, 1.0, 5.0)
    assert head_of("iou_thresh_kind=giou\n").iou_thresh_kind == "giou"
    assert head_of("iou_thresh_kind=mse\n").iou_thresh_kind == "iou"  # Darknet's get_IoU
    with pytest.raises(CfgError, match=r"t\.cfg:\d+: .*counters_per_class has 2 values: "
                                       r"expected one per class \(classes=3\)"):
        head_of("counters_per_class=1,2\n")
