"""The fast inference path (``load_model(..., inference=True)``: oneDNN-packed kernels with the
activation fused, channels_last tensors, in-place activations, direct file reads) gives the
plain path's numbers, on the real yolov3-tiny, on a merged network and on a small cfg that
holds every layer kind the fast path touches."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared_path

from netsurgery.darknet.layers.activation import ACTIVATIONS
from netsurgery.darknet.layers.conv import CONV_BN_EPS
from netsurgery.darknet.layers.fastconv import (
    FUSED_ACTIVATIONS,
    FoldScratch,
    mkldnn_ops_available,
    pack_conv,
)
from netsurgery.darknet.model import load_model
from netsurgery.darknet.network import build_network
from netsurgery.darknet.weights import WeightsHeader, load_weights, random_arrays, save_weights
from netsurgery.surgery.merge import TaskInput, merge
from netsurgery.surgery.multihead import MergedModel, load_merged
from netsurgery.surgery.weighted import load_weighted

REL_TOL = 1e-4
needs_mkldnn = pytest.mark.skipif(not mkldnn_ops_available(),
                                  reason="this torch build has no oneDNN packed convolutions")


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| / max(1, max |want|)."""
    return float((got - want).abs().max() / max(1.0, float(want.abs().max())))


def image_input(size: int = 416) -> torch.Tensor:
    """dog.jpg stretched to size×size, RGB in [0, 1], (1, 3, H, W) — a real picture, so the
    activations are those of real use."""
    import cv2

    bgr = cv2.imread(str(shared_path("images", "dog.jpg")))
    rgb = cv2.cvtColor(cv2.resize(bgr, (size, size)), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 255)[None]


@pytest.fixture(scope="module")
def tiny_models(yolov3_tiny):
    cfg, weights = yolov3_tiny
    exact = load_model(cfg, weights)  # BatchNorm unfolded, NCHW, F.conv2d
    folded = load_model(cfg, weights, inference=True).inference(fast=False)
    fast = load_model(cfg, weights, inference=True)
    return exact, folded, fast


def test_fast_yolov3_tiny_equals_plain_paths(tiny_models):
    exact, folded, fast = tiny_models
    x = image_input()
    x_before = x.clone()
    with torch.inference_mode():
        want = exact(x)
        want_folded = folded(x)
        got = fast(x)
        again = fast(x)
    assert fast.fast and not folded.fast
    assert torch.equal(x, x_before), "the fast path wrote into its input"
    assert [tuple(t.shape) for t in got] == [(1, 255, 13, 13), (1, 255, 26, 26)]
    for g, w, wf, a in zip(got, want, want_folded, again):
        assert g.is_contiguous()  # NCHW for callers that .view() the heads
        assert torch.equal(g, a)  # in-place activations left no state behind
        assert rel_error(g, w) <= REL_TOL
        assert rel_error(g, wf) <= REL_TOL
    obj = torch.cat([w.view(3, 85, -1)[:, 4].flatten() for w in want])
    assert float(obj.max()) > 0.5  # objectness after the [yolo] logistic: a dog was found


@needs_mkldnn
def test_fast_mode_packs_every_convolution_and_train_drops_it(yolov3_tiny):
    cfg, weights = yolov3_tiny
    model = load_model(cfg, weights, inference=True)
    convs = [m for m in model.layers if hasattr(m, "pack")]
    assert len(convs) == 13
    assert all(m.packed is not None and m.packed.fused for m in convs)
    assert all(m.folded is None for m in convs)  # the packed kernel replaces the folded copy
    model.train()
    assert not model.fast and all(m.packed is None and m.folded is None for m in convs)
    model.inference(fast=False)
    assert not model.fast and all(m.packed is None for m in convs)
    assert sum(m.folded is not None for m in convs) == 11  # the 2 head convs have no BN


def test_fast_batch_of_two_equals_single_images(tiny_models):
    _, _, fast = tiny_models
    x = torch.cat([image_input(), image_input().flip(3)])
    with torch.inference_mode():
        both = fast(x)
        one = [fast(x[i:i + 1]) for i in range(2)]
    for head, (a, b) in zip(both, zip(*one)):
        assert rel_error(head[0:1], a) <= 1e-5 and rel_error(head[1:2], b) <= 1e-5


def test_numpy_fold_for_packing_equals_the_torch_fold_bit_for_bit(yolov3_tiny):
    """Packing folds BatchNorm with numpy into a reused buffer; the kernels and biases are
    the same float32 bits as ConvModule.fold's float64 torch expression (Darknet's fuse)."""
    cfg, weights = yolov3_tiny
    model = load_model(cfg, weights)
    convs = [m for m in model.layers if hasattr(m, "pack") and m.batch_normalize]
    scratch = FoldScratch(max(m.weights.numel() for m in convs))
    for m in convs:
        m.fold()
        want_w, want_b = m.folded
        got_w, got_b = scratch.fold(m.weights, m.biases, m.scales, m.rolling_mean,
                                    m.rolling_variance, CONV_BN_EPS)
        assert torch.equal(got_w, want_w) and torch.equal(got_b, want_b)
        assert got_w.is_contiguous(memory_format=torch.channels_last)


def test_parameters_loaded_by_direct_reads_equal_the_file(yolov3_tiny):
    cfg, weights = yolov3_tiny
    model = load_model(cfg, weights, inference=True)
    wf = load_weights(weights, model.network.layers)
    for index, lw in wf.layers.items():
        tensors = dict(model.layers[index].weight_tensors())
        for name, arr in lw.arrays.items():
            np.testing.assert_array_equal(tensors[name].numpy(), arr)


def test_load_weights_repacks_a_fast_model(yolov3_tiny, tmp_path):
    """A fast model given new weights computes with them (not with stale packed kernels)."""
    cfg, weights = yolov3_tiny
    model = load_model(cfg, weights, inference=True)
    graph = load_weighted(cfg, weights)
    arrays = dict(graph.arrays)
    arrays[14] = {k: v * np.float32(0.5) if k == "weights" else v
                  for k, v in arrays[14].items()}
    other = tmp_path / "half14.weights"
    save_weights(other, graph.header, model.network.layers, arrays)
    x = image_input()
    with torch.inference_mode():
        model.load_weights(other)
        got = model(x)
        want = load_model(cfg, other)(x)
    assert model.fast
    for g, w in zip(got, want):
        assert rel_error(g, w) <= REL_TOL


# -- a small net with every layer kind the fast path changes ------------------------------
SMALL_CFG = """[net]
width=40
height=32
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=mish

[convolutional]
filters=32
size=1
stride=1
activation=logistic

[shortcut]
from=-2
activation=leaky

[route]
layers=-1
groups=2
group_id=1

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
dilation=2
activation=swish

[maxpool]
size=2
stride=1

[convolutional]
batch_normalize=1
filters=16
size=3
groups=4
pad=1
activation=relu

[upsample]
stride=2

[route]
layers=-1,1

[convolutional]
filters=18
size=1
stride=1
activation=linear

[yolo]
mask=0,1
anchors=10,14, 23,27, 37,58
classes=4
num=3
scale_x_y=1.1
"""


def random_weights(network, seed: int) -> dict[int, dict[str, np.ndarray]]:
    return random_arrays(network.layers, seed)


@pytest.fixture(scope="module")
def small_net(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    cfg = folder / "small.cfg"
    cfg.write_text(SMALL_CFG)
    network = build_network(cfg)
    weights = folder / "small.weights"
    save_weights(weights, WeightsHeader(), network.layers, random_weights(network, 3))
    return cfg, weights


def test_fast_path_every_layer_equals_exact_path(small_net):
    cfg, weights = small_net
    exact = load_model(cfg, weights)
    fast = load_model(cfg, weights, inference=True)
    x = torch.from_numpy(np.random.default_rng(5).random((2, 3, 32, 40), dtype=np.float32))
    with torch.inference_mode():
        want = exact.layer_outputs(x)
        got = fast.layer_outputs(x)
        heads = fast(x)
    assert len(got) == len(want) == 13
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, i
        assert rel_error(g, w) <= REL_TOL, f"layer {i}"
    assert rel_error(heads[0], want[12]) <= REL_TOL
    heads[0].view(2, -1)  # a plain NCHW tensor


def test_shortcut_adds_in_place_only_into_dead_outputs(small_net):
    """The [shortcut] (layer 4) adds into the output of conv 3 when nothing reads that
    afterwards; asking for layer 3 too keeps it intact."""
    cfg, weights = small_net
    exact = load_model(cfg, weights)
    fast = load_model(cfg, weights, inference=True)
    x = torch.from_numpy(np.random.default_rng(6).random((1, 3, 32, 40), dtype=np.float32))
    with torch.inference_mode():
        want = exact.layer_outputs(x)
        lone = fast.run(x, [12])
        kept = fast.run(x, [3, 4, 12])
    assert fast.plan([12]).reuse_input == {4}  # step 4 = layer 4, the shortcut
    assert fast.plan([3, 4, 12]).reuse_input == frozenset()
    assert rel_error(lone[12], want[12]) <= REL_TOL
    for i in (3, 4, 12):
        assert rel_error(kept[i], want[i]) <= REL_TOL, f"layer {i}"
    assert rel_error(kept[3], want[4]) > 0.1  # so a shortcut written into layer 3 would show


@needs_mkldnn
@pytest.mark.parametrize("activation", sorted(FUSED_ACTIVATIONS))
def test_fused_activations_compute_darknets_functions(activation):
    """Each activation handed to oneDNN gives the function the unfused path applies."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 9, 7, generator=g).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(12, 8, 3, 3, generator=g) * 0.3, torch.randn(12, generator=g)
    packed = pack_conv(w, b, (1, 2), 1, 1, 1, activation, (8, 9, 7))
    assert packed is not None and packed.fused
    want = F.conv2d(x, w, b, (1, 2), 1)
    want = want if activation == "linear" else ACTIVATIONS[activation](want)
    got = packed(x)
    assert got.shape == want.shape == (1, 12, 9, 4)
    assert rel_error(got, want) <= 1e-5


# -- merged network -----------------------------------------------------------------------
def test_fast_merged_network_equals_plain_and_separate_models(yolov3_tiny, tmp_path):
    cfg, weights = yolov3_tiny
    k = 12
    base = load_weighted(cfg, weights)
    task = base.copy()
    rng = np.random.default_rng(7)
    for index in sorted(i for i in task.arrays if i > k):
        task.arrays[index] = {n: (a * (1 + 0.05 * rng.standard_normal(a.shape)))
                              .astype(np.float32) for n, a in task.arrays[index].items()}
    task_cfg, task_weights = tmp_path / "task.cfg", tmp_path / "task.weights"
    task.save(task_cfg, task_weights)
    merged, heads = merge(base, [TaskInput("task", task, k)])
    merged_cfg, merged_weights = tmp_path / "m.cfg", tmp_path / "m.weights"
    merged.save(merged_cfg, merged_weights)

    fast = load_merged(merged_cfg, merged_weights, heads)
    plain = MergedModel(load_model(merged_cfg, merged_weights), heads)
    assert fast.model.fast and not plain.model.fast
    x = image_input()
    with torch.inference_mode():
        got = fast(x)
        want = plain(x)
        trunk = fast.trunk(x)
        task_only = fast(x, ["task"], cache=trunk)
        separate = {"base": load_model(cfg, weights)(x),
                    "task": load_model(task_cfg, task_weights)(x)}
    assert sorted(got) == ["base", "task"]
    for name in got:
        for g, w, s in zip(got[name], want[name], separate[name]):
            assert rel_error(g, w) <= REL_TOL
            assert rel_error(g, s) <= REL_TOL
    for g, w in zip(task_only["task"], got["task"]):
        assert rel_error(g, w) <= 1e-6
    # the tails differ, so the comparison above is not base against itself
    assert rel_error(got["task"][0], got["base"][0]) > 1e-3


# -- memory -------------------------------------------------------------------------------
MEMORY_CHILD = """
import json, resource, sys, torch
import torch.nn.functional as F
from netsurgery.darknet.model import load_model
from netsurgery.darknet.layers.fastconv import pack_conv
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
# first use of oneDNN allocates its own state: not part of loading
w = torch.randn(16, 8, 3, 3)
pack_conv(w, torch.zeros(16), (1, 1), 1, 1, 1, "leaky", (8, 8, 8))(torch.randn(1, 8, 8, 8))
F.max_pool2d(torch.randn(1, 8, 8, 8), 2)
base = peak()
model = load_model(sys.argv[1], sys.argv[2])
loaded = peak()
model.inference()
packed = peak()
print(json.dumps([base, loaded, packed]))
"""


def test_loading_copies_the_file_once(yolov3_tiny):
    """Peak memory over the interpreter's: loading ≈ 1× the file (read straight into the
    parameters, no resident memory map: that alone would be 2×); the fast mode adds the
    packed kernels (1×) plus, while packing, one folded kernel (the largest, 1024×512×3×3,
    is 53 % of yolov3-tiny's file)."""
    cfg, weights = yolov3_tiny
    size = weights.stat().st_size
    largest = 4 * 1024 * 512 * 3 * 3 / size
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(cfg), str(weights)],
                         capture_output=True, text=True, check=True)
    base, loaded, packed = json.loads(out.stdout)
    assert (loaded - base) / size <= 1.15
    assert (packed - base) / size <= 2 + largest + 0.15
