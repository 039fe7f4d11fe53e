"""Graph surgery on Darknet networks: cut, extract, insert, remove and append layers with every
layer reference renumbered (``[route] layers=``, ``[shortcut] from=``, ``[sam] from=``,
``[scale_channels] from=``, ``[convolutional] share_index=`` ...: whatever each layer spec
declares in its ``reference_keys``), the weights following the layers they belong to.

Every function is pure: it returns a new :class:`Graph` and leaves its input alone. Relative
references stay relative where they remain valid; references that would cross a cut become
absolute or are rejected with an error naming the layer.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from netsurgery.darknet.cfg import Cfg, Section, load_cfg
from netsurgery.darknet.layers.base import spec_class
from netsurgery.darknet.layers.yolo import YoloSpec
from netsurgery.darknet.network import Network, build_network
from netsurgery.darknet.weights import WeightsHeader, load_weights, save_weights
from netsurgery.errors import NetsurgeryError, UsageError


@dataclass
class Layer:
    """One layer for surgery: its cfg section and its weight arrays (file order), if any."""

    section: Section
    arrays: dict[str, np.ndarray] | None = None


@dataclass
class Graph:
    """A network as an editable list of layers plus ``[net]`` and the weights header."""

    net: Section
    layers: list[Layer]
    header: WeightsHeader = field(default_factory=WeightsHeader)
    path: str | None = None

    def __len__(self) -> int:
        return len(self.layers)

    def cfg(self) -> Cfg:
        """The graph as a Cfg (sections shared, not copied)."""
        return Cfg(self.net, [layer.section for layer in self.layers], self.path)

    def network(self) -> Network:
        """Shape-checked network of this graph (raises CfgError if inconsistent)."""
        return build_network(self.cfg().copy())

    def arrays(self) -> dict[int, dict[str, np.ndarray]]:
        return {i: layer.arrays for i, layer in enumerate(self.layers) if layer.arrays}

    def copy(self) -> "Graph":
        return Graph(self.net.copy(), [Layer(l.section.copy(), l.arrays) for l in self.layers],
                     copy.copy(self.header), self.path)

    def save(self, cfg_path: str | os.PathLike, weights_path: str | os.PathLike | None = None,
             upto: int | None = None) -> Network:
        """Write cfg and weights (atomically); validates the graph first."""
        network = self.network()
        if weights_path is not None:
            missing = [i for i, spec in enumerate(network.layers)
                       if spec.weight_arrays() and not self.layers[i].arrays
                       and (upto is None or i < upto)]
            if missing:
                raise NetsurgeryError(f"layers {missing[:5]} have no weights to save")
            save_weights(weights_path, self.header, network.layers, self.arrays(), upto)
        self.cfg().save(cfg_path)
        return network


def load_graph(cfg_path: str | os.PathLike, weights_path: str | os.PathLike | None = None,
               copy_arrays: bool = False) -> Graph:
    """Read a cfg (and its weights) for surgery. Arrays are views of the memory-mapped file
    unless ``copy_arrays``."""
    cfg = load_cfg(cfg_path)
    network = build_network(cfg)
    layers = [Layer(section) for section in cfg.layers]
    header = WeightsHeader()
    if weights_path is not None:
        wf = load_weights(weights_path, network.layers, allow_partial=False)
        header = wf.header
        for index, lw in wf.layers.items():
            layers[index].arrays = {k: (np.array(v) if copy_arrays else v)
                                    for k, v in lw.arrays.items()}
    return Graph(cfg.net, layers, header, str(cfg_path))


def graph_from_model(model) -> Graph:
    """A Graph of a loaded :class:`~netsurgery.darknet.model.DarknetModel` (arrays copied out)."""
    cfg = model.network.cfg
    layers = []
    for i, section in enumerate(cfg.layers):
        arrays = model.layer_arrays(i) or None
        layers.append(Layer(section.copy(), arrays))
    return Graph(cfg.net.copy(), layers, copy.copy(model.header), cfg.path)


# -- references -----------------------------------------------------------------------------
def references(section: Section, index: int) -> list[int]:
    """Absolute indices of the layers ``section`` (at ``index``) names in its options."""
    return [t for targets in spec_class(section, index).references_in(section, index).values()
            for t in targets]


def remap_references(section: Section, old_index: int, new_index: int,
                     mapping: Callable[[int], int | None]) -> Section:
    """A copy of ``section`` moved from ``old_index`` to ``new_index`` with each referenced
    layer ``t`` replaced by ``mapping(t)``. ``mapping`` returns None for a layer that no
    longer exists (an error naming both layers). Relative references stay relative when the
    new target is still earlier than the new position."""
    return spec_class(section, old_index).renumber_section(section, old_index, new_index, mapping)


def _rebuild(graph: Graph, kept: Sequence[tuple[int, Layer]],
             mapping: Callable[[int], int | None]) -> list[Layer]:
    """Place ``kept`` (old index, layer) at new positions 0.. with references remapped."""
    return [Layer(remap_references(layer.section, old, new, mapping), layer.arrays)
            for new, (old, layer) in enumerate(kept)]


# -- primitives -----------------------------------------------------------------------------
def remove(graph: Graph, index: int) -> Graph:
    """Remove layer ``index``; later layers and references to them move down by one. A layer
    that refers to the removed one is an error."""
    _check_index(graph, index)
    kept = [(i, l) for i, l in enumerate(graph.layers) if i != index]
    mapping = lambda t: None if t == index else (t - 1 if t > index else t)  # noqa: E731
    return Graph(graph.net.copy(), _rebuild(graph, kept, mapping), copy.copy(graph.header),
                 graph.path)


def insert(graph: Graph, index: int, layer: Layer | Section) -> Graph:
    """Insert ``layer`` so that it becomes layer ``index``; later layers move up by one. The
    new layer's own references are read as written at its new position."""
    if not 0 <= index <= len(graph.layers):
        raise UsageError(f"insert position {index}: expected 0..{len(graph.layers)}")
    if isinstance(layer, Section):
        layer = Layer(layer)
    mapping = lambda t: t + 1 if t >= index else t  # noqa: E731
    before = [Layer(l.section.copy(), l.arrays) for l in graph.layers[:index]]
    after = [Layer(remap_references(l.section, i, i + 1, mapping), l.arrays)
             for i, l in enumerate(graph.layers) if i >= index]
    new = Layer(layer.section.copy(), layer.arrays)
    for t in references(new.section, index):
        if t >= index:
            raise new.section.error(f"inserted layer {index} refers to layer {t}: expected an "
                                    "earlier layer")
    return Graph(graph.net.copy(), before + [new] + after, copy.copy(graph.header), graph.path)


def append(graph: Graph, layer: Layer | Section) -> Graph:
    """Add ``layer`` at the end."""
    return insert(graph, len(graph.layers), layer)


def extract(graph: Graph, start: int, stop: int) -> Graph:
    """Layers ``start .. stop-1`` as a network of their own, references renumbered. The new
    network's input is what layer ``start`` read, so ``[net]`` takes that shape. A reference to
    a layer before ``start`` cannot be expressed in Darknet and is an error naming it."""
    n = len(graph.layers)
    if not 0 <= start < stop <= n:
        raise UsageError(f"extract {start}..{stop - 1}: expected 0 ≤ start ≤ stop-1 < {n}")
    net = graph.net.copy()
    if start > 0:
        network = graph.network()
        first = network.layers[start]
        if not first.reads_previous():
            raise UsageError(f"extract from layer {start} [{first.section.header}]: the first "
                             "layer must read the previous layer's output")
        shape = first.in_shape
        net.set("channels", shape.c)
        net.set("height", shape.h)
        net.set("width", shape.w)
    mapping = lambda t: t - start if t >= start else None  # noqa: E731
    kept = list(enumerate(graph.layers))[start:stop]
    return Graph(net, _rebuild(graph, kept, mapping), copy.copy(graph.header), graph.path)


def cut(graph: Graph, n_layers: int) -> Graph:
    """The first ``n_layers`` layers (a prefix needs no renumbering)."""
    return extract(graph, 0, n_layers)


def _check_index(graph: Graph, index: int) -> None:
    if not 0 <= index < len(graph.layers):
        raise UsageError(f"layer {index} does not exist: expected 0..{len(graph.layers) - 1}")


def retarget_heads(cfg: Cfg, classes: int, anchors: Sequence[float] | None = None) -> Cfg:
    """A copy of ``cfg`` whose [yolo] heads detect ``classes`` classes (and use ``anchors``,
    flat w,h pairs, if given): sets ``classes`` (and ``anchors``/``num``) in every [yolo] and
    ``filters = (classes + 5)·len(mask)`` in the convolution before it — the edit every
    fine-tuning starts with."""
    out = cfg.copy()
    for i, section in enumerate(out.layers):
        if section.type != "yolo":
            continue
        if anchors is not None:
            if len(anchors) % 2:
                raise UsageError(f"anchors: {len(anchors)} values, expected w,h pairs")
            section.set("anchors", list(anchors))
            section.set("num", len(anchors) // 2)
        section.set("classes", classes)
        total = section.get_int("num", 1)
        mask = section.get_ints("mask", range(total))
        prev = out.layers[i - 1] if i > 0 else None
        if prev is None or prev.type != "convolutional":
            raise section.error(f"layer {i}: expected a [convolutional] before [yolo]")
        prev.set("filters", YoloSpec.channel_rule(classes, len(mask))[0])
    return out
