"""The .weights reader/writer: byte-identical round trips, partial and broken files, both
header sizes, transposed [connected] matrices, and the per-layer array layout."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from conftest import shared_path

from netsurgery import WeightsError, WeightsHeader, build_network, load_model, parse_cfg_text
from netsurgery.darknet.weights import (
    expected_size,
    file_layout,
    layer_arrays,
    load_weights,
    load_weights_bytes,
    nonfinite_report,
    read_header,
    save_weights,
)

YOLOV3_TINY_BYTES = 35434956  # 20-byte header + 8858734 floats


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny():
    """(network, weights bytes, WeightsFile) of the real COCO yolov3-tiny."""
    cfg = shared_path("darknet-cfg", "yolov3-tiny.cfg")
    weights = shared_path("models", "yolov3-tiny.weights")
    network = build_network(cfg)
    return network, weights.read_bytes(), load_weights(weights, network.layers)


# -- the real yolov3-tiny -----------------------------------------------------------------
def test_yolov3_tiny_reads_as_darknet_does(tiny):
    network, data, wf = tiny
    assert len(data) == wf.file_size == YOLOV3_TINY_BYTES == expected_size(network.layers,
                                                                            wf.header)
    assert wf.header == WeightsHeader(0, 2, 0, 32013312)
    assert (wf.covered, wf.complete, wf.notes) == (24, True, [])
    assert sorted(wf.layers) == [0, 2, 4, 6, 8, 10, 12, 13, 14, 15, 18, 21, 22]
    first = wf.layers[0]
    assert list(first.arrays) == ["biases", "scales", "rolling_mean", "rolling_variance",
                                  "weights"]
    assert first.offset == 20 and first.arrays["weights"].shape == (16, 3, 3, 3)
    np.testing.assert_array_equal(first.arrays["biases"],
                                  np.frombuffer(data[20:84], "<f4"))  # the first 16 floats
    head = wf.layers[15]  # the conv before the first [yolo]: no BatchNorm
    assert list(head.arrays) == ["biases", "weights"]
    assert head.arrays["weights"].shape == (255, 512, 1, 1)
    assert wf.layers[22].offset + wf.layers[22].nbytes == len(data)


def test_yolov3_tiny_load_save_is_byte_identical(tiny, tmp_path):
    network, data, wf = tiny
    src = shared_path("models", "yolov3-tiny.weights")
    out = tmp_path / "copy.weights"
    save_weights(out, wf.header, network.layers, layer_arrays(wf))
    assert sha256(out) == sha256(src)
    model = load_model(network, src)
    out2 = tmp_path / "model.weights"
    model.save_weights(out2)
    assert out2.read_bytes() == data
    # upto=13: Darknet's `partial cfg weights out 13` is the first bytes of the file
    out3 = tmp_path / "partial.weights"
    model.save_weights(out3, upto=13)
    assert out3.read_bytes() == data[:wf.layers[13].offset]


def test_cut_inside_layer_13_is_an_error_naming_layer_13(tiny):
    network, data, wf = tiny
    cut = wf.layers[13].offset + 4000
    with pytest.raises(WeightsError) as info:
        load_weights_bytes(data[:cut], network.layers, "cut.weights")
    msg = str(info.value)
    assert msg.startswith("cut.weights: ends inside layer 13 [convolutional]")
    assert f"need {wf.layers[13].nbytes} bytes from offset {wf.layers[13].offset}" in msg
    assert "only 4000 are left" in msg and f"file is {cut} bytes" in msg


def test_cut_after_layer_12_loads_13_layers(tiny, tmp_path):
    network, data, wf = tiny
    path = tmp_path / "first13.weights"
    path.write_bytes(data[:wf.layers[13].offset])
    part = load_weights(path, network.layers)
    assert (part.covered, part.complete) == (13, False)
    assert sorted(part.layers) == [0, 2, 4, 6, 8, 10, 12]
    assert part.notes == ["partial weights: layers 0..12 of 24 (the file stops after layer 12)"]
    assert "layers 0..12 (13 of 24 layers)" in part.describe_coverage()
    with pytest.raises(WeightsError, match="holds weights for layers 0..12 only"):
        load_weights(path, network.layers, allow_partial=False)
    # a model on the partial file computes layers 0..12 like the full one (at a small size)
    full = load_model(network.cfg, shared_path("models", "yolov3-tiny.weights"), size=(64, 64))
    partial = load_model(network.cfg, path, size=(64, 64))
    assert partial.weights_notes == part.notes
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(partial.run(x, [12])[12], full.run(x, [12])[12],
                                   rtol=0, atol=0)


def test_extra_bytes_are_an_error_with_the_byte_counts(tiny):
    network, data, _ = tiny
    with pytest.raises(WeightsError) as info:
        load_weights_bytes(data + bytes(12), network.layers, "long.weights")
    msg = str(info.value)
    assert "12 bytes left over after the last layer with weights (layer 22)" in msg
    assert f"the cfg needs {YOLOV3_TINY_BYTES} bytes, the file has {YOLOV3_TINY_BYTES + 12}" \
        in msg


def test_sixteen_byte_header_round_trip(tiny, tmp_path):
    network, data, wf = tiny
    header = WeightsHeader(0, 1, 0, 123456)  # major·10+minor < 2: seen is a uint32
    raw = np.array([0, 1, 0], "<i4").tobytes() + np.array([123456], "<u4").tobytes()
    assert header.to_bytes() == raw and header.size == 16
    path = tmp_path / "old.weights"
    path.write_bytes(raw + data[20:])
    old = load_weights(path, network.layers)
    assert old.header == header and old.complete
    assert old.layers[0].offset == 16
    np.testing.assert_array_equal(old.layers[22].arrays["weights"],
                                  wf.layers[22].arrays["weights"])
    model = load_model(network, path)
    out = tmp_path / "again.weights"
    model.save_weights(out)
    assert out.read_bytes() == path.read_bytes()


def test_header_only_and_broken_headers(tiny, tmp_path):
    network, data, _ = tiny
    empty = load_weights_bytes(data[:20], network.layers, "h.weights")
    assert (empty.covered, empty.layers) == (0, {})
    assert empty.notes[0].startswith("no layer weights: the file holds only the header")
    with pytest.raises(WeightsError, match="10 bytes is too short"):
        load_weights_bytes(data[:10], network.layers, "s.weights")
    with pytest.raises(WeightsError, match=r"too short for a version 0\.2\.0 header "
                                           r"\(expected 20\)"):
        read_header(data[:18], "s.weights")
    with pytest.raises(WeightsError, match="file not found"):
        load_weights(tmp_path / "missing.weights", network.layers)
    with pytest.raises(WeightsError, match="is a folder"):
        load_weights(tmp_path, network.layers)


def test_arrays_are_copy_on_write_views(tiny):
    network, data, _ = tiny
    path = shared_path("models", "yolov3-tiny.weights")
    wf = load_weights(path, network.layers)
    wf.layers[0].arrays["biases"][:] = 7.0
    assert path.read_bytes()[20:84] == data[20:84]


def test_nonfinite_report(tiny):
    network, data, wf = tiny
    bad = bytearray(data)
    at = wf.layers[4].offset + 4 * 3  # layer 4, biases[3]
    bad[at:at + 4] = np.array([np.nan], "<f4").tobytes()
    bad[at + 8:at + 12] = np.array([np.inf], "<f4").tobytes()
    assert nonfinite_report(load_weights_bytes(bytes(bad), network.layers)) == \
        [(4, "biases", 2)]
    assert nonfinite_report(wf) == []


# -- transposed [connected] (major or minor > 1000) ---------------------------------------
def test_transposed_connected_round_trip(tmp_path):
    folder = shared_path("conformance", "cov-cls-64")
    cfg, weights = folder / "net.cfg", folder / "net.weights"
    network = build_network(cfg)
    wf = load_weights(weights, network.layers)
    data = weights.read_bytes()
    # Write the transposed copy by hand: header 0.1001.5, each [connected] matrix stored
    # (inputs, outputs) right after its biases.
    transposed = bytearray(WeightsHeader(0, 1001, 5, 0).to_bytes() + data[20:])
    connected = [i for i, lw in wf.layers.items() if lw.type == "connected"]
    assert connected == [14, 16]
    for i in connected:
        lw = wf.layers[i]
        w = np.array(lw.arrays["weights"])  # (outputs, inputs)
        start = lw.offset + 4 * lw.arrays["biases"].size
        transposed[start:start + w.nbytes] = np.ascontiguousarray(w.T).tobytes()
    path = tmp_path / "t.weights"
    path.write_bytes(bytes(transposed))
    assert bytes(transposed) != data

    t_wf = load_weights(path, network.layers)
    assert t_wf.header.transposed and t_wf.layers[14].arrays["weights"].shape == (768, 64)
    x = torch.from_numpy(np.load(folder / "input.npy"))
    plain, flipped = load_model(network, weights), load_model(network, path)
    for i in connected:
        torch.testing.assert_close(flipped.layers[i].weights, plain.layers[i].weights,
                                   rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(flipped(x)[0], plain(x)[0], rtol=0, atol=0)
    # saved with the header it was read with: the same bytes
    flipped.save_weights(tmp_path / "t2.weights")
    assert (tmp_path / "t2.weights").read_bytes() == bytes(transposed)
    # the layout follows the header being written, whatever was read
    flipped.save_weights(tmp_path / "plain.weights", header=WeightsHeader(0, 2, 5, 0))
    assert (tmp_path / "plain.weights").read_bytes() == data
    plain.save_weights(tmp_path / "t3.weights", header=WeightsHeader(0, 1001, 5, 0))
    assert (tmp_path / "t3.weights").read_bytes() == bytes(transposed)


# -- layout rules on small cfgs -----------------------------------------------------------
LAYOUT_CFG = """[net]
width=8
height=8
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
pad=1
activation=leaky

[convolutional]
filters=4
size=1
groups=2
activation=linear

[shortcut]
from=-2
weights_type=per_channel

[maxpool]
size=2
stride=2

[convolutional]
filters=2
size=1
dontload=1

[connected]
output=5
batch_normalize=1
dontloadscales=1

[batchnorm]

[connected]
output=3
batch_normalize=1
"""


def test_layout_by_hand():
    network = build_network(parse_cfg_text(LAYOUT_CFG, "layout.cfg"))
    layout = {spec.index: [(a.name, a.shape) for a in arrays]
              for spec, arrays in file_layout(network.layers)}
    assert layout == {
        0: [("biases", (4,)), ("scales", (4,)), ("rolling_mean", (4,)),
            ("rolling_variance", (4,)), ("weights", (4, 3, 3, 3))],
        1: [("biases", (4,)), ("weights", (4, 2, 1, 1))],
        2: [("weights", (2, 4))],  # per_channel: (sources+1)·C
        # 3 maxpool: nothing; 4 dontload=1: Darknet skips it, it takes no bytes
        5: [("biases", (5,)), ("weights", (5, 2 * 4 * 4))],  # dontloadscales: no BN arrays
        6: [("biases", (5,)), ("scales", (5,)), ("rolling_mean", (5,)),
            ("rolling_variance", (5,))],
        7: [("biases", (3,)), ("weights", (3, 5)), ("scales", (3,)), ("rolling_mean", (3,)),
            ("rolling_variance", (3,))],  # BN arrays after the weights
    }
    floats = (4 * 4 + 108) + (4 + 8) + 8 + (5 + 160) + 20 + (3 + 15 + 9)
    assert expected_size(network.layers) == 20 + 4 * floats
    transposed = {spec.index: [a.shape for a in arrays]
                  for spec, arrays in file_layout(network.layers, transposed=True)}
    assert transposed[5][1] == (32, 5) and transposed[7][1] == (5, 3)


def test_layout_cfg_round_trips_through_the_model(tmp_path):
    """Every array of every layer kind lands where it was read from."""
    cfg = parse_cfg_text(LAYOUT_CFG, str(tmp_path / "layout.cfg"))
    network = build_network(cfg)
    n = (expected_size(network.layers) - 20) // 4
    values = np.arange(1, n + 1, dtype="<f4") / n + 0.5  # distinct, positive (variances)
    path = tmp_path / "layout.weights"
    path.write_bytes(WeightsHeader().to_bytes() + values.tobytes())
    model = load_model(network, path)
    torch.testing.assert_close(model.layers[6].rolling_mean,
                               torch.from_numpy(values[-27 - 20 + 10:-27 - 20 + 15]))
    out = tmp_path / "again.weights"
    model.save_weights(out)
    assert out.read_bytes() == path.read_bytes()


def test_random_arrays_are_seeded_complete_and_plausible():
    """The library's random weights: one array per file-layout entry, reproducible by seed,
    positive BatchNorm variances, He-scaled kernels (std ≈ 1/sqrt(fan_in))."""
    from netsurgery.darknet.weights import random_arrays

    network = build_network(parse_cfg_text(LAYOUT_CFG))
    a, b = random_arrays(network.layers, 7), random_arrays(network.layers, 7)
    for spec, wanted in file_layout(network.layers):
        assert [w.name for w in wanted] == list(a[spec.index])
        for w in wanted:
            assert a[spec.index][w.name].shape == w.shape
            assert np.array_equal(a[spec.index][w.name], b[spec.index][w.name])
            if w.name == "rolling_variance":
                assert a[spec.index][w.name].min() >= 0.5
    big = build_network(parse_cfg_text("[net]\nwidth=8\nheight=8\nchannels=64\n"
                                       "[convolutional]\nfilters=64\nsize=3\npad=1\n"
                                       "activation=linear\n"))
    kernel = random_arrays(big.layers, 0)[0]["weights"]
    assert np.std(kernel) == pytest.approx(1 / np.sqrt(64 * 9), rel=0.05)
