"""Darknet's image preprocessing, reproduced to float rounding.

Darknet (AlexeyAB, CPU build without OpenCV) loads images with stb_image as 8-bit RGB,
divides by 255, and then either stretches them to the network size with its own separable
bilinear ``resize_image`` or keeps the aspect ratio with ``letterbox_image``. Detections
are only comparable with Darknet's when the network sees the same floats, so every step
here follows the C code's order of float32 operations.

Images are numpy float32 arrays in Darknet's layout: (channels, height, width), RGB.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from netsurgery.errors import DataError

ImageSource = Union[str, os.PathLike, np.ndarray]

# stb_image returns bytes; Darknet stores (float)byte/255. computed in double, then
# rounded to float. A lookup table gives exactly those 256 values.
_BYTE_TO_FLOAT = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


# Decoding is refused above this many pixels: a 20000x20000 PNG of a few hundred KB would
# need 1.2 GB as bytes and 4.8 GB as Darknet's floats.
MAX_IMAGE_PIXELS = 1 << 26  # 67 Mpx, e.g. 8192x8192


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Load an image file as Darknet does: float32 (3, H, W), RGB, values byte/255.

    Grayscale images get their channel replicated, alpha is dropped, 16-bit images keep
    their high byte (stb_image's 16 → 8 bit conversion). Raises DataError naming the file
    when it cannot be read or decoded, or is larger than MAX_IMAGE_PIXELS."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file() and not path.is_dir():
            raise DataError(f"{path}: cannot read image (not a regular file)")
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({exc.strerror or exc})") from exc
    if data.size == 0:
        raise DataError(f"{path}: cannot read image (empty file)")
    _check_pixel_count(path)
    with _captured_stderr() as messages:  # libpng/libjpeg print to the C stderr
        try:
            pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        except cv2.error:
            pixels = None
    if pixels is None or pixels.size == 0:
        detail = messages.text.strip().splitlines()
        why = f": {detail[-1].strip()}" if detail else ""
        raise DataError(f"{path}: cannot read image (not a supported image format{why})")
    return _pixels_to_darknet(pixels, path)


def _check_pixel_count(path: Path) -> None:
    """Refuse, from the file's header, an image too large to decode."""
    try:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # our own limit applies, without PIL's warning
        with Image.open(path) as im:
            width, height = im.size
    except Exception:  # noqa: BLE001 - not a format PIL knows: OpenCV decides below
        return
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(f"{path}: cannot read image ({width}x{height} pixels, more than the "
                        f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx netsurgery decodes)")


@dataclass
class _Captured:
    text: str = ""


@contextlib.contextmanager
def _captured_stderr():
    """Send what C libraries write to file descriptor 2 into a buffer, not to the user's
    terminal (``libpng error: ...`` lines); the caller reports it in its own message."""
    import sys
    import tempfile

    captured = _Captured()
    with tempfile.TemporaryFile() as buffer:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no real fd 2 (embedded): leave it alone
            yield captured
            return
        try:
            os.dup2(buffer.fileno(), 2)
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            buffer.seek(0)
            captured.text = buffer.read().decode("utf-8", "replace")


def _pixels_to_darknet(pixels: np.ndarray, path: Path) -> np.ndarray:
    """Turn OpenCV's decoded array (H, W[, C], BGR order) into Darknet's float layout."""
    if pixels.dtype == np.uint16:
        # stb_image's 8-bit API keeps the top byte of each 16-bit sample.
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise DataError(f"{path}: unsupported pixel type {pixels.dtype} "
                        "(Darknet reads 8- and 16-bit images only)")
    if pixels.ndim == 2:
        rgb = np.repeat(pixels[:, :, None], 3, axis=2)
    elif pixels.ndim == 3 and pixels.shape[2] in (1, 2):
        # gray (+ alpha): stb replicates the gray value and drops alpha
        rgb = np.repeat(pixels[:, :, :1], 3, axis=2)
    elif pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        rgb = pixels[:, :, 2::-1]  # BGR(A) -> RGB, alpha dropped
    else:
        raise DataError(f"{path}: unsupported image shape {pixels.shape}")
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    return _BYTE_TO_FLOAT[chw]


def _sample_positions(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer source index and fraction for each output position, in float32 as the C loop.

    Darknet: scale = (float)(n_in - 1) / (n_out - 1); s = i * scale; ix = (int)s; d = s - ix.
    For n_out == 1 Darknet divides by zero; positions are then taken as 0 (see resize_image).
    """
    if n_out == 1:
        return np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.float32)
    scale = np.float32(n_in - 1) / np.float32(n_out - 1)
    s = np.arange(n_out, dtype=np.float32) * scale
    idx = s.astype(np.int64)  # truncation, s >= 0
    frac = s - idx.astype(np.float32)
    return idx, frac


def resize_image(im: np.ndarray, w: int, h: int) -> np.ndarray:
    """Darknet's ``resize_image``: separable bilinear resize to (3, h, w), float32.

    First a horizontal pass to width w (the last output column copies the last input
    column), then a vertical pass: row r = (1-dy)·part[iy] + dy·part[iy+1], where the second
    term is skipped on the last output row (so that row is (1-dy)·part[iy] with Darknet's
    own rounding of iy and dy). Same size returns a copy.

    Darknet's vertical pass reads out of bounds when h == 1 (0·inf); here that row is
    taken from source row 0."""
    if w < 1 or h < 1:
        raise ValueError(f"resize_image: target size {w}x{h} must be positive")
    im = np.asarray(im, dtype=np.float32)
    _, in_h, in_w = im.shape
    if in_w == w and in_h == h:
        return im.copy()

    # horizontal pass: (c, in_h, w)
    ix, dx = _sample_positions(in_w, w)
    right = np.minimum(ix + 1, in_w - 1)
    part = (np.float32(1) - dx) * im[:, :, ix] + dx * im[:, :, right]
    if in_w == 1:
        part[:] = im[:, :, in_w - 1:in_w]
    else:
        part[:, :, w - 1] = im[:, :, in_w - 1]

    # vertical pass: (c, h, w)
    iy, dy = _sample_positions(in_h, h)
    out = (np.float32(1) - dy)[None, :, None] * part[:, iy, :]
    rows = np.arange(h) != h - 1
    if in_h > 1 and rows.any():
        below = np.minimum(iy[rows] + 1, in_h - 1)
        out[:, rows, :] += dy[rows][None, :, None] * part[:, below, :]
    return out


@dataclass(frozen=True)
class LetterboxGeometry:
    """Where an image of image_w x image_h sits inside the net_w x net_h letterbox canvas."""
    image_w: int
    image_h: int
    net_w: int
    net_h: int
    new_w: int  # size of the resized image on the canvas
    new_h: int
    dx: int  # left / top offset of the resized image
    dy: int


def letterbox_geometry(image_w: int, image_h: int, net_w: int, net_h: int) -> LetterboxGeometry:
    """The sizes and offsets Darknet's ``letterbox_image`` (and ``correct_yolo_boxes``) use."""
    # Darknet compares the two ratios as floats, then sizes with integer arithmetic.
    if np.float32(net_w) / np.float32(image_w) < np.float32(net_h) / np.float32(image_h):
        new_w, new_h = net_w, (image_h * net_w) // image_w
    else:
        new_w, new_h = (image_w * net_h) // image_h, net_h
    return LetterboxGeometry(image_w, image_h, net_w, net_h, new_w, new_h,
                             (net_w - new_w) // 2, (net_h - new_h) // 2)


def letterbox_image(im: np.ndarray, w: int, h: int) -> tuple[np.ndarray, LetterboxGeometry]:
    """Darknet's ``letterbox_image``: resize keeping the aspect ratio and centre the result
    on a w x h canvas filled with 0.5. Returns the canvas and its geometry."""
    im = np.asarray(im, dtype=np.float32)
    c, in_h, in_w = im.shape
    geo = letterbox_geometry(in_w, in_h, w, h)
    resized = resize_image(im, geo.new_w, geo.new_h)
    canvas = np.full((c, h, w), 0.5, dtype=np.float32)
    _embed(resized, canvas, geo.dx, geo.dy)
    return canvas, geo


def _embed(source: np.ndarray, dest: np.ndarray, dx: int, dy: int) -> None:
    """Copy source into dest at (dx, dy); like Darknet's set_pixel, pixels outside are lost."""
    _, sh, sw = source.shape
    _, dh, dw = dest.shape
    x0, y0 = max(dx, 0), max(dy, 0)
    x1, y1 = min(dx + sw, dw), min(dy + sh, dh)
    if x0 < x1 and y0 < y1:
        dest[:, y0:y1, x0:x1] = source[:, y0 - dy:y1 - dy, x0 - dx:x1 - dx]


def preprocess(source: ImageSource, net_w: int, net_h: int,
               letterbox: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """The network input Darknet's ``detector test`` builds, and the original (w, h).

    ``source`` is an image path or an array already in Darknet's layout (3, H, W) float32
    (as from load_image). Returns a float32 numpy array (3, net_h, net_w); wrap it with
    ``torch.from_numpy(x)[None]`` for a batch of one. ``letterbox`` False stretches (AlexeyAB's
    default), True letterboxes (``-letter_box``, pjreddie's behaviour)."""
    if isinstance(source, np.ndarray):
        im = np.asarray(source, dtype=np.float32)
        if im.ndim != 3 or im.shape[0] != 3:
            raise ValueError(f"preprocess: expected an array (3, H, W), got {im.shape}")
    else:
        im = load_image(source)
    original = (int(im.shape[2]), int(im.shape[1]))
    if letterbox:
        sized, _ = letterbox_image(im, net_w, net_h)
    else:
        sized = resize_image(im, net_w, net_h)
    return sized, original
