"""``darknet partial``: keep the weights of the first N layers (a backbone such as
darknet53.conv.74 = layers 0..73 of yolov3)."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

from netsurgery.darknet.cfg import Cfg
from netsurgery.darknet.network import Network, build_network
from netsurgery.darknet.weights import (
    WeightsHeader,
    file_layout,
    layer_arrays,
    load_weights,
    save_weights,
)
from netsurgery.errors import UsageError, WeightsError
from netsurgery.fileio import check_output


@dataclass
class PartialResult:
    path: str
    n_layers: int  # layers 0..n_layers-1 written
    layers_with_weights: list[int]  # the indices whose arrays the file holds
    header: WeightsHeader
    size: int  # bytes written


def write_partial(cfg: Cfg | Network | str | os.PathLike, weights: str | os.PathLike,
                  out: str | os.PathLike, n_layers: int, overwrite: bool = False,
                  reset_seen: bool = False) -> PartialResult:
    """Write the weights of layers ``0..n_layers-1`` of ``weights`` to ``out``.

    The result is byte for byte the first bytes of the input (header included, so ``seen`` and
    the version are kept); ``reset_seen=True`` sets ``seen`` to 0 as AlexeyAB's ``darknet
    partial`` does, so that training restarts its schedule. The input must cover those
    layers; ``out`` must not be an input, nor exist unless ``overwrite``."""
    cfg_path = cfg.path if isinstance(cfg, (Cfg, Network)) else cfg
    check_output(out, [cfg_path, weights], overwrite)
    network = cfg if isinstance(cfg, Network) else build_network(cfg)
    total = len(network.layers)
    if not 0 <= n_layers <= total:
        raise UsageError(f"--layers {n_layers}: expected 0..{total} (the cfg "
                         f"{network.path or ''} has {total} layers)")
    wf = load_weights(weights, network.layers)
    if wf.covered < n_layers:
        raise WeightsError(f"{weights}: holds weights for layers 0..{wf.covered - 1} only, "
                           f"cannot write the first {n_layers} layers")
    header = replace(wf.header, seen=0) if reset_seen else wf.header
    save_weights(out, header, network.layers, layer_arrays(wf), upto=n_layers)
    kept = [spec.index for spec, _ in file_layout(network.layers[:n_layers], header.transposed)]
    return PartialResult(str(out), n_layers, kept, header, os.path.getsize(out))


__all__ = ["PartialResult", "write_partial"]
