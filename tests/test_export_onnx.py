"""ONNX export: onnxruntime reproduces our model (and Darknet's stored outputs) on every
conformance case, the big cfgs with random weights, and a merged network with two heads of
different class counts; --decode equals our decoder; detect through onnxruntime gives the
PyTorch path's detections."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import data_path

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from netsurgery.cli.app import run  # noqa: E402
from netsurgery.darknet.cfg import parse_cfg_text  # noqa: E402
from netsurgery.darknet.model import DarknetModel, load_model  # noqa: E402
from netsurgery.darknet.network import build_network  # noqa: E402
from netsurgery.darknet.weights import random_arrays  # noqa: E402
from netsurgery.detection.decode import YoloHead, decode_yolo, printed_detections  # noqa: E402
from netsurgery.detection.detect import detect_batch, heads_of  # noqa: E402
from netsurgery.detection.image import preprocess  # noqa: E402
from netsurgery.export import build_onnx, export_heads, read_info  # noqa: E402
from netsurgery.export.runtime import OnnxRunner  # noqa: E402

REL_TOL = 1e-4
CONFORMANCE = ["yolov3-tiny-coco", "yolov4-tiny-160", "cov-det-96", "cov-cls-64"]
BIG_CFGS = ["yolov3", "yolov3-spp", "yolov4", "yolov4-tiny", "yolov4-csp", "yolov7-tiny"]


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got − want| / max(1, max |want|)."""
    assert got.shape == want.shape
    return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))


def session(exported):
    import onnxruntime as ort

    return ort.InferenceSession(exported.data, providers=["CPUExecutionProvider"])


def outputs_by_layer(sess, x: np.ndarray) -> dict[int, np.ndarray]:
    info = read_info(sess.get_modelmeta().custom_metadata_map)
    got = sess.run([o.name for o in info.outputs], {"input": x})
    return {o.layer: g for o, g in zip(info.outputs, got)}


def ours(model: DarknetModel, x: np.ndarray) -> dict[int, np.ndarray]:
    targets = model.network.outputs()
    with torch.inference_mode():
        out = model.run(torch.from_numpy(x), targets)
    return {t: out[t].numpy() for t in targets}


def batch_of_three(x: np.ndarray) -> np.ndarray:
    """The image, a random one and the image mirrored: three different rows."""
    noise = np.random.default_rng(7).random(x.shape, dtype=np.float32)
    return np.concatenate([x, noise, np.ascontiguousarray(x[..., ::-1])])


def check_both_batches(model: DarknetModel, heads, x: np.ndarray) -> None:
    """A fixed batch-1 graph on ``x`` and a dynamic-batch graph on three images equal our
    model's outputs."""
    for batch, inp in ((1, x), (None, batch_of_three(x))):
        got = outputs_by_layer(session(build_onnx(model, heads, batch=batch)), inp)
        want = ours(model, inp)
        assert sorted(got) == sorted(want)
        for layer in want:
            assert rel_error(got[layer], want[layer]) <= REL_TOL, (batch, layer)


@pytest.mark.parametrize("case", CONFORMANCE)
def test_conformance_cases(case):
    model = load_model(data_path("conformance", case, "net.cfg"),
                       data_path("conformance", case, "net.weights"), inference=True)
    heads = export_heads(model, base_name="net")
    x = np.load(data_path("conformance", case, "input.npy"))
    check_both_batches(model, heads, x)
    # and Darknet's own outputs, where the case stored them
    stored = np.load(data_path("conformance", case, "layers.npz"))
    got = outputs_by_layer(session(build_onnx(model, heads)), x)
    compared = 0
    for layer, out in got.items():
        if f"layer_{layer:03d}" in stored:
            want = stored[f"layer_{layer:03d}"]
            assert rel_error(out[0].reshape(want.shape), want) <= REL_TOL, layer
            compared += 1
    assert compared == len(got)


def with_random_weights(network, seed: int = 1) -> DarknetModel:
    """Our model of ``network`` with plausible random weights, in the fast inference mode."""
    model = DarknetModel(network)
    with torch.no_grad():
        for index, arrays in random_arrays(network.layers, seed).items():
            for key, tensor in model.layers[index].weight_tensors():
                tensor.copy_(torch.from_numpy(arrays[key]).view_as(tensor))
    return model.inference()


def random_model(name: str, size: int = 128) -> DarknetModel:
    return with_random_weights(build_network(data_path("darknet-cfg-all", f"{name}.cfg"),
                                             size=(size, size)))


# every layer type and activation the conformance cases leave out
EVERY_LAYER_CFG = "[net]\nwidth=16\nheight=16\nchannels=3\n" + \
    "[convolutional]\nfilters=8\nsize=3\npad=1\nbatch_normalize=1\nactivation=relu6\n" + \
    "".join(f"[activation]\nactivation={a}\n" for a in (
        "elu", "selu", "gelu", "loggy", "ramp", "lhtan", "hardtan", "plse", "relie",
        "hard_mish")) + """[batchnorm]
[convolutional]
filters=8
size=1
activation=tanh
[shortcut]
from=-3
weights_type=per_feature
weights_normalization=relu
activation=swish
[shortcut]
from=-2
weights_type=per_channel
weights_normalization=softmax
[convolutional]
filters=4
size=1
activation=linear
[route]
layers=14
[shortcut]
from=15
[shortcut]
from=15
weights_type=per_channel
[local_avgpool]
size=3
stride=2
[reorg3d]
stride=2
[upsample]
stride=2
scale=0.5
[maxpool]
size=3
stride=2
padding=0
[connected]
output=10
batch_normalize=1
activation=leaky
[softmax]
groups=2
temperature=2
[cost]
"""


# the layer types beyond YOLOv3/v4's that have an ONNX export
OTHER_LAYERS_CFG = """[net]
width=8
height=8
channels=3
[convolutional]
filters=12
size=1
activation=linear
[convolutional]
filters=18
size=1
activation=linear
[yolo]
mask=0,1,2
num=3
classes=1
embedding_layer=-2
[route]
layers=0
[contrastive]
yolo_layer=-2
[route]
layers=0
[normalization]
size=5
alpha=0.01
[crop]
crop_height=4
crop_width=6
[implicit]
filters=4
atoms=2
[route]
layers=0
[convolutional]
filters=22
size=1
activation=linear
[Gaussian_yolo]
mask=0,1
num=3
classes=2
scale_x_y=1.2
anchors=1,2,3,4,5,6
[route]
layers=0
[connected]
output=52
activation=linear
[detection]
classes=3
coords=4
num=2
side=2
softmax=1
"""


def assert_every_layer_equal(cfg_text: str, size: tuple[int, int], tmp_path,
                             opsets=(17,)) -> set[str]:
    """Every layer's output (not only the last) of a graph with dynamic batch, run on three
    images, equals our model's; returns the layer types of the network."""
    cfg = tmp_path / "every.cfg"
    cfg.write_text(cfg_text)
    network = build_network(cfg)
    model = with_random_weights(network, seed=4)
    x = np.random.default_rng(2).random((1, 3, size[1], size[0]), dtype=np.float32) * 4 - 2
    every = list(range(len(network.layers)))
    with torch.inference_mode():
        want = model.layer_outputs(torch.from_numpy(batch_of_three(x)))
    for opset in opsets:
        exported = build_onnx(model, [], batch=None, opset=opset, extra_layers=every)
        got = outputs_by_layer(session(exported), batch_of_three(x))
        for layer in every:
            assert rel_error(got[layer], want[layer].numpy()) <= REL_TOL, (opset, layer)
    return {s.type_name for s in network.layers}


def test_every_layer_type_and_activation(tmp_path):
    from netsurgery.darknet.layers import REGISTRY
    from netsurgery.export.layers import EMITTERS, NO_ONNX

    # a new layer type needs its emitter, or a reason why it has none
    assert set(REGISTRY) == set(EMITTERS) | set(NO_ONNX)
    # the oldest, default and newest opset
    types = assert_every_layer_equal(EVERY_LAYER_CFG, (16, 16), tmp_path,
                                     (13, 17, onnx.defs.onnx_opset_version()))
    types |= assert_every_layer_equal(OTHER_LAYERS_CFG, (8, 8), tmp_path)
    in_conformance = {"yolo", "region", "reorg", "avgpool", "route", "sam", "scale_channels",
                      "dropout", "empty"}  # and the tests above
    assert types >= set(EMITTERS) - in_conformance
    crop = build_network(parse_cfg_text(EVERY_LAYER_CFG, "e.cfg")).layers[22]
    assert crop.type_name == "maxpool" and min(crop.pads()) < 0  # a window that crops


def test_layers_without_onnx_are_named(tmp_path):
    from netsurgery.errors import NetsurgeryError

    cfg = tmp_path / "rnn.cfg"
    cfg.write_text("[net]\nwidth=4\nheight=4\nchannels=3\n[connected]\noutput=8\n"
                   "[rnn]\noutput=4\nhidden=4\n")
    model = with_random_weights(build_network(cfg))
    with pytest.raises(NetsurgeryError, match=r"rnn\.cfg: layer 1 \[rnn\] has no ONNX export "
                                              r"\(its state carries over"):
        build_onnx(model, [])


@pytest.mark.parametrize("name", BIG_CFGS)
def test_big_cfgs_with_random_weights(name):
    """Real shapes at 128×128, random weights; one dynamic-batch graph at batch 1 and 3."""
    model = random_model(name)
    sess = session(build_onnx(model, export_heads(model, base_name=name), batch=None))
    x = np.random.default_rng(3).random((1, 3, 128, 128), dtype=np.float32)
    for inp in (x, batch_of_three(x)):
        got, want = outputs_by_layer(sess, inp), ours(model, inp)
        assert sorted(got) == sorted(want) == model.network.heads()
        for layer in want:
            assert rel_error(got[layer], want[layer]) <= REL_TOL, layer


# -- a merged network: two heads with different class counts ------------------------------------
@pytest.fixture(scope="module")
def merged(tmp_path_factory, yolov3_tiny):
    from test_merge import make_task

    from netsurgery.surgery.merge import merge_files
    from netsurgery.surgery.weighted import load_weighted

    root = tmp_path_factory.mktemp("onnx_merged")
    cfg, weights = yolov3_tiny
    base = load_weighted(cfg, weights)
    task = make_task(base, 12, 3, seed=5)
    for spec in task.network.layers:  # the text head: COCO's first 3 classes, so that it
        if spec.type_name == "yolo":  # finds real objects (random weights: thousands)
            rows = [a * 85 + f for a in range(3) for f in range(8)]
            task.arrays[spec.index - 1] = {k: v[rows] for k, v in
                                           base.arrays[spec.index - 1].items()}
    task.save(root / "text.cfg", root / "text.weights")
    out = root / "merged"
    merge_files(str(cfg), str(weights), [f"text={root}/text.cfg:{root}/text.weights"], str(out),
                share_until=12, base_name="coco",
                names={"coco": str(data_path("models", "coco.names"))})
    return out


def test_merged_network_outputs(merged):
    model = load_model(f"{merged}.cfg", f"{merged}.weights", inference=True)
    heads = export_heads(model, f"{merged}.heads.json")
    assert [(h.name, h.layers) for h in heads] == [("coco", [16, 23]), ("text", [28, 35])]
    x = np.load(data_path("conformance", "yolov3-tiny-coco", "input.npy"))
    check_both_batches(model, heads, x)


def test_export_cli_names_metadata_and_determinism(merged, tmp_path):
    args = ["export", f"{merged}.cfg", f"{merged}.weights", "--heads", f"{merged}.heads.json",
            "--dynamic-batch"]
    assert run([*args, "-o", str(tmp_path / "a.onnx")]) == 0
    assert run([*args, "-o", str(tmp_path / "b.onnx")]) == 0
    data = (tmp_path / "a.onnx").read_bytes()
    assert data == (tmp_path / "b.onnx").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"]  # no data files
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    assert [o.name for o in proto.graph.output] == ["coco/16", "coco/23", "text/28", "text/35"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    info = read_info(proto)
    assert [(h["name"], h["classes"]) for h in info.heads] == [("coco", 80), ("text", 3)]
    assert info.heads[0]["class_names"][:2] == ["person", "bicycle"]
    assert info.heads[1]["layers"] == [28, 35] and info.batch is None
    # BatchNorm folded and constants folded: no BatchNormalization node, and every node
    # reads at least one computed tensor
    constants = {t.name for t in proto.graph.initializer}
    assert all(n.op_type != "BatchNormalization" for n in proto.graph.node)
    assert all(any(i and i not in constants for i in n.input) for n in proto.graph.node)
    assert all(not t.external_data for t in proto.graph.initializer)


# -- --decode ---------------------------------------------------------------------------------
NEW_COORDS_CFG = """[net]
width=64
height=32
channels=3

[convolutional]
filters=16
size=3
stride=4
pad=1
batch_normalize=1
activation=mish

[convolutional]
filters=14
size=1
activation=logistic

[yolo]
mask=0,1
anchors=12,16, 19,36, 40,28
classes=2
num=3
scale_x_y=2.0
new_coords=1
"""


def decoded_by_us(model: DarknetModel, layers, x: np.ndarray):
    """decode_yolo at threshold −1 (every candidate), boxes scaled to input pixels."""
    net = model.network.net
    outs = ours(model, x) if set(layers) <= set(model.network.outputs()) else None
    boxes, objectness, probs = [], [], []
    for layer in layers:
        spec = model.network.layers[layer]
        head = YoloHead(list(spec.mask), list(spec.anchors), spec.classes, spec.new_coords)
        dets = decode_yolo(outs[layer][0], head, net.width, net.height, net.width, net.height,
                           -1.0, False)
        boxes += [[d.box.x * net.width, d.box.y * net.height, d.box.w * net.width,
                   d.box.h * net.height] for d in dets]
        objectness += [d.objectness for d in dets]
        probs += [d.probs for d in dets]
    return np.array(boxes), np.array(objectness), np.array(probs)


@pytest.mark.parametrize("which", ["yolov3-tiny", "new_coords"])
def test_decode_equals_our_decoder(which, yolov3_tiny, tmp_path):
    if which == "yolov3-tiny":
        model = load_model(*yolov3_tiny, inference=True)
        x = np.load(data_path("conformance", "yolov3-tiny-coco", "input.npy"))
    else:
        cfg = tmp_path / "nc.cfg"
        cfg.write_text(NEW_COORDS_CFG)
        network = build_network(cfg)
        model = DarknetModel(network)
        with torch.no_grad():
            for index, arrays in random_arrays(network.layers, seed=2).items():
                for key, tensor in model.layers[index].weight_tensors():
                    tensor.copy_(torch.from_numpy(arrays[key]).view_as(tensor))
        model.inference()
        x = np.random.default_rng(1).random((1, 3, 32, 64), dtype=np.float32)
    heads = export_heads(model, base_name="m")
    sess = session(build_onnx(model, heads, decode=True))
    assert [o.name for o in sess.get_outputs()] == ["m/boxes", "m/objectness", "m/probs"]
    boxes, objectness, probs = sess.run(None, {"input": x})
    want_boxes, want_obj, want_probs = decoded_by_us(model, heads[0].layers, x)
    assert boxes.shape == (1, len(want_boxes), 4)
    assert np.abs(boxes[0] - want_boxes).max() <= 0.01  # pixels
    assert np.abs(objectness[0] - want_obj).max() <= 1e-5
    assert np.abs(probs[0] - want_probs).max() <= 1e-5


def test_decode_refuses_region_heads(tmp_path):
    from netsurgery.errors import NetsurgeryError

    cfg = tmp_path / "r.cfg"
    cfg.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=14\n"
                   "size=1\nactivation=linear\n[region]\nclasses=2\nnum=2\ncoords=4\n")
    model = load_model(cfg)
    with pytest.raises(NetsurgeryError, match=r"layer 1 \[region\]: --decode supports"):
        build_onnx(model, export_heads(model), decode=True)
    got = outputs_by_layer(session(build_onnx(model, export_heads(model))), np.ones(
        (1, 3, 32, 32), np.float32))
    assert rel_error(got[1], ours(model, np.ones((1, 3, 32, 32), np.float32))[1]) <= REL_TOL


# -- detect through onnxruntime -----------------------------------------------------------------
def detections(runner, heads, images, letterbox=False):
    net = runner.network.net
    pre = [preprocess(p, net.width, net.height, letterbox) for p in images]
    return detect_batch(runner, np.stack([x for x, _ in pre]), [s for _, s in pre], heads,
                        letterbox=letterbox), [s for _, s in pre]


def assert_same_detections(model, runner, heads, letterbox=False) -> int:
    """Every (class, prob, box) Darknet would print (prob > 0.25) is found once in the other
    runtime's list: same class, box within 0.5 px, prob within 1e-4. Returns the count."""
    images = sorted(data_path("images").iterdir())
    want, sizes = detections(model, heads, images, letterbox)
    got, _ = detections(runner, heads, images, letterbox)
    total = 0
    for per_want, per_got, (w, h) in zip(want, got, sizes):
        for head in per_want:
            a, b = (printed_detections(d[head]) for d in (per_want, per_got))
            assert len(a) == len(b), head
            scale = np.array([w, h, w, h])
            boxes_b = np.array([[x.box.x, x.box.y, x.box.w, x.box.h] for x in b]).reshape(
                -1, 4) * scale
            for line in a:
                box = np.array([line.box.x, line.box.y, line.box.w, line.box.h]) * scale
                match = [j for j, other in enumerate(b) if other.class_id == line.class_id
                         and np.abs(boxes_b[j] - box).max() <= 0.5
                         and abs(other.prob - line.prob) <= 1e-4]
                assert len(match) == 1, (head, line)
            total += len(a)
    return total


def test_detect_with_onnxruntime_equals_pytorch(yolov3_tiny, merged):
    model = load_model(*yolov3_tiny, inference=True)
    runner = OnnxRunner.from_model(model)
    heads = heads_of(model, names=data_path("models", "coco.names"))
    assert assert_same_detections(model, runner, heads) >= 8
    assert assert_same_detections(model, runner, heads, letterbox=True) >= 8
    from netsurgery.surgery.heads import load_heads

    model = load_model(f"{merged}.cfg", f"{merged}.weights", inference=True)
    heads = heads_of(model, load_heads(f"{merged}.heads.json"))
    assert assert_same_detections(model, OnnxRunner.from_model(model), heads) >= 8


def test_detect_cli_runtime_and_onnx_file(yolov3_tiny, tmp_path, capsys):
    cfg, weights = (str(p) for p in yolov3_tiny)
    images = str(data_path("images"))
    assert run(["detect", cfg, weights, images, "--json", str(tmp_path / "torch.json")]) == 0
    assert run(["detect", cfg, weights, images, "--runtime", "onnxruntime",
                "--json", str(tmp_path / "ort.json")]) == 0
    assert run(["export", cfg, weights, "-o", str(tmp_path / "b1.onnx")]) == 0
    assert run(["detect", cfg, weights, images, "--onnx", str(tmp_path / "b1.onnx"),
                "--batch", "3", "--json", str(tmp_path / "file.json")]) == 0
    want = json.loads((tmp_path / "torch.json").read_text())["detections"]
    assert len(want) >= 8
    for other in ("ort.json", "file.json"):
        got = json.loads((tmp_path / other).read_text())["detections"]
        assert [(r["image"], r["class_id"]) for r in got] == \
            [(r["image"], r["class_id"]) for r in want]
        for a, b in zip(got, want):
            assert abs(a["prob"] - b["prob"]) <= 1e-4
            assert max(abs(a["box"][k] - b["box"][k]) for k in a["box"]) <= 1
    # a file for another input size, or a decoded one, is refused with a clear message
    capsys.readouterr()
    assert run(["detect", cfg, weights, images, "--size", "320", "--onnx",
                str(tmp_path / "b1.onnx")]) == 2
    assert "exported for 3x416x416 input" in capsys.readouterr().err
    assert run(["export", cfg, weights, "--decode", "-o", str(tmp_path / "d.onnx")]) == 0
    assert run(["detect", cfg, weights, images, "--onnx", str(tmp_path / "d.onnx")]) == 2
    assert "exported with --decode" in capsys.readouterr().err


def test_time_with_onnxruntime(merged, capsys):
    assert run(["time", f"{merged}.cfg", f"{merged}.weights", "--heads",
                f"{merged}.heads.json", "--runtime", "onnxruntime", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "coco alone" in out and "merged / separate" in out


def test_export_errors(yolov3_tiny, tmp_path, capsys, monkeypatch):
    cfg, weights = (str(p) for p in yolov3_tiny)
    out = str(tmp_path / "x.onnx")
    assert run(["export", cfg, weights, "-o", out, "--batch", "2", "--dynamic-batch"]) == 2
    assert run(["export", cfg, weights, "-o", out, "--opset", "12"]) == 2
    assert "--opset 12: expected 13.." in capsys.readouterr().err
    # a layer type without an emitter is named
    from netsurgery.export import layers

    monkeypatch.delitem(layers.EMITTERS, "upsample")
    assert run(["export", cfg, weights, "-o", out]) == 2
    assert "layer 19 [upsample] has no ONNX export" in capsys.readouterr().err
    monkeypatch.undo()
    # onnx not installed: how to install it
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name in ("onnx", "onnxruntime"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    assert run(["export", cfg, weights, "-o", out]) == 2
    assert "pip install onnx onnxruntime" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_eval_cli_runtime_onnxruntime(yolov3_tiny, tmp_path):
    """eval on dog.jpg and person.jpg labelled with Darknet's own boxes: the same report from
    both runtimes."""
    import cv2
    from test_detect import darknet_detections

    expected = darknet_detections()
    names = [n.strip() for n in data_path("models", "coco.names").read_text().splitlines()]
    lines = []
    for image in ("dog.jpg", "person.jpg"):
        src = data_path("images", image)
        h, w = cv2.imread(str(src)).shape[:2]
        (tmp_path / image).symlink_to(src)
        labels = [f"{names.index(n)} {(left + bw / 2) / w:.6f} {(top + bh / 2) / h:.6f} "
                  f"{bw / w:.6f} {bh / h:.6f}" for n, _, (left, top, bw, bh) in
                  expected[(image, "resize")]]
        (tmp_path / image).with_suffix(".txt").write_text("\n".join(labels) + "\n")
        lines.append(str(tmp_path / image))
    (tmp_path / "valid.txt").write_text("\n".join(lines) + "\n")
    data = tmp_path / "x.data"
    data.write_text(f"classes=80\nvalid={tmp_path / 'valid.txt'}\n"
                    f"names={data_path('models', 'coco.names')}\n")
    reports = {}
    for runtime in ("torch", "onnxruntime"):
        out = tmp_path / f"{runtime}.json"
        assert run(["eval", *(str(p) for p in yolov3_tiny), "--data", str(data), "--json",
                    str(out), "--runtime", runtime]) == 0
        reports[runtime] = json.loads(out.read_text())["heads"]["model"]
    want, got = reports["torch"], reports["onnxruntime"]
    assert want["map_present"] > 0.5
    assert got["map"] == pytest.approx(want["map"], abs=1e-4)
    assert [(c["name"], c["tp"], c["fp"], c["n_truth"]) for c in got["classes"]] == \
        [(c["name"], c["tp"], c["fp"], c["n_truth"]) for c in want["classes"]]
