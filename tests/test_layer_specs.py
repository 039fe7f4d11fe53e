"""What layer specs declare for the rest of the package: the layout of their arrays in a
.weights file ([connected] matrices transposed when the header says so), detection roles."""
from __future__ import annotations

import numpy as np
import torch

from netsurgery.darknet.cfg import parse_cfg_text
from netsurgery.darknet.model import DarknetModel, load_model
from netsurgery.darknet.network import build_network
from netsurgery.darknet.weights import WeightsHeader, load_weights, random_arrays, save_weights
from netsurgery.training.base_weights import init_from_base

CFG = """[net]
width=4
height=4
channels=2
[convolutional]
filters=3
size=3
pad=1
batch_normalize=1
activation=leaky
[connected]
output=5
activation=linear
[connected]
output=4
batch_normalize=1
activation=leaky
"""


def test_transposed_connected_file_reaches_the_model_and_training_alike(tmp_path):
    """A file whose header says transposed stores each [connected] matrix (inputs, outputs):
    the model, training's copy from a base file and ``layer_arrays`` all turn it into the
    module's (outputs, inputs) — the same values as from the plain file."""
    network = build_network(parse_cfg_text(CFG, "t.cfg"))
    arrays = random_arrays(network.layers, seed=5)
    plain, transposed = tmp_path / "plain.weights", tmp_path / "transposed.weights"
    save_weights(plain, WeightsHeader(), network.layers, arrays)
    file_arrays = {i: {name: network[i].to_file_layout(name, a, True) for name, a in named.items()}
                   for i, named in arrays.items()}
    assert file_arrays[1]["weights"].shape == (3 * 4 * 4, 5)
    save_weights(transposed, WeightsHeader(0, 1001, 5), network.layers, file_arrays)
    wf = load_weights(transposed, network.layers)
    assert wf.header.transposed and wf.layers[1].arrays["weights"].shape == (48, 5)

    reference = load_model(network, plain)
    from_file = load_model(network, transposed)
    trained = DarknetModel(network)
    report = init_from_base(trained, wf, network, seed=0)
    assert report.copied == [0, 1, 2] and not report.reinitialised
    for index in range(3):
        want = dict(reference.weight_tensors(index))
        for model in (from_file, trained):
            for name, tensor in model.weight_tensors(index):
                assert torch.equal(tensor, want[name]), (index, name)
        # and back: the file layout of the loaded header
        back = from_file.layer_arrays(index)
        for name, a in wf.layers[index].arrays.items():
            assert np.array_equal(back[name], a)


def test_initial_arrays_are_darknets():
    """Each spec gives Darknet's initial values (make_*_layer): conv and connected kernels
    uniform in ±sqrt(2/fan-in), a weighted shortcut's weights 1, BatchNorm scales and rolling
    variance 1, biases and rolling mean 0."""
    from netsurgery.training.base_weights import fresh_arrays

    text = ("[net]\nwidth=4\nheight=4\nchannels=2\n"
            "[convolutional]\nfilters=6\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky\n"
            "[shortcut]\nfrom=-1\nweights_type=per_feature\nactivation=linear\n"
            "[connected]\noutput=50\nactivation=linear\n"
            "[batchnorm]\n")
    layers = build_network(parse_cfg_text(text, "init.cfg")).layers
    rng = np.random.default_rng(0)
    conv, shortcut, connected, bn = (fresh_arrays(spec, rng) for spec in layers)
    for arrays, fan_in in ((conv, 3 * 3 * 2), (connected, 6 * 4 * 4)):
        w = arrays["weights"]
        bound = np.sqrt(2.0 / fan_in)
        assert w.dtype == np.float32 and np.abs(w).max() <= bound
        assert np.abs(w).max() > 0.8 * bound  # uniform over the whole range
        assert (arrays["biases"] == 0).all()
    assert (conv["scales"] == 1).all() and (conv["rolling_variance"] == 1).all()
    assert (conv["rolling_mean"] == 0).all()
    assert set(shortcut) == {"weights"} and (shortcut["weights"] == 1).all()
    assert sorted(bn) == ["biases", "rolling_mean", "rolling_variance", "scales"]
    assert (bn["scales"] == 1).all() and (bn["rolling_mean"] == 0).all()


def test_weight_decay_only_on_conv_and_connected_kernels():
    """As Darknet's update_*_layer: the kernels of [convolutional] and [connected] decay;
    biases, BatchNorm scales and a weighted [shortcut]'s weights do not."""
    from netsurgery.training.freezing import param_groups

    text = ("[net]\nwidth=4\nheight=4\nchannels=2\n"
            "[convolutional]\nfilters=2\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky\n"
            "[shortcut]\nfrom=-1\nweights_type=per_feature\nactivation=linear\n"
            "[connected]\noutput=5\nactivation=linear\n")
    model = load_model(build_network(parse_cfg_text(text, "decay.cfg")))
    decayed, plain = param_groups(model, [0, 1, 2], 0.0005)
    assert decayed["weight_decay"] == 0.0005 and plain["weight_decay"] == 0.0
    named = {id(t): (i, n) for i in range(3) for n, t in model.layers[i].weight_tensors()}
    assert sorted(named[id(t)] for t in decayed["params"]) == [(0, "weights"), (2, "weights")]
    assert sorted(named[id(t)] for t in plain["params"]) == [
        (0, "biases"), (0, "scales"), (1, "weights"), (2, "biases")]
