"""Tests for netsurgery.detection.image: Darknet's load / resize / letterbox, checked against a slow
transliteration of image.c and against input tensors dumped from Darknet itself."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import data_path

from netsurgery.detection.image import (
    letterbox_geometry,
    letterbox_image,
    load_image,
    preprocess,
    resize_image,
)
from netsurgery.errors import DataError

F32 = np.float32


def reference_resize(im: np.ndarray, w: int, h: int) -> np.ndarray:
    """Slow loop transliterating resize_image() in AlexeyAB's image.c, float32 throughout."""
    c_n, in_h, in_w = im.shape
    if in_w == w and in_h == h:
        return im.copy()
    part = np.zeros((c_n, in_h, w), dtype=F32)
    w_scale = F32(in_w - 1) / F32(w - 1) if w > 1 else F32(np.inf)
    h_scale = F32(in_h - 1) / F32(h - 1) if h > 1 else F32(0)
    for k in range(c_n):
        for r in range(in_h):
            for c in range(w):
                if c == w - 1 or in_w == 1:
                    val = im[k, r, in_w - 1]
                else:
                    sx = F32(c) * w_scale
                    ix = int(sx)
                    dx = F32(sx - F32(ix))
                    val = F32(F32(F32(1) - dx) * im[k, r, ix]) + F32(dx * im[k, r, ix + 1])
                part[k, r, c] = val
    out = np.zeros((c_n, h, w), dtype=F32)
    for k in range(c_n):
        for r in range(h):
            sy = F32(r) * h_scale
            iy = int(sy)
            dy = F32(sy - F32(iy))
            for c in range(w):
                out[k, r, c] = F32(F32(1) - dy) * part[k, iy, c]
            if r == h - 1 or in_h == 1:
                continue
            for c in range(w):
                out[k, r, c] = out[k, r, c] + F32(dy * part[k, iy + 1, c])
    return out


@pytest.mark.parametrize("src,dst", [
    ((7, 5), (13, 11)),   # upscale
    ((13, 11), (5, 4)),   # downscale
    ((9, 6), (9, 10)),    # width unchanged
    ((1, 5), (4, 3)),     # single column source
    ((6, 1), (3, 4)),     # single row source
    ((5, 5), (1, 3)),     # single column target
    ((17, 3), (16, 7)),
])
def test_resize_matches_c_loop(src, dst):
    rng = np.random.default_rng(sum(src) * 31 + sum(dst))
    im = rng.random((3, src[1], src[0]), dtype=np.float32)
    got = resize_image(im, *dst)
    want = reference_resize(im, *dst)
    assert got.dtype == np.float32 and got.shape == (3, dst[1], dst[0])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_resize_same_size_is_a_copy():
    im = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32)
    out = resize_image(im, 5, 4)
    assert np.array_equal(out, im) and out is not im


def test_resize_last_row_keeps_darknet_quirk():
    # Darknet's last output row is (1-dy)·part[iy] with iy, dy from the float product
    # (h-1)·h_scale, not a plain copy of the last source row.
    im = np.random.default_rng(3).random((3, 512, 4), dtype=np.float32)
    out = resize_image(im, 4, 416)
    np.testing.assert_array_equal(out, reference_resize(im, 4, 416))


def test_letterbox_geometry_wide_and_tall():
    g = letterbox_geometry(451, 300, 160, 160)  # chelsea: 160x106 content, bars top/bottom
    assert (g.new_w, g.new_h, g.dx, g.dy) == (160, 106, 0, 27)
    g = letterbox_geometry(300, 451, 160, 160)
    assert (g.new_w, g.new_h, g.dx, g.dy) == (106, 160, 27, 0)
    g = letterbox_geometry(512, 512, 416, 416)
    assert (g.new_w, g.new_h, g.dx, g.dy) == (416, 416, 0, 0)


def test_letterbox_pads_with_half():
    im = np.random.default_rng(1).random((3, 6, 12), dtype=np.float32)
    canvas, geo = letterbox_image(im, 8, 8)
    assert (geo.new_w, geo.new_h, geo.dx, geo.dy) == (8, 4, 0, 2)
    assert np.all(canvas[:, :2] == 0.5) and np.all(canvas[:, 6:] == 0.5)
    np.testing.assert_array_equal(canvas[:, 2:6], reference_resize(im, 8, 4))


def _write(path: Path, pixels: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), pixels)
    return path


def test_load_color_png_is_rgb_over_255(tmp_path):
    bgr = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    im = load_image(_write(tmp_path / "c.png", bgr))
    assert im.dtype == np.float32 and im.shape == (3, 5, 7)
    want = (bgr[:, :, ::-1].transpose(2, 0, 1) / 255.0).astype(np.float32)
    np.testing.assert_array_equal(im, want)


def test_load_gray_alpha_and_16bit(tmp_path):
    rng = np.random.default_rng(4)
    gray = rng.integers(0, 256, (4, 6), dtype=np.uint8)
    im = load_image(_write(tmp_path / "g.png", gray))
    assert im.shape == (3, 4, 6)
    for ch in range(3):
        np.testing.assert_array_equal(im[ch], (gray / 255.0).astype(np.float32))

    bgra = rng.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    im = load_image(_write(tmp_path / "a.png", bgra))
    np.testing.assert_array_equal(im, load_image(_write(tmp_path / "b.png", bgra[:, :, :3])))

    deep = rng.integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    im = load_image(_write(tmp_path / "d.png", deep))
    want = ((deep >> 8)[:, :, ::-1].transpose(2, 0, 1) / 255.0).astype(np.float32)
    np.testing.assert_array_equal(im, want)  # stb keeps the high byte


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(DataError, match="missing.jpg"):
        load_image(missing)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.png.*empty"):
        load_image(empty)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="junk.png"):
        load_image(junk)


def test_preprocess_accepts_array():
    im = np.random.default_rng(5).random((3, 30, 40), dtype=np.float32)
    x, orig = preprocess(im, 16, 16, letterbox=False)
    assert orig == (40, 30) and x.shape == (3, 16, 16)
    np.testing.assert_array_equal(x, reference_resize(im, 16, 16))
    with pytest.raises(ValueError):
        preprocess(im[0], 16, 16, letterbox=False)


@pytest.mark.parametrize("case,image,size", [
    ("yolov3-tiny-coco", "astronaut.png", 416),  # 512x512 -> 416x416
    ("yolov4-tiny-160", "chelsea.png", 160),     # 451x300 -> 160x106 on a 160x160 canvas
])
def test_preprocess_equals_darknet_input(case, image, size):
    want = np.load(data_path("conformance", case, "input.npy"))[0]
    got, _ = preprocess(data_path("images", image), size, size, letterbox=True)
    np.testing.assert_array_equal(got, want)  # bit-exact with Darknet's own tensor
