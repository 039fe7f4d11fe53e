"""Network editing (surgery/editing.py): every layer reference a spec declares follows the layer
it meant through insert, remove and extract. A layer's identity is the line its section came
from in the original cfg (unique per layer, kept by every edit)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import data_path

from netsurgery.darknet.cfg import Section, make_section, parse_cfg_text
from netsurgery.darknet.model import DarknetModel
from netsurgery.darknet.network import Network, build_network
from netsurgery.darknet.weights import random_arrays
from netsurgery.errors import CfgError
from netsurgery.surgery.editing import Graph, Layer, extract, insert, remove

NET = "[net]\nwidth=8\nheight=8\nchannels=3\n"
CONV = "[convolutional]\nfilters=4\nsize={size}\npad=1\nactivation={act}\n"

# One small cfg per reference kind, each with an absolute and a relative reference.
CFGS = {
    "route": NET + CONV.format(size=3, act="leaky") + CONV.format(size=1, act="leaky")
    + "[route]\nlayers=0,-1\n" + CONV.format(size=1, act="linear")
    + "[route]\nlayers=-3\n",
    "shortcut": NET + CONV.format(size=3, act="leaky") + CONV.format(size=1, act="leaky")
    + "[shortcut]\nfrom=0\n" + CONV.format(size=1, act="linear")
    + "[shortcut]\nfrom=-3,1\nactivation=leaky\n",
    "sam": NET + CONV.format(size=3, act="leaky") + CONV.format(size=1, act="logistic")
    + "[sam]\nfrom=0\n" + CONV.format(size=1, act="logistic") + "[sam]\nfrom=-4\n",
    "scale_channels": NET + CONV.format(size=3, act="leaky") + "[avgpool]\n"
    + CONV.format(size=1, act="logistic") + "[scale_channels]\nfrom=0\n"
    + "[avgpool]\n" + CONV.format(size=1, act="logistic") + "[scale_channels]\nfrom=-3\n",
    "share_index": NET + CONV.format(size=3, act="leaky") + CONV.format(size=1, act="leaky")
    + "[convolutional]\nfilters=4\nsize=1\nactivation=leaky\nshare_index=1\n"
    + "[convolutional]\nfilters=4\nsize=1\nactivation=leaky\nshare_index=-3\n",
}


def graph_of(text: str) -> Graph:
    cfg = parse_cfg_text(text, "edit.cfg")
    return Graph(cfg.net, [Layer(s) for s in cfg.layers])


def named_layers(network: Network) -> dict[int | None, dict[str, list[int | None]]]:
    """For each layer (by its original line): the original lines of the layers it names and
    of the layers it reads, so that two networks compare by layer identity, not position. A
    layer inserted in front of the network (no line) stands in for the input."""
    line = [spec.section.line or "input" for spec in network.layers]
    out = {}
    for spec in network.layers:
        refs = type(spec).references_in(spec.section, spec.index)
        named = {key: [line[t] for t in targets] for key, targets in refs.items()}
        named["reads"] = [line[t] if t >= 0 else "input" for t in spec.inputs()]
        out[spec.section.line] = named
    return out


def identity_layer() -> Section:
    return make_section("activation", {"activation": "linear"})


@pytest.mark.parametrize("kind", sorted(CFGS))
def test_insert_at_0_keeps_each_reference_on_its_layer(kind):
    graph = graph_of(CFGS[kind])
    before = build_network(graph.cfg().copy())
    assert any(spec.references() for spec in before.layers), "the cfg must have references"
    after = insert(graph, 0, identity_layer()).network()
    moved = named_layers(after)
    assert moved.pop(None) == {"reads": ["input"]}  # the inserted layer
    assert moved == named_layers(before)
    # relative values stay relative, absolute ones move
    for old, new in zip(before.layers, after.layers[1:]):
        for key in type(old).references_in(old.section, old.index):
            raw_old, raw_new = old.section.get_ints(key), new.section.get_ints(key)
            assert [r < 0 for r in raw_old] == [r < 0 for r in raw_new]
            assert [r for r in raw_old if r < 0] == [r for r in raw_new if r < 0]
            assert [r + 1 for r in raw_old if r >= 0] == [r for r in raw_new if r >= 0]


@pytest.mark.parametrize("kind", ["route", "shortcut", "sam", "scale_channels"])
def test_insert_at_0_computes_the_same_outputs(kind):
    """An identity layer in front changes nothing a layer computes: every output equals the
    original one (a reference moved to the wrong layer changes the values or the shapes)."""
    graph = graph_of(CFGS[kind])
    before = build_network(graph.cfg().copy())
    arrays = random_arrays(before.layers, seed=3)
    for index, named in arrays.items():
        graph.layers[index].arrays = named
    after_graph = insert(graph, 0, identity_layer())
    after = after_graph.network()
    x = torch.from_numpy(np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32))
    outs = []
    for network, source in ((before, graph), (after, after_graph)):
        model = DarknetModel(network).eval()
        with torch.no_grad():
            for index, layer in enumerate(source.layers):
                for name, tensor in model.layers[index].weight_tensors():
                    tensor.copy_(torch.from_numpy(np.asarray(layer.arrays[name])))
            outs.append(model.layer_outputs(x))
    for old, new in zip(outs[0], outs[1][1:]):
        assert torch.equal(old, new)


@pytest.mark.parametrize("name,kind", [("yolov4-sam-mish-csp-reorg-bfm.cfg", "sam"),
                                       ("efficientnet_b0.cfg", "scale_channels"),
                                       ("resnet152_trident.cfg", "share_index"),
                                       ("yolov4-tiny_contrastive.cfg", "yolo_layer"),
                                       ("yolov4-tiny_contrastive.cfg", "embedding_layer")])
def test_insert_at_0_in_darknet_cfgs(name, kind):
    """AlexeyAB's cfgs with [sam], [scale_channels], share_index, [contrastive] yolo_layer
    and [yolo] embedding_layer references."""
    path = data_path("darknet-cfg-all", name)
    try:
        before = build_network(path)
    except CfgError as exc:
        pytest.skip(f"{name} does not parse yet: {exc}")
    graph = Graph(before.cfg.net, [Layer(s) for s in before.cfg.layers])
    after = insert(graph, 0, identity_layer()).network()
    moved = named_layers(after)
    moved.pop(None)
    assert moved == named_layers(before)
    kinds = {key if key != "from" else spec.type_name for spec in before.layers
             for key, targets in type(spec).references_in(spec.section, spec.index).items()
             if targets}
    assert kind in kinds


def test_remove_and_extract_renumber_references():
    graph = graph_of(CFGS["share_index"])  # 0 conv, 1 conv, 2 share 1, 3 share -3 (= 0)
    before = named_layers(build_network(graph.cfg().copy()))
    tail = extract(insert(graph, 0, identity_layer()), 1, 5)  # the original four layers
    assert named_layers(tail.network()) == before
    with pytest.raises(CfgError, match="share_index refers to layer 0, which is not part of"):
        extract(graph, 1, 4)
    with pytest.raises(CfgError, match="share_index refers to layer 1, which is not part of"):
        remove(graph, 1)
    shortcut = graph_of(CFGS["shortcut"])
    shorter = remove(shortcut, 3)  # a conv nobody names; the [shortcut] after it moves down
    assert shorter.layers[3].section.get_ints("from") == [-2, 1]  # still layers 1 and 1
    with pytest.raises(CfgError, match="inserted layer 3 refers to layer 3: expected an earl"):
        insert(shortcut, 3, make_section("sam", {"from": 3}))
