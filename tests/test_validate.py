"""Network validator: problems found on hand-made cfgs and on networks edited in code."""
from __future__ import annotations

import pytest
from conftest import shared_path

from netsurgery.darknet.cfg import parse_cfg_text
from netsurgery.darknet.layers import Shape
from netsurgery.darknet.network import build_network
from netsurgery.darknet.validate import ERROR, WARNING, check_network, validate_network
from netsurgery.errors import CfgError

NET = "[net]\nwidth=8\nheight=8\nchannels=3\n"  # lines 1-4


def net_of(body: str):
    return build_network(parse_cfg_text(NET + body, "t.cfg"))


def found(network):
    return [(p.index, p.line, p.severity) for p in validate_network(network)]


# Lines: 5 blank, 6 [convolutional], 7 filters=..., 8 size, 9 activation; 10 blank, 11 [yolo]
# 12 classes, 13 mask, 14 num.
YOLO = """
[convolutional]
filters={filters}
size=1
activation=linear

[yolo]
classes=2
mask=0,1
num=2
"""


def test_clean_network_has_no_problems():
    assert validate_network(net_of(YOLO.format(filters=14))) == []  # (2+5)·2 = 14


@pytest.mark.parametrize("name", ["yolov3", "yolov4", "yolov4-tiny", "darknet19"])
def test_reference_cfgs_are_clean(name):
    assert validate_network(build_network(shared_path("darknet-cfg", f"{name}.cfg"))) == []


def test_yolo_filters_in_code_built_network():
    network = net_of(YOLO.format(filters=14))
    conv = network.layers[0]
    # an edit in code: three classes now, filters left at 14 ((3+5)·2 = 16 expected)
    network.layers[1].classes = 3
    problems = validate_network(network)
    assert [(p.index, p.line, p.severity) for p in problems] == [(0, 7, ERROR)]
    assert "filters=14" in problems[0].message and "= 16" in problems[0].message
    with pytest.raises(CfgError) as exc:
        check_network(network)
    assert (exc.value.path, exc.value.line) == ("t.cfg", 7)
    assert str(exc.value).startswith("t.cfg:7: layer 0: filters=14")
    assert conv.out_shape.c == 14


def test_stale_shapes_after_edit():
    network = net_of(YOLO.format(filters=14))
    network.layers[0].out_shape = Shape(16, 8, 8)  # conv widened without rebuilding
    got = found(network)
    # the yolo input no longer matches the conv output, and 16 ≠ (2+5)·2
    assert (1, 11, ERROR) in got and (0, 7, ERROR) in got


ROUTE = """
[convolutional]
filters=4
size=1
activation=linear

[maxpool]
size=2
stride=2

[convolutional]
filters=6
size=1
activation=linear

[route]
layers=-1,-3
"""
# 6 conv0, 11 maxpool1, 15 conv2, 20 route3, 21 layers=


def test_route_sizes_and_references_in_code():
    # the cfg parser refuses this route (8x8 with 4x4); edit a valid one instead
    network = net_of(ROUTE.replace("layers=-1,-3", "layers=-1,-2"))
    assert validate_network(network) == []  # conv2 6x4x4 + maxpool1 4x4x4 -> 10x4x4
    route = network.layers[3]
    route.layers = [0, 2]  # layer 0 is 4x8x8
    problems = validate_network(network)
    assert [(p.index, p.line) for p in problems] == [(3, 21), (3, 20)]
    assert "layer 2 is 4x4 but layer 0 is 8x8" in problems[0].message
    assert "output shape 10x4x4 but its inputs make 10x8x8" in problems[1].message
    route.layers = [2, 3]  # itself: not an earlier layer
    problems = validate_network(network)
    assert problems[0].message.startswith("reads layer 3: expected an earlier layer (0..2)")
    with pytest.raises(CfgError, match="t.cfg:21: layer 3: reads layer 3"):
        check_network(network)


def test_route_group_channels_in_code():
    network = net_of(ROUTE.replace("layers=-1,-3", "layers=-1"))
    network.layers[3].groups = 4  # 6 channels do not split in 4
    problems = validate_network(network)
    assert any("groups=4 does not divide the 6 channels of layer 2" in p.message
               for p in problems)


def test_shortcut_shape_warning():
    # layer 2 adds layer 0 (4 channels) to layer 1 (8 channels): Darknet adds 4·8·8 values
    network = net_of("""
[convolutional]
filters=4
size=1
activation=linear

[convolutional]
filters=8
size=1
activation=linear

[shortcut]
from=-2
activation=linear
""")
    problems = validate_network(network)
    assert [(p.index, p.line, p.severity) for p in problems] == [(2, 17, WARNING)]
    assert "from layer 0 is 4x8x8 but the previous layer is 8x8x8" in problems[0].message
    assert "first 256 values" in problems[0].message
    assert check_network(network) == problems  # warnings do not raise
    with pytest.raises(CfgError, match="t.cfg:17"):
        check_network(network, warnings_are_errors=True)


def test_layer_after_yolo_that_is_not_a_route():
    network = net_of(YOLO.format(filters=14) + "\n[maxpool]\nsize=1\nstride=1\n")
    problems = validate_network(network)
    # and, being after the head, the maxpool is not an output: nobody reads it
    assert [(p.index, p.line, p.severity) for p in problems] == [(2, 16, WARNING)] * 2
    assert "reads the output of the [yolo] layer 1" in problems[0].message
    assert "never read" in problems[1].message


def test_unused_layer():
    # conv 1 is computed but nothing reads it: the route goes back to layer 0
    network = net_of("""
[maxpool]
size=1
stride=1

[convolutional]
filters=4
size=1
activation=linear

[route]
layers=0
""")
    problems = validate_network(network)
    assert [(p.index, p.line, p.severity) for p in problems] == [(1, 10, WARNING)]
    assert "never read" in problems[0].message


def test_heads_are_not_unused():
    # two heads: the first [yolo] is read by nobody but is an output
    network = net_of(YOLO.format(filters=14) + """
[route]
layers=-2

[convolutional]
filters=14
size=1
activation=linear

[yolo]
classes=2
mask=0,1
num=2
""")
    assert network.heads() == [1, 4]
    assert validate_network(network) == []


def test_renumbered_spec_and_mask_in_code():
    network = net_of(YOLO.format(filters=14))
    network.layers[1].mask = [0, 2]  # num=2: anchor 2 does not exist
    problems = validate_network(network)
    assert [(p.index, p.line) for p in problems] == [(1, 13)]
    network = net_of(YOLO.format(filters=14))
    network.layers[1].index = 5
    assert "spec says index 5 but it is layer 1" in validate_network(network)[0].message
