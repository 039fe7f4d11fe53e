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
    assert (out / "merged.names").read_text().splitlines()[0] == "person"
    # the merged files are self-contained: copied elsewhere they work from any folder
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("merged.cfg", "merged.weights", "merged.heads.json"):
        shutil.copy(out / name, moved / name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    import os

    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        m = [str(moved / f"merged.{s}") for s in ("cfg", "weights", "heads.json")]
        assert run(["info", m[0], "--heads", m[2]]) == 0
        assert run(["detect", m[0], m[1], str(out / "sample.jpg"), "--heads", m[2]]) == 0
        assert run(["split", m[0], m[1], "--heads", m[2], "--task", "text", "-o", "text"]) == 0
    finally:
        os.chdir(cwd)
    assert not list(out.rglob("timing_merged*")), "the merged network is timed in memory"
