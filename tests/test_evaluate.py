"""Tests for netsurgery.detection.evaluate: Darknet's ``detector map`` on hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from netsurgery.detection.decode import Box, Detection
from netsurgery.detection.evaluate import (
    GroundTruth,
    ScoredDetection,
    average_precision,
    evaluate_detections,
    scored_detections,
)
from netsurgery.errors import DataError

T0 = Box(0.25, 0.25, 0.2, 0.2)
T1 = Box(0.75, 0.75, 0.2, 0.2)
T2 = Box(0.50, 0.50, 0.2, 0.2)
T3 = Box(0.30, 0.30, 0.2, 0.2)
FAR = Box(0.9, 0.1, 0.1, 0.1)


def scenario():
    """Three classes. Class 0: 3 truths, a duplicate and a tie in prob. Class 1: a truth
    and no detection. Class 2: no truth and one detection."""
    truths = [GroundTruth("A", 0, T0), GroundTruth("A", 0, T1),
              GroundTruth("B", 0, T2), GroundTruth("B", 1, T3)]
    dets = [ScoredDetection("A", 0, 0.9, T0),   # d1: TP on T0
            ScoredDetection("A", 0, 0.8, T0),   # d2: duplicate of T0 -> FP
            ScoredDetection("A", 0, 0.3, FAR),  # d4: FP
            ScoredDetection("A", 2, 0.7, FAR),  # d5: FP, class without truth
            ScoredDetection("B", 0, 0.8, T2)]   # d3: TP on T2, ties with d2 (given later)
    return truths, dets


# Sorted (stable): d1 .9, d2 .8, d3 .8, d5 .7, d4 .3. Class 0 (3 truths), per rank:
#   d1 TP  P = 1    R = 1/3
#   d2 FP  P = 1/2  R = 1/3
#   d3 TP  P = 2/3  R = 2/3
#   d4 FP  P = 2/4  R = 2/3
# points 0:   envelope = [1, 2/3, 2/3, 1/2]; area = (2/3-1/3)·2/3 + (1/3-0)·1 = 2/9 + 3/9 = 5/9
# points 11:  r = 0, .1, .2, .3 -> 1 (R >= r at every rank);  r = .4, .5, .6 -> 2/3;
#             r >= .7 -> 0;                  AP = (4·1 + 3·2/3) / 11 = 6/11
# points 101: r = 0 .. .33 -> 1 (34 points); r = .34 .. .66 -> 2/3 (33 points); rest 0
#             AP = (34 + 22) / 101 = 56/101
CLASS0_AP = {0: 5 / 9, 11: 6 / 11, 101: 56 / 101}


@pytest.mark.parametrize("points", [0, 11, 101])
def test_map_all_points_modes(points):
    truths, dets = scenario()
    res = evaluate_detections(truths, dets, 3, points=points, names=["a", "b", "c"])
    ap0 = CLASS0_AP[points]
    assert [c.ap for c in res.classes] == pytest.approx([ap0, 0.0, 0.0], abs=1e-12)
    assert [c.n_truth for c in res.classes] == [3, 1, 0]
    assert [c.n_detections for c in res.classes] == [4, 0, 1]
    assert [c.name for c in res.classes] == ["a", "b", "c"]
    assert res.map == pytest.approx(ap0 / 3, abs=1e-12)          # all classes count
    assert res.map_present == pytest.approx(ap0 / 2, abs=1e-12)  # class 2 left out


def test_ties_follow_the_given_order():
    truths, dets = scenario()
    # d3 given before d2: ranks TP, TP, FP, FP -> P = 1, 1, 2/3, 1/2; R = 1/3, 2/3, 2/3, 2/3
    # area = (2/3 - 1/3)·1 + 1/3·1 = 2/3
    reordered = [dets[0], dets[4], dets[1], dets[2], dets[3]]
    res = evaluate_detections(truths, reordered, 3)
    assert res.classes[0].ap == pytest.approx(2 / 3, abs=1e-12)


def test_threshold_precision_recall_f1():
    truths, dets = scenario()
    res = evaluate_detections(truths, dets, 3, conf_thresh=0.25)
    # all probs > .25: TP d1, d3; FP d2 (T0 taken), d4, d5; 4 truths
    assert (res.tp, res.fp, res.fn) == (2, 3, 2)
    assert res.precision == pytest.approx(0.4)                 # 2/5
    assert res.recall == pytest.approx(0.5)                    # 2/4
    assert res.f1 == pytest.approx(2 * 0.4 * 0.5 / 0.9)        # 0.4444
    assert res.avg_iou == pytest.approx(2 / 5)                 # IoU 1 + 1 over TP + FP
    assert [(c.tp, c.fp) for c in res.classes] == [(2, 2), (0, 0), (0, 1)]
    high = evaluate_detections(truths, dets, 3, conf_thresh=0.85)
    assert (high.tp, high.fp) == (1, 0)                        # only d1 (.9 > .85)
    none = evaluate_detections(truths, dets, 3, conf_thresh=0.95)
    assert math.isnan(none.precision) and none.recall == 0.0   # Darknet prints -nan too


def test_earlier_low_prob_detection_takes_the_truth_at_threshold():
    # Darknet's per-image check looks at every earlier detection of the image, whatever its
    # prob: the low one was collected first, so the high one counts as FP at .25, while AP
    # (sorted by prob) counts the high one as TP.
    truths = [GroundTruth("A", 0, T0)]
    dets = [ScoredDetection("A", 0, 0.1, T0), ScoredDetection("A", 0, 0.9, T0)]
    res = evaluate_detections(truths, dets, 1)
    assert (res.tp, res.fp) == (0, 1)
    assert res.classes[0].ap == pytest.approx(1.0)  # P = 1, 1/2; R = 1, 1 -> area 1


def test_iou_threshold_is_strict():
    truth = Box(0.5, 0.5, 1.0, 1.0)
    half = Box(0.5, 0.5, 1.0, 0.5)  # IoU = .5 / (1 + .5 - .5) = 0.5 exactly
    truths = [GroundTruth("A", 0, truth)]
    res = evaluate_detections(truths, [ScoredDetection("A", 0, 0.9, half)], 1)
    assert res.classes[0].ap == 0.0 and res.fp == 1
    res = evaluate_detections(truths, [ScoredDetection("A", 0, 0.9, half)], 1, iou_thresh=0.49)
    assert res.classes[0].ap == 1.0 and res.tp == 1


def test_best_iou_truth_is_taken_even_if_already_detected():
    # Two truths; the detection overlaps both, best with T_a. T_a was already found by a
    # higher detection, so this one is a duplicate (FP) although T_b is still free.
    ta, tb = Box(0.50, 0.5, 0.4, 0.4), Box(0.62, 0.5, 0.4, 0.4)
    truths = [GroundTruth("A", 0, ta), GroundTruth("A", 0, tb)]
    dets = [ScoredDetection("A", 0, 0.9, ta),
            ScoredDetection("A", 0, 0.8, Box(0.53, 0.5, 0.4, 0.4))]
    res = evaluate_detections(truths, dets, 1)
    # ranks: TP (P 1, R 1/2), FP (P 1/2, R 1/2) -> area = 1/2 · 1
    assert res.classes[0].ap == pytest.approx(0.5)
    assert (res.tp, res.fp) == (1, 1)


def test_difficult_truth_removes_detection_from_ap():
    truths = [GroundTruth("A", 0, T0), GroundTruth("A", 0, T1, difficult=True)]
    dets = [ScoredDetection("A", 0, 0.9, T0), ScoredDetection("A", 0, 0.8, T1)]
    res = evaluate_detections(truths, dets, 1)
    assert res.classes[0].n_truth == 1 and res.classes[0].n_detections == 1
    assert res.classes[0].ap == pytest.approx(1.0)   # the T1 detection is left out of AP
    assert (res.tp, res.fp, res.fn) == (1, 1, 0)     # ... but Darknet still counts it FP


def test_class_with_truth_and_no_detections_and_empty_input():
    truths = [GroundTruth("A", 1, T0)]
    res = evaluate_detections(truths, [], 2)
    assert [c.ap for c in res.classes] == [0.0, 0.0]
    assert res.map == 0.0 and res.map_present == 0.0 and res.fn == 1
    nothing = evaluate_detections([], [], 2)
    assert nothing.map == 0.0 and math.isnan(nothing.map_present)


def test_ap50_95_uses_ten_iou_thresholds():
    truth = Box(0.5, 0.5, 1.0, 1.0)
    det = Box(0.5, 0.5, 1.0, 0.72)  # IoU = .72: a TP at .50 ... .70 (5), missed at .75 ... .95
    res = evaluate_detections([GroundTruth("A", 0, truth)],
                              [ScoredDetection("A", 0, 0.9, det)], 2)
    # per threshold 101-point AP of class 0 is 1 or 0; class 1 has no truth
    assert res.ap50_95_present == pytest.approx(0.5)
    assert res.ap50_95 == pytest.approx(0.25)
    assert evaluate_detections([], [], 1, coco=False).ap50_95 is None


def test_average_precision_direct():
    assert average_precision([], [], 0) == 0.0
    assert average_precision([1.0, 0.5, 2 / 3, 0.5], [1 / 3, 1 / 3, 2 / 3, 2 / 3], 0) == \
        pytest.approx(5 / 9)
    assert average_precision([1.0], [1.0], 11) == 1.0
    with pytest.raises(ValueError):
        average_precision([1.0], [1.0], 1)


def test_bad_class_ids_raise():
    with pytest.raises(DataError, match="img7.*class 5"):
        evaluate_detections([GroundTruth("img7", 5, T0)], [], 3)
    with pytest.raises(DataError, match="detection class -1"):
        evaluate_detections([], [ScoredDetection("A", -1, 0.5, T0)], 3)


def test_scored_detections_collection_order():
    dets = [Detection(T0, 0.9, np.float32([0.0, 0.5, 0.2])),
            Detection(T1, 0.8, np.float32([0.7, 0.0, 0.0]))]
    got = [(s.class_id, round(s.prob, 2), s.box) for s in scored_detections("A", dets)]
    assert got == [(1, 0.5, T0), (2, 0.2, T0), (0, 0.7, T1)]


def darknet_map_reference(truths, dets, n_classes, iou_thresh, points):
    """Literal transliteration of validate_detector_map's matching and pr[class][rank] loop
    (global ranks over all classes), for comparison on random data."""
    from netsurgery.detection.decode import box_iou
    truth_list = [t for t in truths if not t.difficult]
    collected = []
    for d in dets:
        truth_index, max_iou = -1, 0.0
        for j, t in enumerate(truth_list):
            if t.image_id != d.image_id:
                continue
            iou = box_iou(d.box, t.box)
            if iou > np.float32(iou_thresh) and d.class_id == t.class_id and iou > max_iou:
                max_iou, truth_index = iou, j
        collected.append((d.prob, d.class_id, truth_index))
    collected.sort(key=lambda c: -np.float32(c[0]))  # stable, like glibc's merge sort
    n = len(collected)
    counts = [sum(t.class_id == c for t in truth_list) for c in range(n_classes)]
    tp = [[0] * n for _ in range(n_classes)]
    fp = [[0] * n for _ in range(n_classes)]
    prec = [[0.0] * n for _ in range(n_classes)]
    rec = [[0.0] * n for _ in range(n_classes)]
    flags = set()
    for rank, (_, cls, ti) in enumerate(collected):
        if rank > 0:
            for c in range(n_classes):
                tp[c][rank], fp[c][rank] = tp[c][rank - 1], fp[c][rank - 1]
        if ti >= 0 and ti not in flags:
            flags.add(ti)
            tp[cls][rank] += 1
        else:
            fp[cls][rank] += 1
        for c in range(n_classes):
            t_, f_ = tp[c][rank], fp[c][rank]
            prec[c][rank] = t_ / (t_ + f_) if t_ + f_ > 0 else 0.0
            rec[c][rank] = t_ / counts[c] if counts[c] > 0 else 0.0
    aps = []
    for c in range(n_classes):
        ap = 0.0
        if n and points == 0:
            last_r, last_p = rec[c][n - 1], prec[c][n - 1]
            for rank in range(n - 2, -1, -1):
                delta = last_r - rec[c][rank]
                last_r = rec[c][rank]
                if prec[c][rank] > last_p:
                    last_p = prec[c][rank]
                ap += delta * last_p
            ap += (last_r - 0) * last_p
        elif n:
            for point in range(points):
                level = point * 1.0 / (points - 1)
                best = 0.0
                for rank in range(n):
                    if rec[c][rank] >= level and prec[c][rank] > best:
                        best = prec[c][rank]
                ap += best
            ap /= points
        aps.append(ap)
    return aps


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("points", [0, 11, 101])
def test_matches_literal_darknet_loop_on_random_data(seed, points):
    rng = np.random.default_rng(seed)
    n_classes = 3
    rand_box = lambda: Box(*rng.uniform(0.2, 0.8, 2), *rng.uniform(0.1, 0.4, 2))
    truths = [GroundTruth(int(rng.integers(3)), int(rng.integers(n_classes)), rand_box())
              for _ in range(12)]
    dets = []
    for _ in range(40):
        if rng.random() < 0.6:  # near a truth
            t = truths[int(rng.integers(len(truths)))]
            b = Box(t.box.x + rng.normal(0, 0.03), t.box.y + rng.normal(0, 0.03), t.box.w, t.box.h)
            dets.append(ScoredDetection(t.image_id, t.class_id if rng.random() < 0.8 else
                                        int(rng.integers(n_classes)),
                                        float(rng.choice([0.3, 0.5, 0.7, rng.random()])), b))
        else:
            dets.append(ScoredDetection(int(rng.integers(3)), int(rng.integers(n_classes)),
                                        float(rng.random()), rand_box()))
    res = evaluate_detections(truths, dets, n_classes, points=points)
    want = darknet_map_reference(truths, dets, n_classes, 0.5, points)
    assert [c.ap for c in res.classes] == want  # bit-identical doubles
