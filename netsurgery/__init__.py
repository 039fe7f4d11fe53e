"""netsurgery: surgery on trained Darknet (YOLO) networks.

Python API (layer indices are Darknet's everywhere: 0-based, ``[net]`` not counted)::

    from netsurgery import load_cfg, build_network, load_model
    model = load_model("yolov3-tiny.cfg", "yolov3-tiny.weights")
    outs = model.layer_outputs(x)       # every layer, index = Darknet layer index
    model.save_weights("copy.weights")  # byte-identical to the input after a load

The names below are imported on first use, so ``import netsurgery`` (and the command line's
start-up) stays light, and a Ctrl-C while it starts is handled by the command line.
"""
from __future__ import annotations

import importlib

from netsurgery.errors import CfgError, DataError, NetsurgeryError, UsageError, WeightsError

__version__ = "0.1.0"

_LAZY = {
    "Cfg": "netsurgery.darknet.cfg", "Option": "netsurgery.darknet.cfg",
    "Section": "netsurgery.darknet.cfg", "load_cfg": "netsurgery.darknet.cfg",
    "parse_cfg_text": "netsurgery.darknet.cfg",
    "DarknetModel": "netsurgery.darknet.model", "load_model": "netsurgery.darknet.model",
    "Network": "netsurgery.darknet.network", "build_network": "netsurgery.darknet.network",
    "WeightsFile": "netsurgery.darknet.weights", "WeightsHeader": "netsurgery.darknet.weights",
    "load_weights": "netsurgery.darknet.weights", "save_weights": "netsurgery.darknet.weights",
}

__all__ = ["CfgError", "DataError", "NetsurgeryError", "UsageError", "WeightsError"] + list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'netsurgery' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
