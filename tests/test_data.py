"""Tests of netsurgery.training.data: .data/.names parsing, image lists, label paths, label files."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from netsurgery.errors import DataError
from netsurgery.training.data import (
    IssueKind,
    Label,
    label_path,
    load_data_file,
    load_dataset,
    load_names,
    parse_label_file,
    read_image_list,
    read_labels,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- .data files


def test_load_data_file_keys_comments_and_extra(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "cfg" / "train.txt", "")
    data = write(tmp_path / "cfg" / "my.data", (
        "# comment\n"
        "; also a comment\n"
        "\n"
        "classes= 3\n"
        "train  =  /abs/train.txt\n"
        "valid = train.txt\n"          # exists only next to the .data file
        "names = cfg/train.txt\n"      # exists relative to the cwd
        "backup = backup/\n"           # exists nowhere
        "eval = coco\n"
        "results = out\n"))
    parsed = load_data_file(data)
    assert parsed.classes == 3
    assert parsed.eval == "coco"
    assert parsed.extra == {"results": "out"}
    assert parsed.train == Path("/abs/train.txt")
    assert parsed.resolved["valid"].base == "file_dir"
    assert parsed.valid == tmp_path / "cfg" / "train.txt"
    assert parsed.resolved["names"].base == "cwd"
    assert parsed.names == tmp_path / "cfg" / "train.txt"
    assert parsed.resolved["backup"].base == "missing"
    assert parsed.backup == tmp_path / "backup"          # where Darknet would look
    assert parsed.lines["valid"] == 6
    assert parsed.where("valid") == f"{data}:6"


def test_cwd_path_wins_over_data_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "train.txt", "")
    write(tmp_path / "sub" / "train.txt", "")
    data = write(tmp_path / "sub" / "x.data", "train = train.txt\n")
    parsed = load_data_file(data)
    assert parsed.train == tmp_path / "train.txt"
    assert parsed.resolved["train"].base == "cwd"


def test_data_file_errors(tmp_path):
    bad = write(tmp_path / "bad.data", "classes = 2\njust words\n")
    with pytest.raises(DataError, match=re.escape(f"{bad}:2: expected 'key = value'")):
        load_data_file(bad)
    empty_value = write(tmp_path / "empty.data", "train =\n")
    with pytest.raises(DataError, match=re.escape(f"{empty_value}:1:")):
        load_data_file(empty_value)
    classes = write(tmp_path / "classes.data", "\nclasses = two\n")
    with pytest.raises(DataError, match=re.escape(f"{classes}:2: classes must be a positive")):
        load_data_file(classes)
    with pytest.raises(DataError, match="not found"):
        load_data_file(tmp_path / "nope.data")


def test_repeated_key_first_wins_with_warning(tmp_path):
    data = write(tmp_path / "x.data", "classes = 2\nclasses = 5\n")
    parsed = load_data_file(data)
    assert parsed.classes == 2
    assert len(parsed.warnings) == 1 and f"{data}:2" in parsed.warnings[0]


def test_require(tmp_path):
    data = write(tmp_path / "x.data", "valid = missing.txt\n")
    parsed = load_data_file(data)
    with pytest.raises(DataError, match="no 'train = ...' line"):
        parsed.require("train")
    with pytest.raises(DataError, match=re.escape(f"{data}:1: valid file not found")):
        parsed.require("valid")
    with pytest.raises(DataError, match="no 'classes = N' line"):
        parsed.require_classes()


def test_load_names(tmp_path):
    names = tmp_path / "x.names"
    names.write_bytes(b"\xef\xbb\xbfperson\r\n\r\ncar \r\n\r\n\r\n")
    assert load_names(names) == ["person", "", "car"]   # inner blank line keeps Darknet's ids
    with pytest.raises(DataError, match="no class names"):
        load_names(write(tmp_path / "empty.names", "\n\n"))


# --------------------------------------------------------------------------- image lists


def test_read_image_list_resolution(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    write(cwd / "a.jpg", "")             # exists relative to the cwd (and not beside the list)
    write(tmp_path / "lists" / "b.jpg", "")   # exists only beside the list
    write(cwd / "c.jpg", "")
    write(tmp_path / "lists" / "c.jpg", "")   # both: the cwd wins, as in Darknet
    listing = write(tmp_path / "lists" / "train.txt",
                    "a.jpg\n\n  b.jpg  \nc.jpg\n/abs/d.jpg\nmissing.jpg\n\n")
    assert read_image_list(listing) == [cwd / "a.jpg", tmp_path / "lists" / "b.jpg",
                                        cwd / "c.jpg", Path("/abs/d.jpg"), cwd / "missing.jpg"]


# --------------------------------------------------------------------------- label paths


@pytest.mark.parametrize("image, expected", [
    ("/data/VOC2007/JPEGImages/000001.jpg", "/data/VOC2007/labels/000001.txt"),
    ("/coco/images/train2017/000000000009.jpg", "/coco/labels/train2017/000000000009.txt"),
    ("/coco/images/val2017/x.jpg", "/coco/labels/val2017/x.txt"),
    ("/coco/images/train2014/x.jpg", "/coco/labels/train2014/x.txt"),
    ("/coco/images/val2014/x.png", "/coco/labels/val2014/x.txt"),
    ("/d/images/x.jpg", "/d/images/x.txt"),                   # plain /images/ stays
    ("/d/images/test2017/x.jpg", "/d/images/test2017/x.txt"),
    ("/d/img/x.JPEG", "/d/img/x.txt"),
    ("/d/img/x.jpeg", "/d/img/x.txt"),
    ("/d/img/x.JPG", "/d/img/x.txt"),
    ("/d/img/x.png", "/d/img/x.txt"),
    ("/d/img/x.PNG", "/d/img/x.txt"),
    ("/d/img/x.bmp", "/d/img/x.txt"),
    ("/d/img/x.ppm", "/d/img/x.txt"),
    ("/d/img/x.tiff", "/d/img/x.txt"),
    ("/d/img/x.TIFF", "/d/img/x.txt"),
    ("/d/img/x.tif", "/d/img/x.tif"),                       # not in AlexeyAB's list
    ("/d/img/x.Jpg", "/d/img/x.Jpg"),                       # case-sensitive
    ("/d/img/x.jpg.png", "/d/img/x.jpg.txt"),               # only the trailing extension
    ("/d/img.jpg/x.png", "/d/img.jpg/x.txt"),
    ("rel/JPEGImages/x.jpg", "rel/labels/x.txt"),
    ("JPEGImages/x.jpg", "JPEGImages/x.txt"),               # the rule needs the leading slash
    ("/a/JPEGImages/b/JPEGImages/x.jpg", "/a/labels/b/JPEGImages/x.txt"),  # first one only
    ("C:\\voc\\JPEGImages\\x.jpg", "C:\\voc\\labels\\x.txt"),
    ("C:\\coco\\images\\train2017\\x.jpg", "C:\\coco\\labels\\train2017\\x.txt"),
    ("C:\\coco\\images\\val2014\\x.jpg", "C:\\coco\\labels\\val2014\\x.txt"),
])
def test_label_path_rules(image, expected):
    assert label_path(image) == Path(expected)


# --------------------------------------------------------------------------- label files


def test_read_labels_good_and_empty(tmp_path):
    good = write(tmp_path / "good.txt", "0 0.5 0.5 0.2 0.3\n\n2 1 0 1 1e-1\r\n")
    assert read_labels(good, 3) == [Label(0, 0.5, 0.5, 0.2, 0.3), Label(2, 1.0, 0.0, 1.0, 0.1)]
    assert read_labels(write(tmp_path / "empty.txt", ""), 3) == []


@pytest.mark.parametrize("line, kind, message", [
    ("0 0.5 0.5 0.2", IssueKind.COLUMNS, "expected 5 columns"),
    ("0 0.5 0.5 0.2 0.2 0.1", IssueKind.COLUMNS, "got 6"),
    ("a 0.5 0.5 0.2 0.2", IssueKind.NOT_A_NUMBER, "class id must be an integer"),
    ("1.0 0.5 0.5 0.2 0.2", IssueKind.NOT_A_NUMBER, "class id must be an integer"),
    ("0 0.5 x 0.2 0.2", IssueKind.NOT_A_NUMBER, "cy must be a number"),
    ("0 nan 0.5 0.2 0.2", IssueKind.NOT_A_NUMBER, "cx must be a number"),
    ("0 0.5 0.5 1_0 0.2", IssueKind.NOT_A_NUMBER, "w must be a number"),
    ("3 0.5 0.5 0.2 0.2", IssueKind.CLASS_RANGE, "class id 3 outside [0, 2]"),
    ("-1 0.5 0.5 0.2 0.2", IssueKind.CLASS_RANGE, "class id -1"),
    ("0 0.5 0.5 0 0.2", IssueKind.NOT_POSITIVE, "w and h must be > 0"),
    ("0 0.5 0.5 0.2 -0.1", IssueKind.NOT_POSITIVE, "w and h must be > 0"),
    ("0 1.2 0.5 0.2 0.2", IssueKind.OUT_OF_RANGE, "cx must lie in [0, 1]"),
    ("0 0.5 -0.01 0.2 0.2", IssueKind.OUT_OF_RANGE, "cy must lie in [0, 1]"),
    ("0 0.5 0.5 1.5 0.2", IssueKind.OUT_OF_RANGE, "w must lie in [0, 1]"),
])
def test_bad_label_lines(tmp_path, line, kind, message):
    file = write(tmp_path / "bad.txt", f"0 0.5 0.5 0.1 0.1\n\n{line}\n")
    labels, issues = parse_label_file(file, 3)
    assert labels == [Label(0, 0.5, 0.5, 0.1, 0.1)]
    assert [issue.kind for issue in issues] == [kind]
    assert str(issues[0]).startswith(f"{file}:3: ")
    assert message in issues[0].message
    with pytest.raises(DataError) as raised:
        read_labels(file, 3)
    assert str(raised.value).startswith(f"{file}:3: ") and message in str(raised.value)


def test_missing_label_file(tmp_path):
    missing = tmp_path / "none.txt"
    labels, issues = parse_label_file(missing, 1)
    assert labels == [] and issues[0].kind is IssueKind.MISSING_LABELS
    assert issues[0].line is None and str(issues[0]).startswith(f"{missing}: label file missing")
    with pytest.raises(DataError, match="label file missing"):
        read_labels(missing, 1)
    assert read_labels(missing, 1, allow_missing=True) == []


# --------------------------------------------------------------------------- datasets


def make_dataset(tmp_path: Path) -> Path:
    """Five images: good, empty labels, missing labels, bad label line, missing image."""
    images = tmp_path / "JPEGImages"
    for name in ("good", "empty", "nolabel", "bad"):
        write(images / f"{name}.jpg", "not really a jpeg")
    write(tmp_path / "labels" / "good.txt", "1 0.5 0.5 0.2 0.2\n0 0.1 0.1 0.1 0.1\n")
    write(tmp_path / "labels" / "empty.txt", "")
    write(tmp_path / "labels" / "bad.txt", "0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.2 0.2\n")
    return write(tmp_path / "train.txt",
                 "JPEGImages/good.jpg\nJPEGImages/empty.jpg\nJPEGImages/nolabel.jpg\n"
                 "JPEGImages/bad.jpg\nJPEGImages/gone.jpg\n")


def test_load_dataset_skips_and_counts(tmp_path):
    listing = make_dataset(tmp_path)
    dataset = load_dataset(listing, 2)
    assert [sample.image.name for sample in dataset.items] == ["good.jpg", "empty.jpg"]
    image, labels = dataset.items[0]
    assert labels == [Label(1, 0.5, 0.5, 0.2, 0.2), Label(0, 0.1, 0.1, 0.1, 0.1)]
    summary = dataset.summary
    assert (summary.n_listed, summary.n_used, summary.n_skipped) == (5, 2, 3)
    assert (summary.n_empty, summary.n_objects, summary.per_class) == (1, 2, [1, 1])
    assert summary.issue_counts == {IssueKind.MISSING_LABELS: 1, IssueKind.CLASS_RANGE: 1,
                                    IssueKind.MISSING_IMAGE: 1}
    messages = [str(issue) for issue in dataset.issues]
    assert f"{tmp_path / 'labels' / 'bad.txt'}:2: class id 5" in messages[1]
    assert messages[2].startswith(f"{listing}:5: image file not found")
    assert "2 of 5 images used" in str(summary) and "3 images skipped" in str(summary)


def test_load_dataset_allow_missing(tmp_path):
    dataset = load_dataset(make_dataset(tmp_path), 2, allow_missing=True)
    assert [sample.image.name for sample in dataset.items] == ["good.jpg", "empty.jpg",
                                                               "nolabel.jpg"]
    assert dataset.summary.n_empty == 2


def test_load_dataset_strict_raises_first_issue(tmp_path):
    with pytest.raises(DataError, match=r"labels/nolabel\.txt: label file missing"):
        load_dataset(make_dataset(tmp_path), 2, strict=True)


def test_load_dataset_unsupported_extension(tmp_path):
    write(tmp_path / "x.tif", "")
    write(tmp_path / "x.txt", "")
    listing = write(tmp_path / "list.txt", f"{tmp_path / 'x.tif'}\n")
    with pytest.raises(DataError, match=re.escape(f"{listing}:1: Darknet finds no label")):
        load_dataset(listing, 1, strict=True)
