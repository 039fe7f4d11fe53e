"""What runs the network for detection, evaluation and timing: our PyTorch model, or the
exported ONNX graph in onnxruntime (``--runtime onnxruntime``). Decoding and NMS are ours
in both cases, so their detections compare one to one."""
from __future__ import annotations

import os
from typing import Protocol, Sequence

import torch

from netsurgery.darknet.network import Network
from netsurgery.errors import UsageError

RUNTIMES = ("torch", "onnxruntime")


class Runner(Protocol):
    """:class:`~netsurgery.darknet.model.DarknetModel` and
    :class:`~netsurgery.export.runtime.OnnxRunner` both are one."""

    network: Network

    def run(self, x: torch.Tensor, targets: Sequence[int]) -> dict[int, torch.Tensor]:
        """Outputs of the layers ``targets`` for the batch ``x``."""

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The network's outputs (detection layers, else the last layer)."""


def load_runner(cfg: str | os.PathLike, weights: str | os.PathLike,
                size: tuple[int, int] | None = None, device: str = "cpu",
                runtime: str = "torch", onnx_path: str | os.PathLike | None = None,
                threads: int | None = None) -> Runner:
    """The runner a verb asked for: our model in the fast inference mode (``torch``), or
    onnxruntime on ``onnx_path`` (WEIGHTS then unused) or on CFG/WEIGHTS exported in memory."""
    from netsurgery.darknet.model import load_model

    if runtime not in RUNTIMES:
        raise UsageError(f"--runtime {runtime}: expected one of {', '.join(RUNTIMES)}")
    if onnx_path is None and runtime == "torch":
        return load_model(cfg, weights, size=size, inference=True, device=device)
    if str(device) != "cpu":
        raise UsageError(f"--device {device}: --runtime onnxruntime runs on the CPU only")
    from netsurgery.darknet.network import build_network
    from netsurgery.export.runtime import OnnxRunner

    if onnx_path is not None:
        return OnnxRunner.from_file(build_network(cfg, size), onnx_path, threads)
    return OnnxRunner.from_model(load_model(cfg, weights, size=size), threads=threads)
