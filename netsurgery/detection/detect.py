"""Detection with Darknet's semantics on single or merged networks: preprocessing, decoding,
per-head NMS, boxes in original-image pixels, annotated images and a JSON list.

A plain network has one head made of all its [yolo] layers (as ``darknet detector test``).
A merged network (``OUT.heads.json``) has one head per task; each is decoded and NMS'd on its
own with its own classes.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from netsurgery.errors import DataError, UsageError, WeightsError
from netsurgery.surgery.heads import MergedHeads, check_heads
from netsurgery.surgery.multihead import GatedRun, gated_run, run_heads

from .decode import (
    Detection,
    do_nms_sort,
    printed_detections,
    to_pixels,
)
from .image import load_image, preprocess
from .runner import Runner

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


@dataclass
class HeadInfo:
    """One detector inside a network: its detection layers and class names."""

    name: str
    layers: list[int]
    class_names: list[str]
    gate: GatedRun | None = None  # a gated task head: its tail runs only where the gate passes


@dataclass
class PixelBox:
    left: int
    top: int
    width: int
    height: int


@dataclass
class DetectionRecord:
    """One detection as reported to users (pixels of the original image)."""

    image: str
    head: str
    class_id: int
    class_name: str
    prob: float
    box: PixelBox


def read_names(path: str | os.PathLike | None, classes: int, prefix: str = "") -> list[str]:
    """Class names from a .names file, or ``prefix+index`` when no file is given."""
    if path is None:
        return [f"{prefix}{i}" for i in range(classes)]
    from netsurgery.training.data import load_names

    names = load_names(path)
    if len(names) < classes:
        raise DataError(f"{path}: {len(names)} class names, but the network has {classes} "
                        "classes")
    return names


def check_detector_weights(model: Runner, weights: str | os.PathLike) -> None:
    """Refuse weights that cannot give meaningful detections: a file that stops before the
    last layer (a header-only or partial file) or arrays holding NaN or infinite values.
    (An ONNX runner holds its arrays in the graph: not checked here.)"""
    if not isinstance(model, torch.nn.Module):
        return
    if model.weights_notes:
        raise WeightsError(f"{weights}: {model.weights_notes[0]}; detection needs the weights "
                           "of every layer")
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            index, _, name = key.removeprefix("layers.").partition(".")
            raise WeightsError(f"{weights}: layer {index} '{name}' holds NaN or infinite "
                               "values; detections would be meaningless (netsurgery info "
                               "--weights lists every such array)")


def heads_of(model: Runner, heads: MergedHeads | None = None,
             names: str | os.PathLike | None = None, gates: bool = True) -> list[HeadInfo]:
    """The heads to decode: from a merged network's heads file, else one head of all
    detection layers. A gated task head carries its gate unless ``gates`` is False."""
    network = model.network
    if heads is None:
        layers = network.heads()
        if not layers:
            raise UsageError(f"{network.path}: no [yolo] or [region] layer to detect with")
        classes = network.layers[layers[0]].classes
        return [HeadInfo("model", layers, read_names(names, classes))]
    check_heads(heads, network)
    return [HeadInfo(g.name, list(g.yolo_layers), list(heads.common_classes
                                                     if heads.common_classes is not None
                                                     else g.class_names),
                     gated_run(network, g) if gates else None)
            for g in heads.groups()]


def _decoder(model: Runner, layer: int, name: str):
    spec = model.network.layers[layer]
    decoder = spec.decoder(name) if spec.is_detection else None
    if decoder is None:
        raise UsageError(f"layer {layer} [{spec.section.header}] is not a detection layer")
    return decoder


def detect_batch(model: Runner, batch: np.ndarray, sizes: Sequence[tuple[int, int]],
                 heads: Sequence[HeadInfo], thresh: float = 0.25, nms: float = 0.45,
                 letterbox: bool = False) -> list[dict[str, list[Detection]]]:
    """Decode + NMS for a preprocessed batch (N, 3, H, W); per image {head: detections}."""
    net = model.network.net
    decoders = {layer: _decoder(model, layer, h.name) for h in heads for layer in h.layers}
    plan = [(h.name, sorted({decoders[y][2] for y in h.layers}), h.gate) for h in heads]
    with torch.inference_mode():
        runs = run_heads(model, torch.from_numpy(np.ascontiguousarray(batch)), plan)
    rows = {h.name: runs[h.name].rows(len(sizes)) for h in heads}
    results = []
    for i, (w, h) in enumerate(sizes):
        per_head = {}
        for head in heads:
            dets: list[Detection] = []
            row = rows[head.name][i]
            for layer in head.layers if row is not None else ():  # None: gate closed
                spec, decode, source = decoders[layer]
                out = runs[head.name].outputs[source][row].float().cpu().numpy()
                dets.extend(decode(out, spec, net.width, net.height, w, h, thresh, letterbox))
            classes = len(dets[0].probs) if dets else 0
            per_head[head.name] = do_nms_sort(dets, classes, nms) if nms > 0 else dets
        results.append(per_head)
    return results


def records_of(image: str, size: tuple[int, int], per_head: dict[str, list[Detection]],
               heads: Sequence[HeadInfo], thresh: float) -> list[DetectionRecord]:
    """User-facing records (one per detection and class above ``thresh``) in Darknet's
    printed order within each head."""
    names = {h.name: h.class_names for h in heads}
    out = []
    for head_name, dets in per_head.items():
        for line in printed_detections(dets, thresh, names[head_name]):
            left, top, width, height = to_pixels(line.box, *size)
            out.append(DetectionRecord(image, head_name, line.class_id,
                                       names[head_name][line.class_id], round(line.prob, 6),
                                       PixelBox(left, top, width, height)))
    return out


def iter_images(inputs: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Image paths from files, folders (sorted) and list files (.txt, one path per line).

    A ``.txt`` argument holding binary data is an image with an odd name, not a list."""
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            yield from sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.suffix.lower() == ".txt" and not _is_binary(p):
            from netsurgery.training.data import read_image_list

            yield from read_image_list(p)
        else:
            yield p


def _is_binary(path: Path) -> bool:
    if not path.is_file():
        return False  # missing, or a pipe: the list reader reports it
    try:
        with open(path, "rb") as handle:
            return b"\0" in handle.read(4096)
    except OSError:
        return False  # the list reader reports it


def plan_drawings(images: Sequence[Path], out_dir: str | os.PathLike) -> dict[str, Path]:
    """The annotated image of each input: ``OUT/<stem>_detections.jpg``. Inputs of the same
    stem from different folders get ``<stem>_2_detections.jpg``, ``_3`` and so on (in input
    order), so no drawing replaces another; the same file given twice keeps one name."""
    out: dict[str, Path] = {}
    used: set[str] = set()
    for image in images:
        key = os.path.realpath(image)
        if key in out:
            continue
        name, n = f"{image.stem}_detections.jpg", 1
        while name in used:
            n += 1
            name = f"{image.stem}_{n}_detections.jpg"
        used.add(name)
        out[key] = Path(out_dir) / name
    return out


def colour(index: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per class index."""
    hue = (index * 0.618033988749895) % 1.0
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


@dataclass
class BoxLabel:
    """One drawn box: every class found on it in one label, as Darknet draws "car, truck"."""

    box: PixelBox
    colour_index: int
    text: str


def box_labels(records: Sequence[DetectionRecord], show_head: bool) -> list[BoxLabel]:
    """Records grouped by head and box (in their order), one label per box listing each
    class with its probability."""
    groups: dict[tuple, list[DetectionRecord]] = {}
    for r in records:
        b = r.box
        groups.setdefault((r.head, b.left, b.top, b.width, b.height), []).append(r)
    labels = []
    for (head, *_), rs in groups.items():
        text = ", ".join(f"{r.class_name} {r.prob:.2f}" for r in rs)
        first = rs[0].class_id
        labels.append(BoxLabel(rs[0].box, first + 31 * hash(head) % 97 if show_head else first,
                               f"{head}: {text}" if show_head else text))
    return labels


def _label_baseline(b: PixelBox, width: int, height: int,
                    placed: Sequence[tuple[int, int, int, int]], image_h: int) -> int:
    """Where a label's bottom edge goes: above the box, else just inside its top, else lower
    step by step, the first place that covers no label drawn before (none hides another)."""
    def free(y: int) -> bool:
        x0, y0, x1, y1 = b.left, y - height, b.left + width, y
        return all(x1 <= px0 or px1 <= x0 or y1 <= py0 or py1 <= y0
                   for px0, py0, px1, py1 in placed)

    candidates = [max(b.top, height), b.top + height]
    candidates += range(b.top + 2 * height, max(image_h, b.top + 2 * height) + 1, height)
    return next((y for y in candidates if free(y)), candidates[0])


def draw(image_path: str | os.PathLike, records: Sequence[DetectionRecord], out_path,
         show_head: bool) -> None:
    """Write ``image_path`` with boxes and labels drawn (OpenCV), atomically."""
    import cv2

    from netsurgery.fileio import atomic_open

    im = (load_image(image_path).transpose(1, 2, 0)[:, :, ::-1] * 255).round().astype(np.uint8)
    im = np.ascontiguousarray(im)
    labels = box_labels(records, show_head)
    for label in labels:
        c, b = colour(label.colour_index), label.box
        cv2.rectangle(im, (b.left, b.top), (b.left + b.width, b.top + b.height), c, 2)
    placed: list[tuple[int, int, int, int]] = []
    for label in labels:
        c, b = colour(label.colour_index), label.box
        (tw, th), _ = cv2.getTextSize(label.text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        x, y = b.left, _label_baseline(b, tw + 2, th + 4, placed, im.shape[0])
        placed.append((x, y - th - 4, x + tw + 2, y))
        cv2.rectangle(im, (x, y - th - 4), (x + tw + 2, y), c, -1)
        cv2.putText(im, label.text, (x + 1, y - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 0, 0), 1, cv2.LINE_AA)
    ext = Path(out_path).suffix or ".jpg"
    ok, buf = cv2.imencode(ext, im)
    if not ok:
        raise UsageError(f"{out_path}: cannot encode image")
    with atomic_open(out_path, "wb") as handle:
        handle.write(buf.tobytes())


@dataclass
class DetectResult:
    records: list[DetectionRecord] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    images: int = 0
    drawings: list[Path] = field(default_factory=list)


def detect_images(model: Runner, images: Iterable[str | os.PathLike],
                  heads: Sequence[HeadInfo], thresh: float = 0.25, nms: float = 0.45,
                  letterbox: bool = False, batch_size: int = 4, out_dir=None,
                  progress: Callable[[int, str], None] | None = None,
                  drawings: dict[str, Path] | None = None) -> DetectResult:
    """Detect on many images in batches. Unreadable images are reported and skipped.

    With ``out_dir`` each image is drawn with its boxes, named by :func:`plan_drawings`
    (or by ``drawings``, a map from the image's real path to its drawing)."""
    images = list(iter_images(images))
    if out_dir is not None and drawings is None:
        drawings = plan_drawings(images, out_dir)
    net = model.network.net
    result = DetectResult()
    pending: list[tuple[Path, np.ndarray, tuple[int, int]]] = []
    show_head = len(heads) > 1

    def flush():
        if not pending:
            return
        batch = np.stack([x for _, x, _ in pending])
        per_image = detect_batch(model, batch, [s for _, _, s in pending], heads, thresh, nms,
                                 letterbox)
        for (path, _, size), per_head in zip(pending, per_image):
            recs = records_of(str(path), size, per_head, heads, thresh)
            result.records.extend(recs)
            if drawings is not None:
                target = drawings[os.path.realpath(path)]
                draw(path, recs, target, show_head)
                result.drawings.append(target)
        pending.clear()

    for path in images:
        result.images += 1
        try:
            x, size = preprocess(path, net.width, net.height, letterbox)
        except DataError as exc:
            result.failed.append((str(path), str(exc)))
            if progress:
                progress(result.images, f"skipped: {exc}")
            continue
        pending.append((path, x, size))
        if progress:
            progress(result.images, str(path))
        if len(pending) >= batch_size:
            flush()
    flush()
    return result


def records_to_json(records: Sequence[DetectionRecord]) -> list[dict]:
    return [asdict(r) for r in records]


def result_to_json(result: DetectResult) -> dict:
    """``{"images", "processed", "skipped": [{"image", "reason"}], "detections": [...]}``."""
    return {"images": result.images, "processed": result.images - len(result.failed),
            "skipped": [{"image": image, "reason": reason} for image, reason in result.failed],
            "detections": records_to_json(result.records)}


def write_json(path, result: DetectResult) -> None:
    from netsurgery.jsonout import write_document

    write_document(path, "detect", result_to_json(result))
