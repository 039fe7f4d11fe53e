"""netsurgery: surgery on trained Darknet (YOLO) networks.

Python API (layer indices are Darknet's everywhere: 0-based, ``[net]`` not counted)::

    from netsurgery import load_cfg, build_network, load_model
    model = load_model("yolov3-tiny.cfg", "yolov3-tiny.weights")
    outs = model.layer_outputs(x)       # every layer, index = Darknet layer index
    model.save_weights("copy.weights")  # byte-identical to the input after a load
"""
from netsurgery.darknet.cfg import Cfg, Option, Section, load_cfg, parse_cfg_text
from netsurgery.darknet.model import DarknetModel, load_model
from netsurgery.darknet.network import Network, build_network
from netsurgery.darknet.weights import WeightsFile, WeightsHeader, load_weights, save_weights
from netsurgery.errors import CfgError, DataError, NetsurgeryError, UsageError, WeightsError

__version__ = "0.1.0"

__all__ = ["Cfg", "Option", "Section", "load_cfg", "parse_cfg_text", "CfgError", "DataError",
           "NetsurgeryError", "UsageError", "WeightsError", "DarknetModel", "load_model",
           "Network", "build_network", "WeightsFile", "WeightsHeader", "load_weights",
           "save_weights"]
