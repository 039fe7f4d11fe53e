"""What every layer type knows: how to read its section, its shape rule, the arrays it keeps
in a .weights file (in file order), its cost, and how to build its torch module."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from netsurgery.darknet.cfg import Cfg, Section
from netsurgery.errors import CfgError


@dataclass(frozen=True)
class Shape:
    """A layer output (channels, height, width) for one image."""

    c: int
    h: int
    w: int

    @property
    def numel(self) -> int:
        return self.c * self.h * self.w

    def as_list(self) -> list[int]:
        return [self.c, self.h, self.w]

    def __str__(self) -> str:
        return f"{self.c}x{self.h}x{self.w}"


@dataclass
class NetInput:
    """The network's input as ``[net]`` declares it (or as overridden by ``size``)."""

    width: int
    height: int
    channels: int
    batch: int = 1

    @property
    def shape(self) -> Shape:
        return Shape(self.channels, self.height, self.width)


@dataclass
class WeightArray:
    """One array a layer stores in .weights: its name, shape and place in file order."""

    name: str
    shape: tuple[int, ...]

    @property
    def count(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class LayerSpec:
    """Parsed, shape-checked description of one layer. Subclasses add typed options."""

    index: int
    section: Section
    in_shape: Shape  # the previous layer's output (the network input for layer 0)
    out_shape: Shape = field(init=False)

    type_name: ClassVar[str] = ""

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def parse(cls, index: int, section: Section, ctx: "BuildContext") -> "LayerSpec":
        raise NotImplementedError

    # -- facts ----------------------------------------------------------------------------
    def sources(self) -> list[int]:
        """Absolute indices of earlier layers this layer reads besides its input (index-1)."""
        return []

    def reads_previous(self) -> bool:
        """Whether the layer consumes the previous layer's output (route does not)."""
        return True

    def inputs(self) -> list[int]:
        """Every layer index read (``-1`` = the network input)."""
        prev = [self.index - 1] if self.reads_previous() else []
        return prev + self.sources()

    def weight_arrays(self, transposed: bool = False) -> list[WeightArray]:
        """Arrays in .weights file order; empty for layers without weights."""
        return []

    @property
    def params(self) -> int:
        return sum(a.count for a in self.weight_arrays())

    def flops(self) -> float:
        """Floating point operations as Darknet counts them (its BFLOPS × 1e9)."""
        return 0.0

    def describe(self) -> str:
        """Key options for a layer table."""
        return ""

    def build(self) -> nn.Module:
        raise CfgError(self.section.path, self.section.line,
                       f"layer {self.index} [{self.section.header}]: not supported by "
                       "netsurgery's PyTorch model (cfg, shapes and weights still work)")

    def error(self, message: str, key: str | None = None) -> CfgError:
        return self.section.error(f"layer {self.index}: {message}", key)


@dataclass
class BuildContext:
    """What a layer may look at while it is parsed: the net input and earlier layers."""

    net: NetInput
    specs: list[LayerSpec]
    path: str | None = None
    cfg: Cfg | None = None  # where warnings go (None: they are errors)
    time_steps: int = 1  # [net] time_steps: the recurrent layers' sequence length

    def warn(self, section: Section, message: str, key: str | None = None) -> None:
        """Something Darknet accepts (surplus anchors ...): a warning, or with a strict cfg a
        CfgError (see :meth:`Cfg.warn`)."""
        if self.cfg is None:
            raise section.error(message, key)
        self.cfg.warn(section, message, key)

    def shape_of(self, index: int) -> Shape:
        return self.net.shape if index < 0 else self.specs[index].out_shape

    def resolve(self, section: Section, index: int, key: str, ref: int) -> int:
        """Darknet reference rule: negative = relative to this layer, else absolute. Must
        point at an earlier layer."""
        absolute = index + ref if ref < 0 else ref
        if absolute < 0 or absolute >= index:
            earlier = f"(0..{index - 1})" if index else "(layer 0 has none: it reads the input)"
            raise section.error(
                f"layer {index}: {key}={ref} points at layer {absolute}: expected an earlier "
                f"layer {earlier}", key)
        return absolute


class LayerModule(nn.Module):
    """A torch module for one Darknet layer. ``forward(x, outputs)`` gets the previous output
    and the list of all earlier outputs (for route/shortcut style layers).

    For inference the model may call an optional ``forward_(x, outputs)`` instead, which is
    allowed to overwrite ``x``: only when no later layer reads ``x`` and the layer that made
    ``x`` declares ``fresh_output`` (its outputs never share memory with another output)."""

    fresh_output = False

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.index = spec.index
        self.sources = spec.sources()

    def forward(self, x: torch.Tensor, outputs: list) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    # Parameters in .weights file order as (name, tensor); modules with weights override.
    def weight_tensors(self) -> list[tuple[str, torch.Tensor]]:
        return []

    def resize(self, spec: LayerSpec) -> None:
        """Take the shapes of ``spec``: this layer in the network built for another input size
        (Darknet's resize_network). Weights stay; modules that keep something derived from the
        spatial size (output crop, pool padding, gather index) override this."""


def lazy_zeros(*shape: int) -> torch.Tensor:
    """A float32 tensor of zeros whose memory is not written until used. numpy's zeros come
    from calloc, which for large blocks maps fresh zero pages, where ``torch.zeros`` writes
    every byte: a model built for a weights file then writes its kernels once (the file
    read), not twice — for yolov3 that is 70 ms of 130."""
    return torch.from_numpy(np.zeros(shape, dtype=np.float32))


REGISTRY: dict[str, type[LayerSpec]] = {}


def register(*names: str):
    """Class decorator: the spec class handles these canonical section names."""

    def deco(cls: type[LayerSpec]) -> type[LayerSpec]:
        for name in names:
            REGISTRY[name] = cls
        cls.type_name = names[0]
        return cls

    return deco


def positive(section: Section, index: int, key: str, value: int, minimum: int = 1) -> int:
    """Reject values Darknet would take but that are nonsense (filters=0, stride=0 ...)."""
    if value < minimum:
        raise section.error(f"layer {index}: {key}={value}: expected an integer ≥ {minimum}", key)
    return value
