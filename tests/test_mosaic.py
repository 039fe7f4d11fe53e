"""Mosaic augmentation (netsurgery.training.mosaic, [net] mosaic=1): the four quadrants, the boxes
following the pixels, and the seeded half-of-the-samples rule of the batches; mixup=1."""
from __future__ import annotations

import numpy as np
import pytest

from netsurgery.training.augment import AugmentConfig, Crop, blend
from netsurgery.training.mosaic import (
    MIN_OFFSET,
    Quadrant,
    _corner_crop,
    grey_shifts,
    mosaic,
    quadrant,
    shift_boxes,
)

NET_W, NET_H = 80, 64
BG = [(0.9, 0.1, 0.1), (0.1, 0.9, 0.1), (0.1, 0.1, 0.9), (0.9, 0.9, 0.1)]
FG = [(0.1, 0.9, 0.9), (0.9, 0.1, 0.9), (0.95, 0.6, 0.2), (0.2, 0.6, 0.95)]


def painted(q: int, w: int, h: int, box: tuple[float, float, float, float]):
    """Image q: background BG[q] with its box filled with FG[q]; label class q."""
    image = np.empty((h, w, 3), dtype=np.float32)
    image[:] = BG[q]
    cx, cy, bw, bh = box
    x0, x1 = round((cx - bw / 2) * w), round((cx + bw / 2) * w)
    y0, y1 = round((cy - bh / 2) * h), round((cy + bh / 2) * h)
    image[y0:y1, x0:x1] = FG[q]
    return image, np.array([[q, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w,
                             (y1 - y0) / h]], dtype=np.float32)


def four_images():
    sizes = [(120, 90), (64, 100), (200, 150), (90, 90)]
    boxes = [(0.7, 0.7, 0.4, 0.3), (0.3, 0.6, 0.3, 0.5), (0.6, 0.35, 0.5, 0.4),
             (0.35, 0.4, 0.4, 0.4)]
    pairs = [painted(q, w, h, b) for q, ((w, h), b) in enumerate(zip(sizes, boxes))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def colour_mask(x: np.ndarray, colour) -> np.ndarray:
    return np.abs(x.transpose(1, 2, 0) - np.array(colour, dtype=np.float32)).max(-1) < 0.02


def test_quadrants_hold_the_four_images_split_at_the_cut():
    images, labels = four_images()
    cfg = AugmentConfig(jitter=0.0, flip=False)
    x, _ = mosaic(images, labels, NET_W, NET_H, cfg, np.random.default_rng(3))
    assert x.shape == (3, NET_H, NET_W) and x.dtype == np.float32
    # the quadrant of image q is where its colours are: find the cut from image 0
    mine = [colour_mask(x, BG[q]) | colour_mask(x, FG[q]) for q in range(4)]
    cut_x = int(mine[0][0].sum())  # top row: image 0 from the left edge to the cut
    cut_y = int(mine[0][:, 0].sum())
    assert int(NET_W * MIN_OFFSET) <= cut_x <= int(NET_W * (1 - MIN_OFFSET))
    assert int(NET_H * MIN_OFFSET) <= cut_y <= int(NET_H * (1 - MIN_OFFSET))
    expected = np.zeros((4, NET_H, NET_W), dtype=bool)
    expected[0, :cut_y, :cut_x] = expected[1, :cut_y, cut_x:] = True
    expected[2, cut_y:, :cut_x] = expected[3, cut_y:, cut_x:] = True
    for q in range(4):
        # bilinear edges of the filled boxes blend two colours: allow a one-pixel seam
        assert (mine[q] & ~expected[q]).sum() == 0, q
        assert (expected[q] & ~mine[q]).sum() <= 2 * (NET_W + NET_H), q


@pytest.mark.parametrize("seed", range(12))
def test_boxes_follow_the_pixels(seed):
    """With jitter, flips and corner moves, each box kept (clipped to its quadrant with
    mosaic_bound=1) frames exactly the pixels of its filled rectangle, within the one pixel
    the bilinear resize blurs; a rectangle that is visible has its box."""
    images, labels = four_images()
    cfg = AugmentConfig(jitter=0.3, flip=True, mosaic=True, mosaic_bound=True)
    x, boxes = mosaic(images, labels, NET_W, NET_H, cfg, np.random.default_rng(seed),
                      bound=True)
    found = {int(b[0]): b for b in boxes}
    assert len(found) == len(boxes)  # one box per image at most
    for q in range(4):
        seen = colour_mask(x, FG[q])
        if q not in found:
            assert seen.sum() <= 2 * max(NET_W, NET_H), (q, int(seen.sum()))
            continue
        _, cx, cy, w, h = found[q]
        ys, xs = np.nonzero(seen)
        assert len(xs), q
        pixels = (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1)
        box = ((cx - w / 2) * NET_W, (cx + w / 2) * NET_W, (cy - h / 2) * NET_H,
               (cy + h / 2) * NET_H)
        assert np.abs(np.array(pixels) - np.array(box)).max() <= 2.0, (q, pixels, box)


def test_without_bound_boxes_are_clipped_to_the_input_only():
    images, labels = four_images()
    cfg = AugmentConfig(jitter=0.0, flip=False)
    for seed in range(20):
        x, boxes = mosaic(images, labels, NET_W, NET_H, cfg, np.random.default_rng(seed))
        _, bounded = mosaic(images, labels, NET_W, NET_H, cfg, np.random.default_rng(seed),
                            bound=True)
        assert (boxes[:, 1:] > 0).all() and (boxes[:, 1:] < 1).all()
        for b in boxes:
            match = bounded[bounded[:, 0] == b[0]]
            if len(match):  # the bounded box lies inside the unbounded one (its edges are
                (_, cx, cy, w, h), = match  # whole pixels, as Darknet computes them: ±1 px)
                assert b[1] - b[3] / 2 <= cx - w / 2 + 1 / NET_W + 1e-6
                assert b[1] + b[3] / 2 >= cx + w / 2 - 1 / NET_W - 1e-6
                assert b[2] - b[4] / 2 <= cy - h / 2 + 1 / NET_H + 1e-6
                assert b[2] + b[4] / 2 >= cy + h / 2 - 1 / NET_H - 1e-6


def test_mosaic_needs_four_images():
    images, labels = four_images()
    with pytest.raises(ValueError, match="4 images"):
        mosaic(images[:3], labels[:3], NET_W, NET_H, AugmentConfig(), np.random.default_rng())


def test_half_of_the_samples_are_mosaics_and_all_are_seeded(tmp_path, monkeypatch):
    from netsurgery.training import batches
    from netsurgery.training.data import load_data_file, load_dataset
    from netsurgery.training.synth import make_shapes_dataset

    paths = make_shapes_dataset(tmp_path / "ds", 8, seed=1, size=(48, 48))
    dataset = load_dataset(load_data_file(paths.data).require("train"), 3)
    calls = []
    real = batches.mosaic
    monkeypatch.setattr(batches, "mosaic", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = AugmentConfig(mosaic=True)
    images = batches.TrainImages(dataset, 32, 32, cfg, augment=True, seed=2)
    first = [images.sample(i, s, images.indices(i, 4)[s]) for i in range(10) for s in range(4)]
    assert 10 <= len(calls) <= 30  # 40 samples, each a mosaic with probability 1/2
    again = batches.TrainImages(dataset, 32, 32, cfg, augment=True, seed=2)
    for (i, s), (x, b) in zip([(i, s) for i in range(10) for s in range(4)], first):
        x2, b2 = again.sample(i, s, again.indices(i, 4)[s])
        assert np.array_equal(x, x2) and np.array_equal(b, b2)
    calls.clear()
    plain = batches.TrainImages(dataset, 32, 32, AugmentConfig(), augment=True, seed=2)
    plain.sample(0, 0, 0)
    assert not calls


# Hand-computed with Darknet's formulas (load_data_detection, blend_truth_mosaic); net 80×64,
# cut at (30, 20); box values exact in binary so that no float rounding decides a pixel.
def test_quadrant_rectangles_by_hand():
    assert quadrant(0, 30, 20, 80, 64, (0, 0, 5, 3)) == Quadrant(0, 45, 41, 0, 0, 30, 20)
    assert quadrant(1, 30, 20, 80, 64, (7, 4, 5, 3)) == Quadrant(1, 7, 41, 30, 0, 50, 20)
    assert quadrant(2, 30, 20, 80, 64, (7, 4, 5, 3)) == Quadrant(2, 45, 4, 0, 20, 30, 44)
    assert quadrant(3, 30, 20, 80, 64, (7, 4, 0, 0)) == Quadrant(3, 7, 4, 30, 20, 50, 44)


def test_grey_shifts_by_hand():
    # a 120×90 image cropped from x = -24 (24 grey columns on the left), y = -9
    crop = Crop(-24.0, -9.0, 144.0, 99.0, 0, 0, 80, 64)
    assert grey_shifts(crop, 120, 90, 30, 20, 80, 64) == (16, 6, 0, 0)  # 24·80//120, 9·64//90
    flipped = Crop(-24.0, -9.0, 144.0, 99.0, 0, 0, 80, 64, flip=True)
    assert grey_shifts(flipped, 120, 90, 30, 20, 80, 64) == (0, 6, 16, 0)
    assert grey_shifts(crop, 120, 90, 10, 5, 80, 64) == (10, 5, 0, 0)  # capped by the cut


def test_corner_moves_by_hand():
    crop = Crop(-10.0, 5.0, 100.0, 80.0, 0, 0, 80, 64)  # image 120×90: pright 30, pbot 5
    assert _corner_crop(crop, 0, 120, 90) == Crop(0.0, 0.0, 100.0, 80.0, 0, 0, 80, 64)
    assert _corner_crop(crop, 3, 120, 90) == Crop(20.0, 10.0, 100.0, 80.0, 0, 0, 80, 64)
    flip = Crop(-10.0, 5.0, 100.0, 80.0, 0, 0, 80, 64, flip=True)
    assert _corner_crop(flip, 1, 120, 90) == Crop(0.0, 0.0, 100.0, 80.0, 0, 0, 80, 64, True)
    assert _corner_crop(flip, 2, 120, 90) == Crop(20.0, 10.0, 100.0, 80.0, 0, 0, 80, 64, True)


def test_shift_boxes_by_hand():
    q = Quadrant(0, 45, 41, 0, 0, 30, 20)
    boxes = np.array([[2, 0.5, 0.5, 0.25, 0.5],  # cut by the input's top-left corner
                      [1, 0.875, 0.875, 0.25, 0.25],  # reaches over the cut point
                      [0, 0.1, 0.1, 0.1, 0.1]], dtype=np.float32)  # moved out entirely
    np.testing.assert_allclose(shift_boxes(boxes, q, 80, 64, bound=False), [
        [2, 0.03125, 0.0546875, 0.0625, 0.109375],
        [1, 0.3125, 0.234375, 0.25, 0.25]], atol=1e-6)
    np.testing.assert_allclose(shift_boxes(boxes, q, 80, 64, bound=True), [
        [2, 0.03125, 0.0546875, 0.0625, 0.109375],
        [1, 22.5 / 80, 13.5 / 64, 15 / 80, 13 / 64]], atol=1e-6)  # edges 15..30, 7..20


def test_mixup_blends_half_and_half_with_both_box_sets():
    a = (np.full((3, 4, 4), 0.2, np.float32), np.array([[0, .5, .5, .2, .2]], np.float32))
    b = (np.full((3, 4, 4), 0.6, np.float32), np.array([[1, .3, .3, .1, .1]], np.float32))
    x, boxes = blend(a, b)
    np.testing.assert_allclose(x, 0.4, atol=1e-7)
    np.testing.assert_array_equal(boxes, np.concatenate([a[1], b[1]]))


def test_mixup_from_cfg_and_in_half_of_the_samples(tmp_path, monkeypatch):
    from netsurgery.darknet.cfg import parse_cfg_text
    from netsurgery.training import batches
    from netsurgery.training.data import load_data_file, load_dataset
    from netsurgery.training.synth import make_shapes_dataset

    def net(extra: str) -> AugmentConfig:
        return AugmentConfig.from_cfg(parse_cfg_text(
            f"[net]\nwidth=32\nheight=32\nchannels=3\n{extra}\n[maxpool]\n", "n.cfg"))

    assert net("mixup=1").mixup and not net("mixup=1").mosaic
    assert net("mixup=1\nmosaic=1").mosaic and not net("mixup=1\nmosaic=1").mixup  # Darknet
    paths = make_shapes_dataset(tmp_path / "ds", 8, seed=1, size=(48, 48))
    dataset = load_dataset(load_data_file(paths.data).require("train"), 3)
    calls = []
    real = batches.blend
    monkeypatch.setattr(batches, "blend", lambda *a: calls.append(1) or real(*a))
    images = batches.TrainImages(dataset, 32, 32, net("mixup=1"), augment=True, seed=2)
    for i in range(40):
        x, boxes = images.sample(i, 0, images.indices(i, 1)[0])
        assert x.shape == (3, 32, 32) and boxes.shape[1] == 5
    assert 10 <= len(calls) <= 30
