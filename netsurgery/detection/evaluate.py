"""Darknet's ``detector map`` (``validate_detector_map`` in AlexeyAB's detector.c).

How Darknet scores, and so how this module scores:

* Each detection (image, class, prob > 0, box) is matched when it is collected: among the
  image's ground truths of the same class it takes the one with the highest IoU, provided
  IoU > iou_thresh (strictly; the first truth wins a tie). Truths already taken are NOT
  skipped: a second detection of the same truth becomes a false positive later.
* A detection that matches no truth but overlaps a *difficult* truth of its class with
  IoU > iou_thresh is left out of the AP computation.
* All detections of all images are sorted by prob, descending. Darknet uses qsort, which
  glibc implements as a stable merge sort; here a stable sort is used too, so ties keep
  the order the detections were given in (Darknet's: images in list order, detections in
  do_nms_sort's final order, classes ascending - see ``scored_detections``).
* Walking that list, a matched detection is a TP the first time its truth is seen and an
  FP afterwards; unmatched ones are FPs. Precision and recall per rank are doubles.
* AP: ``points=0`` area under the precision envelope at every recall step (VOC2010+),
  ``points=N`` mean over N recall points r = i/(N-1) of the best precision at recall >= r
  (11 = VOC2007, 101 = COCO-style).
* mAP is the mean over ALL classes, classes without ground truth included (AP 0).
* Precision / recall / F1 "for conf_thresh" count detections with prob > conf_thresh in
  collection order, per image: TP when matched and no earlier detection of the same image
  (whatever its prob) took the same truth; FP otherwise, including detections dropped for
  a difficult truth. These also give the per-class (TP, FP) Darknet prints.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Hashable, Iterable, Sequence

import numpy as np

from netsurgery.errors import DataError

from .decode import Box, Detection, _iou_one_to_many

F32 = np.float32


@dataclass(frozen=True)
class GroundTruth:
    """One labelled object; box is relative (x, y, w, h) centre format."""
    image_id: Hashable
    class_id: int
    box: Box
    difficult: bool = False


@dataclass(frozen=True)
class ScoredDetection:
    """One (detection, class) pair with prob > 0, as Darknet collects them for mAP."""
    image_id: Hashable
    class_id: int
    prob: float
    box: Box


@dataclass
class ClassResult:
    """Per-class figures as ``detector map`` prints them (tp/fp at the conf threshold)."""
    id: int
    name: str
    ap: float
    tp: int
    fp: int
    n_truth: int
    n_detections: int = 0  # detections that entered the AP computation
    # (precision, recall) after each of the class's detections, by descending prob
    curve: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False,
                                                        compare=False)


@dataclass
class EvalResult:
    """Everything ``detector map`` reports, plus COCO-style AP@[.50:.95]."""
    classes: list[ClassResult]
    map: float                 # mean AP over all classes (Darknet's figure)
    map_present: float         # mean AP over classes with ground truth
    precision: float           # at conf_thresh, all classes (NaN when nothing is above it)
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int
    avg_iou: float             # mean IoU of the TPs over TP + FP at conf_thresh
    conf_thresh: float
    iou_thresh: float
    points: int
    ap50_95: float | None = None          # mean over IoU .50:.05:.95, 101 points, all classes
    ap50_95_present: float | None = None  # same, classes with ground truth only
    coverage: "EvalCoverage | None" = None  # which images were scored (evaluate_model)


def scored_detections(image_id: Hashable, dets: Iterable[Detection]) -> list[ScoredDetection]:
    """Darknet's collection of one image's detections for mAP: in the given order (pass
    do_nms_sort's result), each class with prob > 0 in class order."""
    out = []
    for det in dets:
        probs = np.asarray(det.probs, dtype=F32)
        for class_id in np.flatnonzero(probs > 0):
            out.append(ScoredDetection(image_id, int(class_id), float(probs[class_id]), det.box))
    return out


def average_precision(precision: Sequence[float], recall: Sequence[float],
                      points: int = 0) -> float:
    """AP of one class from its per-rank precision and recall (rank order, best first),
    with Darknet's loops: ``points=0`` area under the envelope, else ``points`` recall
    points i/(points-1). Empty input gives 0."""
    if points == 1 or points < 0:
        raise ValueError("points must be 0 (area under curve) or at least 2")
    p = np.asarray(precision, dtype=np.float64)
    r = np.asarray(recall, dtype=np.float64)
    if p.size == 0:
        return 0.0
    # envelope[k] = max precision at ranks >= k (Darknet's last_precision)
    envelope = np.maximum.accumulate(p[::-1])[::-1]
    if points == 0:
        # Darknet walks from the last rank back, adding (recall step)·envelope, then the
        # remaining area down to recall 0; the sum is sequential, so accumulate in order.
        steps = (r[1:] - r[:-1]) * envelope[:-1]
        terms = np.concatenate([steps[::-1], [r[0] * envelope[0]]])
        return float(np.add.accumulate(terms)[-1])
    total = 0.0
    for point in range(points):
        level = point * 1.0 / (points - 1)
        first = int(np.searchsorted(r, level, side="left"))  # recall is non-decreasing
        if first < r.size and envelope[first] > 0:
            total += float(envelope[first])
    return total / points


@dataclass
class _ImageTruths:
    boxes: list = field(default_factory=list)
    classes: list = field(default_factory=list)
    index: list = field(default_factory=list)  # global index of each non-difficult truth
    difficult_boxes: list = field(default_factory=list)
    difficult_classes: list = field(default_factory=list)


@dataclass
class _Candidate:
    """One detection's overlaps with the same-class truths of its image."""
    ious: np.ndarray          # IoU with each same-class truth (float32)
    truth_index: np.ndarray   # their global indices
    difficult_ious: np.ndarray


def _check_class(class_id: int, n_classes: int, what: str, image_id: Hashable) -> None:
    if not 0 <= class_id < n_classes:
        raise DataError(f"image {image_id}: {what} class {class_id} is outside "
                        f"0..{n_classes - 1}")


def _group_truths(truths: Iterable[GroundTruth], n_classes: int):
    by_image: dict[Hashable, _ImageTruths] = {}
    n_truth = np.zeros(n_classes, dtype=np.int64)
    count = 0
    for t in truths:
        _check_class(t.class_id, n_classes, "ground-truth", t.image_id)
        entry = by_image.setdefault(t.image_id, _ImageTruths())
        box = (t.box.x, t.box.y, t.box.w, t.box.h)
        if t.difficult:
            entry.difficult_boxes.append(box)
            entry.difficult_classes.append(t.class_id)
            continue
        entry.boxes.append(box)
        entry.classes.append(t.class_id)
        entry.index.append(count)
        n_truth[t.class_id] += 1
        count += 1
    return by_image, n_truth, count


def _candidate(det: ScoredDetection, image: _ImageTruths | None) -> _Candidate:
    empty = np.zeros(0, dtype=F32)
    if image is None:
        return _Candidate(empty, np.zeros(0, dtype=np.int64), empty)
    box = np.array([det.box.x, det.box.y, det.box.w, det.box.h], dtype=F32)

    def overlaps(boxes, classes):
        if not boxes:
            return empty, np.zeros(0, dtype=bool)
        same = np.asarray(classes) == det.class_id
        return _iou_one_to_many(box, np.asarray(boxes, dtype=F32)), same

    ious, same = overlaps(image.boxes, image.classes)
    d_ious, d_same = overlaps(image.difficult_boxes, image.difficult_classes)
    index = np.asarray(image.index, dtype=np.int64)
    return _Candidate(ious[same], index[same] if same.size else index, d_ious[d_same])


def _match(cand: _Candidate, thresh: F32) -> tuple[int, float, bool]:
    """(truth index or -1, its IoU, dropped for a difficult truth) at one IoU threshold."""
    hits = cand.ious > thresh
    if hits.any():
        best = int(np.argmax(np.where(hits, cand.ious, -np.inf)))  # first of equal maxima
        return int(cand.truth_index[best]), float(cand.ious[best]), False
    return -1, 0.0, bool((cand.difficult_ious > thresh).any())


def _class_aps(probs: np.ndarray, classes: np.ndarray, truth: np.ndarray,
               n_truth: np.ndarray, points: int):
    """AP per class for the kept detections (given in collection order), the detection
    counts, and each class's (precision, recall) curve by rank."""
    order = np.argsort(-probs, kind="stable")  # stable: ties keep collection order
    classes, truth = classes[order], truth[order]
    first_seen = np.zeros(order.size, dtype=bool)
    matched = np.flatnonzero(truth >= 0)
    _, first = np.unique(truth[matched], return_index=True)
    first_seen[matched[first]] = True  # later detections of a truth are duplicates (FP)
    aps, counts, curves = [], np.zeros(len(n_truth), dtype=np.int64), []
    for c in range(len(n_truth)):
        mine = classes == c
        counts[c] = int(mine.sum())
        tp = np.cumsum(first_seen[mine]).astype(np.float64)
        fp = np.cumsum(~first_seen[mine]).astype(np.float64)
        precision = tp / (tp + fp) if tp.size else tp
        recall = tp / n_truth[c] if n_truth[c] > 0 else np.zeros_like(tp)
        aps.append(average_precision(precision, recall, points))
        curves.append((precision, recall))
    return aps, counts, curves


def _mean(values: Sequence[float]) -> float:
    if not values:
        return float("nan")
    total = 0.0
    for v in values:  # sequential, like Darknet's double accumulator
        total += v
    return total / len(values)


def evaluate_detections(truths: Iterable[GroundTruth], detections: Iterable[ScoredDetection],
                        n_classes: int, iou_thresh: float = 0.5, points: int = 0,
                        conf_thresh: float = 0.25, names: Sequence[str] | None = None,
                        coco: bool = True) -> EvalResult:
    """Score detections against ground truth as ``darknet detector map`` does.

    ``detections`` must be in Darknet's collection order for ties to break as Darknet's do
    (see ``scored_detections``); detections with prob <= 0 are ignored, as Darknet never
    collects them. ``coco`` also computes AP@[.50:.95] (10 IoU thresholds, 101 points,
    Darknet's matching rules)."""
    if points == 1 or points < 0:
        raise ValueError("points must be 0 (area under curve) or at least 2")
    by_image, n_truth, total_truth = _group_truths(truths, n_classes)
    dets = [d for d in detections if d.prob > 0]
    for d in dets:
        _check_class(d.class_id, n_classes, "detection", d.image_id)
    cands = [_candidate(d, by_image.get(d.image_id)) for d in dets]
    probs = np.array([d.prob for d in dets], dtype=F32)
    classes = np.array([d.class_id for d in dets], dtype=np.int64)

    thresh32 = F32(iou_thresh)
    matches = [_match(c, thresh32) for c in cands]
    stats = _threshold_stats(dets, matches, n_classes, F32(conf_thresh))
    kept = np.array([not dropped for _, _, dropped in matches], dtype=bool)
    truth_idx = np.array([t for t, _, _ in matches], dtype=np.int64)
    aps, counts, curves = _class_aps(probs[kept], classes[kept], truth_idx[kept], n_truth,
                                     points)

    names = list(names) if names is not None else [str(i) for i in range(n_classes)]
    results = [ClassResult(c, names[c], aps[c], int(stats["tp_class"][c]),
                           int(stats["fp_class"][c]), int(n_truth[c]), int(counts[c]),
                           curves[c])
               for c in range(n_classes)]
    present = [r.ap for r in results if r.n_truth > 0]
    tp, fp = stats["tp"], stats["fp"]
    p32, r32 = _ratio(tp, tp + fp), _ratio(tp, total_truth)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = F32(2) * p32 * r32 / (p32 + r32)
        avg_iou = stats["iou_sum"] / F32(tp + fp) if tp + fp > 0 else F32(0)
    result = EvalResult(results, _mean([r.ap for r in results]), _mean(present),
                        float(p32), float(r32), float(f1), tp, fp, total_truth - tp,
                        float(avg_iou), conf_thresh, iou_thresh, points)
    if coco:
        result.ap50_95, result.ap50_95_present = _coco_ap(cands, probs, classes, n_truth)
    return result


def _ratio(num: int, den: int) -> F32:
    """Darknet's (float)a / (float)b; 0/0 gives NaN as in C."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return F32(num) / F32(den)


def _threshold_stats(dets: list[ScoredDetection], matches, n_classes: int,
                     conf: F32) -> dict:
    """TP / FP at the confidence threshold, per image in collection order (see module doc)."""
    tp_class = np.zeros(n_classes, dtype=np.int64)
    fp_class = np.zeros(n_classes, dtype=np.int64)
    taken: dict[Hashable, set[int]] = {}
    iou_sum = F32(0)
    for det, (truth, iou, dropped) in zip(dets, matches):
        seen = taken.setdefault(det.image_id, set())
        if F32(det.prob) > conf:
            if truth > -1 and truth not in seen:
                tp_class[det.class_id] += 1
                iou_sum = F32(iou_sum + F32(iou))
            else:
                fp_class[det.class_id] += 1
        if not dropped:  # a dropped detection is overwritten in Darknet's array
            seen.add(truth)
    return {"tp": int(tp_class.sum()), "fp": int(fp_class.sum()), "tp_class": tp_class,
            "fp_class": fp_class, "iou_sum": iou_sum}


def _coco_ap(cands: list[_Candidate], probs: np.ndarray, classes: np.ndarray,
             n_truth: np.ndarray) -> tuple[float, float]:
    """Mean over IoU thresholds .50, .55, ..., .95 of the 101-point mAP."""
    all_maps, present_maps = [], []
    for step in range(10):
        thresh = F32(round(0.50 + 0.05 * step, 2))
        matches = [_match(c, thresh) for c in cands]
        kept = np.array([not dropped for _, _, dropped in matches], dtype=bool)
        truth = np.array([t for t, _, _ in matches], dtype=np.int64)
        aps, _, _ = _class_aps(probs[kept], classes[kept], truth[kept], n_truth, 101)
        all_maps.append(_mean(aps))
        present_maps.append(_mean([a for a, n in zip(aps, n_truth) if n > 0]))
    return _mean(all_maps), _mean(present_maps)


# -- running a network over a dataset ---------------------------------------------------------
@dataclass
class EvalCoverage:
    """Which images of the valid list were scored, and why the others were not."""
    listed: int = 0
    scored: int = 0
    without_label_file: int = 0  # scored as "no objects", as Darknet does
    skipped: int = 0  # images left out: a bad label line, an image that cannot be read
    issues: list[str] = field(default_factory=list)  # "file:line: what", one per problem

    def line(self) -> str:
        text = f"{self.scored} of {self.listed} images scored"
        if self.without_label_file:
            text += f" ({self.without_label_file} without a label file: no objects)"
        if self.skipped:
            text += f", {self.skipped} skipped (bad label lines or unreadable images)"
        return text


def evaluate_model(model, data_path, head=None, iou_thresh: float = 0.5, points: int = 0,
                   letterbox: bool | None = None, thresh: float = 0.005, nms: float = 0.45,
                   batch_size: int = 8, progress=None, strict: bool = False) -> EvalResult:
    """``darknet detector map`` on the ``valid`` list of a ``.data`` file.

    ``head`` (a :class:`~netsurgery.detection.detect.HeadInfo`) selects the layers of one head
    of a merged network; by default all detection layers form one head. Letterboxing follows
    ``[net] letter_box`` of the cfg unless given, as Darknet's ``map`` does.

    An image without a label file has no objects (Darknet only warns). An image with a bad
    label line, or that cannot be decoded, is skipped and listed in ``result.coverage``; with
    ``strict`` it is an error instead. No image to score at all is a DataError."""
    from netsurgery.training.data import load_data_file, load_dataset, load_names

    from .detect import heads_of

    data = load_data_file(data_path)
    n_classes = data.require_classes()
    valid = data.require("valid")
    names = load_names(data.require("names")) if data.names else None
    if names is not None and len(names) < n_classes:
        raise DataError(f"{data.names}: {len(names)} class names, but {data.where('classes')} "
                        f"says classes={n_classes}")
    if head is None:
        head = heads_of(model)[0]
    head = replace(head, class_names=names or head.class_names)
    spec = model.network.layers[head.layers[0]]
    if spec.classes != n_classes:
        raise DataError(f"{data_path}: classes={n_classes}, but head '{head.name}' has "
                        f"{spec.classes} classes")
    if letterbox is None:
        letterbox = bool(model.network.cfg.net.get_int("letter_box", 0))
    dataset = load_dataset(valid, n_classes, strict=strict, allow_missing=True)
    coverage = EvalCoverage(listed=dataset.summary.n_listed, skipped=dataset.summary.n_skipped,
                            issues=[str(issue) for issue in dataset.issues])
    truths, detections = _detect_dataset(model, dataset.items, head, coverage, letterbox,
                                         thresh, nms, batch_size, progress, strict)
    if coverage.scored == 0:
        raise DataError(f"{valid}: no image could be scored ({coverage.line()})")
    result = evaluate_detections(truths, detections, n_classes, iou_thresh, points,
                                 names=head.class_names[:n_classes])
    result.coverage = coverage
    return result


def _detect_dataset(model, samples, head, coverage: EvalCoverage, letterbox: bool,
                    thresh: float, nms: float, batch_size: int, progress, strict: bool):
    """Ground truths and scored detections of every readable image (in list order)."""
    from netsurgery.training.data import label_path

    from .detect import detect_batch
    from .image import preprocess

    net = model.network.net
    truths: list[GroundTruth] = []
    detections: list[ScoredDetection] = []
    batch: list = []

    def flush():
        if not batch:
            return
        xs = np.stack([x for _, x, _ in batch])
        results = detect_batch(model, xs, [s for _, _, s in batch], [head], thresh, nms,
                               letterbox)
        for (image_id, _, _), per_head in zip(batch, results):
            detections.extend(scored_detections(image_id, per_head[head.name]))
        batch.clear()

    for n, sample in enumerate(samples):
        image_id = str(sample.image)
        try:
            x, size = preprocess(sample.image, net.width, net.height, letterbox)
        except DataError as exc:
            if strict:
                raise
            coverage.skipped += 1
            coverage.issues.append(str(exc))
            continue
        coverage.scored += 1
        coverage.without_label_file += not label_path(sample.image).is_file()
        for lab in sample.labels:
            truths.append(GroundTruth(image_id, lab.class_id, Box(lab.cx, lab.cy, lab.w, lab.h)))
        batch.append((image_id, x, size))
        if len(batch) >= batch_size:
            flush()
        if progress:
            progress(n + 1, len(samples))
    flush()
    return truths, detections


def result_to_json(result: EvalResult) -> dict:
    """The JSON rendering: ``{"map", "map_present", "classes": [{"id", "name", "ap", "tp",
    "fp", "n_truth"}, ...], ...}`` (AP values in 0..1)."""
    def num(v):
        return None if v is None or (isinstance(v, float) and v != v) else float(v)

    return {
        "map": num(result.map), "map_present": num(result.map_present),
        "ap50_95": num(result.ap50_95), "ap50_95_present": num(result.ap50_95_present),
        "precision": num(result.precision), "recall": num(result.recall), "f1": num(result.f1),
        "tp": result.tp, "fp": result.fp, "fn": result.fn, "avg_iou": num(result.avg_iou),
        "iou_thresh": result.iou_thresh, "points": result.points,
        "conf_thresh": result.conf_thresh,
        "classes": [{"id": c.id, "name": c.name, "ap": num(c.ap), "tp": c.tp, "fp": c.fp,
                     "n_truth": c.n_truth, "n_detections": c.n_detections}
                    for c in result.classes],
        **({} if result.coverage is None else {"images": {
            "listed": result.coverage.listed, "scored": result.coverage.scored,
            "without_label_file": result.coverage.without_label_file,
            "skipped": result.coverage.skipped, "issues": result.coverage.issues}}),
    }


def format_result(result: EvalResult, title: str = "") -> str:
    """A table like ``detector map`` prints."""
    lines = [title] if title else []
    for c in result.classes:
        lines.append(f"class_id = {c.id}, name = {c.name}, ap = {c.ap * 100:.2f}%   "
                     f"(TP = {c.tp}, FP = {c.fp}, truths = {c.n_truth})")
    lines.append(f"for conf_thresh = {result.conf_thresh:.2f}, precision = "
                 f"{result.precision:.2f}, recall = {result.recall:.2f}, F1-score = "
                 f"{result.f1:.2f}, TP = {result.tp}, FP = {result.fp}, FN = {result.fn}, "
                 f"average IoU = {result.avg_iou * 100:.2f} %")
    points = "area under curve" if result.points == 0 else f"{result.points}-point"
    lines.append(f"IoU threshold = {result.iou_thresh * 100:.0f} %, {points} AP")
    lines.append(f"mean average precision (mAP@{result.iou_thresh:.2f}) = {result.map:.6f}, "
                 f"{result.map * 100:.2f} %  (classes with ground truth: "
                 f"{result.map_present * 100:.2f} %)")
    if result.ap50_95 is not None:
        lines.append(f"COCO-style AP@[.50:.95] = {result.ap50_95 * 100:.2f} %")
    if result.coverage is not None:
        lines.append(f"images: {result.coverage.line()}")
    return "\n".join(lines)

