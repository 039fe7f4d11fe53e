"""Tests of netsurgery.training.synth: synthetic datasets read back through netsurgery.training.data."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from netsurgery.errors import DataError, UsageError
from netsurgery.training.data import (
    label_path,
    load_data_file,
    load_dataset,
    load_names,
    read_image_list,
    read_labels,
)
from netsurgery.training.synth import (
    make_shapes_dataset,
    make_text_dataset,
    render_shapes_image,
    render_text_image,
)

SIZE = (96, 96)


@pytest.fixture(scope="module")
def text_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    calls = []
    paths = make_text_dataset(root, 6, seed=11, size=SIZE,
                              progress=lambda done, total: calls.append((done, total)))
    return root, paths, calls


def pixel_box(label, width: int, height: int) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 (exclusive) of a normalised label."""
    return (round((label.cx - label.w / 2) * width), round((label.cy - label.h / 2) * height),
            round((label.cx + label.w / 2) * width), round((label.cy + label.h / 2) * height))


def test_text_dataset_reads_back(text_dataset):
    root, paths, calls = text_dataset
    assert calls == [(i, 6) for i in range(1, 7)]
    data = load_data_file(paths.data)
    assert data.classes == 1
    assert {key: data.resolved[key].base for key in ("train", "valid", "names", "backup")} == \
        dict.fromkeys(("train", "valid", "names", "backup"), "absolute")
    assert load_names(data.require("names")) == ["text"]
    train, valid = read_image_list(data.require("train")), read_image_list(data.require("valid"))
    assert (len(train), len(valid)) == (5, 1)
    assert train == paths.train_images and valid == paths.valid_images
    assert all(p.parent == root / "images" / "train" for p in train)
    assert all(p.parent == root / "images" / "valid" for p in valid)
    for image_path in train + valid:
        assert image_path.suffix == ".jpg" and image_path.is_file()
        labels_file = label_path(image_path)
        assert labels_file == image_path.with_suffix(".txt")   # plain /images/ is kept
        labels = read_labels(labels_file, 1)
        assert 1 <= len(labels) <= 4
        for label in labels:
            assert label.class_id == 0
            for value in (label.cx, label.cy, label.w, label.h):
                assert 0 <= value <= 1
            assert 0 <= label.cx - label.w / 2 and label.cx + label.w / 2 <= 1
            assert 0 <= label.cy - label.h / 2 and label.cy + label.h / 2 <= 1
    dataset = load_dataset(paths.train_list, 1, strict=True)
    assert dataset.summary.n_used == 5 and dataset.summary.n_objects >= 5


def test_text_boxes_hold_text(text_dataset):
    """Over the dataset, pixels inside text boxes vary more than a ring just outside them."""
    _, paths, _ = text_dataset
    inside, ring = [], []
    for image_path in paths.train_images:
        gray = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        height, width = gray.shape
        for label in read_labels(label_path(image_path), 1):
            x0, y0, x1, y1 = pixel_box(label, width, height)
            box = gray[y0:y1, x0:x1]
            outer = gray[max(0, y0 - 4):y1 + 4, max(0, x0 - 4):x1 + 4]
            inside.append(box.std())
            # Ring = outer area minus the box, via sums.
            n_ring = outer.size - box.size
            if n_ring > 0:
                mean = (outer.sum() - box.sum()) / n_ring
                var = ((outer ** 2).sum() - (box ** 2).sum()) / n_ring - mean ** 2
                ring.append(float(np.sqrt(max(var, 0.0))))
    assert np.mean(inside) > 1.2 * np.mean(ring)


def test_text_labels_are_tight_on_flat_background():
    """On a flat background every drawn pixel lies in a box and every box edge touches ink."""
    for seed in range(5):
        background = np.full((120, 160, 3), 128, np.uint8)
        image, labels = render_text_image(np.random.default_rng(seed), (160, 120), background)
        assert 1 <= len(labels) <= 4
        drawn = np.any(image != 128, axis=2)
        covered = np.zeros_like(drawn)
        for label in labels:
            x0, y0, x1, y1 = pixel_box(label, 160, 120)
            covered[y0:y1, x0:x1] = True
            ink = drawn[y0:y1, x0:x1]
            assert ink.mean() > 0.05
            assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()
        assert not (drawn & ~covered).any()


def test_text_dataset_is_deterministic(tmp_path, text_dataset):
    _, first, _ = text_dataset
    again = make_text_dataset(tmp_path / "again", 6, seed=11, size=SIZE)
    other = make_text_dataset(tmp_path / "other", 6, seed=12, size=SIZE)
    for a, b, c in zip(first.train_images + first.valid_images,
                       again.train_images + again.valid_images,
                       other.train_images + other.valid_images):
        assert label_path(a).read_bytes() == label_path(b).read_bytes()
        assert np.array_equal(cv2.imread(str(a)), cv2.imread(str(b)))
        assert not np.array_equal(cv2.imread(str(a)), cv2.imread(str(c)))


def test_labels_follow_label_path_rules(tmp_path):
    """Under a /JPEGImages/ folder the labels go where Darknet looks: /labels/."""
    paths = make_text_dataset(tmp_path / "JPEGImages" / "ds", 2, seed=1, size=SIZE)
    image = paths.train_images[0]
    assert label_path(image) == tmp_path / "labels" / "ds" / "images" / "train" / "000000.txt"
    assert label_path(image).is_file() and not image.with_suffix(".txt").exists()
    assert load_dataset(paths.train_list, 1, strict=True).summary.n_used == 1


def test_photo_backgrounds(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    cv2.imwrite(str(photos / "p.png"), photo)
    paths = make_text_dataset(tmp_path / "ds", 2, seed=3, size=SIZE, photos_dir=photos,
                              photo_fraction=1.0)
    assert load_dataset(paths.train_list, 1, strict=True).summary.n_used == 1
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no photos"):
        make_text_dataset(tmp_path / "ds2", 2, seed=3, size=SIZE, photos_dir=tmp_path / "none")


def test_refuses_to_overwrite_and_bad_options(tmp_path):
    make_text_dataset(tmp_path, 1, seed=0, size=SIZE, valid_fraction=0.0)
    assert (tmp_path / "valid.txt").read_text() == ""
    with pytest.raises(UsageError, match="exists already"):
        make_text_dataset(tmp_path, 1, seed=0, size=SIZE)
    make_text_dataset(tmp_path, 1, seed=0, size=SIZE, overwrite=True)
    with pytest.raises(UsageError):
        make_text_dataset(tmp_path / "x", 0, seed=0)
    with pytest.raises(UsageError):
        make_text_dataset(tmp_path / "x", 3, seed=0, valid_fraction=1.0)
    with pytest.raises(UsageError, match="shape classes"):
        make_shapes_dataset(tmp_path / "x", 3, seed=0, classes=("circle", "blob"))


def test_shapes_dataset(tmp_path):
    paths = make_shapes_dataset(tmp_path, 6, seed=5, size=(96, 96))
    data = load_data_file(paths.data)
    assert data.classes == 3 and data.require("names") == tmp_path / "shapes.names"
    assert load_names(data.names) == ["circle", "square", "triangle"]
    train = load_dataset(data.require("train"), 3, strict=True)
    valid = load_dataset(data.require("valid"), 3, strict=True)
    assert (len(train), len(valid)) == (5, 1)
    for _, labels in train.items + valid.items:
        assert 1 <= len(labels) <= 3
        assert all(0 <= label.class_id < 3 for label in labels)


def test_shapes_are_where_the_labels_say():
    squares = 0
    for seed in range(6):
        image, labels = render_shapes_image(np.random.default_rng(seed), (128, 96),
                                            ("circle", "square", "triangle", "diamond", "cross"))
        assert image.shape == (96, 128, 3) and 1 <= len(labels) <= 3
        for label in labels:
            x0, y0, x1, y1 = pixel_box(label, 128, 96)
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 96
            if label.class_id == 1:   # a square fills its box with one colour
                box = image[y0 + 1:y1 - 1, x0 + 1:x1 - 1].reshape(-1, 3).astype(int)
                assert np.abs(box - box[0]).max() <= 1
                squares += 1
    assert squares > 0
