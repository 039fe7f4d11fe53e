"""[maxpool], [local_avgpool] and [avgpool]."""
from __future__ import annotations

from dataclasses import dataclass

from netsurgery.darknet.cfg import Section

from .base import BuildContext, LayerModule, LayerSpec, Shape, lazy_torch, positive, register

torch, nn, F = lazy_torch(globals())


@dataclass(eq=False)
class _WindowPoolSpec(LayerSpec):
    size: int = 1
    stride_x: int = 1
    stride_y: int = 1
    padding: int = 0

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext):
        spec = cls(index, section, ctx.shape_of(index - 1))
        s = section
        stride = positive(s, index, "stride", s.get_int("stride", 1))
        spec.stride_x = positive(s, index, "stride_x", s.get_int("stride_x", stride))
        spec.stride_y = positive(s, index, "stride_y", s.get_int("stride_y", stride))
        spec.size = positive(s, index, "size", s.get_int("size", stride))
        # Darknet's default padding is size-1; the window starts padding/2 to the left/top.
        spec.padding = s.get_int("padding", spec.size - 1)
        if spec.padding < 0:
            raise spec.error(f"padding={spec.padding}: expected ≥ 0", "padding")
        out_w = (spec.in_shape.w + spec.padding - spec.size) // spec.stride_x + 1
        out_h = (spec.in_shape.h + spec.padding - spec.size) // spec.stride_y + 1
        if out_w < 1 or out_h < 1:
            raise spec.error(f"input {spec.in_shape} is too small for size={spec.size}", "size")
        spec.out_shape = Shape(spec.in_shape.c, out_h, out_w)
        return spec

    def flops(self) -> float:
        o = self.out_shape
        return float(self.size * self.size * self.in_shape.c * o.h * o.w)

    def describe(self) -> str:
        text = f"{self.size}x{self.size}/{self.stride_x}"
        return text + (f"x{self.stride_y}" if self.stride_y != self.stride_x else "")

    def pads(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) so that every Darknet window lies inside the tensor."""
        left = top = self.padding // 2
        right = (self.out_shape.w - 1) * self.stride_x + self.size - self.in_shape.w - left
        bottom = (self.out_shape.h - 1) * self.stride_y + self.size - self.in_shape.h - top
        return left, right, top, bottom


class _WindowPoolModule(LayerModule):
    def __init__(self, spec: _WindowPoolSpec):
        super().__init__(spec)
        self.kernel = spec.size
        self.stride = (spec.stride_y, spec.stride_x)
        self.pad = spec.pads()

    def resize(self, spec: _WindowPoolSpec) -> None:
        self.pad = spec.pads()

    def _padded(self, x, value):
        left, right, top, bottom = self.pad
        # Negative pads crop: windows never reach those cells.
        return F.pad(x, (left, right, top, bottom), value=value)


@register("maxpool")
@dataclass(eq=False)
class MaxPoolSpec(_WindowPoolSpec):
    def build(self) -> LayerModule:
        for key in ("maxpool_depth", "antialiasing"):
            if self.section.get_int(key, 0):
                raise self.error(f"option {key} is not supported by netsurgery's model", key)
        return MaxPoolModule(self)


class MaxPoolModule(_WindowPoolModule):
    def forward(self, x, outputs):
        if self.pad == (0, 0, 0, 0):
            return F.max_pool2d(x, self.kernel, self.stride)
        return F.max_pool2d(self._padded(x, float("-inf")), self.kernel, self.stride)


@register("local_avgpool")
@dataclass(eq=False)
class LocalAvgPoolSpec(_WindowPoolSpec):
    def build(self) -> LayerModule:
        return LocalAvgPoolModule(self)


class LocalAvgPoolModule(_WindowPoolModule):
    """Darknet averages over the cells of the window that lie inside the image."""

    def forward(self, x, outputs):
        total = F.avg_pool2d(self._padded(x, 0.0), self.kernel, self.stride, divisor_override=1)
        ones = torch.ones((1, 1) + tuple(x.shape[-2:]), dtype=x.dtype, device=x.device)
        count = F.avg_pool2d(self._padded(ones, 0.0), self.kernel, self.stride,
                             divisor_override=1)
        return total / count


@register("avgpool")
@dataclass(eq=False)
class AvgPoolSpec(LayerSpec):
    """Global average pooling to C×1×1."""

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext):
        spec = cls(index, section, ctx.shape_of(index - 1))
        spec.out_shape = Shape(spec.in_shape.c, 1, 1)
        return spec

    def build(self) -> LayerModule:
        return AvgPoolModule(self)


class AvgPoolModule(LayerModule):
    def forward(self, x, outputs):
        return x.mean(dim=(2, 3), keepdim=True)
