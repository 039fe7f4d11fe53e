"""Run a network and store layer outputs in the conformance format (``layer_NNN`` float32
(C, H, W) for one image, plus ``input``), so they can be compared with Darknet's own dumps."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from netsurgery.errors import DataError, UsageError
from netsurgery.fileio import atomic_open

from .model import DarknetModel


def load_input(source: str | os.PathLike, model: DarknetModel, letterbox: bool) -> np.ndarray:
    """A (1, C, H, W) float32 input: a ``.npy`` as is, or an image preprocessed like Darknet."""
    path = Path(source)
    net = model.network.net
    if path.suffix.lower() == ".npy":
        try:
            x = np.load(path).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read as .npy ({exc})") from None
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != (net.channels, net.height, net.width):
            raise DataError(f"{path}: array of shape {x.shape}: expected (1, {net.channels}, "
                            f"{net.height}, {net.width})")
        return x
    from netsurgery.detection.image import preprocess

    sized, _ = preprocess(path, net.width, net.height, letterbox)
    return sized[None]


def dump_layers(model: DarknetModel, x: np.ndarray, layers: Sequence[int] | None = None
                ) -> dict[str, np.ndarray]:
    """Outputs of ``layers`` (all by default) for the first image of ``x``."""
    n = len(model.layers)
    wanted = list(range(n)) if layers is None else list(layers)
    for i in wanted:
        if not 0 <= i < n:
            raise UsageError(f"layer {i} does not exist: the network has layers 0..{n - 1}")
    with torch.inference_mode():
        got = model.run(torch.from_numpy(x), wanted)
    out = {"input": x}
    for i in wanted:
        spec = model.network.layers[i]
        out[f"layer_{i:03d}"] = got[i][0].numpy().reshape(spec.out_shape.as_list())
    return out


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """np.savez written atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with atomic_open(path, "wb") as handle:
        handle.write(buf.getvalue())
