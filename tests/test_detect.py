"""detect and eval on the real yolov3-tiny against Darknet's own `detector test` output."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path

from netsurgery.cli.app import run
from netsurgery.darknet.model import load_model
from netsurgery.detection.detect import detect_images, heads_of
from netsurgery.detection.evaluate import evaluate_model

LINE = re.compile(r"(?P<name>[\w ]+): (?P<pct>\d+)%\s+\(left_x:\s+(?P<l>-?\d+)\s+top_y:\s+"
                  r"(?P<t>-?\d+)\s+width:\s+(?P<w>\d+)\s+height:\s+(?P<h>\d+)\)")


def darknet_detections() -> dict[tuple[str, str], list[tuple[str, int, tuple[int, ...]]]]:
    """Parse detections.txt: {(image, mode): [(class, percent, (l, t, w, h))]}."""
    text = shared_path("conformance", "yolov3-tiny-coco", "detections.txt").read_text()
    out, key = {}, None
    for line in text.splitlines():
        if line.startswith("== "):
            image, mode = line[3:].split(" mode=")
            key = (image, mode)
            out[key] = []
        elif key and (m := LINE.match(line)):
            out[key].append((m["name"], int(m["pct"]),
                             (int(m["l"]), int(m["t"]), int(m["w"]), int(m["h"]))))
    return out


@pytest.fixture(scope="module")
def model(yolov3_tiny):
    return load_model(*yolov3_tiny, inference=True)


@pytest.mark.parametrize("mode", ["resize", "letter_box"])
def test_detections_match_darknet(model, mode):
    expected = darknet_detections()
    names = shared_path("models", "coco.names")
    heads = heads_of(model, names=names)
    images = [shared_path("images", n) for n in ("dog.jpg", "person.jpg")]
    result = detect_images(model, images, heads, letterbox=(mode == "letter_box"))
    assert not result.failed
    for image in images:
        want = expected[(image.name, mode)]
        got = [r for r in result.records if Path(r.image).name == image.name]
        assert len(got) == len(want), (image.name, mode, got)
        for (name, pct, box), rec in zip(want, got):
            assert rec.class_name == name
            # JPEG decoding differs slightly (libjpeg vs Darknet's stb_image)
            assert abs(rec.prob * 100 - pct) <= 1.0 + 0.5
            got_box = (rec.box.left, rec.box.top, rec.box.width, rec.box.height)
            assert max(abs(a - b) for a, b in zip(got_box, box)) <= 2, (name, got_box, box)


def test_detect_cli_json_and_images(yolov3_tiny, tmp_path, capsys):
    cfg, weights = yolov3_tiny
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    gray = tmp_path / "gray.png"
    import cv2

    cv2.imwrite(str(gray), (np.arange(64 * 48).reshape(48, 64) % 256).astype(np.uint8))
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), (np.arange(64 * 48 * 3).reshape(48, 64, 3) * 7 % 65535)
                .astype(np.uint16))
    dog = shared_path("images", "dog.jpg")
    out_json = tmp_path / "det.json"
    rc = run(["detect", str(cfg), str(weights), str(dog), str(bad), str(empty), str(gray),
              str(deep), "--names", str(shared_path("models", "coco.names")), "--json",
              str(out_json), "--out", str(tmp_path / "annotated")])
    captured = capsys.readouterr()
    assert rc == 0
    assert captured.err.count("skipped") == 2 and "broken.jpg" in captured.err
    report = json.loads(out_json.read_text())
    assert report["images"] == 5 and report["processed"] == 3
    assert sorted(Path(s["image"]).name for s in report["skipped"]) == ["broken.jpg", "empty.png"]
    dogs = [r for r in report["detections"] if r["class_name"] == "dog"]
    assert len(dogs) == 1 and dogs[0]["head"] == "model"
    assert set(dogs[0]["box"]) == {"left", "top", "width", "height"}
    assert (tmp_path / "annotated" / "dog_detections.jpg").exists()


def test_eval_on_labels_from_darknet_output(model, tmp_path):
    """Ground truth = Darknet's own detections (resize mode): every truth is found, so each
    present class has AP 1 unless a false positive of that class outranks a truth."""
    expected = darknet_detections()
    lines = []
    names = [n.strip() for n in shared_path("models", "coco.names").read_text().splitlines()]
    for image in ("dog.jpg", "person.jpg"):
        src = shared_path("images", image)
        h, w = __import__("cv2").imread(str(src)).shape[:2]
        link = tmp_path / image
        link.symlink_to(src)
        labels = []
        seen = set()
        for name, _, (l, t, bw, bh) in expected[(image, "resize")]:
            if (name, l, t) in seen:
                continue
            seen.add((name, l, t))
            labels.append(f"{names.index(name)} {(l + bw / 2) / w:.6f} {(t + bh / 2) / h:.6f} "
                          f"{bw / w:.6f} {bh / h:.6f}")
        (tmp_path / f"{Path(image).stem}.txt").write_text("\n".join(labels) + "\n")
        lines.append(str(link))
    (tmp_path / "valid.txt").write_text("\n".join(lines) + "\n")
    data = tmp_path / "coco.data"
    data.write_text(f"classes=80\nvalid={tmp_path / 'valid.txt'}\n"
                    f"names={shared_path('models', 'coco.names')}\n")
    result = evaluate_model(model, data)
    present = {c.name: c for c in result.classes if c.n_truth}
    assert set(present) == {"dog", "bicycle", "car", "truck", "person", "sheep"}
    assert present["dog"].n_truth == 3 and present["car"].n_truth == 2
    assert abs(result.map - result.map_present * 6 / 80) < 1e-9  # Darknet averages over 80
    assert result.map_present > 0.9
    assert result.recall == pytest.approx(1.0)


def test_eval_cli_json_and_pr_chart(yolov3_tiny, tmp_path, capsys):
    """`eval` on the person/dog images labelled with Darknet's own boxes: JSON fields and a
    non-blank PR chart."""
    cfg, weights = yolov3_tiny
    expected = darknet_detections()
    names = [n.strip() for n in shared_path("models", "coco.names").read_text().splitlines()]
    src = shared_path("images", "person.jpg")
    h, w = __import__("cv2").imread(str(src)).shape[:2]
    (tmp_path / "person.jpg").symlink_to(src)
    lines = [f"{names.index(n)} {(l + bw / 2) / w:.6f} {(t + bh / 2) / h:.6f} {bw / w:.6f} "
             f"{bh / h:.6f}" for n, _, (l, t, bw, bh) in expected[("person.jpg", "resize")]]
    (tmp_path / "person.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "valid.txt").write_text(str(tmp_path / "person.jpg") + "\n")
    data = tmp_path / "x.data"
    data.write_text(f"classes=80\nvalid={tmp_path / 'valid.txt'}\n"
                    f"names={shared_path('models', 'coco.names')}\n")
    out = tmp_path / "map.json"
    chart = tmp_path / "pr.png"
    assert run(["eval", str(cfg), str(weights), "--data", str(data), "--json", str(out),
                "--pr-chart", str(chart)]) == 0
    result = json.loads(out.read_text())["heads"]["model"]
    by_name = {c["name"]: c for c in result["classes"]}
    assert by_name["dog"]["n_truth"] == 2 and by_name["person"]["n_truth"] == 1
    assert result["map"] == pytest.approx(result["map_present"] * 3 / 80)
    import cv2

    image = cv2.imread(str(chart))
    assert image is not None and image.shape[0] >= 400 and image.std() > 10


def test_detect_cli_size_runs_the_network_at_that_size(yolov3_tiny, tmp_path):
    cfg, weights = yolov3_tiny
    dog = shared_path("images", "dog.jpg")
    names = str(shared_path("models", "coco.names"))
    boxes = {}
    for size in (None, "320,320"):
        out = tmp_path / f"{size}.json"
        args = ["detect", str(cfg), str(weights), str(dog), "--names", names, "--json", str(out)]
        assert run(args + (["--size", size] if size else [])) == 0
        (found,) = [r["box"] for r in json.loads(out.read_text())["detections"]
                    if r["class_name"] == "dog"]
        boxes[size] = np.array([found[k] for k in ("left", "top", "width", "height")])
    # the same dog, seen through a coarser grid: close to, but not the same as, the 416 box
    assert not np.array_equal(boxes[None], boxes["320,320"])
    assert np.abs(boxes[None] - boxes["320,320"]).max() < 40
    assert run(["detect", str(cfg), str(weights), str(dog), "--size", "0,5"]) == 2


def test_one_label_per_box_on_dog_jpg(model):
    """Darknet draws one label per box listing every class on it: on dog.jpg two boxes hold
    car and truck (detections.txt: car 71 % + truck 42 %, truck 62 % + car 40 %); ours lists
    each class with its probability in that one label."""
    from netsurgery.detection.detect import box_labels

    heads = heads_of(model, names=shared_path("models", "coco.names"))
    result = detect_images(model, [shared_path("images", "dog.jpg")], heads)
    per_box = {}
    for r in result.records:
        per_box.setdefault((r.box.left, r.box.top, r.box.width, r.box.height), []).append(r)
    shared_box = [rs for rs in per_box.values() if len(rs) > 1]
    assert shared_box, "dog.jpg: expected a box with two classes (car, truck)"
    labels = box_labels(result.records, show_head=False)
    assert len(labels) == len(per_box)
    two = sorted(label.text for label in labels if "," in label.text)
    assert len(two) == 2
    assert two[0].startswith("car 0.7") and ", truck 0.4" in two[0]
    assert two[1].startswith("truck 0.6") and ", car 0.4" in two[1]


def test_labels_are_placed_where_they_hide_no_other():
    from netsurgery.detection.detect import PixelBox, _label_baseline

    placed = []
    for box in (PixelBox(465, 83, 222, 89), PixelBox(530, 95, 100, 67), PixelBox(530, 95, 90, 60)):
        y = _label_baseline(box, 150, 18, placed, 576)
        rect = (box.left, y - 18, box.left + 150, y)
        assert all(rect[2] <= p[0] or p[2] <= rect[0] or rect[3] <= p[1] or p[3] <= rect[1]
                   for p in placed)
        placed.append(rect)
    assert placed[0][3] == 83  # the first sits above its box, as before
