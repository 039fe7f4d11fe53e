"""Layers that read earlier layers: [route], [shortcut], [sam], [scale_channels]."""
from __future__ import annotations

from dataclasses import dataclass, field

from netsurgery.darknet.cfg import Section

from .activation import activate, activate_, activation_of
from .base import (
    BuildContext,
    LayerModule,
    LayerSpec,
    ReferenceKey,
    Shape,
    WeightArray,
    lazy_torch,
    positive,
    register,
)

torch, nn, F = lazy_torch(globals())


@register("route")
@dataclass(eq=False)
class RouteSpec(LayerSpec):
    reference_keys = (ReferenceKey("layers", many=True),)

    layers: list[int] = field(default_factory=list)  # absolute indices
    groups: int = 1
    group_id: int = 0

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "RouteSpec":
        spec = cls(index, section, ctx.shape_of(index - 1))
        refs = section.get_ints("layers")
        spec.layers = [ctx.resolve(section, index, "layers", r) for r in refs]
        spec.groups = positive(section, index, "groups", section.get_int("groups", 1))
        spec.group_id = section.get_int("group_id", 0)
        if not 0 <= spec.group_id < spec.groups:
            raise spec.error(f"group_id={spec.group_id}: expected 0..{spec.groups - 1}",
                             "group_id")
        shapes = [ctx.shape_of(i) for i in spec.layers]
        first = shapes[0]
        for i, s in zip(spec.layers, shapes):
            if (s.h, s.w) != (first.h, first.w):
                raise spec.error(f"layers={section.get_str('layers')}: layer {i} is "
                                 f"{s.h}x{s.w} but layer {spec.layers[0]} is "
                                 f"{first.h}x{first.w}; route needs equal sizes", "layers")
            if s.c % spec.groups:
                raise spec.error(f"groups={spec.groups} does not divide the {s.c} channels "
                                 f"of layer {i}", "groups")
        spec.out_shape = Shape(sum(s.c for s in shapes) // spec.groups, first.h, first.w)
        return spec

    def sources(self) -> list[int]:
        return list(self.layers)

    def reads_previous(self) -> bool:
        return False

    def describe(self) -> str:
        text = " ".join(str(i) for i in self.layers)
        return text + (f" g{self.group_id}/{self.groups}" if self.groups > 1 else "")

    def build(self) -> LayerModule:
        return RouteModule(self)


class RouteModule(LayerModule):
    def __init__(self, spec: RouteSpec):
        super().__init__(spec)
        self.groups = spec.groups
        self.group_id = spec.group_id

    def forward(self, x, outputs):
        parts = [outputs[i] for i in self.sources]
        if self.groups > 1:
            parts = [p.chunk(self.groups, dim=1)[self.group_id] for p in parts]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


_WEIGHTS_TYPES = ("none", "per_feature", "per_layer", "per_channel")
_NORMALIZATIONS = ("none", "relu", "softmax")


@register("shortcut")
@dataclass(eq=False)
class ShortcutSpec(LayerSpec):
    reference_keys = (ReferenceKey("from", many=True),)

    sources_: list[int] = field(default_factory=list)
    activation: str = "linear"
    weights_type: str = "none"
    weights_normalization: str = "none"

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "ShortcutSpec":
        spec = cls(index, section, ctx.shape_of(index - 1))
        spec.sources_ = [ctx.resolve(section, index, "from", r) for r in section.get_ints("from")]
        spec.activation = activation_of(section, index, "linear")
        spec.weights_type = section.get_str("weights_type", "none")
        if spec.weights_type == "per_layer":
            spec.weights_type = "per_feature"  # Darknet treats both names alike
        if spec.weights_type not in _WEIGHTS_TYPES:
            raise spec.error(f"weights_type={spec.weights_type}: expected one of "
                             "none, per_feature, per_channel", "weights_type")
        spec.weights_normalization = section.get_str("weights_normalization", "none")
        if spec.weights_normalization not in _NORMALIZATIONS:
            raise spec.error(f"weights_normalization={spec.weights_normalization}: expected "
                             "one of none, relu, softmax", "weights_normalization")
        spec.out_shape = spec.in_shape
        return spec

    def sources(self) -> list[int]:
        return list(self.sources_)

    def weight_arrays(self, transposed: bool = False) -> list[WeightArray]:
        n = len(self.sources_) + 1
        if self.weights_type == "per_feature":
            return [WeightArray("weights", (n,))]
        if self.weights_type == "per_channel":
            return [WeightArray("weights", (n, self.out_shape.c))]
        return []

    def flops(self) -> float:
        o = self.out_shape
        base = float(o.w * o.h * o.c * len(self.sources_))
        return base * 2 if self.weights_type != "none" else base

    def describe(self) -> str:
        return " ".join(str(i) for i in self.sources_) + (
            f" {self.activation}" if self.activation != "linear" else "")

    def build(self) -> LayerModule:
        return ShortcutModule(self)


class ShortcutModule(LayerModule):
    """out = prev·w0 + Σ from_i·w_i over the overlapping flat range (AlexeyAB's
    shortcut_multilayer_cpu), then the activation."""

    fresh_output = True  # returns a tensor no other layer output shares (see forward_)

    def __init__(self, spec: ShortcutSpec):
        super().__init__(spec)
        self.activation = spec.activation
        self.weights_type = spec.weights_type
        self.normalization = spec.weights_normalization
        self.channels = spec.out_shape.c
        arrays = spec.weight_arrays()
        if arrays:
            self.weights = nn.Parameter(torch.ones(arrays[0].shape))

    def weight_tensors(self):
        return [("weights", self.weights)] if self.weights_type != "none" else []

    def _source_weights(self, x):
        """Per source weight, broadcastable to (N, C, H, W), normalised as configured."""
        n = len(self.sources) + 1
        w = self.weights.view(n, -1)  # (n, 1) or (n, C)
        if self.normalization == "relu":
            r = torch.relu(w)
            w = r / (r.sum(0, keepdim=True) + 0.0001)
        elif self.normalization == "softmax":
            e = torch.exp(w - w.max(0, keepdim=True).values)
            w = e / (e.sum(0, keepdim=True) + 0.0001)
        return [w[i].view(1, -1, 1, 1) for i in range(n)]

    def forward(self, x, outputs):
        ws = self._source_weights(x) if self.weights_type != "none" else None
        out = x * ws[0] if ws is not None else x
        flat_len = x[0].numel()
        for k, i in enumerate(self.sources):
            add = outputs[i]
            if add.shape[1:] == x.shape[1:]:
                out = out + (add * ws[k + 1] if ws is not None else add)
            else:
                # Different shapes: Darknet adds over the overlapping flat range only, the
                # weight picked by the position in the *output* (its channel).
                n = min(flat_len, add[0].numel())
                part = add.reshape(add.shape[0], -1)[:, :n]
                if ws is not None:
                    part = part * ws[k + 1].expand(1, *x.shape[1:]).reshape(1, -1)[:, :n]
                flat = out.reshape(out.shape[0], -1).clone()
                flat[:, :n] = flat[:, :n] + part
                out = flat.view_as(x)
        return activate(self.activation, out)

    def forward_(self, x, outputs):
        """``forward`` that adds into ``x``: the model calls it when nobody reads ``x`` after
        this layer (inference), saving a new buffer per residual block."""
        if self.weights_type != "none" or x.requires_grad or \
                any(outputs[i].shape != x.shape for i in self.sources):
            return self.forward(x, outputs)
        for i in self.sources:
            x.add_(outputs[i])
        return activate_(self.activation, x)


@dataclass(eq=False)
class _ProductSpec(LayerSpec):
    """from-layer × previous layer (element-wise, broadcast), then the activation; the output
    has the from-layer's shape. Subclasses check the shapes."""

    reference_keys = (ReferenceKey("from"),)

    source: int = 0
    activation: str = "linear"

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "_ProductSpec":
        spec = cls(index, section, ctx.shape_of(index - 1))
        spec.source = ctx.resolve(section, index, "from", section.get_int("from"))
        spec.activation = activation_of(section, index, "linear")
        spec.out_shape = ctx.shape_of(spec.source)
        spec.check_shapes()
        return spec

    def check_shapes(self) -> None:
        raise NotImplementedError

    def sources(self) -> list[int]:
        return [self.source]

    def describe(self) -> str:
        return str(self.source)

    def build(self) -> LayerModule:
        return ProductModule(self)


class ProductModule(LayerModule):
    def __init__(self, spec: _ProductSpec):
        super().__init__(spec)
        self.activation = spec.activation

    def forward(self, x, outputs):
        return activate(self.activation, outputs[self.sources[0]] * x)


@register("sam")
@dataclass(eq=False)
class SamSpec(_ProductSpec):
    """Spatial attention: previous × from, both of one shape."""

    def check_shapes(self) -> None:
        if self.out_shape != self.in_shape:
            raise self.error(f"from layer {self.source} is {self.out_shape}, previous layer is "
                             f"{self.in_shape}: sam needs equal shapes", "from")


@register("scale_channels")
@dataclass(eq=False)
class ScaleChannelsSpec(_ProductSpec):
    """from × previous, the previous being C×1×1 (or 1×H×W with scale_wh=1)."""

    scale_wh: bool = False

    def check_shapes(self) -> None:
        self.scale_wh = bool(self.section.get_int("scale_wh", 0))
        src, prev = self.out_shape, self.in_shape
        ok = (prev.c == 1 and (prev.h, prev.w) == (src.h, src.w)) if self.scale_wh else \
            (prev.c == src.c and prev.h == 1 and prev.w == 1)
        if not ok:
            raise self.error(f"previous layer is {prev}, from layer {self.source} is {src}: "
                             "expected a C×1×1 scale (1×H×W with scale_wh=1)", "from")
