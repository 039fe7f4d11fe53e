"""netsurgery: surgery on trained Darknet (YOLO) networks.

Python API (layer indices are Darknet's everywhere: 0-based, ``[net]`` not counted)::

    from netsurgery import load_cfg, build_network, load_model
    model = load_model("yolov3-tiny.cfg", "yolov3-tiny.weights")
    outs = model.layer_outputs(x)       # every layer, index = Darknet layer index
    model.save_weights("copy.weights")  # byte-identical to the input after a load
"""
from netsurgery.darknet.cfg import Cfg, Option, Section, load_cfg, parse_cfg_text
from netsurgery.darknet.network import Network, build_network
from netsurgery.darknet.weights import WeightsFile, WeightsHeader, load_weights, save_weights
from netsurgery.errors import CfgError, DataError, NetsurgeryError, UsageError, WeightsError

__version__ = "0.1.0"

# Imported on first use (PEP 562): the model needs torch, which the verbs that only read
# cfgs and weights files never load.
_LAZY = {"DarknetModel": "netsurgery.darknet.model", "load_model": "netsurgery.darknet.model"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'netsurgery' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = ["Cfg", "Option", "Section", "load_cfg", "parse_cfg_text", "CfgError", "DataError",
           "NetsurgeryError", "UsageError", "WeightsError", "DarknetModel", "load_model",
           "Network", "build_network", "WeightsFile", "WeightsHeader", "load_weights",
           "save_weights"]
