"""Our [yolo] outputs agree with OpenCV's Darknet importer, an implementation independent of
Darknet and of us (see ``independent_checks.opencv`` in each conformance case's meta.json)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromDarknet"):
    pytest.skip("this OpenCV has no Darknet importer", allow_module_level=True)

from conftest import data_path, shared_path  # noqa: E402
from opencv_util import opencv_cfg_text, opencv_yolo_outputs, to_opencv_layout  # noqa: E402

from netsurgery import load_model  # noqa: E402

CASES = ["cov-cls-64", "cov-det-96", "yolov4-tiny-160", "yolov3-tiny-coco"]
ABS_TOL = 1e-4


def opencv_meta(case: str) -> dict:
    meta = json.loads(data_path("conformance", case, "meta.json").read_text())
    return meta["independent_checks"]["opencv"]


@pytest.mark.parametrize("case", CASES)
def test_yolo_outputs_match_opencv(case, tmp_path):
    folder = data_path("conformance", case)
    cfg, weights = folder / "net.cfg", data_path("conformance", case, "net.weights")
    meta = opencv_meta(case)
    x = np.load(folder / "input.npy")
    if "refused" in meta:
        # OpenCV has no hard_mish: it must refuse the cfg, as recorded with the case.
        with pytest.raises(cv2.error, match="Unsupported activation: hard_mish"):
            opencv_yolo_outputs(cfg, weights, x, tmp_path)
        return
    expected = sorted(int(k.removeprefix("layer_")) for k in meta if k.startswith("layer_"))
    cv_out = opencv_yolo_outputs(cfg, weights, x, tmp_path)
    assert sorted(cv_out) == expected
    model = load_model(cfg, weights, inference=True)
    with torch.no_grad():
        ours = model.run(torch.from_numpy(x), expected)
    net = model.network.net
    darknet = np.load(folder / "layers.npz")
    for index in expected:
        spec = model.network.layers[index]
        mine = to_opencv_layout(ours[index], spec, net.width, net.height)
        assert mine.shape == tuple(meta[f"layer_{index:03d}"]["shape_cv"]) == cv_out[index].shape
        assert np.abs(mine - cv_out[index]).max() <= ABS_TOL, f"layer {index}"
        # Darknet's own dump through the helper agrees with OpenCV too; with the OpenCV
        # release used for meta.json it reproduces the recorded difference, so the layout
        # mapping is the one used there.
        theirs = to_opencv_layout(darknet[f"layer_{index:03d}"], spec, net.width, net.height)
        diff = np.abs(theirs - cv_out[index]).max()
        assert diff <= ABS_TOL
        if cv2.__version__ == meta["opencv"]:
            recorded = meta[f"layer_{index:03d}"]["max_abs_diff_opencv_layout"]
            assert diff == pytest.approx(recorded, rel=1e-3)


def test_to_opencv_layout_by_hand():
    """One 2×3 grid, two anchors, one class, values picked so every column is easy to check."""
    spec = SimpleNamespace(mask=[1, 2], classes=1, new_coords=False,
                           head_anchors=[(20.0, 30.0), (40.0, 10.0)])
    out = np.zeros((2 * 6, 2, 3), np.float32)  # (A·(5+C), H, W)
    a, y, x = 1, 1, 2  # anchor 1 at row 1, column 2
    out[a * 6 + 0, y, x] = 0.25  # x offset
    out[a * 6 + 1, y, x] = 0.5  # y offset
    out[a * 6 + 2, y, x] = np.log(2.0)  # w: exp → 2 · anchor_w
    out[a * 6 + 3, y, x] = 0.0  # h: exp → 1 · anchor_h
    out[a * 6 + 4, y, x] = 0.8  # objectness
    out[a * 6 + 5, y, x] = 0.5  # class score
    res = to_opencv_layout(out, spec, net_w=100, net_h=50)
    assert res.shape == (2 * 3 * 2, 6)
    row = (y * 3 + x) * 2 + a
    np.testing.assert_allclose(res[row], [(2 + 0.25) / 3, (1 + 0.5) / 2, 2 * 40 / 100,
                                          10 / 50, 0.8, 0.4], rtol=1e-6)
    # every other cell: zero offsets → grid position, exp(0) → anchor size, prob 0 → 0
    other = (0 * 3 + 1) * 2 + 0  # row 0, column 1, anchor 0
    np.testing.assert_allclose(res[other], [1 / 3, 0, 20 / 100, 30 / 50, 0, 0], atol=1e-7)
    spec.new_coords = True
    res = to_opencv_layout(out, spec, net_w=100, net_h=50)
    np.testing.assert_allclose(res[row, 2:4], [4 * np.log(2.0) ** 2 * 40 / 100, 0], atol=1e-7)
    assert to_opencv_layout(out, spec, 100, 50, thresh=0.5)[row, 5] == 0  # 0.4 ≤ thresh


def test_opencv_cfg_text_adds_thresholds_to_each_yolo():
    text = "[net]\nwidth=32\n[yolo]\nclasses=1\n\n[yolo]\nclasses=2\n"
    out = opencv_cfg_text(text)
    assert out.count("thresh=0\nnms_threshold=0") == 2
    assert "[yolo]\nthresh=0\nnms_threshold=0\nclasses=1" in out


NEW_COORDS_CFG = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=mish

[convolutional]
filters=18
size=1
stride=1
pad=1
activation=logistic

[yolo]
mask=0,1,2
anchors=12,16, 19,36, 40,28
classes=1
num=3
scale_x_y=2.0
new_coords=1
"""


def test_new_coords_head_matches_opencv(tmp_path):
    """No conformance case has new_coords=1 (yolov4-csp's head); OpenCV implements it, so a
    tiny network with random weights checks our [yolo] for it (and scale_x_y=2)."""
    cfg_path = tmp_path / "nc.cfg"
    cfg_path.write_text(NEW_COORDS_CFG)
    model = load_model(cfg_path)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.layers:
            for name, t in module.weight_tensors():
                t.copy_(torch.rand(t.shape, generator=gen) * 0.6 - 0.3 if name != "rolling_variance"
                        else torch.rand(t.shape, generator=gen) + 0.5)
    weights = tmp_path / "nc.weights"
    model.save_weights(weights)
    model = load_model(cfg_path, weights, inference=True)
    x = np.random.default_rng(3).random((1, 3, 64, 64), dtype=np.float32)
    cv_out = opencv_yolo_outputs(cfg_path, weights, x, tmp_path)
    assert list(cv_out) == [2]
    with torch.no_grad():
        ours = model(torch.from_numpy(x))[0]
    # new_coords: nothing activated inside [yolo], x and y still scaled by scale_x_y
    conv = model.run(torch.from_numpy(x), [1])[1]
    torch.testing.assert_close(ours[:, 2::6], conv[:, 2::6])
    torch.testing.assert_close(ours[:, 0::6], conv[:, 0::6] * 2.0 - 0.5)
    mine = to_opencv_layout(ours, model.network.layers[2], 64, 64)
    assert np.abs(mine - cv_out[2]).max() <= ABS_TOL



@pytest.mark.parametrize("how", ["built", "resized"])
def test_other_input_size_matches_opencv(how, tmp_path):
    """The real yolov3-tiny run at 320×224 (``--size``, or a 416 model resized as in
    multi-scale training) agrees with OpenCV given a 320×224 blob: OpenCV reshapes the whole
    network to its input, independently of our shape inference."""
    cfg = shared_path("darknet-cfg", "yolov3-tiny.cfg")
    weights = shared_path("models", "yolov3-tiny.weights")
    if how == "built":
        model = load_model(cfg, weights, size=(320, 224), inference=True)
    else:
        model = load_model(cfg, weights, inference=True).resize(320, 224)
    from netsurgery.detection.image import load_image, resize_image

    x = resize_image(load_image(shared_path("images", "dog.jpg")), 320, 224)[None]
    cv_out = opencv_yolo_outputs(cfg, weights, x, tmp_path)
    assert sorted(cv_out) == [16, 23]
    with torch.no_grad():
        ours = model.run(torch.from_numpy(x), [16, 23])
    for index in (16, 23):
        mine = to_opencv_layout(ours[index], model.network.layers[index], 320, 224)
        assert mine.shape == cv_out[index].shape == ((10 * 7 if index == 16 else 20 * 14) * 3, 85)
        assert np.abs(mine - cv_out[index]).max() <= ABS_TOL, f"layer {index}"
