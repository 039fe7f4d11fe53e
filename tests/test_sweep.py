"""The k sweep on the real yolov3-tiny at a tiny input size and a tiny synthetic dataset."""
from __future__ import annotations

import json

import pytest
from conftest import shared_path

from netsurgery.analysis.sweep import run_sweep
from netsurgery.cli.app import run
from netsurgery.darknet.cfg import load_cfg
from netsurgery.errors import DataError, UsageError
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
    assert any("k=12: finished before with the same settings, reused" in m for m in logs)
    assert done.stat().st_mtime_ns == stamp  # the finished k was not redone
    assert sorted(p.k for p in points) == [-1, 8, 12]
    by_k = {p.k: p for p in points}
    # yolov3-tiny: layers 0..12 hold 0.711 of the params and 0.672 of the FLOPs (cost.py)
    assert by_k[12].params_fraction == pytest.approx(0.711, abs=5e-4)
    assert by_k[12].bflops_fraction == pytest.approx(0.672, abs=5e-4)
    assert by_k[-1].params_fraction == 0 and by_k[-1].time_merged_ms is None
    assert by_k[8].time_merged_ms > 0 and by_k[8].time_separate_ms > 0
    assert by_k[8].timing_repeats == 1 and by_k[8].iterations == 2
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


def test_sweep_checks_every_input_before_training(setup, tmp_path):
    """A task at another input size than the base, or a .data file whose classes do not fit
    the task, is refused before the first k trains: nothing is written."""
    root, base_cfg, base_weights, task_cfg, data = setup
    wide = load_cfg(task_cfg)
    wide.net.set("width", 160)
    wide.save(tmp_path / "wide.cfg")
    out = tmp_path / "out"
    trained: list[str] = []
    with pytest.raises(UsageError, match=r"\[net\] width differs: base 96, task 160"):
        run_sweep(base_cfg, base_weights, str(tmp_path / "wide.cfg"), data, [8, 12], str(out),
                  iterations=2, batch=4, log=trained.append)
    # the training settings of every k are checked as train checks them
    text = open(data).read()
    five = tmp_path / "five.data"
    five.write_text("\n".join("classes = 5" if line.replace(" ", "").startswith("classes=")
                              else line for line in text.splitlines()) + "\n")
    with pytest.raises(UsageError, match="classes = 5, but"):
        run_sweep(base_cfg, base_weights, task_cfg, str(five), [8], str(out),
                  iterations=2, batch=4, log=trained.append)
    assert not trained and not out.exists()


def test_sweep_compares_recorded_settings(setup, capsys):
    """A rerun into the same --out with other settings refuses (naming the setting) unless
    --overwrite, which retrains; the table shows the iterations and the timing spread."""
    root, base_cfg, base_weights, task_cfg, data = setup
    out = root / "settings"
    first = run_sweep(base_cfg, base_weights, task_cfg, data, [12], str(out), iterations=2,
                      end_to_end=False, batch=4, timing_repeats=1, augment=False)
    assert first[0].iterations == 2
    with pytest.raises(UsageError, match=r"k=12 was trained with iterations=2, this run asks "
                                         r"for iterations=3; pass --overwrite"):
        run_sweep(base_cfg, base_weights, task_cfg, data, [12], str(out), iterations=3,
                  end_to_end=False, batch=4, timing_repeats=1, augment=False)
    args = ["sweep", "--base", base_cfg, base_weights, "--task-cfg", task_cfg, "--data", data,
            "--k", "12", "--out", str(out), "--iterations", "3", "--batch", "4",
            "--no-end-to-end", "--no-augment", "--no-multi-scale", "--timing-repeats", "4"]
    assert run(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert run(args + ["--overwrite"]) == 0
    printed = capsys.readouterr().out
    row = [line for line in printed.splitlines() if line.split()[:1] == ["12"]][0]
    assert row.split()[1] == "3"  # iterations column
    assert "median (quartiles) of 4 interleaved rounds" in printed
    result = json.loads((out / "k_12" / "result.json").read_text())
    assert result["settings"]["iterations"] == 3 and result["settings"]["multi_scale"] is False
    low, high = result["point"]["time_merged_quartiles_ms"]
    assert low <= result["point"]["time_merged_ms"] <= high
    # the same settings again: reused, not retrained
    stamp = (out / "k_12" / "result.json").stat().st_mtime_ns
    assert run(args) == 0
    assert (out / "k_12" / "result.json").stat().st_mtime_ns == stamp


def test_failed_sweep_leaves_no_empty_folders(setup, tmp_path):
    """Training that fails before its first checkpoint (here: no image can be decoded)
    removes the k's folder and the --out folder it created."""
    root, base_cfg, base_weights, task_cfg, data = setup
    broken = make_shapes_dataset(tmp_path / "broken", 4, seed=2, size=(96, 96))
    for image in broken.train_images:
        image.write_bytes(b"not an image")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="no usable training images"):
        run_sweep(base_cfg, base_weights, task_cfg, str(broken.data), [12], str(out),
                  iterations=2, batch=4, end_to_end=False)
    assert not out.exists()
