"""`netsurgery demo --quick` end to end (the README's main job, small)."""
from __future__ import annotations

import shutil

import pytest
from conftest import shared_path

from netsurgery.cli.app import run


def test_demo_quick(tmp_path):
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    # the verified cache fetch looks for: no download in the test
    shutil.copy(shared_path("models", "yolov3-tiny.weights"), weights_dir)
    shutil.copy(shared_path("darknet-cfg", "yolov3-tiny.cfg"), weights_dir)
    out = tmp_path / "demo"
    assert run(["demo", "--quick", "--out", str(out), "--weights-dir", str(weights_dir)]) == 0
    report = (out / "report.md").read_text()
    assert "| COCO head of the merged network vs yolov3-tiny alone | bit-identical |" in report
    assert "layers 0..12) | bit-identical |" in report
    assert "| coco | person |" in report  # the COCO head finds the person in the sample
    for name in ("merged.cfg", "merged.weights", "merged.heads.json", "diff.png",
                 "sample_detections.jpg", "train/loss.png"):
        assert (out / name).exists(), name
