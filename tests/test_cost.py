"""Cost accounting: Darknet's Total BFLOPS, the paper's Table I, frontiers, savings, `info`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path

from netsurgery.analysis.cost import (
    format_report,
    frontier,
    network_cost,
    report_to_json,
    share_cost,
)
from netsurgery.cli.app import run
from netsurgery.darknet.cfg import parse_cfg_text
from netsurgery.darknet.network import build_network
from netsurgery.darknet.weights import (
    WeightsHeader,
    load_weights,
    random_arrays,
    save_weights,
)
from netsurgery.errors import UsageError

# Darknet's "Total BFLOPS" at each cfg's own size (SPEC.md, "Cost").
DARKNET_TOTALS = {
    "yolov3": 65.879, "yolov3-tiny": 5.571, "yolov3-spp": 141.531, "yolov3-voc": 65.442,
    "yolov3-openimages": 148.812, "yolov4": 128.459, "yolov4-tiny": 6.910,
    "yolov4-tiny-3l": 17.741, "yolov4-csp": 77.003, "yolov2": 29.475, "yolov2-tiny": 5.412,
    "darknet53": 18.576, "darknet19": 5.585, "csdarknet53-omega": 13.071,
}

# A network small enough to count by hand, 8x8x3 input.
TINY = """
[net]
width=8
height=8
channels=3

# 0: 4x3x3x3 kernel = 108 weights; + 4 biases + 3·4 BN = 124 params; out 4x8x8;
#    FLOPs 2·108·64 = 13824
[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

# 1: out 4x4x4; FLOPs 2·2·4·4·4 = 256
[maxpool]
size=2
stride=2

# 2: 8x4 kernel = 32 weights + 8 biases = 40 params; out 8x4x4; FLOPs 2·32·16 = 1024
[convolutional]
filters=8
size=1
stride=1
activation=linear

# 3: 8x8x3x3 = 576 weights + 8 biases = 584 params; out 8x4x4; FLOPs 2·576·16 = 18432
[convolutional]
filters=8
size=3
stride=1
pad=1
activation=leaky

# 4: adds layer 2 to layer 3; FLOPs 8·4·4·1 = 128
[shortcut]
from=-2
activation=linear
"""
TINY_PARAMS = [124, 0, 40, 584, 0]  # total 748
TINY_FLOPS = [13824, 256, 1024, 18432, 128]  # total 33664


@pytest.fixture(scope="module")
def tiny():
    return build_network(parse_cfg_text(TINY, "tiny.cfg"))


@pytest.fixture(scope="module")
def yolov3():
    return build_network(shared_path("darknet-cfg", "yolov3.cfg"), size=(416, 416))


@pytest.mark.parametrize("name", sorted(DARKNET_TOTALS))
def test_total_bflops_match_darknet(name):
    network = build_network(shared_path("darknet-cfg", f"{name}.cfg"))
    report = network_cost(network)
    assert f"{report.total_bflops:.3f}" == f"{DARKNET_TOTALS[name]:.3f}"
    assert report.total_params == network.params


def test_float32_accumulation_matters_for_yolov3_voc():
    # Darknet sums float BFLOPS in a float: 65.442; the float64 sum rounds to 65.443.
    network = build_network(shared_path("darknet-cfg", "yolov3-voc.cfg"))
    assert f"{network.flops / 1e9:.3f}" == "65.443"
    assert f"{network_cost(network).total_bflops:.3f}" == "65.442"


def test_tiny_costs_by_hand(tiny):
    report = network_cost(tiny)
    assert [r.params for r in report.layers] == TINY_PARAMS
    assert [r.bflops for r in report.layers] == pytest.approx([f / 1e9 for f in TINY_FLOPS],
                                                             rel=1e-6)
    assert report.total_params == 748
    assert report.total_bflops == pytest.approx(33664e-9, rel=1e-6)
    assert [r.output for r in report.layers] == [[4, 8, 8], [4, 4, 4], [8, 4, 4], [8, 4, 4],
                                                 [8, 4, 4]]
    assert report.layers[0].input_shapes == [[3, 8, 8]]
    assert report.layers[4].input_shapes == [[8, 4, 4], [8, 4, 4]]  # previous, then from
    assert [r.cum_params_fraction for r in report.layers] == \
        pytest.approx([124 / 748, 124 / 748, 164 / 748, 1.0, 1.0])
    assert report.layers[1].cum_bflops_fraction == pytest.approx(14080 / 33664)


def test_tiny_share_and_savings_by_hand(tiny):
    assert [frontier(tiny, k) for k in range(5)] == [[0], [1], [2], [2, 3], []]
    s = share_cost(tiny, 2)
    assert (s.params_shared, s.params_fraction) == (164, pytest.approx(164 / 748))
    assert s.bflops_shared == pytest.approx(15104e-9, rel=1e-6)
    assert s.bflops_fraction == pytest.approx(15104 / 33664)
    m = s.merge_savings(3)
    # separate: 3·748 = 2244; merged: 748 + 2·(748 − 164) = 1916; saved 2·164 = 328
    assert (m.params_separate, m.params_merged, m.params_saved) == (2244, 1916, 328)
    assert m.params_saved_fraction == pytest.approx(328 / 2244)
    # FLOPs: separate 3·33664, merged 33664 + 2·(33664 − 15104) = 70784, saved 30208
    assert m.bflops_separate == pytest.approx(3 * 33664e-9, rel=1e-6)
    assert m.bflops_merged == pytest.approx(70784e-9, rel=1e-6)
    assert m.bflops_saved_fraction == pytest.approx(30208 / 100992, rel=1e-6)
    assert s.params_saved_per_extra_task == 164
    one = s.merge_savings(1)
    assert (one.params_saved, one.params_merged) == (0, 748)
    with pytest.raises(UsageError):
        s.merge_savings(0)
    with pytest.raises(UsageError, match="0..4"):
        share_cost(tiny, 5)


# Paper (Bailer & Fassold) Table I, YOLOv3 at 416: fraction of params / FLOPs in layers 0..k.
TABLE_I = {73: (0.655, 0.744), 64: (0.401, 0.663), 48: (0.156, 0.505), 40: (0.092, 0.424)}
# What netsurgery measures (Darknet's per-layer FLOPs over all layers; .weights floats).
MEASURED = {73: (0.65515, 0.74449), 64: (0.40118, 0.66378), 48: (0.15559, 0.50505),
            40: (0.09202, 0.42434)}


def test_table_one(yolov3):
    report = network_cost(yolov3, share_until=sorted(TABLE_I))
    for s in report.share:
        paper_p, paper_f = TABLE_I[s.k]
        assert round(s.params_fraction, 5) == MEASURED[s.k][0]
        assert round(s.bflops_fraction, 5) == MEASURED[s.k][1]
        assert round(s.params_fraction, 3) == paper_p
        assert abs(s.bflops_fraction - paper_f) < 1e-3
        if s.k != 64:  # 0.66378: the paper prints 0.663 (truncated?), rounding gives 0.664
            assert round(s.bflops_fraction, 3) == paper_f
    assert report.share[-1].params_shared == 40_620_640  # k=73: darknet53.conv.74 minus 74
    assert f"{report.share[-1].bflops_shared:.3f}" == "49.046"


def test_yolov3_frontiers(yolov3):
    assert frontier(yolov3, 73) == [36, 61, 71, 73]
    assert frontier(yolov3, 74) == [36, 61, 74]
    assert share_cost(yolov3, 74).params_fraction == share_cost(yolov3, 73).params_fraction
    assert frontier(yolov3, len(yolov3) - 1) == []


def test_cumulative_fractions_monotone(yolov3):
    report = network_cost(yolov3)
    cum_p = [r.cum_params_fraction for r in report.layers]
    cum_f = [r.cum_bflops_fraction for r in report.layers]
    assert all(b >= a for a, b in zip(cum_p, cum_p[1:]))
    assert all(b >= a for a, b in zip(cum_f, cum_f[1:]))
    assert cum_p[-1] == 1.0 and cum_f[-1] == 1.0
    assert cum_p[0] == 992 / 62_001_757  # 32·27 weights + 32 biases + 3·32 BN


def test_size_changes_flops_not_params():
    cfg = shared_path("darknet-cfg", "yolov3-tiny.cfg")
    at416 = network_cost(build_network(cfg))
    at320 = network_cost(build_network(cfg, size=(320, 320)))
    assert at320.total_params == at416.total_params == 8_858_734
    # every grid is 10/13 of the 416 one, so every layer's FLOPs scale by 100/169
    for a, b in zip(at416.layers, at320.layers):
        assert b.bflops == pytest.approx(a.bflops * 100 / 169, rel=1e-6)
    assert at320.input == [320, 320, 3]


def test_json_schema(tiny):
    data = report_to_json(network_cost(tiny, share_until=[2]))
    json.dumps(data)  # plain types only
    assert [row["index"] for row in data["layers"]] == [0, 1, 2, 3, 4]
    assert data["layers"][3] == {**data["layers"][3], "type": "convolutional",
                                 "output": [8, 4, 4], "params": 584}
    assert data["layers"][3]["bflops"] == pytest.approx(18432e-9, rel=1e-6)
    assert data["total"]["params"] == 748
    share = data["share"][0]
    assert (share["k"], share["frontier"]) == (2, [2])
    assert share["params_fraction"] == pytest.approx(164 / 748)
    assert share["bflops_fraction"] == pytest.approx(15104 / 33664)
    assert [m["n_tasks"] for m in share["merge"]] == [2, 3]
    assert share["merge"][1]["params_saved"] == 328
    assert data["weights"] is None


def _random_weights(network, path, seed=0):
    arrays = random_arrays(network.layers, seed)
    save_weights(path, WeightsHeader(0, 2, 5, 1234), network.layers, arrays)
    return arrays


def test_weights_info_presence_and_nonfinite(tiny, tmp_path):
    path = tmp_path / "tiny.weights"
    arrays = _random_weights(tiny, path)
    arrays[2]["weights"][0, :3, 0, 0] = [np.nan, np.inf, -np.inf]
    save_weights(path.with_name("bad.weights"), WeightsHeader(0, 2, 5, 1234), tiny.layers,
                 arrays, upto=3)  # a partial file: layers 0..2
    report = network_cost(tiny, weights=load_weights(path.with_name("bad.weights"),
                                                     tiny.layers))
    assert [r.weights_present for r in report.layers] == [True, None, True, False, None]
    assert [r.nonfinite for r in report.layers] == [0, 0, 3, 0, 0]
    info = report.weights_info
    assert (info.version, info.seen, info.covered, info.complete) == ("0.2.5", 1234, 3, False)
    # 20-byte header + 124 + 40 floats; the complete file adds 584 floats
    assert (info.file_size, info.expected_size) == (20 + 4 * 164, 20 + 4 * 748)
    assert [(b.index, b.array, b.count) for b in info.nonfinite] == [(2, "weights", 3)]
    text = format_report(report)
    assert "3 NaN/Inf" in text and "layers 0..2 of 5" in text and "missing" in text


def test_real_yolov3_tiny_weights(yolov3_tiny):
    cfg, weights = yolov3_tiny
    network = build_network(cfg)
    info = network_cost(network, weights=load_weights(weights, network.layers)).weights_info
    assert (info.version, info.seen, info.covered, info.complete) == \
        ("0.2.0", 32_013_312, 24, True)
    assert info.file_size == info.expected_size == 20 + 4 * 8_858_734
    assert info.nonfinite == []


# -- CLI ---------------------------------------------------------------------------------
def test_cli_info_table_one(capsys):
    cfg = shared_path("darknet-cfg", "yolov3.cfg")
    assert run(["info", str(cfg), "--size", "416,416", "--share-until", "73,40"]) == 0
    out = capsys.readouterr().out
    assert "total: 62,001,757 params, 65.879 BFLOPs" in out
    share_table = out.split("share until layer k")[1].splitlines()[2:4]
    rows = {line.split()[0]: line.split()[1:4] for line in share_table}
    assert rows["73"] == ["0.655", "0.744", "36,61,71,73"]
    assert rows["40"] == ["0.092", "0.424", "36,40"]
    assert "checks:" not in out


def test_cli_info_json_and_overwrite(tmp_path, capsys):
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY)
    out = tmp_path / "cost.json"
    assert run(["info", str(cfg), "--share-until", "1,2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["total"]["params"] == 748
    assert [s["k"] for s in data["share"]] == [1, 2]
    assert data["problems"] == []
    capsys.readouterr()
    assert run(["info", str(cfg), "--json", str(out)]) == 2  # exists, no --overwrite
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert run(["info", str(cfg), "--json", str(out), "--overwrite"]) == 0
    assert run(["info", str(cfg), "--json", str(cfg), "--overwrite"]) == 2  # the input


@pytest.mark.parametrize("args", [["info", "{tmp}/missing.cfg"],
                                  ["info", "{cfg}", "--weights", "{tmp}/missing.weights"],
                                  ["info", "{cfg}", "--share-until", "7"]])
def test_cli_info_user_errors(args, tmp_path, capsys):
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY)
    argv = [a.format(tmp=tmp_path, cfg=cfg) for a in args]
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("netsurgery: error:")


def test_cli_info_prints_checks(tmp_path, capsys):
    cfg = tmp_path / "dead.cfg"
    # layer 1 is never read: layer 2 routes back to layer 0 and is the last layer
    cfg.write_text("[net]\nwidth=4\nheight=4\nchannels=1\n\n[maxpool]\nsize=1\nstride=1\n\n"
                   "[maxpool]\nsize=1\nstride=1\n\n[route]\nlayers=0\n")
    assert run(["info", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "checks:" in out and "dead.cfg:10: warning: layer 1: output is never read" in out


def test_info_table_names_the_cumulative_columns_fractions():
    """The cumulative columns are fractions of the whole network (issue 21): named so, and the
    last layer's are 1.000."""
    network = build_network(Path(__file__).resolve().parents[1] / "cfg" / "yolov3-tiny.cfg")
    lines = format_report(network_cost(network)).splitlines()
    assert lines[1].split()[-6:] == ["params", "0..i", "frac", "BFLOPs", "0..i", "frac"]
    assert lines[1 + len(network.layers)].split()[-2:] == ["1.000", "1.000"]
