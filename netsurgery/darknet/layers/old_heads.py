"""Detection heads other than [yolo] and [region]: [detection] (YOLOv1, detection_layer.c) and
[Gaussian_yolo] (Gaussian YOLOv3, gaussian_yolo_layer.c). Both parse, build and run as
Darknet's inference forward; netsurgery's detector does not decode them."""
from __future__ import annotations

from dataclasses import dataclass, field

from netsurgery.darknet.cfg import Section

from .base import BuildContext, LayerModule, LayerSpec, Shape, lazy_torch, positive, register
from .yolo import YoloSpec, read_anchors

torch, nn, F = lazy_torch(globals())


@register("detection")
@dataclass(eq=False)
class DetectionSpec(LayerSpec):
    """YOLOv1's head on a [connected] output of side²·((1+coords)·num + classes) values laid
    out as all class scores, then all objectness values, then all boxes. Inference copies
    the input, with a softmax over each location's classes if ``softmax=1``."""

    is_detection = True
    classes: int = 1
    coords: int = 1
    num: int = 1
    side: int = 7
    softmax: bool = False
    sqrt: bool = False
    anchors: list[float] = field(default_factory=list)  # YOLOv1 has none: boxes are direct

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "DetectionSpec":
        s = section
        spec = cls(index, s, ctx.shape_of(index - 1))
        spec.classes = positive(s, index, "classes", s.get_int("classes", 1))
        spec.coords = positive(s, index, "coords", s.get_int("coords", 1))
        spec.num = positive(s, index, "num", s.get_int("num", 1))
        spec.side = positive(s, index, "side", s.get_int("side", 7))
        spec.softmax = bool(s.get_int("softmax", 0))
        spec.sqrt = bool(s.get_int("sqrt", 0))
        expected, rule = spec.input_channels()
        if spec.in_shape.numel != expected:  # Darknet's assert in make_detection_layer
            raise spec.error(f"input has {spec.in_shape.numel} values: expected {rule}")
        spec.out_shape = Shape(expected, 1, 1)
        return spec

    def input_channels(self) -> tuple[int, str]:
        """The values the [connected] layer before it must output (its channels)."""
        expected = self.side ** 2 * ((1 + self.coords) * self.num + self.classes)
        return expected, (f"side²·((1+coords)·num + classes) = {self.side}²·((1+{self.coords})"
                          f"·{self.num} + {self.classes}) = {expected}")

    def describe(self) -> str:
        return f"{self.classes} classes, {self.side}x{self.side}x{self.num}"

    def build(self):
        return DetectionModule(self)


class DetectionModule(LayerModule):
    def __init__(self, spec: DetectionSpec):
        super().__init__(spec)
        self.softmax = spec.softmax
        self.class_block = (spec.side ** 2, spec.classes)

    def forward(self, x, outputs):
        flat = x.reshape(x.shape[0], -1)
        if not self.softmax:
            return flat.clone().view(x.shape[0], -1, 1, 1)
        locations, classes = self.class_block
        scores = flat[:, :locations * classes].view(-1, locations, classes)
        rest = flat[:, locations * classes:]
        out = torch.cat([torch.softmax(scores, dim=2).flatten(1), rest], dim=1)
        return out.view(x.shape[0], -1, 1, 1)


@register("Gaussian_yolo")
@dataclass(eq=False)
class GaussianYoloSpec(LayerSpec):
    """Gaussian YOLOv3: per anchor 8 box values (x, σx, y, σy, w, σw, h, σh), objectness and
    classes. Inference: logistic on x, σx, y, σy, σw, σh, objectness and classes; x and y
    then scaled by scale_x_y; w and h raw."""

    is_detection = True
    classes: int = 20
    total: int = 1
    mask: list[int] = field(default_factory=list)
    anchors: list[float] = field(default_factory=list)
    scale_x_y: float = 1.0

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "GaussianYoloSpec":
        s = section
        spec = cls(index, s, ctx.shape_of(index - 1))
        spec.classes = positive(s, index, "classes", s.get_int("classes", 20))
        spec.total = positive(s, index, "num", s.get_int("num", 1))
        mask = s.get_ints("mask") if s.has("mask") else None
        for m in mask or ():
            if not 0 <= m < spec.total:
                raise spec.error(f"mask index {m} is outside 0..{spec.total - 1} (num="
                                 f"{spec.total})", "mask")
        spec.mask = list(range(spec.total)) if mask is None else mask
        expected, rule = spec.input_channels()
        if spec.in_shape.c != expected:
            raise spec.error(f"input has {spec.in_shape.c} channels: expected {rule}")
        spec.anchors = read_anchors(s, index, spec.total, ctx) if s.has("anchors") else \
            [0.5] * (2 * spec.total)
        spec.scale_x_y = s.get_float("scale_x_y", 1.0)
        spec.out_shape = spec.in_shape
        return spec

    def input_channels(self) -> tuple[int, str]:
        n = len(self.mask)
        expected = (self.classes + 9) * n
        return expected, f"(classes+9)·len(mask) = ({self.classes}+9)·{n} = {expected}"

    # the same facts as [yolo]'s (not a subclass: the YOLO loss and checks must not take it)
    head_anchors = YoloSpec.head_anchors
    describe = YoloSpec.describe

    def build(self):
        return GaussianYoloModule(self)


class GaussianYoloModule(LayerModule):
    # entries (of 9 + classes per anchor) that forward_gaussian_yolo_layer leaves raw
    RAW = (4, 6)

    def __init__(self, spec: GaussianYoloSpec):
        super().__init__(spec)
        self.n = len(spec.mask)
        self.per_anchor = spec.classes + 9
        self.scale = spec.scale_x_y

    def forward(self, x, outputs):
        b, _, h, w = x.shape
        v = x.reshape(b, self.n, self.per_anchor, h, w)
        y = torch.sigmoid(v)
        for entry in self.RAW:
            y[:, :, entry] = v[:, :, entry]
        if self.scale != 1.0:
            for entry in (0, 2):  # x and y means (not their sigmas)
                y[:, :, entry] = y[:, :, entry] * self.scale - 0.5 * (self.scale - 1)
        return y.reshape(b, -1, h, w)
