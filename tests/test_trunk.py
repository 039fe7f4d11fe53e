"""The trunk comparison of merge (analysis.cost.compare_trunk): parsed layer specs, not cfg
text; arrays by their bytes."""
from __future__ import annotations

import numpy as np
import pytest

from netsurgery.analysis.cost import compare_trunk, spec_difference
from netsurgery.cli.app import run
from netsurgery.darknet.cfg import parse_cfg_text
from netsurgery.darknet.network import build_network
from netsurgery.darknet.weights import WeightsHeader, random_arrays, save_weights
from netsurgery.errors import UsageError

NET = "[net]\nwidth=32\nheight=32\nchannels=3\n"
BASE = NET + """
[convolutional]
filters=8
size=3
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=8
size=3
pad=1
batch_normalize=1
activation=leaky

[route]
layers=-1,1

[convolutional]
filters=12
size=1
activation=linear

[yolo]
mask=0,1
anchors=4,4,8,8
num=2
classes=1
"""
# the same network: keys reordered, defaults written out (stride=1, groups=1, dilation=1,
# padding via pad), a training-only key, a relative reference written absolute
SAME = NET + """
[convolutional]
activation=leaky
pad=1
size=3
filters=8
stride=1
groups=1

[maxpool]
stride=2
size=2

[convolutional]
batch_normalize=1
filters=8
activation=leaky
dilation=1
size=3
pad=1
stopbackward=1

[route]
layers=2,1

[convolutional]
filters=12
size=1
activation=linear

[yolo]
mask=0,1
anchors=4,4,8,8
num=2
classes=1
"""


def network(text: str):
    return build_network(parse_cfg_text(text, "t.cfg"))


def test_reordered_keys_and_written_defaults_are_the_same_layers():
    base, same = network(BASE), network(SAME)
    arrays = random_arrays(base.layers, seed=1)
    assert all(spec_difference(a, b) is None for a, b in zip(base.layers, same.layers))
    check = compare_trunk(base, arrays, same, arrays, 3)
    assert check.identical and check.worst_layer is None


@pytest.mark.parametrize("change, field", [
    (("activation=leaky\npad=1", "activation=mish\npad=1"), "activation leaky vs mish"),
    (("stride=1\ngroups=1", "stride=2\ngroups=1"), "stride_x 1 vs 2"),
    (("layers=2,1", "layers=1,1"), "layers [2, 1] vs [1, 1]"),
])
def test_a_changed_layer_is_named_with_its_field(change, field):
    base = network(BASE)
    other = network(SAME.replace(*change))
    arrays = random_arrays(base.layers, seed=1)
    with pytest.raises(UsageError) as info:
        compare_trunk(base, arrays, other, random_arrays(other.layers, seed=1), 3)
    assert f"({field})" in str(info.value) and "differs between base and task" in str(info.value)


def test_bit_identical_nan_is_identical_and_a_changed_nan_is_not():
    base = network(BASE)
    arrays = random_arrays(base.layers, seed=1)
    arrays[2]["weights"][0, 0, 0, 0] = np.nan
    copy = {i: {k: v.copy() for k, v in a.items()} for i, a in arrays.items()}
    check = compare_trunk(base, arrays, base, copy, 3)
    assert check.identical
    copy[2]["weights"][0, 0, 0, 1] = np.nan  # a NaN where the base has a number
    check = compare_trunk(base, arrays, base, copy, 3)
    assert not check.identical and check.worst_layer == 2
    assert check.max_relative_difference == float("inf")
    copy = {i: {k: v.copy() for k, v in a.items()} for i, a in arrays.items()}
    copy[0]["biases"] += np.float32(0.5)
    check = compare_trunk(base, arrays, base, copy, 3)
    expected = 0.5 / float(np.abs(arrays[0]["biases"].astype(np.float64)).mean())
    assert check.worst_layer == 0
    assert check.max_relative_difference == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("k", [-1, 6])
def test_share_point_outside_both_networks(k):
    base = network(BASE)
    with pytest.raises(UsageError, match=rf"share_until={k}: expected a layer index 0\.\.5"):
        compare_trunk(base, {}, base, {}, k)


def test_merge_cli_accepts_an_equivalent_trunk_without_force(tmp_path, capsys):
    """A task whose cfg writes the trunk differently (and holds a NaN bit for bit like the
    base) merges without --force; the merged cfg keeps the base's text."""
    base, same = network(BASE), network(SAME)
    arrays = random_arrays(base.layers, seed=3)
    arrays[0]["weights"][0, 0, 0, 0] = np.nan
    task_arrays = {i: {k: v.copy() for k, v in a.items()} for i, a in arrays.items()}
    task_arrays[4]["biases"] += np.float32(1.0)  # the tail was retrained
    (tmp_path / "base.cfg").write_text(BASE)
    (tmp_path / "task.cfg").write_text(SAME)
    save_weights(tmp_path / "base.weights", WeightsHeader(), base.layers, arrays)
    save_weights(tmp_path / "task.weights", WeightsHeader(), same.layers, task_arrays)
    rc = run(["merge", "--base", str(tmp_path / "base.cfg"), str(tmp_path / "base.weights"),
              "--task", f"t={tmp_path / 'task.cfg'}:{tmp_path / 'task.weights'}",
              "--share-until", "3", "-o", str(tmp_path / "m")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "warning" not in captured.err
    merged = build_network(tmp_path / "m.cfg")
    assert len(merged.layers) == 6 + 1 + 2
