"""Synthetic Darknet datasets: text blocks (for a text detector) and coloured shapes (for quick
tests). Output is deterministic for a given seed: image ``i`` depends only on ``(seed, i)``.

Layout written under ``out_dir`` (all paths in lists and ``.data`` are absolute)::

    images/train/000000.jpg   images/valid/000004.jpg ...
    <label files where data.label_path() looks for them: next to each .jpg, same stem,
     unless out_dir itself contains a folder rule such as /JPEGImages/>
    train.txt  valid.txt  <name>.names  <name>.data  backup/
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from netsurgery.errors import DataError, UsageError
from netsurgery.fileio import atomic_write_bytes, atomic_write_text, check_output

from .data import Label, label_path

ProgressFn = Callable[[int, int], None]   # (images done, images total)
Size = tuple[int, int]                    # (width, height), Darknet's order

INK_THRESHOLD = 64        # alpha (0..255) from which a pixel counts as drawn for the label box
MAX_OVERLAP = 0.05        # allowed intersection / smaller box area between two objects
PLACEMENT_TRIES = 40
JPEG_QUALITY = 92

_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX,
          cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL,
          cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_COMPLEX)

_WORDS = tuple("""
the of and to in is for on that with as by at from this be are or an it was not have all
new more one can will about your has their our which but they out up other time only also
any price total date page order number name address phone email street city road station
open closed sale free now today please thank you welcome exit entrance stop parking public
service information office hotel restaurant cafe bar shop market bank post school library
museum hospital pharmacy police taxi bus train airport ticket gate floor room level north
south east west left right left center main first second third report table figure chapter
section summary abstract introduction method results discussion conclusion reference data
model network layer image text block detector training test valid weights config value
system design control power energy water light green red blue black white yellow orange
monday tuesday wednesday thursday friday saturday sunday january february march april may
june july august september october november december year month week day hour minute note
invoice receipt amount tax subtotal cash card change quantity item description unit each
hello world quick brown fox jumps over lazy dog lorem ipsum dolor sit amet consectetur
adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua enim
""".split())


@dataclass(frozen=True)
class DatasetPaths:
    """What a synthetic dataset generator wrote (all paths absolute)."""

    root: Path
    data: Path
    names: Path
    train_list: Path
    valid_list: Path
    backup: Path
    train_images: list[Path]
    valid_images: list[Path]


@dataclass(frozen=True)
class Box:
    """Pixel box: x0, y0 inclusive, x1, y1 exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def area(self) -> int:
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    def overlap(self, other: Box) -> float:
        """Intersection over the smaller area (0 = disjoint, 1 = one inside the other)."""
        iw = min(self.x1, other.x1) - max(self.x0, other.x0)
        ih = min(self.y1, other.y1) - max(self.y0, other.y0)
        if iw <= 0 or ih <= 0:
            return 0.0
        return iw * ih / min(self.area, other.area)

    def to_label(self, class_id: int, width: int, height: int) -> Label:
        return Label(class_id, (self.x0 + self.x1) / 2 / width, (self.y0 + self.y1) / 2 / height,
                     (self.x1 - self.x0) / width, (self.y1 - self.y0) / height)


# --------------------------------------------------------------------------- masks & colours


def _crop_to_ink(mask: np.ndarray) -> np.ndarray:
    """Cut a uint8 alpha mask to the tight box of its drawn pixels; fainter pixels (anti-aliasing
    fringe) are zeroed so that the label box holds every visible pixel."""
    mask = np.where(mask >= INK_THRESHOLD, mask, 0).astype(np.uint8)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return mask[:0, :0]
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _rotate_mask(mask: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate a mask about its centre on a canvas large enough to hold all of it."""
    h, w = mask.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w, new_h = int(math.ceil(w * cos + h * sin)) + 2, int(math.ceil(w * sin + h * cos)) + 2
    matrix[0, 2] += new_w / 2 - w / 2
    matrix[1, 2] += new_h / 2 - h / 2
    return cv2.warpAffine(mask, matrix, (new_w, new_h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _fit_mask(mask: np.ndarray, max_w: int, max_h: int) -> np.ndarray:
    """Shrink a cropped mask so that it fits into max_w × max_h."""
    h, w = mask.shape
    factor = min(max_w / w, max_h / h)
    if factor >= 1:
        return mask
    size = (max(1, int(w * factor)), max(1, int(h * factor)))
    return _crop_to_ink(cv2.resize(mask, size, interpolation=cv2.INTER_AREA))


def _luminance(bgr: np.ndarray) -> float:
    return float(0.114 * bgr[..., 0].mean() + 0.587 * bgr[..., 1].mean()
                 + 0.299 * bgr[..., 2].mean())


def _contrasting_colour(rng: np.random.Generator, patch: np.ndarray,
                        min_contrast: float = 90.0) -> tuple[int, int, int]:
    """A random BGR colour whose luminance differs from the patch mean by ≥ min_contrast."""
    background = _luminance(patch)
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if abs(_luminance(colour.astype(np.float64)) - background) >= min_contrast:
            return tuple(int(c) for c in colour)
    return (0, 0, 0) if background > 127 else (255, 255, 255)


def _composite(image: np.ndarray, mask: np.ndarray, box: Box,
               colour: tuple[int, int, int]) -> None:
    """Blend ``colour`` into ``image`` inside ``box`` with ``mask`` as alpha (in place)."""
    region = image[box.y0:box.y1, box.x0:box.x1].astype(np.float32)
    alpha = mask.astype(np.float32)[..., None] / 255.0
    blended = region * (1.0 - alpha) + np.array(colour, np.float32) * alpha
    image[box.y0:box.y1, box.x0:box.x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _place(rng: np.random.Generator, mask: np.ndarray, width: int, height: int,
           taken: Sequence[Box]) -> Box | None:
    """A random position for ``mask`` inside the image that overlaps no taken box much."""
    h, w = mask.shape
    if w == 0 or h == 0 or w > width or h > height:
        return None
    for _ in range(PLACEMENT_TRIES):
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        box = Box(x, y, x + w, y + h)
        if all(box.overlap(other) <= MAX_OVERLAP for other in taken):
            return box
    return None


# --------------------------------------------------------------------------- backgrounds


def _gradient(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xs * math.cos(angle) + ys * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def _smooth_noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    cells = int(rng.integers(2, 9))
    coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _paper(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    tone = rng.uniform(190, 255, 3) if rng.random() < 0.7 else rng.uniform(0, 80, 3)
    return np.tile(tone.astype(np.float32), (height, width, 1))


def _draw_distractors(rng: np.random.Generator, image: np.ndarray) -> None:
    """Rectangles, circles and lines in random colours: things a text detector must ignore."""
    height, width = image.shape[:2]
    side = min(width, height)
    for _ in range(int(rng.integers(0, 7))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        thickness = -1 if rng.random() < 0.6 else int(rng.integers(1, 4))
        kind = rng.integers(0, 3)
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if kind == 0:
            w, h = (int(v) for v in rng.integers(side // 10, side // 2 + 2, 2))
            cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness, cv2.LINE_AA)
        elif kind == 1:
            radius = int(rng.integers(side // 20 + 1, side // 4 + 2))
            cv2.circle(image, (x, y), radius, colour, thickness, cv2.LINE_AA)
        else:
            x2, y2 = int(rng.integers(0, width)), int(rng.integers(0, height))
            cv2.line(image, (x, y), (x2, y2), colour, max(1, thickness), cv2.LINE_AA)


def procedural_background(rng: np.random.Generator, size: Size) -> np.ndarray:
    """A BGR uint8 background: gradient, smooth noise or paper tone, with random shapes,
    optional blur and fine noise."""
    width, height = size
    base = (_gradient, _smooth_noise, _paper)[int(rng.integers(0, 3))](rng, width, height)
    image = np.ascontiguousarray(np.clip(base, 0, 255), dtype=np.uint8)  # cv2 draws in place
    _draw_distractors(rng, image)
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.5, 3.0)))
    sigma = rng.uniform(0, 8)
    noisy = image.astype(np.float32) + rng.normal(0, sigma, image.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


_PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


def _list_photos(photos_dir: str | os.PathLike) -> list[Path]:
    folder = Path(photos_dir)
    if not folder.is_dir():
        raise DataError(f"{folder}: photos folder not found")
    # Sorted, so that the same seed picks the same photos on every machine.
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in _PHOTO_SUFFIXES)
    if not photos:
        raise DataError(f"{folder}: no photos (expected {', '.join(sorted(_PHOTO_SUFFIXES))})")
    return photos


@functools.lru_cache(maxsize=16)
def _load_photo(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: cannot read image")
    return image


def photo_background(rng: np.random.Generator, photo: np.ndarray, size: Size) -> np.ndarray:
    """A random crop of ``photo`` with the output's aspect ratio, resized to ``size``."""
    width, height = size
    ph, pw = photo.shape[:2]
    scale = min(pw / width, ph / height) * rng.uniform(0.35, 1.0)
    cw, ch = max(1, int(width * scale)), max(1, int(height * scale))
    x, y = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    crop = photo[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA))


# --------------------------------------------------------------------------- text


def _random_word(rng: np.random.Generator) -> str:
    roll = rng.random()
    if roll < 0.08:
        return str(int(rng.integers(0, 10000)))
    if roll < 0.11:
        return f"${rng.uniform(0, 500):.2f}"
    if roll < 0.13:
        day, month, year = (int(rng.integers(low, high)) for low, high in ((1, 29), (1, 13),
                                                                            (0, 30)))
        return f"{day:02d}/{month:02d}/20{year:02d}"
    word = str(_WORDS[int(rng.integers(0, len(_WORDS)))])
    case = rng.random()
    if case < 0.2:
        word = word.upper()
    elif case < 0.5:
        word = word.capitalize()
    if rng.random() < 0.08:
        word += str(rng.choice(list(".,:;!?")))
    return word


@dataclass(frozen=True)
class TextStyle:
    """How hard the text task is: lines per block, text height as a fraction of the image's
    smaller side, and blocks per image (inclusive ranges)."""

    lines: tuple[int, int] = (1, 4)
    text_height: tuple[float, float] = (0.025, 0.08)
    blocks: tuple[int, int] = (1, 4)


def _text_lines(rng: np.random.Generator, font: int, scale: float, thickness: int,
                max_width: float, n_lines: tuple[int, int] = (1, 4)) -> list[str]:
    """Random lines of random words, each line filled up to ``max_width`` pixels."""
    lines = []
    for _ in range(int(rng.integers(n_lines[0], n_lines[1] + 1))):
        words = [_random_word(rng)]
        for _ in range(int(rng.integers(0, 6))):
            candidate = words + [_random_word(rng)]
            if cv2.getTextSize(" ".join(candidate), font, scale, thickness)[0][0] > max_width:
                break
            words = candidate
        lines.append(" ".join(words))
    return lines


def text_block_mask(rng: np.random.Generator, size: Size,
                    style: TextStyle = TextStyle()) -> np.ndarray:
    """A tightly cropped uint8 alpha mask of a rotated multi-line block of text that fits
    into an image of ``size``: random Hershey font, scale, thickness, alignment and angle."""
    width, height = size
    font = int(_FONTS[int(rng.integers(0, len(_FONTS)))])
    if rng.random() < 0.2:
        font |= cv2.FONT_ITALIC
    text_h = max(7.0, rng.uniform(*style.text_height) * min(width, height))
    (_, unit_h), _ = cv2.getTextSize("Hg", font, 1.0, 1)
    scale = text_h / unit_h
    thickness = int(rng.integers(1, max(1, int(text_h / 9)) + 1))
    lines = _text_lines(rng, font, scale, thickness, rng.uniform(0.3, 0.85) * width,
                        style.lines)
    sizes = [cv2.getTextSize(line, font, scale, thickness) for line in lines]
    pitch = text_h * rng.uniform(1.35, 1.9)
    pad = int(text_h) + thickness + 2
    canvas_w = max(w for (w, _), _ in sizes) + 2 * pad
    canvas_h = int(pitch * (len(lines) - 1) + text_h) + 2 * pad
    mask = np.zeros((canvas_h, canvas_w), np.uint8)
    align = int(rng.integers(0, 3))           # left, centre, right
    for index, (line, ((line_w, _), _)) in enumerate(zip(lines, sizes)):
        x = pad + (canvas_w - 2 * pad - line_w) * align // 2
        y = int(pad + text_h + index * pitch)  # baseline
        cv2.putText(mask, line, (x, y), font, scale, 255, thickness, cv2.LINE_AA)
    if rng.random() < 0.3:                     # soft (out of focus) text
        mask = cv2.GaussianBlur(mask, (0, 0), float(rng.uniform(0.4, 0.9)))
    mask = _crop_to_ink(_rotate_mask(_crop_to_ink(mask), float(rng.uniform(-5.0, 5.0))))
    return _fit_mask(mask, int(width * 0.9), int(height * 0.9))


def render_text_image(rng: np.random.Generator, size: Size = (416, 416),
                      background: np.ndarray | None = None,
                      style: TextStyle = TextStyle()) -> tuple[np.ndarray, list[Label]]:
    """One BGR uint8 image with 1–4 non-overlapping text blocks and their class-0 labels
    (tight axis-aligned boxes of the drawn pixels). Without ``background`` a procedural one
    is made."""
    width, height = size
    image = procedural_background(rng, size) if background is None else background.copy()
    if image.shape != (height, width, 3):
        raise ValueError(f"background must be {height}×{width}×3, got {image.shape}")
    boxes: list[Box] = []
    for _ in range(int(rng.integers(style.blocks[0], style.blocks[1] + 1))):
        mask = text_block_mask(rng, size, style)
        box = _place(rng, mask, width, height, boxes)
        if box is None:
            continue      # no room left that does not cover another block
        patch = image[box.y0:box.y1, box.x0:box.x1]
        _composite(image, mask, box, _contrasting_colour(rng, patch))
        boxes.append(box)
    return image, [box.to_label(0, width, height) for box in boxes]


# --------------------------------------------------------------------------- shapes


def _shape_points(kind: str, radius: float, angle: float) -> np.ndarray:
    corners = {"triangle": 3, "square": 4, "diamond": 4}[kind]
    offset = {"triangle": -math.pi / 2, "square": math.pi / 4, "diamond": 0.0}[kind]
    # Squares stay axis-aligned (a rotated square would be a diamond); triangles turn freely.
    turn = angle if kind == "triangle" else 0.0
    return np.array([(radius + radius * math.cos(offset + turn + 2 * math.pi * k / corners),
                      radius + radius * math.sin(offset + turn + 2 * math.pi * k / corners))
                     for k in range(corners)])


def shape_mask(kind: str, diameter: int, angle: float) -> np.ndarray:
    """A tightly cropped uint8 alpha mask of a filled shape about ``diameter`` pixels wide."""
    side = diameter + 4
    mask = np.zeros((side, side), np.uint8)
    radius = diameter / 2
    if kind == "circle":
        cv2.circle(mask, (side // 2, side // 2), int(radius), 255, -1, cv2.LINE_AA)
    elif kind == "cross":
        bar = max(1, int(diameter / 6))
        cv2.rectangle(mask, (2, side // 2 - bar), (side - 3, side // 2 + bar), 255, -1)
        cv2.rectangle(mask, (side // 2 - bar, 2), (side // 2 + bar, side - 3), 255, -1)
    else:
        points = np.rint((_shape_points(kind, radius, angle) + 2) * 16).astype(np.int32)
        cv2.fillPoly(mask, [points], 255, cv2.LINE_AA, shift=4)   # shift: sub-pixel corners
    return _crop_to_ink(mask)


SHAPE_KINDS = ("circle", "square", "triangle", "diamond", "cross")


def noise_background(rng: np.random.Generator, size: Size) -> np.ndarray:
    """The shapes task's background: coarse colour noise, bilinearly enlarged, plus fine noise."""
    width, height = size
    coarse = rng.uniform(0, 255, (max(2, height // 8), max(2, width // 8), 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)


def render_shapes_image(rng: np.random.Generator, size: Size = (160, 160),
                        classes: Sequence[str] = ("circle", "square", "triangle"),
                        ) -> tuple[np.ndarray, list[Label]]:
    """One BGR uint8 image with 1–3 filled shapes on a noise background and their labels
    (class id = index in ``classes``)."""
    width, height = size
    image = noise_background(rng, size)
    boxes: list[tuple[int, Box]] = []
    for _ in range(int(rng.integers(1, 4))):
        class_id = int(rng.integers(0, len(classes)))
        diameter = int(rng.uniform(0.15, 0.4) * min(width, height))
        mask = shape_mask(classes[class_id], max(diameter, 4), rng.uniform(0, 2 * math.pi))
        box = _place(rng, mask, width, height, [b for _, b in boxes])
        if box is None:
            continue
        patch = image[box.y0:box.y1, box.x0:box.x1]
        _composite(image, mask, box, _contrasting_colour(rng, patch, min_contrast=70.0))
        boxes.append((class_id, box))
    return image, [box.to_label(class_id, width, height) for class_id, box in boxes]


# --------------------------------------------------------------------------- writing datasets


def _label_text(labels: Sequence[Label]) -> str:
    return "".join(f"{l.class_id} {l.cx:.6f} {l.cy:.6f} {l.w:.6f} {l.h:.6f}\n" for l in labels)


def _check_options(n_images: int, seed: int, size: Size, valid_fraction: float,
                   negative_fraction: float = 0.0) -> None:
    if not 0 <= negative_fraction < 1:
        raise UsageError(f"negative fraction must lie in [0, 1), got {negative_fraction}")
    if n_images < 1:
        raise UsageError(f"number of images must be at least 1, got {n_images}")
    if seed < 0:
        raise UsageError(f"seed must be ≥ 0, got {seed}")
    if len(size) != 2 or min(size) < 32:
        raise UsageError(f"image size must be (width, height), each ≥ 32, got {size}")
    if not 0 <= valid_fraction < 1:
        raise UsageError(f"valid fraction must lie in [0, 1), got {valid_fraction}")


def _n_valid(n_images: int, valid_fraction: float) -> int:
    n_valid = round(n_images * valid_fraction)
    if valid_fraction > 0 and n_images >= 2:
        n_valid = max(n_valid, 1)        # a requested split is never empty ...
    return min(n_valid, n_images - 1)    # ... and training keeps at least one image


Renderer = Callable[[np.random.Generator], tuple[np.ndarray, list[Label]]]
Background = Callable[[np.random.Generator], np.ndarray]


def _is_negative(seed: int, stream: int, index: int, negative_fraction: float) -> bool:
    """Whether image ``index`` shows no object. Drawn from its own generator, so the positive
    images are the same with or without negatives."""
    return negative_fraction > 0 and (
        np.random.default_rng([seed, stream, index, 2]).random() < negative_fraction)


def _write_dataset(out_dir: str | os.PathLike, stem: str, class_names: Sequence[str],
                   n_images: int, seed: int, stream: int, render: Renderer,
                   valid_fraction: float, progress: ProgressFn | None,
                   overwrite: bool, background: Background | None = None,
                   negative_fraction: float = 0.0) -> DatasetPaths:
    root = Path(os.path.abspath(os.fspath(out_dir)))
    data_path = check_output(root / f"{stem}.data", overwrite=overwrite)
    n_train = n_images - _n_valid(n_images, valid_fraction)
    train_images: list[Path] = []
    valid_images: list[Path] = []
    for index in range(n_images):
        # One generator per image: image i is the same whatever n_images is.
        rng = np.random.default_rng([seed, stream, index])
        if background is not None and _is_negative(seed, stream, index, negative_fraction):
            image, labels = background(rng), []
        else:
            image, labels = render(rng)
        split, images = ("train", train_images) if index < n_train else ("valid", valid_images)
        image_path = root / "images" / split / f"{index:06d}.jpg"
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise DataError(f"{image_path}: JPEG encoding failed")
        atomic_write_bytes(image_path, encoded.tobytes())
        # Written where Darknet will look, even if out_dir holds e.g. a /JPEGImages/ folder.
        atomic_write_text(label_path(image_path), _label_text(labels))
        images.append(image_path)
        if progress is not None:
            progress(index + 1, n_images)
    backup = root / "backup"
    backup.mkdir(parents=True, exist_ok=True)   # Darknet does not create it
    paths = DatasetPaths(root, data_path, root / f"{stem}.names", root / "train.txt",
                         root / "valid.txt", backup, train_images, valid_images)
    atomic_write_text(paths.train_list, "".join(f"{p}\n" for p in train_images))
    atomic_write_text(paths.valid_list, "".join(f"{p}\n" for p in valid_images))
    atomic_write_text(paths.names, "".join(f"{name}\n" for name in class_names))
    # The .data file goes last: its presence marks a complete dataset.
    atomic_write_text(data_path, (
        f"# synthetic {stem} dataset by netsurgery (seed {seed}, {n_images} images)\n"
        f"classes = {len(class_names)}\n"
        f"train = {paths.train_list}\n"
        f"valid = {paths.valid_list}\n"
        f"names = {paths.names}\n"
        f"backup = {backup}\n"))
    return paths


def make_text_dataset(out_dir: str | os.PathLike, n_images: int, seed: int,
                      size: Size = (416, 416), photos_dir: str | os.PathLike | None = None,
                      valid_fraction: float = 0.2, photo_fraction: float = 0.75,
                      progress: ProgressFn | None = None,
                      overwrite: bool = False, style: TextStyle = TextStyle(),
                      negative_fraction: float = 0.0) -> DatasetPaths:
    """Write a one-class ("text") Darknet dataset of text blocks to ``out_dir``.

    ``size`` is (width, height). Backgrounds are procedural, or, with ``photos_dir``, random
    crops of its photos for a ``photo_fraction`` of the images (the photos should not show
    text themselves: it would be unlabelled). ``progress(done, total)`` is called after each
    image. A ``negative_fraction`` of the images (drawn per image) show a background with no
    text and have empty label files: a stream on which a gate can be trained and measured.
    Refuses to replace an existing ``text.data`` unless ``overwrite``."""
    _check_options(n_images, seed, size, valid_fraction, negative_fraction)
    photos = _list_photos(photos_dir) if photos_dir is not None else []

    def background(rng: np.random.Generator) -> np.ndarray | None:
        if photos and rng.random() < photo_fraction:
            photo = _load_photo(photos[int(rng.integers(0, len(photos)))])
            return photo_background(rng, photo, size)
        return None

    def render(rng: np.random.Generator) -> tuple[np.ndarray, list[Label]]:
        return render_text_image(rng, size, background(rng), style)

    def negative(rng: np.random.Generator) -> np.ndarray:
        image = background(rng)
        return procedural_background(rng, size) if image is None else image

    return _write_dataset(out_dir, "text", ["text"], n_images, seed, 0, render,
                          valid_fraction, progress, overwrite, negative, negative_fraction)


def make_shapes_dataset(out_dir: str | os.PathLike, n_images: int, seed: int,
                        size: Size = (160, 160),
                        classes: Sequence[str] = ("circle", "square", "triangle"),
                        valid_fraction: float = 0.2, progress: ProgressFn | None = None,
                        overwrite: bool = False, negative_fraction: float = 0.0) -> DatasetPaths:
    """Write a Darknet dataset of coloured filled shapes (1–3 per image) for quick tests.

    ``classes`` are shape names from SHAPE_KINDS; their order gives the class ids. A
    ``negative_fraction`` of the images show only the noise background (no labels)."""
    _check_options(n_images, seed, size, valid_fraction, negative_fraction)
    unknown = [name for name in classes if name not in SHAPE_KINDS]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise UsageError(f"shape classes must be distinct names from {', '.join(SHAPE_KINDS)}; "
                         f"got {', '.join(classes) or 'none'}")
    classes = tuple(classes)

    def render(rng: np.random.Generator) -> tuple[np.ndarray, list[Label]]:
        return render_shapes_image(rng, size, classes)

    return _write_dataset(out_dir, "shapes", classes, n_images, seed, 1, render,
                          valid_fraction, progress, overwrite,
                          lambda rng: noise_background(rng, size), negative_fraction)
