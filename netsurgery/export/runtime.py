"""Running an exported graph in onnxruntime (CPU provider) behind the interface detection,
evaluation and timing use (:class:`netsurgery.detection.runner.Runner`), so the deployed
artefact is checked with the same decoding and NMS as the PyTorch model.

An :class:`OnnxRunner` is made either from a loaded model (exported on the fly, in memory:
the same bytes ``netsurgery export --dynamic-batch`` writes, all detection layers as outputs)
or from an ``.onnx`` file exported before (its metadata says which output is which layer).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from netsurgery.darknet.model import DarknetModel
from netsurgery.darknet.network import Network
from netsurgery.errors import NetsurgeryError, UsageError

from .graph import require
from .onnx_export import INPUT_NAME, build_onnx, read_info


def default_layers(network: Network) -> list[int]:
    """What detection reads: the detection layers ([region]: its raw input, which
    ``decode_region`` decodes), else the last layer."""
    return [network.layers[i].decoder()[2] if network.layers[i].is_detection else i
            for i in network.outputs()]


class OnnxRunner:
    """An onnxruntime session with ``run(x, targets)`` → {layer: output} and ``runner(x)`` →
    the network's outputs, like :class:`DarknetModel`."""

    def __init__(self, network: Network, model: bytes | str | os.PathLike,
                 threads: int | None = None, source: str = "<in memory>"):
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                model if isinstance(model, bytes) else str(model), options,
                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable files
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise NetsurgeryError(f"{source}: onnxruntime cannot load it ({reason})") from None
        self.network = network
        self.source = source
        self.info = read_info(self.session.get_modelmeta().custom_metadata_map, source)
        self._check_fits()

    @classmethod
    def from_model(cls, model: DarknetModel, layers: Sequence[int] | None = None,
                   threads: int | None = None) -> "OnnxRunner":
        """Export ``model`` in memory (dynamic batch) with ``layers`` as outputs (default:
        what detection reads) and open it."""
        layers = list(layers) if layers is not None else default_layers(model.network)
        return cls(model.network, build_onnx(model, [], batch=None, extra_layers=layers).data,
                   threads)

    @classmethod
    def from_file(cls, network: Network, path: str | os.PathLike,
                  threads: int | None = None) -> "OnnxRunner":
        if not os.path.isfile(path):
            raise NetsurgeryError(f"{path}: ONNX file not found")
        return cls(network, path, threads, str(path))

    def _check_fits(self) -> None:
        info, net = self.info, self.network.net
        if (info.channels, info.height, info.width) != (net.channels, net.height, net.width):
            raise UsageError(
                f"{self.source}: exported for {info.channels}x{info.height}x{info.width} "
                f"input, the cfg runs at {net.channels}x{net.height}x{net.width}: give the "
                "export's --size")
        if info.decoded:
            raise UsageError(f"{self.source}: exported with --decode; netsurgery decodes "
                             "itself and needs the raw outputs: export without --decode")

    def _output(self, layer: int) -> str:
        name = self.info.output_of(layer)
        if name is None:
            have = sorted(o.layer for o in self.info.outputs if o.layer is not None)
            raise UsageError(f"{self.source}: has no output for layer {layer} (outputs: "
                             f"layers {have})")
        return name

    def run(self, x: torch.Tensor, targets: Sequence[int],
            cache: dict | None = None) -> dict[int, torch.Tensor]:
        """Outputs of ``targets`` (layer indices), as float32 CPU tensors."""
        names = [self._output(t) for t in targets]
        batch = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        step = self.info.batch or len(batch)
        parts = []
        for start in range(0, len(batch), step):  # a fixed-batch graph: in chunks, padded
            chunk = batch[start:start + step]
            if len(chunk) < step:
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk),) + chunk.shape[1:],
                                                        np.float32)])
            parts.append(self.session.run(names, {INPUT_NAME: chunk}))
        n = len(batch)
        return {t: torch.from_numpy(np.concatenate([p[k] for p in parts])[:n])
                for k, t in enumerate(targets)}

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        targets = [o.layer for o in self.info.outputs if o.layer is not None]
        out = self.run(x, targets)
        return [out[t] for t in targets]


def time_merged_onnx(model: DarknetModel, heads, repeat: int = 20, progress=None,
                     threads: int | None = None):
    """``time --heads`` in onnxruntime: each head's own graph (trunk + its tail, exported
    with only its outputs) against the graph of all heads; see ``detection.timing``."""
    from netsurgery.analysis.cost import merge_savings
    from netsurgery.detection.timing import input_of, time_heads

    x = input_of(model.network)
    alone = {}
    for group in heads.groups():
        runner = OnnxRunner.from_model(model, group.yolo_layers, threads)
        alone[group.name] = lambda runner=runner: runner(x)
    everything = OnnxRunner.from_model(model, threads=threads)
    return time_heads(alone, lambda: everything(x),
                      merge_savings(model.network, heads).bflops_ratio, repeat, progress)
