"""One small class per Darknet layer type, found through :data:`REGISTRY` by section name."""
from . import (  # noqa: F401  (fill the registry)  # noqa: F401  (the others)
           activation,
           conv,
           conv_recurrent,
           local,
           misc,
           old_heads,
           pool,
           recurrent,
           reshape,
           route,
           yolo,
)
from .base import REGISTRY, BuildContext, LayerModule, LayerSpec, NetInput, Shape, WeightArray
from .conv import ConnectedSpec, ConvSpec
from .route import RouteSpec, ShortcutSpec
from .yolo import RegionSpec, YoloSpec

__all__ = ["REGISTRY", "BuildContext", "LayerModule", "LayerSpec", "NetInput", "Shape",
           "WeightArray", "ConvSpec", "ConnectedSpec", "RouteSpec", "ShortcutSpec",
           "YoloSpec", "RegionSpec"]
