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
