"""Layers that move values around: [upsample], [reorg] (old), [reorg3d], and the pass-through
layers [dropout], [empty], [cost], plus [softmax]."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from netsurgery.darknet.cfg import Section

from .base import BuildContext, LayerModule, LayerSpec, Shape, lazy_torch, positive, register

torch, nn, F = lazy_torch(globals())


@register("upsample")
@dataclass(eq=False)
class UpsampleSpec(LayerSpec):
    stride: int = 2
    reverse: bool = False  # negative stride: downsample by |stride|
    scale: float = 1.0

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "UpsampleSpec":
        spec = cls(index, section, ctx.shape_of(index - 1))
        stride = section.get_int("stride", 2)
        if stride == 0:
            raise spec.error("stride=0: expected a non-zero integer", "stride")
        spec.reverse = stride < 0
        spec.stride = abs(stride)
        spec.scale = section.get_float("scale", 1.0)
        s = spec.in_shape
        if spec.reverse:
            if s.h < spec.stride or s.w < spec.stride:
                raise spec.error(f"input {s} is too small for stride={stride}: the output "
                                 f"would be {s.h // spec.stride}x{s.w // spec.stride}", "stride")
            spec.out_shape = Shape(s.c, s.h // spec.stride, s.w // spec.stride)
        else:
            spec.out_shape = Shape(s.c, s.h * spec.stride, s.w * spec.stride)
        return spec

    def describe(self) -> str:
        return f"{'/' if self.reverse else 'x'}{self.stride}"

    def build(self) -> LayerModule:
        if self.reverse:
            raise self.error("negative stride (downsampling upsample) is not supported by "
                             "netsurgery's model", "stride")
        return UpsampleModule(self)


class UpsampleModule(LayerModule):
    def __init__(self, spec: UpsampleSpec):
        super().__init__(spec)
        self.stride = spec.stride
        self.scale = spec.scale

    def forward(self, x, outputs):
        # nearest neighbour by an integer factor = repeat each cell; interpolate keeps the
        # memory format (channels_last in the fast path) and is one pass
        y = F.interpolate(x, scale_factor=float(self.stride), mode="nearest")
        return y * self.scale if self.scale != 1.0 else y


def darknet_reorg_index(w: int, h: int, c: int, stride: int, forward: bool) -> np.ndarray:
    """Gather index for Darknet's reorg_cpu(x, w, h, c, batch=1, stride, forward): returns
    ``idx`` with ``out_flat = in_flat[idx]``. Computed from Darknet's own index formula so the
    result matches its element order exactly."""
    out_c = c // (stride * stride)
    k, j, i = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    in_index = (i + w * (j + h * k)).ravel()
    c2 = k % out_c
    offset = k // out_c
    w2 = i * stride + offset % stride
    h2 = j * stride + offset // stride
    out_index = (w2 + w * stride * (h2 + h * stride * c2)).ravel()
    idx = np.empty(w * h * c, dtype=np.int64)
    if forward:  # out[out_index] = x[in_index]
        idx[out_index] = in_index
    else:  # out[in_index] = x[out_index]
        idx[in_index] = out_index
    return idx


@dataclass(eq=False)
class _ReorgSpec(LayerSpec):
    stride: int = 1
    reverse: bool = False

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext):
        spec = cls(index, section, ctx.shape_of(index - 1))
        spec.stride = positive(section, index, "stride", section.get_int("stride", 1))
        spec.reverse = bool(section.get_int("reverse", 0))
        s, st = spec.in_shape, spec.stride
        if spec.reverse:
            if s.c % (st * st):
                raise spec.error(f"channels {s.c} not divisible by stride²={st * st}", "stride")
            spec.out_shape = Shape(s.c // (st * st), s.h * st, s.w * st)
        else:
            if s.h % st or s.w % st:
                raise spec.error(f"input {s} not divisible by stride={st}", "stride")
            spec.out_shape = Shape(s.c * st * st, s.h // st, s.w // st)
        return spec

    def describe(self) -> str:
        return f"/{self.stride}" + (" reverse" if self.reverse else "")

    def build(self) -> LayerModule:
        return ReorgModule(self, self.gather_index())


@register("reorg")
@dataclass(eq=False)
class ReorgOldSpec(_ReorgSpec):
    """The old reorg: reorg_cpu on the *input* dimensions, forward flag = reverse."""

    def gather_index(self) -> np.ndarray:
        s = self.in_shape
        return darknet_reorg_index(s.w, s.h, s.c, self.stride, forward=self.reverse)


@register("reorg3d")
@dataclass(eq=False)
class Reorg3dSpec(_ReorgSpec):
    """The new reorg: reorg_cpu on the *output* dimensions, forward flag = reverse."""

    def gather_index(self) -> np.ndarray:
        o = self.out_shape
        idx = darknet_reorg_index(o.w, o.h, o.c, self.stride, forward=self.reverse)
        return idx


class ReorgModule(LayerModule):
    def __init__(self, spec: _ReorgSpec, index: np.ndarray):
        super().__init__(spec)
        self.out = spec.out_shape.as_list()
        self.register_buffer("gather", torch.from_numpy(index), persistent=False)

    def resize(self, spec: _ReorgSpec) -> None:
        self.out = spec.out_shape.as_list()
        self.gather = torch.from_numpy(spec.gather_index()).to(self.gather.device)

    def forward(self, x, outputs):
        flat = x.reshape(x.shape[0], -1)
        return flat.index_select(1, self.gather).view(x.shape[0], *self.out)


@dataclass(eq=False)
class _IdentitySpec(LayerSpec):
    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext):
        spec = cls(index, section, ctx.shape_of(index - 1))
        spec.out_shape = spec.in_shape
        return spec

    def build(self) -> LayerModule:
        return IdentityModule(self)


class IdentityModule(LayerModule):
    def forward(self, x, outputs):
        return x


@register("dropout")
@dataclass(eq=False)
class DropoutSpec(_IdentitySpec):
    """Identity at inference (Darknet scales at training time, not at test time)."""


@register("empty")
@dataclass(eq=False)
class EmptySpec(_IdentitySpec):
    pass


@register("cost")
@dataclass(eq=False)
class CostSpec(_IdentitySpec):
    """Training-only cost; we pass the input through (Darknet leaves its buffer unused)."""


@register("softmax")
@dataclass(eq=False)
class SoftmaxSpec(LayerSpec):
    groups: int = 1
    temperature: float = 1.0

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "SoftmaxSpec":
        spec = cls(index, section, ctx.shape_of(index - 1))
        spec.groups = positive(section, index, "groups", section.get_int("groups", 1))
        spec.temperature = section.get_float("temperature", 1.0)
        if spec.in_shape.numel % spec.groups:
            raise spec.error(f"groups={spec.groups} does not divide {spec.in_shape.numel} "
                             "inputs", "groups")
        if section.has("tree"):
            raise spec.error("softmax trees (tree=) are not supported", "tree")
        # Stored as (outputs, 1, 1): Darknet reports 0x0x0 for this layer.
        spec.out_shape = Shape(spec.in_shape.numel, 1, 1)
        return spec

    def build(self) -> LayerModule:
        return SoftmaxModule(self)


class SoftmaxModule(LayerModule):
    def __init__(self, spec: SoftmaxSpec):
        super().__init__(spec)
        self.groups = spec.groups
        self.temperature = spec.temperature

    def forward(self, x, outputs):
        n = x.shape[0]
        y = F.softmax(x.reshape(n, self.groups, -1) / self.temperature, dim=2)
        return y.reshape(n, -1, 1, 1)
