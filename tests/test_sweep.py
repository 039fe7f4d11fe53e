"""The k sweep on the real yolov3-tiny at a tiny input size and a tiny synthetic dataset."""
from __future__ import annotations

import json

import pytest
from conftest import shared_path

from netsurgery.analysis.sweep import run_sweep
from netsurgery.cli.app import run
from netsurgery.darknet.cfg import load_cfg
from netsurgery.surgery.editing import retarget_heads
from netsurgery.training.synth import make_shapes_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    base_cfg = load_cfg(shared_path("darknet-cfg", "yolov3-tiny.cfg"))
    base_cfg.net.set("width", 96)
    base_cfg.net.set("height", 96)
    base_cfg.save(root / "base.cfg")
    data = make_shapes_dataset(root / "data", 8, seed=3, size=(96, 96))
    task = retarget_heads(base_cfg, 3)
    task.net.set("batch", 4)
    task.net.set("subdivisions", 1)
    task.save(root / "task.cfg")
    return root, str(root / "base.cfg"), str(shared_path("models", "yolov3-tiny.weights")), \
        str(root / "task.cfg"), str(data.data)


def test_sweep_table_chart_and_resume(setup):
    root, base_cfg, base_weights, task_cfg, data = setup
    out = root / "out"
    logs: list[str] = []
    first = run_sweep(base_cfg, base_weights, task_cfg, data, [12], str(out), iterations=2,
                      end_to_end=False, batch=4, timing_repeats=1, augment=False,
                      log=logs.append)
    assert [p.k for p in first] == [12]
    done = out / "k_12" / "result.json"
    stamp = done.stat().st_mtime_ns
    logs.clear()
    points = run_sweep(base_cfg, base_weights, task_cfg, data, [8, 12], str(out), iterations=2,
                       end_to_end=True, batch=4, timing_repeats=1, augment=False,
                       log=logs.append)
    assert any("k=12: finished before, skipped" in m for m in logs)
    assert done.stat().st_mtime_ns == stamp  # the finished k was not redone
    assert sorted(p.k for p in points) == [-1, 8, 12]
    by_k = {p.k: p for p in points}
    # yolov3-tiny: layers 0..12 hold 0.711 of the params and 0.672 of the FLOPs (cost.py)
    assert by_k[12].params_fraction == pytest.approx(0.711, abs=5e-4)
    assert by_k[12].bflops_fraction == pytest.approx(0.672, abs=5e-4)
    assert by_k[-1].params_fraction == 0 and by_k[-1].time_merged_ms is None
    assert by_k[8].time_merged_ms > 0 and by_k[8].time_separate_ms > 0
    for p in points:
        assert 0.0 <= p.map <= 1.0
    table = json.loads((out / "sweep.json").read_text())
    assert len(table["points"]) == 3
    assert (out / "sweep.csv").read_text().count("\n") == 4
    import cv2

    chart = cv2.imread(str(out / "sweep.png"))
    assert chart is not None and chart.shape[0] > 300 and chart.std() > 10


def test_sweep_rejects_k_outside_network(setup, capsys):
    root, base_cfg, base_weights, task_cfg, data = setup
    rc = run(["sweep", "--base", base_cfg, base_weights, "--task-cfg", task_cfg, "--data", data,
              "--k", "40", "--out", str(root / "bad")])
    assert rc == 2 and "k=40" in capsys.readouterr().err
