"""One small class per Darknet layer type, found through :data:`REGISTRY` by section name."""
from . import activation, conv, pool, reshape, route, yolo  # noqa: F401  (fill the registry)
from .base import REGISTRY, BuildContext, LayerModule, LayerSpec, NetInput, Shape, WeightArray
from .conv import ConnectedSpec, ConvSpec
from .route import RouteSpec, ShortcutSpec
from .yolo import RegionSpec, YoloSpec

__all__ = ["REGISTRY", "BuildContext", "LayerModule", "LayerSpec", "NetInput", "Shape",
           "WeightArray", "ConvSpec", "ConnectedSpec", "RouteSpec", "ShortcutSpec",
           "YoloSpec", "RegionSpec"]
