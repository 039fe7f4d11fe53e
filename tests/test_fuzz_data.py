"""Property-based tests of the dataset and anchor code (issue 14 item 6, issue 19): whatever a
user puts in a ``.data`` file, a names file, an image list or a label file, the readers either
accept it or raise netsurgery's own error naming the file (and the line, where there is one);
every listed image is used or counted as skipped; anchor fitting gives valid anchors or says
why it cannot.

Run longer with ``HYPOTHESIS_PROFILE=long python -m pytest tests/test_fuzz_data.py``.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis_profiles import FUZZ

from netsurgery.darknet.cfg import parse_cfg_text
from netsurgery.errors import DataError, NetsurgeryError
from netsurgery.training.anchors import kmeans_anchors, mean_best_iou, task_cfg_for_dataset
from netsurgery.training.data import (
    PATH_KEYS,
    Label,
    load_data_file,
    load_dataset,
    load_names,
    parse_label_file,
)

CFG = ("[net]\nwidth=64\nheight=64\nchannels=3\n[convolutional]\nfilters=18\nsize=1\n"
       "activation=linear\n[yolo]\nmask=0,1,2\nanchors=4,4,8,8,16,16\nclasses=1\nnum=3\n")

# text that looks like the files: keys, numbers, separators, junk
_TOKENS = st.sampled_from(["classes", "train", "valid", "names", "backup", "eval", "=", " ",
                           "\n", "\r\n", "#", ";", "1", "-3", "0.5", "1e9", "nan", "x.txt",
                           "/nonexistent/a", "\t", "\x00", "é", "\ufeff"])
_TEXTISH = st.lists(_TOKENS, max_size=40).map("".join)


def _located(exc: BaseException, path: Path) -> None:
    """A netsurgery error that names the file (with a plausible line number when it has
    one)."""
    assert isinstance(exc, NetsurgeryError), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert "\n" not in message
    assert str(path) in message, message


def _read(reader, name: str, content: bytes):
    """``reader`` on a file holding ``content``: its result, or None after checking that the
    error is located (with a line number inside the file when it gives one)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        try:
            return reader(path)
        except NetsurgeryError as exc:
            _located(exc, path)
            match = re.match(re.escape(str(path)) + r":(\d+):", str(exc))
            if match:
                assert 1 <= int(match.group(1)) <= len(re.split(rb"\r\n|\r|\n", content))
            return None


@FUZZ
@given(st.one_of(_TEXTISH, st.text(max_size=80)).map(str.encode) | st.binary(max_size=80))
def test_any_data_file_parses_or_raises_a_located_error(content):
    data = _read(load_data_file, "x.data", content)
    if data is None:
        return
    assert data.classes is None or data.classes > 0
    for key in PATH_KEYS:  # asking for any value: the value or a located DataError
        try:
            data.require(key)
        except DataError as exc:
            _located(exc, data.path)


@FUZZ
@given(st.binary(max_size=60) | _TEXTISH.map(str.encode))
def test_any_names_file_gives_names_or_a_located_error(content):
    names = _read(load_names, "c.names", content)
    assert names is None or (names and names[-1] and all("\n" not in n for n in names))


def _images_with_labels(root: Path, labels: list[str | None]) -> list[str]:
    """Image files (never decoded here) with the label file text of each (None: no label
    file); returns their paths."""
    paths = []
    for i, text in enumerate(labels):
        image = root / f"im{i}.jpg"
        image.write_bytes(b"\xff\xd8")
        if text is not None:
            image.with_suffix(".txt").write_text(text)
        paths.append(str(image))
    return paths


_NUMBER = st.one_of(st.floats(-2, 2).map(repr), st.integers(-3, 5).map(str),
                    st.sampled_from(["nan", "inf", "1e-3", ".5", "5.", "0x1", "1_0", ""]))
_LABEL_LINES = st.lists(st.lists(_NUMBER, min_size=0, max_size=6).map(" ".join), max_size=6)


@FUZZ
@given(_LABEL_LINES.map("\n".join).map(str.encode) | st.binary(max_size=60),
       st.integers(1, 4))
def test_any_label_file_gives_valid_labels_and_located_issues(content, n_classes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.txt"
        path.write_bytes(content)
        labels, issues = parse_label_file(path, n_classes)
    for label in labels:
        assert isinstance(label, Label) and 0 <= label.class_id < n_classes
        assert 0 < label.w <= 1 and 0 < label.h <= 1 and 0 <= label.cx <= 1 and 0 <= label.cy <= 1
    n_lines = len(re.split(r"\r\n|\r|\n", content.decode("utf-8", "replace")))
    for issue in issues:
        assert issue.file == path
        assert issue.line is None or 1 <= issue.line <= max(n_lines, 1)
        assert str(issue).startswith(str(path))


@FUZZ
@given(st.lists(st.one_of(st.none(), _LABEL_LINES.map("\n".join)), max_size=5),
       st.lists(st.sampled_from(["", "missing.jpg", "  ", "odd.gif"]), max_size=3),
       st.booleans())
def test_every_listed_image_is_used_or_counted(labels, extra_lines, allow_missing):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = _images_with_labels(root, labels)
        for extra in extra_lines:
            if extra == "odd.gif":
                (root / extra).write_bytes(b"GIF89a")
            lines.append(str(root / extra) if extra.strip() else extra)
        (root / "list.txt").write_text("\n".join(lines) + "\n")
        dataset = load_dataset(root / "list.txt", 2, allow_missing=allow_missing)
        summary = dataset.summary
        assert summary.n_listed == sum(1 for line in lines if line.strip())
        assert summary.n_used + summary.n_skipped == summary.n_listed
        assert len(dataset.items) == summary.n_used
        assert summary.n_objects == sum(len(s.labels) for s in dataset.items)
        assert (summary.n_skipped == 0) == (not dataset.issues)


_BOXES = st.lists(st.tuples(st.floats(1e-4, 1.0), st.floats(1e-4, 1.0)), max_size=30)


@FUZZ
@given(_BOXES, st.integers(1, 9), st.integers(0, 3))
def test_kmeans_anchors_are_positive_sorted_and_as_many_as_asked(boxes, n, seed):
    if len(boxes) < n:
        try:
            kmeans_anchors(boxes, n, 416, 416, seed)
        except ValueError as exc:
            assert "too few" in str(exc)
            return
        raise AssertionError("fewer boxes than anchors must be refused")
    anchors = kmeans_anchors(boxes, n, 416, 416, seed)
    assert len(anchors) == n and all(w >= 1 and h >= 1 for w, h in anchors)
    # sorted by the area of the unrounded centroids (as Darknet's calc_anchors): after rounding
    # each side by at most 0.5 the order may swap only within that slack
    for (w1, h1), (w2, h2) in zip(anchors, anchors[1:]):
        assert w1 * h1 <= w2 * h2 + 0.5 * (w1 + h1 + w2 + h2) + 0.5
    quality = mean_best_iou(boxes, anchors, 416, 416)
    assert 0 < quality <= 1 and np.isfinite(quality)


@FUZZ
@given(st.lists(st.lists(st.tuples(st.integers(0, 1), st.floats(0.01, 1.0),
                                   st.floats(0.01, 1.0)), max_size=3), max_size=4),
       st.booleans())
def test_task_cfg_fits_anchors_or_says_why_not(images, fit):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = _images_with_labels(root, ["".join(f"{c} 0.5 0.5 {w} {h}\n" for c, w, h in objects)
                                           for objects in images])
        (root / "train.txt").write_text("".join(f"{p}\n" for p in lines))
        data = root / "t.data"
        data.write_text(f"classes=2\ntrain={root / 'train.txt'}\n")
        n_boxes = sum(len(objects) for objects in images)
        try:
            cfg, anchors, quality = task_cfg_for_dataset(parse_cfg_text(CFG, "t.cfg"), data,
                                                         None, fit)
        except DataError as exc:
            assert fit and n_boxes < 3, exc
            assert "too few to fit 3 anchors" in str(exc) and str(root / "train.txt") in str(exc)
            return
        (yolo,) = [s for s in cfg.layers if s.type == "yolo"]
        assert yolo.get_int("classes") == 2
        assert (anchors is not None) == fit and (not fit or len(anchors) == 3)
        assert quality is None or 0 < quality <= 1
