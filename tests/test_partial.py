"""`partial`: the first N layers' weights, byte for byte the prefix of the full file."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path

from netsurgery.cli.app import run
from netsurgery.darknet.network import build_network
from netsurgery.darknet.weights import WeightsHeader, file_layout, load_weights, save_weights
from netsurgery.errors import UsageError, WeightsError
from netsurgery.surgery.partial import write_partial


def test_real_yolov3_tiny_first_13_layers(yolov3_tiny, tmp_path):
    cfg, weights = yolov3_tiny
    out = tmp_path / "tiny13.weights"
    result = write_partial(cfg, weights, out, 13)
    data = out.read_bytes()
    # convs 0,2,4,6,8,10,12 (BN): (16+32+...+1024)·4 + kernels; 20-byte 0.2.0 header
    assert result.layers_with_weights == [0, 2, 4, 6, 8, 10, 12]
    assert len(data) == result.size == 25_193_940
    assert data == weights.read_bytes()[:len(data)]
    network = build_network(cfg)
    back = load_weights(out, network.layers)
    assert back.covered == 13 and not back.complete
    assert (back.header.version(), back.header.seen) == ("0.2.0", 32_013_312)
    assert sorted(back.layers) == [0, 2, 4, 6, 8, 10, 12]


def test_reset_seen_like_darknet(yolov3_tiny, tmp_path):
    cfg, weights = yolov3_tiny
    out = tmp_path / "tiny1.weights"
    write_partial(cfg, weights, out, 1, reset_seen=True)
    data, original = out.read_bytes(), weights.read_bytes()
    assert len(data) == 20 + 4 * (16 * 4 + 16 * 27)  # conv 0: biases, BN, 16x3x3x3 kernel
    assert np.frombuffer(data[12:20], "<u8")[0] == 0
    assert data[:12] == original[:12] and data[20:] == original[20:len(data)]


def test_yolov3_random_weights_first_75_layers(tmp_path):
    cfg = shared_path("darknet-cfg", "yolov3.cfg")
    network = build_network(cfg)
    rng = np.random.default_rng(75)
    arrays = {spec.index: {a.name: rng.standard_normal(a.shape, dtype=np.float32)
                           for a in wanted}
              for spec, wanted in file_layout(network.layers)}
    full = tmp_path / "yolov3.weights"
    save_weights(full, WeightsHeader(0, 2, 5, 987654321), network.layers, arrays)
    out = tmp_path / "yolov3.conv.75"
    assert run(["partial", str(cfg), str(full), str(out), "--layers", "75"]) == 0
    data = out.read_bytes()
    # layers 0..74 hold 40,620,640 floats (layer 74 is a shortcut without weights)
    assert len(data) == 20 + 4 * 40_620_640
    with open(full, "rb") as handle:
        assert handle.read(len(data)) == data
    back = load_weights(out, network.layers)
    assert back.covered == 75 and back.header.seen == 987654321
    assert np.array_equal(back.layers[73].arrays["weights"], arrays[73]["weights"])


@pytest.fixture
def tiny_files(tmp_path):
    cfg = tmp_path / "t.cfg"
    cfg.write_text("[net]\nwidth=4\nheight=4\nchannels=1\n\n[convolutional]\nfilters=2\n"
                   "size=1\nactivation=linear\n\n[maxpool]\nsize=1\nstride=1\n\n"
                   "[convolutional]\nfilters=3\nsize=1\nactivation=linear\n")
    network = build_network(cfg)
    arrays = {0: {"biases": np.array([1, 2], np.float32),
                  "weights": np.array([3, 4], np.float32)},
              2: {"biases": np.array([5, 6, 7], np.float32),
                  "weights": np.array([8, 9, 10, 11, 12, 13], np.float32)}}
    weights = tmp_path / "t.weights"
    save_weights(weights, WeightsHeader(0, 1, 0, 7), network.layers, arrays)  # 16-byte header
    return cfg, weights


def test_old_header_and_layer_counts(tiny_files, tmp_path):
    cfg, weights = tiny_files
    full = weights.read_bytes()
    assert len(full) == 16 + 4 * 13
    expect = {0: 16, 1: 16 + 16, 2: 16 + 16, 3: len(full)}
    for n, size in expect.items():
        out = tmp_path / f"p{n}.weights"
        write_partial(cfg, weights, out, n)
        assert out.read_bytes() == full[:size], n
    with pytest.raises(UsageError, match="expected 0..3"):
        write_partial(cfg, weights, tmp_path / "p4.weights", 4)
    # a partial input cannot provide more layers than it holds
    with pytest.raises(WeightsError, match="layers 0..1 only"):
        write_partial(cfg, tmp_path / "p2.weights", tmp_path / "p3b.weights", 3)


@pytest.mark.parametrize("case", ["missing cfg", "missing weights", "exists", "same as input",
                                  "too many layers"])
def test_cli_user_errors(case, tiny_files, tmp_path, capsys):
    cfg, weights = tiny_files
    out = tmp_path / "out.weights"
    existing = tmp_path / "existing.weights"
    existing.write_bytes(b"keep")
    args = {"missing cfg": [tmp_path / "no.cfg", weights, out, "1"],
            "missing weights": [cfg, tmp_path / "no.weights", out, "1"],
            "exists": [cfg, weights, existing, "1"],
            "same as input": [cfg, weights, weights, "1"],
            "too many layers": [cfg, weights, out, "9"]}[case]
    argv = ["partial", *map(str, args[:3]), "--layers", args[3]]
    before = weights.read_bytes()
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("netsurgery: error:"), err
    assert weights.read_bytes() == before and existing.read_bytes() == b"keep"
    assert not out.exists()


def test_cli_overwrite(tiny_files, tmp_path, capsys):
    cfg, weights = tiny_files
    out = tmp_path / "out.weights"
    out.write_bytes(b"old")
    assert run(["partial", str(cfg), str(weights), str(out), "--layers", "1"]) == 2
    assert out.read_bytes() == b"old"
    assert run(["partial", str(cfg), str(weights), str(out), "--layers", "1",
                "--overwrite"]) == 0
    assert out.read_bytes() == weights.read_bytes()[:32]
    assert "wrote layers 0..0 (1 with weights, last 0)" in capsys.readouterr().out
