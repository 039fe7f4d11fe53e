"""[local]: a locally connected layer, a convolution with its own kernel at every output
location (AlexeyAB's local_layer.c). Darknet counts no BFLOPs for it."""
from __future__ import annotations

from dataclasses import dataclass

from netsurgery.darknet.cfg import Section

from .activation import activate, activation_of
from .base import (
    BuildContext,
    LayerModule,
    LayerSpec,
    Shape,
    WeightArray,
    lazy_torch,
    positive,
    register,
)

torch, nn, F = lazy_torch(globals())


@register("local")
@dataclass(eq=False)
class LocalSpec(LayerSpec):
    """``pad`` is a flag for the output size ((h−1)/stride+1 with it, (h−size)/stride+1
    without) but the number of pixels im2col pads with: the two agree only for pad=0 or
    size=3, and Darknet mixes up locations otherwise, so other combinations are refused.

    .weights: biases[filters·out_h·out_w], then per output location (row-major) a
    filters × (c·size·size) matrix."""

    filters: int = 1
    size: int = 1
    stride: int = 1
    pad: int = 0
    activation: str = "logistic"

    @classmethod
    def parse(cls, index: int, section: Section, ctx: BuildContext) -> "LocalSpec":
        s = section
        spec = cls(index, s, ctx.shape_of(index - 1))
        spec.filters = positive(s, index, "filters", s.get_int("filters", 1))
        spec.size = positive(s, index, "size", s.get_int("size", 1))
        spec.stride = positive(s, index, "stride", s.get_int("stride", 1))
        spec.pad = s.get_int("pad", 0)
        spec.activation = activation_of(s, index, "logistic")
        i = spec.in_shape
        out_h = ((i.h - 1) if spec.pad else (i.h - spec.size)) // spec.stride + 1
        out_w = ((i.w - 1) if spec.pad else (i.w - spec.size)) // spec.stride + 1
        col_h = (i.h + 2 * spec.pad - spec.size) // spec.stride + 1
        col_w = (i.w + 2 * spec.pad - spec.size) // spec.stride + 1
        if (col_h, col_w) != (out_h, out_w):
            raise spec.error(f"pad={spec.pad} with size={spec.size}: Darknet's output is "
                             f"{out_h}x{out_w} but it reads {col_h}x{col_w} locations (use pad=0, "
                             "or pad=1 with size=3)", "pad")
        if out_h < 1 or out_w < 1:
            raise spec.error(f"input {i} is too small for size={spec.size}", "size")
        spec.out_shape = Shape(spec.filters, out_h, out_w)
        return spec

    def weight_arrays(self, transposed: bool = False) -> list[WeightArray]:
        o, c, k = self.out_shape, self.in_shape.c, self.size
        return [WeightArray("biases", (o.c, o.h, o.w)),
                WeightArray("weights", (o.h * o.w, self.filters, c * k * k))]

    def describe(self) -> str:
        return f"{self.filters} {self.size}x{self.size}/{self.stride} local {self.activation}"

    def build(self):
        return LocalModule(self)


class LocalModule(LayerModule):
    fresh_output = True

    def __init__(self, spec: LocalSpec):
        super().__init__(spec)

        biases, weights = spec.weight_arrays()
        self.biases = nn.Parameter(torch.zeros(biases.shape))
        self.weights = nn.Parameter(torch.zeros(weights.shape))
        self.size, self.stride, self.pad = spec.size, spec.stride, spec.pad
        self.activation = spec.activation

    def weight_tensors(self):
        return [("biases", self.biases), ("weights", self.weights)]

    def forward(self, x, outputs):
        cols = F.unfold(x, self.size, padding=self.pad, stride=self.stride)  # (n, c·k·k, L)
        y = torch.einsum("lfk,nkl->nfl", self.weights, cols)
        y = y.view(x.shape[0], *self.biases.shape) + self.biases
        return activate(self.activation, y)
