"""A typed network with its weights: the :class:`~netsurgery.darknet.network.Network` the model
is built from plus every layer's arrays in .weights file layout. What merge and split work
on; it can be written to cfg + weights files or turned into a model without touching disk."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

import numpy as np

from netsurgery.darknet.cfg import Cfg, Section
from netsurgery.darknet.network import Network, build_network
from netsurgery.darknet.weights import (
    LayerWeights,
    WeightsFile,
    WeightsHeader,
    file_layout,
    layer_arrays,
    load_weights,
    save_weights,
)
from netsurgery.errors import NetsurgeryError

Arrays = dict[int, dict[str, np.ndarray]]


@dataclass
class WeightedNetwork:
    """``network`` and its ``arrays`` (layer index → name → array, file layout) under
    ``header``. Layers without arrays (a cfg read without weights) have no entry."""

    network: Network
    arrays: Arrays = field(default_factory=dict)
    header: WeightsHeader = field(default_factory=WeightsHeader)

    def __len__(self) -> int:
        return len(self.network.layers)

    @property
    def cfg(self) -> Cfg:
        return self.network.cfg

    def copy(self) -> "WeightedNetwork":
        """A copy whose cfg and array dicts may be edited (the arrays themselves are shared)."""
        return WeightedNetwork(build_network(self.cfg.copy()),
                               {i: dict(a) for i, a in self.arrays.items()},
                               copy.copy(self.header))

    def missing_arrays(self) -> list[int]:
        """Layers that store arrays in a .weights file but have none here."""
        return [spec.index for spec, _ in file_layout(self.network.layers,
                                                       self.header.transposed)
                if spec.index not in self.arrays]

    def save(self, cfg_path: str | os.PathLike,
             weights_path: str | os.PathLike | None = None) -> None:
        """Write the cfg (and the weights), each atomically."""
        if weights_path is not None:
            missing = self.missing_arrays()
            if missing:
                raise NetsurgeryError(f"layers {missing[:5]} have no weights to save")
            save_weights(weights_path, self.header, self.network.layers, self.arrays)
        self.cfg.save(cfg_path)

    def weights_file(self) -> WeightsFile:
        """The arrays as a complete in-memory :class:`WeightsFile` (no copy)."""
        missing = self.missing_arrays()
        if missing:
            raise NetsurgeryError(f"layers {missing[:5]} have no weights")
        n = len(self.network.layers)
        layers = {i: LayerWeights(i, self.network.layers[i].type_name, dict(a))
                  for i, a in self.arrays.items()}
        return WeightsFile(None, self.header, layers, n, n)

    def model(self, inference: bool = True, device: str = "cpu"):
        """The :class:`~netsurgery.darknet.model.DarknetModel` of this network, built in memory
        (``inference=True``: the fast inference mode, as ``load_model`` gives)."""
        from netsurgery.darknet.model import load_model

        return load_model(self.network, self.weights_file(), inference=inference, device=device)


def load_weighted(cfg: str | os.PathLike | Cfg, weights: str | os.PathLike | None = None,
                  copy_arrays: bool = False) -> WeightedNetwork:
    """Read a cfg (and its complete weights). Arrays are views of the memory-mapped file unless
    ``copy_arrays``."""
    network = build_network(cfg)
    if weights is None:
        return WeightedNetwork(network)
    wf = load_weights(weights, network.layers, allow_partial=False)
    arrays = layer_arrays(wf)
    if copy_arrays:
        arrays = {i: {k: np.array(v) for k, v in a.items()} for i, a in arrays.items()}
    return WeightedNetwork(network, arrays, wf.header)


def assemble(net: Section, sections: list[Section], arrays: Arrays,
             header: WeightsHeader) -> WeightedNetwork:
    """A WeightedNetwork of ``[net]`` + layer ``sections`` (shapes and references checked by
    building the network)."""
    return WeightedNetwork(build_network(Cfg(net, sections)), arrays, header)


__all__ = ["Arrays", "WeightedNetwork", "assemble", "load_weighted"]
