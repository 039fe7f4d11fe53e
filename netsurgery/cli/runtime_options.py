"""The ``--runtime`` / ``--onnx`` options shared by detect, eval and time (no command here)."""
from __future__ import annotations

import click

from netsurgery.detection.runner import RUNTIMES


def runtime_options(command):
    """Add ``--runtime torch|onnxruntime`` and ``--onnx FILE`` to a command."""
    command = click.option(
        "--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None,
        help="Run this file exported by `netsurgery export` (implies --runtime onnxruntime; "
             "WEIGHTS is then not read).")(command)
    return click.option(
        "--runtime", type=click.Choice(RUNTIMES), default="torch", show_default=True,
        help="torch: our model; onnxruntime: the network exported to ONNX (in memory) and "
             "run by onnxruntime's CPU provider. Decoding and NMS are the same.")(command)
