"""`diff`: per-layer relative weight differences (the paper's Fig. 1–3), on the real COCO
yolov3-tiny and a task copy with known changes, plus the statistics on hand-made arrays."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from netsurgery.analysis import tensorstats
from netsurgery.analysis.diff import (
    EPSILON,
    diff_many,
    diff_weights,
    format_report,
    report_to_json,
    resolve_cfgs,
    tensor_diff,
    write_csv,
)
from netsurgery.analysis.plots import plot_diff
from netsurgery.cli.app import run
from netsurgery.darknet.cfg import load_cfg
from netsurgery.darknet.network import build_network
from netsurgery.darknet.weights import layer_arrays, load_weights, save_weights
from netsurgery.errors import UsageError, WeightsError

SCALE = np.float32(1.5)  # layer 10's kernel
SHIFT = np.float32(0.25)  # added to layer 13's biases
BN_ARRAYS = ["biases", "scales", "rolling_mean", "rolling_variance", "weights"]


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair(tmp_path_factory, yolov3_tiny):
    """base.cfg/.weights = the real yolov3-tiny; task.cfg/.weights = the same with layer 10's
    kernel ×1.5, layer 13's biases +0.25, and the last head retrained for 1 class (layer 22:
    18 filters instead of 255). Everything else is bit-identical."""
    cfg_path, weights_path = yolov3_tiny
    folder = tmp_path_factory.mktemp("diff")
    base_cfg, base_weights = folder / "base.cfg", folder / "base.weights"
    shutil.copy(cfg_path, base_cfg)
    shutil.copy(weights_path, base_weights)
    cfg = load_cfg(cfg_path)
    cfg.layers[22].set("filters", 18)
    cfg.layers[23].set("classes", 1)
    task_cfg = folder / "task.cfg"
    cfg.save(task_cfg)
    base_net = build_network(base_cfg)
    task_net = build_network(task_cfg)
    wf = load_weights(base_weights, base_net.layers)
    arrays = {i: {k: np.array(v) for k, v in a.items()} for i, a in layer_arrays(wf).items()}
    arrays[10]["weights"] = arrays[10]["weights"] * SCALE
    arrays[13]["biases"] = arrays[13]["biases"] + SHIFT
    rng = np.random.default_rng(7)
    arrays[22] = {"biases": rng.standard_normal(18).astype(np.float32),
                  "weights": 0.01 * rng.standard_normal((18, 256, 1, 1)).astype(np.float32)}
    task_weights = folder / "task.weights"
    save_weights(task_weights, wf.header, task_net.layers, arrays)
    report = diff_weights(base_cfg, base_weights, task_cfg, task_weights)
    return folder, report


def _layer(report, index):
    return next(d for d in report.layers if d.index == index)


# -- the report on the real network ---------------------------------------------------------
def test_scaled_kernel_is_exactly_half(pair):
    _, report = pair
    layer = _layer(report, 10)
    k = layer.tensors["weights"]
    assert not k.identical and k.shape == (512, 256, 3, 3)
    assert k.rel_mean_abs == pytest.approx(0.5, abs=1e-6)
    assert k.rel_l2 == pytest.approx(0.5, abs=1e-6)
    assert k.cosine == pytest.approx(1.0, abs=1e-9)
    for name, value in k.quantiles.as_dict().items():
        assert value == pytest.approx(0.5, abs=1e-6), name
    assert all(layer.tensors[n].identical for n in BN_ARRAYS[:4])


def test_shifted_biases_match_numpy(pair, yolov3_tiny):
    _, report = pair
    cfg, weights = yolov3_tiny
    base = load_weights(weights, build_network(cfg).layers).layers[13].arrays["biases"]
    b = base.astype(np.float64)
    t = (base + SHIFT).astype(np.float64)  # what the task file holds (float32 sums)
    delta = t - b
    got = _layer(report, 13).tensors["biases"]
    assert not got.identical
    assert got.rel_mean_abs == pytest.approx(np.abs(delta).mean() / np.abs(b).mean(), rel=1e-12)
    assert got.rel_mean_abs == pytest.approx(0.25 / np.abs(b).mean(), rel=1e-6)
    assert got.rel_l2 == pytest.approx(np.sqrt((delta ** 2).sum() / (b ** 2).sum()), rel=1e-12)
    assert got.cosine == pytest.approx(b @ t / np.sqrt((b @ b) * (t @ t)), rel=1e-12)
    ratio = np.abs(delta) / (np.abs(b) + 1e-8)
    expected = np.quantile(ratio, [0.25, 0.5, 0.75, 0.95, 1.0])
    np.testing.assert_allclose(list(got.quantiles.as_dict().values()), expected, rtol=1e-6)
    assert _layer(report, 13).tensors["weights"].identical


def test_changed_head_is_skipped_with_both_shapes(pair):
    _, report = pair
    assert [(s.index, s.type, s.base_shape, s.task_shape) for s in report.skipped] == [
        (22, "convolutional", (255, 256, 1, 1), (18, 256, 1, 1))]
    assert "shapes differ" in report.skipped[0].reason
    assert [d.index for d in report.layers] == [0, 2, 4, 6, 8, 10, 12, 13, 14, 15, 18, 21]


def test_summary(pair):
    _, report = pair
    s = report.summary
    assert s.n_layers == 24 and s.compared == 12
    assert s.identical_layers == [0, 2, 4, 6, 8, 12, 14, 15, 18, 21]
    assert (s.first_changed, s.last_changed, s.changed) == (10, 22, [10, 13, 22])
    assert s.identical_prefix == 9  # layer 9 ([maxpool]) has no weights
    assert "layers 0..9 are bit-identical" in s.describe_prefix()
    jump = s.largest_jump
    assert (jump.from_index, jump.to_index) == (8, 10)
    assert jump.increase == pytest.approx(0.5, abs=1e-6)
    text = format_report(report)
    assert "skipped layer 22 [convolutional]" in text and "255x256x1x1" in text
    assert "first changed layer 10" in text


def test_json_fields(pair):
    _, report = pair
    data = json.loads(json.dumps(report_to_json(report)))
    layer10 = next(d for d in data["layers"] if d["index"] == 10)
    assert layer10["type"] == "convolutional"
    assert set(layer10["tensors"]) == set(BN_ARRAYS)
    kernel = layer10["tensors"]["weights"]
    assert set(kernel) >= {"rel_mean_abs", "rel_l2", "cosine", "identical", "quantiles"}
    assert set(kernel["quantiles"]) == {"p25", "median", "p75", "p95", "max"}
    assert kernel["identical"] is False and kernel["rel_l2"] == pytest.approx(0.5, abs=1e-6)
    assert data["skipped"] == [{"index": 22, "type": "convolutional",
                                "base_shape": [255, 256, 1, 1], "task_shape": [18, 256, 1, 1],
                                "reason": report.skipped[0].reason}]
    assert data["summary"]["identical_prefix"] == 9
    assert data["summary"]["first_changed"] == 10
    assert data["summary"]["largest_jump"]["to"] == 10


def test_workers_do_not_change_the_result(pair):
    folder, report = pair
    threaded = diff_weights(folder / "base.cfg", folder / "base.weights", folder / "task.cfg",
                            folder / "task.weights", workers=2)
    assert threaded == report


# -- CLI ------------------------------------------------------------------------------------
def test_cli_outputs(pair, capsys):
    folder, report = pair
    csv_path, json_path = folder / "d.csv", folder / "d.json"
    png, svg = folder / "d.png", folder / "d.svg"
    # cfgs found by stem: base.weights -> base.cfg, task.weights -> task.cfg
    rc = run(["diff", str(folder / "base.weights"), str(folder / "task.weights"),
              "--csv", str(csv_path), "--json", str(json_path), "--plot", str(png),
              "--mark", "8,12", "--overwrite"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "base.cfg (same stem" in err and "task.cfg (same stem" in err
    assert "skipped layer 22" in out
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    # 11 BatchNorm convs x 5 arrays + layer 15 (biases, weights); layer 22 skipped
    assert len(rows) == 11 * 5 + 2
    row = next(r for r in rows if r["index"] == "10" and r["tensor"] == "weights")
    assert float(row["rel_mean_abs"]) == pytest.approx(0.5, abs=1e-6) and row["identical"] == "0"
    assert json.loads(json_path.read_text())["tasks"][0]["summary"]["identical_prefix"] == 9

    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.shape[:2] == (800, 1000)
    assert image[..., :3].std() > 0.05  # not blank

    rc = run(["diff", str(folder / "base.weights"), str(folder / "task.weights"),
              "--plot", str(svg), "--log-y", "--overwrite"])
    assert rc == 0
    text = svg.read_text()
    assert "<svg" in text and "layer index (Darknet)" in text


def test_cli_arrays_draws_one_panel_per_array(pair, capsys, tmp_path):
    """--arrays: one panel per array, the BatchNorm ones included; a BatchNorm array that
    changed gets boxes, one that did not says so (issue 21)."""
    folder, _ = pair
    base_net = build_network(folder / "base.cfg")
    wf = load_weights(folder / "base.weights", base_net.layers)
    arrays = {i: {k: np.array(v) for k, v in a.items()} for i, a in layer_arrays(wf).items()}
    arrays[13]["rolling_mean"] = arrays[13]["rolling_mean"] * np.float32(2.0)
    save_weights(tmp_path / "bn.weights", wf.header, base_net.layers, arrays)
    shutil.copy(folder / "base.cfg", tmp_path / "bn.cfg")
    svg, png = tmp_path / "a.svg", tmp_path / "a.png"
    every = "weights,biases,scales,rolling_mean,rolling_variance"
    for chart in (svg, png):
        rc = run(["diff", str(folder / "base.weights"), str(tmp_path / "bn.weights"),
                  "--plot", str(chart), "--arrays", every])
        assert rc == 0, capsys.readouterr().err
    text = svg.read_text()
    titles = ["kernels (weights)", "biases", "BatchNorm scales", "BatchNorm rolling mean",
              "BatchNorm rolling variance"]
    for title in titles:
        assert f"<!-- {title} -->" in text, title
    assert text.count("<!-- layer index (Darknet) -->") == 5  # one x label per panel
    assert "<!-- no changed BatchNorm scales -->" in text
    assert "<!-- no changed BatchNorm rolling mean -->" not in text  # layer 13 changed
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (1600, 1000)  # 5 panels x 3.2 in

    rc = run(["diff", str(folder / "base.weights"), str(tmp_path / "bn.weights"),
              "--plot", str(svg), "--overwrite", "--arrays", "rolling_mean"])
    assert rc == 0
    text = svg.read_text()
    assert "<!-- BatchNorm rolling mean -->" in text and "<!-- biases -->" not in text
    assert text.count("<!-- layer index (Darknet) -->") == 1
    line = _one_line_error(capsys, ["diff", str(folder / "base.weights"),
                                    str(tmp_path / "bn.weights"), "--plot",
                                    str(tmp_path / "b.png"), "--arrays", "weights,means"])
    assert "--arrays weights,means: expected one or more of weights,biases,scales," in line
    assert not (tmp_path / "b.png").exists()


def test_cli_several_tasks(pair, capsys, tmp_path):
    folder, _ = pair
    same = tmp_path / "same.weights"  # no same.cfg: falls back to the base cfg
    shutil.copy(folder / "base.weights", same)
    out_png, out_json = tmp_path / "m.png", tmp_path / "m.json"
    rc = run(["diff", str(folder / "base.weights"), str(folder / "task.weights"), str(same),
              "--plot", str(out_png), "--json", str(out_json)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "(the base cfg; " in err
    data = json.loads(out_json.read_text())
    assert [t["summary"]["first_changed"] for t in data["tasks"]] == [10, None]
    assert data["tasks"][1]["summary"]["identical_prefix"] == 23
    import matplotlib.image

    assert matplotlib.image.imread(out_png)[..., :3].std() > 0.05


def _one_line_error(capsys, argv):
    rc = run(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("netsurgery: error")]
    assert len(lines) == 1 and "Traceback" not in err
    return lines[0]


def test_cli_weights_that_do_not_fit(pair, capsys):
    folder, _ = pair
    # the base weights read with the 1-class cfg: layer 22 holds 255 filters, not 18
    line = _one_line_error(capsys, ["diff", str(folder / "base.weights"),
                                    str(folder / "task.weights"),
                                    "--cfg", str(folder / "task.cfg")])
    assert "base.weights" in line and "layer 22" in line


def test_cli_layer_types_differ(pair, capsys, tmp_path):
    folder, _ = pair
    text = (folder / "base.cfg").read_text()
    assert "[maxpool]\nsize=2\nstride=2\n" in text
    text = text.replace("[maxpool]\nsize=2\nstride=2\n", "[dropout]\nprobability=0.5\n", 1)
    other = tmp_path / "other.cfg"
    other.write_text(text)
    line = _one_line_error(capsys, ["diff", str(folder / "base.weights"),
                                    str(folder / "task.weights"), "--task-cfg", str(other)])
    assert "layer 1:" in line and "[maxpool]" in line and "[dropout]" in line


def test_cli_missing_cfg(pair, capsys, tmp_path):
    folder, _ = pair
    lonely = tmp_path / "lonely.weights"
    shutil.copy(folder / "base.weights", lonely)
    line = _one_line_error(capsys, ["diff", str(lonely), str(folder / "task.weights")])
    assert "lonely.cfg does not exist" in line and "--cfg" in line


def test_cli_refuses_existing_output(pair, capsys, tmp_path):
    folder, _ = pair
    existing = tmp_path / "x.csv"
    existing.write_text("keep")
    line = _one_line_error(capsys, ["diff", str(folder / "base.weights"),
                                    str(folder / "task.weights"), "--csv", str(existing)])
    assert "--overwrite" in line and existing.read_text() == "keep"


# -- API errors -----------------------------------------------------------------------------
def test_layer_count_differs(pair, tmp_path):
    folder, _ = pair
    text = (folder / "base.cfg").read_text()
    short = tmp_path / "short.cfg"
    short.write_text(text[:text.rindex("[yolo]")])  # drop the last layer
    with pytest.raises(UsageError, match=r"layer 23: base .* has \[yolo\], task .* absent"):
        diff_weights(folder / "base.cfg", folder / "base.weights", short,
                     folder / "base.weights")


def test_truncated_weights_name_the_layer(pair, tmp_path):
    folder, _ = pair
    cut = tmp_path / "cut.weights"
    cut.write_bytes((folder / "task.weights").read_bytes()[:-100])
    with pytest.raises(WeightsError, match="ends inside layer 22"):
        diff_weights(folder / "base.cfg", folder / "base.weights", folder / "task.cfg", cut)


def test_resolve_cfgs_counts(tmp_path):
    with pytest.raises(UsageError, match="2 task cfgs for 3 task weights"):
        resolve_cfgs("b.weights", ["1.weights", "2.weights", "3.weights"], "b.cfg",
                     ["x.cfg", "y.cfg"])


def test_plot_rejects_unknown_format_and_bad_marks(pair, tmp_path):
    _, report = pair
    with pytest.raises(UsageError, match="unsupported chart format .jpg"):
        plot_diff(report, tmp_path / "x.jpg")
    with pytest.raises(UsageError, match="--mark 99"):
        plot_diff(report, tmp_path / "x.png", marks=[99])
    assert not list(tmp_path.iterdir())


# -- the statistics on hand-made arrays ---------------------------------------------------------
def test_zero_base_conventions():
    zeros = np.zeros(4, np.float32)
    same = tensor_diff("b", zeros, zeros.copy())
    assert same.identical and same.rel_mean_abs == 0.0 and same.cosine == 1.0
    grown = tensor_diff("b", zeros, np.array([0, 0, 1, 2], np.float32))
    assert not grown.identical
    assert grown.rel_mean_abs == float("inf") and grown.rel_l2 == float("inf")
    assert grown.cosine == 0.0
    # |Δ|/(0 + ε): 0, 0, 1e8, 2e8 -> linear quantiles
    q = grown.quantiles
    assert (q.p25, q.median, q.p75, q.max) == pytest.approx((0.0, 0.5 / EPSILON, 1.25 / EPSILON,
                                                             2.0 / EPSILON))
    assert q.p95 == pytest.approx(1.85 / EPSILON)


def test_negative_zero_is_not_bit_identical():
    base = np.array([0.0, 1.0], np.float32)
    task = np.array([-0.0, 1.0], np.float32)
    d = tensor_diff("w", base, task)
    assert not d.identical and d.rel_mean_abs == 0.0 and d.quantiles.max == 0.0


def test_hand_computed_small_tensor():
    base = np.array([1.0, -2.0, 4.0, 0.5], np.float32)
    task = np.array([1.5, -2.0, 3.0, 0.5], np.float32)
    d = tensor_diff("w", base, task)
    assert d.rel_mean_abs == pytest.approx(1.5 / 7.5)  # (0.5 + 0 + 1 + 0) / (1+2+4+0.5)
    assert d.rel_l2 == pytest.approx(np.sqrt(1.25 / 21.25))
    assert d.cosine == pytest.approx(17.75 / np.sqrt(21.25 * 15.5))  # 1.5+4+12+0.25
    # ratios 0.5, 0, 0.25, 0 -> sorted 0, 0, 0.25, 0.5
    assert d.quantiles.median == pytest.approx(0.125, rel=1e-6)
    assert d.quantiles.max == pytest.approx(0.5, rel=1e-6)


def _reference(base, task):
    b, t = base.astype(np.float64), task.astype(np.float64)
    ratio = np.abs(t - b) / (np.abs(b) + EPSILON)
    return np.quantile(ratio, [0.25, 0.5, 0.75, 0.95, 1.0])


@pytest.mark.parametrize("kind", ["noise", "scaled", "partly", "ties"])
def test_large_tensor_quantiles_are_exact(kind):
    """Tensors above the bracketing threshold: the sampled brackets give numpy's quantiles."""
    rng = np.random.default_rng(3)
    n = tensorstats._BRACKET_MIN + 12_345
    base = (0.02 * rng.standard_normal(n)).astype(np.float32)
    if kind == "noise":
        task = base + 0.1 * np.abs(base) * rng.standard_normal(n).astype(np.float32)
    elif kind == "scaled":
        task = base * np.float32(0.9)
    elif kind == "partly":  # 70 % unchanged: p25..median are exactly 0
        task = base.copy()
        task[: n * 3 // 10] += np.float32(0.01)
    else:  # a few distinct values
        base = rng.integers(-3, 4, n).astype(np.float32)
        task = base + rng.integers(0, 2, n).astype(np.float32)
    got = tensor_diff("w", base, task.astype(np.float32))
    np.testing.assert_allclose(list(got.quantiles.as_dict().values()), _reference(base, task),
                               rtol=1e-6, atol=0)


def test_missed_brackets_fall_back_to_the_exact_partition(monkeypatch):
    rng = np.random.default_rng(4)
    n = tensorstats._BRACKET_MIN + 1
    base = rng.standard_normal(n).astype(np.float32)
    task = base + rng.standard_normal(n).astype(np.float32)
    lut = np.zeros(1 << 16, bool)
    lut[0x3000] = True  # a range that holds none of the wanted ranks
    wrong = tensorstats._Brackets(lut, [0x3000 << 16], [(0x3001 << 16) - 1])
    monkeypatch.setattr(tensorstats, "_sample_brackets", lambda b, t: wrong)
    got = tensor_diff("w", base, task)
    np.testing.assert_allclose(list(got.quantiles.as_dict().values()), _reference(base, task),
                               rtol=1e-6, atol=0)


def test_diff_many_and_csv(pair, tmp_path):
    folder, _ = pair
    reports = diff_many(folder / "base.cfg", folder / "base.weights",
                        [(folder / "task.cfg", folder / "task.weights"),
                         (folder / "base.cfg", folder / "base.weights")])
    assert [r.summary.first_changed for r in reports] == [10, None]
    out = tmp_path / "all.csv"
    write_csv(reports, out)
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == (11 * 5 + 2) + (11 * 5 + 2 + 2)  # the second also compares layer 22
    assert {r["task"] for r in rows} == {str(folder / "task.weights"),
                                         str(folder / "base.weights")}


def test_nonfinite_weights_take_the_exact_path():
    n = tensorstats._BRACKET_MIN + 3
    base = np.linspace(1.0, 2.0, n, dtype=np.float32)
    assert tensor_diff("w", base, base.copy()).identical
    nan = base.copy()
    nan[5] = np.nan
    assert tensor_diff("w", nan, nan.copy()).identical  # the same NaN bits
    task = base * np.float32(1.5)
    task[7] = np.inf
    got = tensor_diff("w", base, task)
    assert got.rel_mean_abs == float("inf") and got.quantiles.max == float("inf")
    assert got.quantiles.median == pytest.approx(0.5, rel=1e-6)


def test_order_statistics_pairs_and_runs():
    rng = np.random.default_rng(5)
    u = rng.integers(0, 40, 1000).astype(np.uint32)  # many ties
    expected = np.sort(u)
    for ranks in ([0, 1], [10, 11, 500, 501, 998, 999], [3, 4, 5, 900], [999]):
        got = tensorstats._order_statistics(u.copy(), ranks)
        assert got == {r: int(expected[r]) for r in ranks}
