"""Detection heads: [yolo] (YOLOv3/v4) and [region] (YOLOv2)."""
from __future__ import annotations

from dataclasses import dataclass, field

from netsurgery.darknet.cfg import Section

from .base import BuildContext, LayerModule, LayerSpec, ReferenceKey, lazy_torch, positive, register

torch, nn, F = lazy_torch(globals())


def read_anchors(section: Section, index: int, num: int, ctx: BuildContext,
                 beyond: int = 0) -> list[float]:
    """``anchors=`` as Darknet reads it: the first 2·num values; missing ones keep the default
    0.5. A count other than 2·num is a warning (an error with a strict cfg). ``beyond``: how
    many anchors past num a faulty mask reads (taken from the text when written there)."""
    anchors = section.get_floats("anchors")
    if len(anchors) != 2 * num and not (beyond and len(anchors) == 2 * (num + beyond)):
        use = ("Darknet reads the first 2·num" if len(anchors) > 2 * num else
               "Darknet keeps its default 0.5 for the missing ones")
        ctx.warn(section, f"layer {index}: anchors has {len(anchors)} values, expected "
                          f"2·num = {2 * num}: {use}", "anchors")
    want = 2 * (num + beyond)
    return anchors[:want] + [0.5] * max(0, want - len(anchors))


@register("yolo")
@dataclass(eq=False)
class YoloSpec(LayerSpec):
    is_detection = True
    reference_keys = (ReferenceKey("embedding_layer", none=999999),)  # Darknet's "none"

    classes: int = 20
    total: int = 1  # num= : how many anchors the anchors= list holds
    mask: list[int] = field(default_factory=list)
    anchors: list[float] = field(default_factory=list)  # flat w,h pairs in network pixels
    scale_x_y: float = 1.0
    new_coords: bool = False

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "YoloSpec":
        spec = cls(index, section, ctx.shape_of(index - 1))
        s = section
        spec.classes = positive(s, index, "classes", s.get_int("classes", 20))
        spec.total = positive(s, index, "num", s.get_int("num", 1))
        # The default mask and anchors have num entries: they are built only after the
        # channel check below, so that a huge num= is an error, not an exhausted memory.
        mask = s.get_ints("mask") if s.has("mask") else None
        # A mask past num reads past Darknet's anchor array: tolerated (with a warning) only
        # where the anchors= text holds values for it (cspx-p7-mish.cfg: num=16, mask 16..19).
        written = len(s.get_floats("anchors")) // 2 if s.has("anchors") else 0
        for m in mask or ():
            if not 0 <= m < max(spec.total, written):
                raise spec.error(f"mask index {m} is outside 0..{spec.total - 1} (num="
                                 f"{spec.total})", "mask")
        beyond = max(mask or [0]) + 1 - spec.total  # anchors the mask reads past num
        if beyond > 0:
            ctx.warn(s, f"layer {index}: mask index {max(mask)} is outside 0..{spec.total - 1} "
                        f"(num={spec.total}): Darknet reads past its anchors there (undefined "
                        "values); netsurgery uses the anchors= values written there", "mask")
        if s.has("anchors"):
            spec.anchors = read_anchors(s, index, spec.total, ctx, max(beyond, 0))
        spec.scale_x_y = s.get_float("scale_x_y", 1.0)
        spec.new_coords = bool(s.get_int("new_coords", 0))
        n_mask = spec.total if mask is None else len(mask)
        expected, rule = spec.channel_rule(spec.classes, n_mask)
        if spec.in_shape.c != expected:
            if index == 0:
                raise spec.error(f"the network input has {spec.in_shape.c} channels: a [yolo] "
                                 f"layer needs (classes+5)·len(mask) = {expected} from a "
                                 "[convolutional] layer before it")
            where = ctx.specs[index - 1].section
            raise where.error(
                f"layer {index - 1}: filters={spec.in_shape.c} does not fit the [yolo] layer "
                f"{index} after it: expected {rule}", "filters")
        spec.mask = list(range(spec.total)) if mask is None else mask
        if not spec.anchors:
            spec.anchors = [0.5] * (2 * spec.total)  # Darknet's default biases
        spec.out_shape = spec.in_shape
        return spec

    @staticmethod
    def channel_rule(classes: int, n_anchors: int) -> tuple[int, str]:
        """The channels a [yolo] layer with ``classes`` and ``n_anchors`` (its mask) reads,
        and that rule written out."""
        n = (classes + 5) * n_anchors
        return n, f"(classes+5)·len(mask) = ({classes}+5)·{n_anchors} = {n}"

    def input_channels(self) -> tuple[int, str]:
        return self.channel_rule(self.classes, len(self.mask))

    def decoder(self, name: str | None = None) -> tuple:
        from netsurgery.detection.decode import YoloHead, decode_yolo

        head = YoloHead(list(self.mask), list(self.anchors), self.classes, self.new_coords, name)
        return head, decode_yolo, self.index

    @property
    def head_anchors(self) -> list[tuple[float, float]]:
        return [(self.anchors[2 * m], self.anchors[2 * m + 1]) for m in self.mask]

    def describe(self) -> str:
        return f"{self.classes} classes, mask {','.join(map(str, self.mask))}"

    def build(self) -> LayerModule:
        return YoloModule(self)


class YoloModule(LayerModule):
    """Darknet's partial activation: logistic on x, y, objectness and classes (not w, h);
    x, y then scaled by scale_x_y; nothing activated with new_coords=1."""

    def __init__(self, spec: YoloSpec):
        super().__init__(spec)
        self.n = len(spec.mask)
        self.classes = spec.classes
        self.scale = spec.scale_x_y
        self.new_coords = spec.new_coords

    def forward(self, x, outputs):
        b, _, h, w = x.shape
        # reshape, not view: splitting C works for NCHW and channels_last alike; one sigmoid
        # pass over everything, then w, h put back raw (cheaper than slicing and cat)
        v = x.reshape(b, self.n, self.classes + 5, h, w)
        if self.new_coords:
            y = v.clone()
        else:
            y = torch.sigmoid(v)
            y[:, :, 2:4] = v[:, :, 2:4]
        if self.scale != 1.0:
            y[:, :, 0:2] = y[:, :, 0:2] * self.scale - 0.5 * (self.scale - 1)
        return y.reshape(b, -1, h, w)


@register("region")
@dataclass(eq=False)
class RegionSpec(LayerSpec):
    is_detection = True

    classes: int = 20
    coords: int = 4
    num: int = 1
    softmax: bool = False
    anchors: list[float] = field(default_factory=list)  # in grid cells

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "RegionSpec":
        spec = cls(index, section, ctx.shape_of(index - 1))
        s = section
        spec.classes = positive(s, index, "classes", s.get_int("classes", 20))
        spec.coords = positive(s, index, "coords", s.get_int("coords", 4))
        spec.num = positive(s, index, "num", s.get_int("num", 1))
        spec.softmax = bool(s.get_int("softmax", 0))
        if s.has("anchors"):
            spec.anchors = read_anchors(s, index, spec.num, ctx)
        expected, rule = spec.input_channels()
        if spec.in_shape.c != expected:
            raise spec.error(f"input has {spec.in_shape.c} channels: expected {rule}")
        if not s.has("anchors"):  # built after the check: a huge num= must not exhaust memory
            spec.anchors = [0.5] * (2 * spec.num)
        spec.out_shape = spec.in_shape
        return spec

    def input_channels(self) -> tuple[int, str]:
        n = self.num * (self.classes + self.coords + 1)
        return n, f"num·(classes+coords+1) = {n}"

    def decoder(self, name: str | None = None) -> tuple:
        from netsurgery.detection.decode import RegionHead, decode_region

        head = RegionHead(list(self.anchors), self.classes, self.num, self.coords,
                          self.softmax, name)
        return head, decode_region, self.index - 1  # region decodes its raw input

    def describe(self) -> str:
        return f"{self.classes} classes, {self.num} anchors"

    def build(self) -> LayerModule:
        if self.section.has("tree"):
            raise self.error("softmax trees (tree=) are not supported", "tree")
        return RegionModule(self)


class RegionModule(LayerModule):
    """pjreddie's region activation in the (C, H, W) layout: logistic x, y and objectness,
    softmax over the classes. (AlexeyAB's CPU build stores this layer transposed; we keep the
    channel layout, which both forks decode the same way.)"""

    def __init__(self, spec: RegionSpec):
        super().__init__(spec)
        self.n = spec.num
        self.coords = spec.coords
        self.classes = spec.classes
        self.softmax = spec.softmax

    def forward(self, x, outputs):
        b, _, h, w = x.shape
        v = x.view(b, self.n, self.coords + 1 + self.classes, h, w)
        xy = torch.sigmoid(v[:, :, 0:2])
        other = v[:, :, 2:self.coords]
        obj = torch.sigmoid(v[:, :, self.coords:self.coords + 1])
        cls = v[:, :, self.coords + 1:]
        cls = torch.softmax(cls, dim=2) if self.softmax else torch.sigmoid(cls)
        return torch.cat([xy, other, obj, cls], dim=2).view(b, -1, h, w)
